"""HTTP/1.1 connection pool to one upstream host: one request at a time per connection,
keep-alive reuse, circuit-breaker limits, connect timeout, idle timeout.

A request waits in `pending` until a connection is free; each pending request beyond what
the connecting connections will serve opens a new connection (up to `max_connections` for
the cluster; a pool with no connection at all may always open one, as in Envoy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from xds_proxy.upstream.deadlines import recheck_idle
from xds_proxy.upstream.http1_tunnel import UpstreamTunnel, start_tunnel
from xds_proxy.upstream.pool import ConnectionPool, PooledConnection, PooledStream
from xds_proxy.upstream.running_loop import running_loop
from xds_proxy.upstream.stream import (
    CONNECTION_TERMINATION,
    PROTOCOL_ERROR,
    Header,
    RequestHead,
    ResponseHandler,
)

if TYPE_CHECKING:
    from xds_proxy.upstream.host import Host, PoolOwner
    from xds_proxy.upstream.stats import ClusterStats

_NO_BODY_STATUSES = frozenset({204, 304})
_DROPPED_RESPONSE_HEADERS = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
_DROPPED_UPGRADE_HEADERS = frozenset({b"keep-alive", b"transfer-encoding"})


class _SkipBody(Exception):
    """Raised from the parser's headers callback when the response has no body (HEAD)."""


