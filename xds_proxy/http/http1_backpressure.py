"""Back-pressure on one downstream HTTP/1.1 connection: why reading is paused, and the bytes
read from the client but not parsed yet.

Input is held (read, not parsed) while a forwarded response is pending, so that no pipelined
request is answered out of order, and while the client does not read our answers (its socket
is full: the write side is above its high watermark, which the listener sets from
`per_connection_buffer_limit_bytes`). Reading goes on meanwhile, so that a client that goes
away is still noticed, up to HELD_INPUT_LIMIT bytes; then it pauses too.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

# Why reading is paused (bits): the client's socket is full, the upstream is not keeping up
# with a request body, too many pipelined bytes wait behind a pending forwarded response.
PAUSE_WRITING, PAUSE_UPSTREAM, PAUSE_PIPELINE = 1, 2, 4
# Pipelined bytes kept while a forwarded response is pending, before reading pauses.
HELD_INPUT_LIMIT = 64 * 1024
# One read can hold thousands of pipelined requests: the parser is fed this much at a time, and
# no more once the client's socket is full. The rest waits, unparsed, until the client reads:
# the answers one connection makes stay bounded by the buffer limit plus one slice.
PARSE_SLICE = 4 * 1024


class HasTransport(Protocol):
    """The connection, as a part that only writes to or pauses its transport sees it."""

    transport: asyncio.Transport | None


class Http1Backpressure:
    """The read side's pause reasons and held input; `write_paused` mirrors the transport's
    `pause_writing()` / `resume_writing()`."""

    __slots__ = ("_connection", "_held_size", "_read_paused", "held", "write_paused")

    def __init__(self, connection: HasTransport) -> None:
        self._connection = connection
        self._read_paused = 0  # PAUSE_* bits
        self.held: list[bytes] | None = None  # None: input is parsed as it arrives
        self._held_size = 0
        self.write_paused = False  # the transport is above its high watermark

    def hold(self, data: bytes) -> None:
        """Keep `data` unparsed; reading pauses once too much waits."""
        if self.held is None:
            self.held = []
            self._held_size = 0
        self.held.append(data)
        self._held_size += len(data)
        if self._held_size > HELD_INPUT_LIMIT:
            self.pause_reading(PAUSE_PIPELINE)

    def start_holding(self) -> None:
        """Hold what arrives from now on (a forwarded response is still coming)."""
        if self.held is None:
            self.held = []
            self._held_size = 0

    def take_held(self) -> bytes | None:
        """Stop holding; the bytes held so far, to be parsed now (None: nothing was held)."""
        held = self.held
        self.held = None
        self._held_size = 0
        self.resume_reading(PAUSE_PIPELINE)
        if not held:
            return None
        return held[0] if len(held) == 1 else b"".join(held)

    def writing_paused(self) -> None:
        self.write_paused = True
        self.pause_reading(PAUSE_WRITING)

    def pause_reading(self, reason: int) -> None:
        transport = self._connection.transport
        if not self._read_paused and transport is not None:
            transport.pause_reading()
        self._read_paused |= reason

    def resume_reading(self, reason: int) -> None:
        was = self._read_paused
        self._read_paused &= ~reason
        transport = self._connection.transport
        if was and not self._read_paused and transport is not None:
            transport.resume_reading()
