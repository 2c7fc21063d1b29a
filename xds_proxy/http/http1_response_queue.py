"""Responses of one downstream HTTP/1.1 connection in request order, while a forwarded one is
in flight.

Local responses are written as soon as their read chunk is parsed, unless a forwarded response
(`Http1ForwardSink`, xds_proxy/upstream/http1_response.py) is still coming: then they wait
here behind it. The queue is the `Http1Owner` of every forwarded response: it writes the head
one's bytes as they come, keeps the others' until their turn, and passes the client's write
back-pressure on to the head one's upstream.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from xds_proxy.http.conn_manager import HcmStats
from xds_proxy.http.http1_backpressure import PAUSE_UPSTREAM, Http1Backpressure
from xds_proxy.http.http1_lifecycle import Http1Lifecycle
from xds_proxy.upstream.forward import Exchange, ForwardAction
from xds_proxy.upstream.http1_response import Http1ForwardSink


class QueuedResponse:
    """A response waiting for its turn; `sink` is None for a local one (complete already)."""

    __slots__ = ("chunks", "close", "done", "sink")

    def __init__(self, sink: Http1ForwardSink | None, chunks: list[bytes], done: bool) -> None:
        self.sink = sink
        self.chunks = chunks
        self.done = done
        self.close = False


class ResponseQueueHost(Protocol):
    """The connection, as its response queue sees it."""

    transport: asyncio.Transport | None

    def reset_forwards(self, except_sink: Http1ForwardSink | None = None) -> None: ...

    def release_held(self) -> None: ...


class Http1ResponseQueue:
    """Ordering of the responses owed while a forwarded one is pending (`entries`: empty when
    none is, the common case)."""

    __slots__ = ("_backpressure", "_connection", "_lifecycle", "_server", "_stats", "entries")

    def __init__(
        self,
        connection: ResponseQueueHost,
        stats: HcmStats,
        server_name: str,
        lifecycle: Http1Lifecycle,
        backpressure: Http1Backpressure,
    ) -> None:
        self._connection = connection
        self._stats = stats
        self._server = server_name.encode()
        self._lifecycle = lifecycle
        self._backpressure = backpressure
        self.entries: collections.deque[QueuedResponse] = collections.deque()

    def add_local(self, chunks: list[bytes]) -> None:
        """Complete local responses, to go out after the ones queued before them."""
        self.entries.append(QueuedResponse(None, chunks, True))

    def write_local(self, out: list[bytes]) -> None:
        """Write complete local responses now, or queue them behind a pending forwarded one;
        `out` is emptied. (The reader's per-read path does the same inline.)"""
        if self.entries:
            self.add_local(out[:])
        else:
            transport = self._connection.transport
            if transport is not None:
                transport.write(b"".join(out))
        out.clear()

    def add_forwarded(
        self,
        action: ForwardAction,
        head_only: bool,
        http10: bool,
        close_requested: bool,
        sink_class: type[Http1ForwardSink] = Http1ForwardSink,
    ) -> Exchange:
        """A forwarded request's response takes its place in the queue; the caller starts the
        returned exchange (`sink_class`: an upgrade's, http1_upgrade.py)."""
        sink = sink_class(self, head_only, http10, self._server)
        sink.close_requested = close_requested
        exchange = Exchange(action, sink)
        sink.exchange = exchange
        self.entries.append(QueuedResponse(sink, [], False))
        return exchange

    def pause_head(self) -> None:
        """The client's socket is full: the head response's upstream must wait."""
        exchange = self._head_exchange()
        if exchange is not None:
            exchange.pause_response()

    def resume_head(self) -> None:
        exchange = self._head_exchange()
        if exchange is not None:
            exchange.resume_response()

    def _head_exchange(self) -> Exchange | None:
        entries = self.entries
        if entries and entries[0].sink is not None:
            return entries[0].sink.exchange
        return None

    def reset(self, except_sink: Http1ForwardSink | None = None) -> None:
        """The connection is going away: cancel every forwarded response still in flight."""
        for entry in list(self.entries):
            sink = entry.sink
            if sink is not None and sink is not except_sink and sink.exchange is not None:
                sink.exchange.downstream_reset()

    # -- Http1Owner of Http1ForwardSink ----------------------------------------------------

    def forward_write(self, response: Http1ForwardSink, data: bytes) -> None:
        entries = self.entries
        if entries and entries[0].sink is response:
            transport = self._connection.transport
            if transport is not None:
                transport.write(data)
            return
        for entry in entries:
            if entry.sink is response:
                entry.chunks.append(data)
                return

    def forward_done(self, response: Http1ForwardSink, close: bool) -> None:
        for entry in self.entries:
            if entry.sink is response:
                entry.done = True
                entry.close = close
                break
        self._advance()

    def forward_reset(self, response: Http1ForwardSink) -> None:
        self._connection.reset_forwards(except_sink=response)
        self.entries.clear()
        self._lifecycle.close_now()

    def forward_close_decision(self, response: Http1ForwardSink) -> bool:
        if response.close_requested or self._lifecycle.wants_drain_close():
            return True
        # A later request already ended the connection: the last response says so.
        entries = self.entries
        return self._lifecycle.no_more_requests and bool(entries) and entries[-1].sink is response

    def forward_pause_reading(self) -> None:
        self._backpressure.pause_reading(PAUSE_UPSTREAM)

    def forward_resume_reading(self) -> None:
        self._backpressure.resume_reading(PAUSE_UPSTREAM)

    def forward_count(self, status: int) -> None:
        self._stats.rq_by_class[status // 100].value += 1

    def _advance(self) -> None:
        """Write every finished response at the head of the queue, in order."""
        entries = self.entries
        connection = self._connection
        transport = connection.transport
        lifecycle = self._lifecycle
        while entries and entries[0].done:
            entry = entries.popleft()
            if entry.sink is not None:
                entry.sink.exchange = None  # (the sink and its exchange refer to each other)
            if transport is not None and entry.chunks:
                transport.write(b"".join(entry.chunks))
            if entry.close:
                lifecycle.end_after_responses()
                connection.reset_forwards()
                entries.clear()
                break
        if entries:
            head = entries[0]
            if head.chunks and transport is not None:
                transport.write(b"".join(head.chunks))
                head.chunks.clear()
            return
        if lifecycle.no_more_requests:
            lifecycle.begin_close()
            return
        lifecycle.responses_out()
        if self._backpressure.held is not None:
            connection.release_held()
