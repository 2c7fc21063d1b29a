"""The local channels between the main process and a worker: JSON messages, one per line,
over a UNIX socket pair, and listen sockets passed as file descriptors (`SCM_RIGHTS`).

Three pairs per worker, one per direction of asking and one for messages nobody answers, so
that each side's requests and answers never interleave:
- *control* (the main process asks): `{"op": "state"}` (the worker's stats and drains),
  `{"op": "call", "name": ..., "args": [...]}` (an admin command: health, drains);
- *sockets* (the worker asks, blocking, while it applies a listener): `{"listener": name,
  "address": ...}`, answered by one line and, when found, the socket's descriptor;
- *events* (either side tells, nobody answers; upstream/shared_health.py): the main process's
  host-health decisions `{"health": {version: {address: flags}}, "gone": [version, ...]}`
  and the EDS clusters whose fetch ended without an assignment `{"eds_fetch_over": [name]}`;
  a worker's request results `{"outcomes": {version: {address: [result, ...]}}}` and
  first traffic `{"traffic": [version, ...]}`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from xds_proxy.listener.actions import PipeAddress, SocketAddress

MAX_LINE = 64 * 1024 * 1024  # a worker's stats snapshot fits

log = logging.getLogger("xds_proxy.workers")


def address_to_json(address: SocketAddress) -> Any:
    if isinstance(address, PipeAddress):
        return {"pipe": address.path, "mode": address.mode}
    return [address[0], address[1]]


def address_from_json(value: Any) -> SocketAddress:
    if isinstance(value, dict):
        return PipeAddress(value["pipe"], value.get("mode", 0))
    return (str(value[0]), int(value[1]))


def encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def start_message(message: Any) -> bytes:
    """A worker's start-up data: its length first, so that the worker reads exactly it
    (blocking, before its event loop) and leaves what follows to the control reader."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return struct.pack("!Q", len(body)) + body


def read_start(sock: socket.socket) -> Any:
    (length,) = struct.unpack("!Q", _read_exactly(sock, 8))
    return json.loads(_read_exactly(sock, length))


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the main process closed the control channel")
        data += chunk
    return bytes(data)


class ControlClient:
    """The main process's end of a worker's control pair: one request at a time, each with
    an id the answer repeats (an answer that comes after its request timed out is skipped)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)

    @classmethod
    async def open(cls, sock: socket.socket) -> ControlClient:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer)

    async def ask(self, message: dict, timeout_s: float) -> Any:
        """The worker's answer (`{"error": ...}` if it could not do it)."""
        async with self._lock, asyncio.timeout(timeout_s):
            request_id = next(self._ids)
            self._writer.write(encode({**message, "id": request_id}))
            while True:
                line = await self._reader.readline()
                if not line:
                    raise ConnectionError("the worker closed its control channel")
                answer = json.loads(line)
                if answer.get("id") == request_id:
                    return answer.get("answer")

    def close(self) -> None:
        self._writer.close()


def ask_for_socket(sock: socket.socket, listener: str, address: SocketAddress) -> socket.socket:
    """A worker, blocking: the main process's listen socket for `address`; OSError with the
    main process's reason when it holds none."""
    sock.sendall(encode({"listener": listener, "address": address_to_json(address)}))
    data, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
    if not data:
        raise OSError("the main process closed the sockets channel")
    answer = json.loads(data)
    if not fds:
        raise OSError(answer.get("error", "no socket"))
    return socket.socket(fileno=fds[0])


def answer_socket(sock: socket.socket, found: socket.socket | None, error: str = "") -> None:
    """The main process answers one socket request (the line and the descriptor go in one
    message, so the worker reads both with one `recv_fds`)."""
    if found is None:
        sock.sendall(encode({"error": error or "no such socket"}))
        return
    socket.send_fds(sock, [encode({"ok": True})], [found.fileno()])


class Events(asyncio.Protocol):
    """One end of an *events* pair: each message is handed to `on_message` in the loop turn
    that read it (not a turn later, as a reader task would), so a decision of the other
    process is in force before a request read in the same turn is routed."""

    def __init__(self, on_message: Callable[[Any], None]) -> None:
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no newline

    async def attach(self, sock: socket.socket) -> None:
        """Start reading (and sending on) `sock`; what comes is taken from now on."""
        await asyncio.get_running_loop().create_unix_connection(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while (end := buffer.find(b"\n", self._searched)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            self._searched = 0
            try:
                self._on_message(json.loads(line))
            except Exception:  # one bad message must not stop the others
                log.exception("cannot take the message %r", line[:200])
        self._searched = len(buffer)
        if len(buffer) > MAX_LINE:
            log.error("an events message over %d bytes: the channel is closed", MAX_LINE)
            self.close()

    def send(self, message: Any) -> None:
        self.send_line(encode(message))

    def send_line(self, line: bytes) -> None:
        """A message `encode` made (once, for many workers)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(line)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