class Http1Stream(PooledStream):
    """One request/response exchange. Created pending; attached to a connection later."""

    __slots__ = ("_buffered", "_chunked", "_paused", "response_ended", "tunnel")

    _conn: Http1ClientConnection | None

    def __init__(
        self, pool: Http1Pool, head: RequestHead, handler: ResponseHandler, end_stream: bool
    ) -> None:
        super().__init__(pool, head, handler, end_stream)
        self.response_ended = False
        self._paused = False
        self.tunnel: UpstreamTunnel | None = None  # set once a 101 upgrades the connection
        # An upgrade request's body is the upgraded protocol's bytes: never chunked.
        self._chunked = (
            not end_stream
            and not head.upgrade
            and not any(name == b"content-length" for name, _ in head.headers)
        )
        self._buffered: list[bytes] = [self._encode_head(end_stream)]

    def _encode_head(self, end_stream: bool) -> bytes:
        head = self.head
        lines = [head.method, b" ", head.path, b" HTTP/1.1\r\nhost: ", head.authority, b"\r\n"]
        for name, value in head.headers:
            lines += (name, b": ", value, b"\r\n")
        if self._chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    # -- UpstreamStream ---------------------------------------------------------------------

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.done or self._request_ended:
            return
        pieces: list[bytes] = []
        if self._chunked:
            if data:
                pieces += (b"%x\r\n" % len(data), data, b"\r\n")
            if end_stream:
                pieces.append(b"0\r\n\r\n")
        elif data:
            pieces.append(data)
        if end_stream:
            self._request_ended = True
        payload = b"".join(pieces)
        if self._conn is None:
            self._buffered.append(payload)
        elif payload:
            self._conn.write(payload)
        if end_stream and self._conn is not None:
            self._conn.request_sent()

    def send_trailers(self, trailers: list[Header]) -> None:
        if self.done or self._request_ended:
            return
        self._request_ended = True
        if not self._chunked:
            payload = b""
        else:
            lines = [b"0\r\n"]
            for name, value in trailers:
                lines += (name, b": ", value, b"\r\n")
            lines.append(b"\r\n")
            payload = b"".join(lines)
        if self._conn is None:
            self._buffered.append(payload)
        else:
            self._conn.write(payload)
            self._conn.request_sent()

    def reset(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close_from_downstream()
            return
        super().reset()

    def pause_response(self) -> None:
        self._paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def resume_response(self) -> None:
        self._paused = False
        if self._conn is not None:
            self._conn.resume_reading()

    # -- called by the connection -----------------------------------------------------------

    def attach(self, conn: Http1ClientConnection) -> None:
        self._conn = conn
        conn.write(b"".join(self._buffered))
        self._buffered = []
        if self._paused:
            conn.pause_reading()
        if self._request_ended:
            conn.request_sent()

    @property
    def request_ended(self) -> bool:
        return self._request_ended

    def finish(self) -> None:
        self.done = True
        self.response_ended = True


class Http1ClientConnection(PooledConnection):
    """One keep-alive connection to the host; serves one stream at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        super().__init__()
        self.pool = pool
        self.stream: Http1Stream | None = None
        self.requests_served = 0
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers: list[Header] = []
        self._headers_done = False
        self._until_eof = False
        self._request_sent = False
        self._response_done = False
        self._idle_since = 0.0
        self._reading_paused = False
        self._body: list[bytes] = []
        # Bytes a new connection got before its first request was attached (e.g. an HTTP/2
        # server's SETTINGS): they are that request's response, parsed once it is attached.
        self._early: bytes = b""

    # -- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.stream is None and self.requests_served == 0:
            self._early += data
            return
        if self.stream is None:
            # Bytes on an idle connection: the upstream broke the protocol; do not reuse it.
            self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
            self.close()
            return
        try:
            self._parser.feed_data(data)
            if self._body:
                self._deliver_body(False)
        except httptools.HttpParserCallbackError as error:
            if not isinstance(error.__context__, _SkipBody):
                raise
            self._parser = httptools.HttpResponseParser(self)
            self._complete_response()
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(bytes(data[upgrade.args[0] :]))
        except httptools.HttpParserError:
            self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
            stream = self.stream
            self.stream = None
            self.close()
            if stream is not None:
                stream.fail(PROTOCOL_ERROR)

    def pause_writing(self) -> None:
        if self.stream is not None and not self.stream.done:
            self.stream.handler.pause_request_body()

    def resume_writing(self) -> None:
        if self.stream is not None and not self.stream.done:
            self.stream.handler.resume_request_body()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._early and self.stream is not None:
            self._parse_early()  # what came before the close is the response (or garbage)
        self._count_lost(self.pool.cluster.stats)
        stream = self.stream
        self.stream = None
        self.pool.connection_closed(self)
        if stream is not None and not stream.done:
            if self._until_eof and self._headers_done:
                stream.finish()
                self.pool.stream_done(stream)
                data = b"".join(self._body)
                self._body.clear()
                stream.handler.on_response_data(data, True)
            else:
                self.pool.stream_done(stream)
                stream.fail(CONNECTION_TERMINATION)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._headers_done = False
        self._until_eof = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._headers_done:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        self._headers_done = True
        if 100 <= status < 200:
            stream = self.stream
            if status == 101 and stream is not None and stream.head.upgrade:
                headers = [(n, v) for n, v in self._headers if n not in _DROPPED_UPGRADE_HEADERS]
                stream.handler.on_response_headers(status, headers, False)
            return  # informational: the real response follows
        stream = self.stream
        assert stream is not None
        headers = self._headers
        no_body = stream.head.method == b"HEAD" or status in _NO_BODY_STATUSES
        if not no_body:
            has_length = chunked = False
            for name, value in headers:
                if name == b"content-length":
                    has_length = True
                    no_body = value.strip() == b"0"
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            self._until_eof = not has_length and not chunked
        forwarded = [(n, v) for n, v in headers if n not in _DROPPED_RESPONSE_HEADERS]
        stream.handler.on_response_headers(status, forwarded, no_body)
        if no_body:
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
        # Pieces of one read go on as one (Envoy forwards what one read gave it).
        self._body.append(body)

    def _deliver_body(self, end_stream: bool) -> None:
        data = b"".join(self._body)
        self._body.clear()
        stream = self.stream
        if stream is not None and not stream.done:
            stream.handler.on_response_data(data, end_stream)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:
            return
        stream = self.stream
        keep_alive = self._parser.should_keep_alive()
        data = b"".join(self._body)
        self._body.clear()
        self._complete_response(keep_alive)
        if stream is not None and stream.response_ended:
            stream.handler.on_response_data(data, True)

    # -- internals --------------------------------------------------------------------------

    def _upgraded(self, tail: bytes) -> None:
        """The parser stopped after a 101 (upstream/http1_tunnel.py takes the connection), or
        after a 101 nobody asked for (a broken upstream: the stream fails)."""
        stream = self.stream
        if stream is None or stream.done:
            self.close()
            return
        if self._status == 101 and stream.head.upgrade:
            start_tunnel(self, stream, tail)
            return
        self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
        self.stream = None
        self.close()
        stream.fail(PROTOCOL_ERROR)

    def _complete_response(self, keep_alive: bool = True) -> None:
        """The response ended (body complete, or none): free the connection for the next."""
        stream = self.stream
        if stream is None or stream.done:
            return
        stream.finish()
        self._response_done = True
        self.pool.stream_done(stream)
        reusable = (
            keep_alive
            and stream.request_ended
            and self._request_sent
            and not self._until_eof
            and not self._closing
        )
        self.stream = None
        if not reusable:
            self.close()
        else:
            self.pool.connection_idle(self)

    def attach(self, stream: Http1Stream) -> None:
        self.stream = stream
        self.requests_served += 1
        self._request_sent = False
        self._response_done = False
        self._until_eof = False
        stream.attach(self)
        if self._early:  # parsed on the next iteration: never a callback inside new_stream
            running_loop().call_soon(self._parse_early)

    def _parse_early(self) -> None:
        data, self._early = self._early, b""
        if data and self.stream is not None:
            self.data_received(data)

    def request_sent(self) -> None:
        self._request_sent = True

    def write(self, data: bytes) -> None:
        if self.transport is not None and data:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.pool.cluster.stats.upstream_flow_control_paused_reading_total.value += 1
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.pool.cluster.stats.upstream_flow_control_resumed_reading_total.value += 1
            self.transport.resume_reading()

    def cancel_stream(self, stream: Http1Stream) -> None:
        """The caller reset its stream: an HTTP/1.1 exchange cannot be cut short in-band."""
        if self.stream is stream:
            self.stream = None
            self.pool.stream_done(stream)
            self.abort()

    def arm_idle_timer(self, timeout: float | None) -> None:
        """The connection went idle. One lazy timer per connection: it is not moved per
        request, it re-arms itself when it fires early."""
        if not timeout or self.transport is None:
            return
        loop = running_loop()
        self._idle_since = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(timeout, self._on_idle_timeout, timeout)

    def _on_idle_timeout(self, timeout: float) -> None:
        self._idle_timer = None
        if self.transport is None:
            return
        busy = self.stream is not None
        self._idle_timer = recheck_idle(busy, self._idle_since, timeout, self._on_idle_timeout)
        if self._idle_timer is None:
            self.pool.cluster.stats.upstream_cx_idle_timeout.value += 1
            self.close()

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool(ConnectionPool[Http1Stream, Http1ClientConnection]):
    stream_class = Http1Stream
    connection_class = Http1ClientConnection

    def __init__(self, cluster: PoolOwner, host: Host) -> None:
        super().__init__(cluster, host)
        self.idle: list[Http1ClientConnection] = []
        self.busy: set[Http1ClientConnection] = set()

    # -- ConnectionPool hooks ---------------------------------------------------------------

    def _free_connection(self) -> Http1ClientConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _start(self, conn: Http1ClientConnection, stream: Http1Stream) -> None:
        self.busy.add(conn)
        conn.attach(stream)

    def _wants_connection(self) -> bool:
        # One connection per pending request: each serves one request at a time.
        return self.connecting < len(self.pending)

    def _open_connections(self) -> list[Http1ClientConnection]:
        return [*self.idle, *self.busy]

    def _count_protocol_connection(self, stats: ClusterStats) -> None:
        stats.upstream_cx_http1_total.value += 1

    def _connected(self, conn: Http1ClientConnection) -> None:
        self.connection_idle(conn)

    def _eject_pending(self, reason: str) -> None:
        # Fail the pending requests that the remaining connecting connections will not serve.
        while len(self.pending) > self.connecting:
            self._eject_one(reason)

    def _forget_connection(self, conn: Http1ClientConnection) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    # -- connections ------------------------------------------------------------------------

    def connection_idle(self, conn: Http1ClientConnection) -> None:
        """A connection is ready for its next request (newly connected, or done with one)."""
        self.busy.discard(conn)
        if conn.transport is None:
            return
        max_requests = self.cluster.config.max_requests_per_connection
        if max_requests and conn.requests_served >= max_requests:
            self.cluster.stats.upstream_cx_max_requests.value += 1
            conn.close()
            return
        if self.pending:  # served even by a retired pool: they were accepted
            self._attach(conn, self._dequeue())
            return
        if self.retired:
            conn.close()
            return
        self.idle.append(conn)
        conn.arm_idle_timer(self.cluster.config.idle_timeout_s)

    # -- lifecycle --------------------------------------------------------------------------

    def retire(self) -> None:
        """No new streams go here; idle connections close now, busy ones when done."""
        self.retired = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()

    def close(self) -> None:
        self.retire()
        super().close()
