"""HTTP/2 connection pool to one upstream host: many streams per connection, a new
connection when the current ones are full or going away.

h2 drives the frames, with one exception (docs/architecture.md#known-traps): h2 as a client treats a
received GOAWAY as the end of the connection and raises on the responses of streams that the
server still answers. So GOAWAY frames are cut out of the byte stream before h2 sees them and
handled here: streams up to `last_stream_id` complete normally, later ones fail with
`remote refused stream reset` (the server never processed them), new streams go to another
connection, and the connection closes once its last stream ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import NeverIndexedHeaderTuple

from xds_proxy.codec.h2_connection import BoundedH2Connection
from xds_proxy.codec.hpack_cache import CachingDecoder, CachingEncoder
from xds_proxy.upstream.deadlines import recheck_idle
from xds_proxy.upstream.http2_direct import DirectStreams
from xds_proxy.upstream.http2_direct_frames import (
    DIRECT_HEADERS,
    DIRECT_WHOLE,
    DirectResponses,
)
from xds_proxy.upstream.pool import ConnectionPool, PooledConnection, PooledStream
from xds_proxy.upstream.running_loop import running_loop
from xds_proxy.upstream.stream import (
    CONNECTION_TERMINATION,
    PROTOCOL_ERROR,
    REMOTE_REFUSED_STREAM_RESET,
    REMOTE_RESET,
    Header,
    RequestHead,
    ResponseHandler,
)

if TYPE_CHECKING:
    from xds_proxy.upstream.host import Host, PoolOwner
    from xds_proxy.upstream.stats import ClusterStats

_FRAME_HEADER = 9
# A frame header: length (16 high bits, 8 low bits), type, flags, R bit and stream id.
_unpack_frame_head = struct.Struct(">HBBBL").unpack_from
_HEADERS = 0x1
_GOAWAY = 0x7
_REFUSED_STREAM = 0x7
_CANCEL = 0x8
_STREAM_WINDOW = 1 << 20
_CONNECTION_WINDOW = 16 << 20
# Request body bytes a stream holds back (peer's window closed) before it pauses its source.
_SEND_HIGH_WATER = 1 << 20
_FORBIDDEN_REQUEST_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


class Http2Stream(PooledStream):
    __slots__ = (
        "_outbuf",
        "_outbuf_size",
        "_paused_source",
        "_trailers",
        "_unacked",
        "paused",
        "request_end_pending",
        "stream_id",
    )

    _conn: Http2ClientConnection | None

    def __init__(
        self, pool: Http2Pool, head: RequestHead, handler: ResponseHandler, end_stream: bool
    ) -> None:
        super().__init__(pool, head, handler, end_stream)
        self.stream_id = 0
        self.request_end_pending = end_stream  # END_STREAM not written yet
        self._outbuf: collections.deque[bytes] = collections.deque()
        self._outbuf_size = 0
        self._trailers: list[Header] | None = None
        self._paused_source = False
        self._unacked = 0
        self.paused = False

    # -- UpstreamStream ---------------------------------------------------------------------

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.done or self._request_ended:
            return
        if data:
            self._outbuf.append(data)
            self._outbuf_size += len(data)
        if end_stream:
            self._request_ended = True
            self.request_end_pending = True
        if self._conn is not None:
            self._conn.flush_stream(self)
        if self._outbuf_size > _SEND_HIGH_WATER and not self._paused_source:
            self._paused_source = True
            self.handler.pause_request_body()

    def send_trailers(self, trailers: list[Header]) -> None:
        if self.done or self._request_ended:
            return
        self._request_ended = True
        self.request_end_pending = True
        self._trailers = trailers
        if self._conn is not None:
            self._conn.flush_stream(self)

    def pause_response(self) -> None:
        self.paused = True

    def resume_response(self) -> None:
        self.paused = False
        if self._conn is not None and self._unacked:
            unacked, self._unacked = self._unacked, 0
            self._conn.acknowledge(self, unacked)

    # -- called by the connection -----------------------------------------------------------

    def take_output(self, window: int) -> tuple[bytes, bool]:
        """Up to `window` buffered bytes, and whether the stream may end after them."""
        pieces = []
        size = 0
        while self._outbuf and size < window:
            piece = self._outbuf.popleft()
            room = window - size
            if len(piece) > room:
                self._outbuf.appendleft(piece[room:])
                piece = piece[:room]
            pieces.append(piece)
            size += len(piece)
        self._outbuf_size -= size
        if self._paused_source and self._outbuf_size <= _SEND_HIGH_WATER // 2:
            self._paused_source = False
            self.handler.resume_request_body()
        return b"".join(pieces), not self._outbuf

    @property
    def has_output(self) -> bool:
        return bool(self._outbuf) or self.request_end_pending

    def has_body_or_trailers(self) -> bool:
        return bool(self._outbuf) or self._trailers is not None

    def take_trailers(self) -> list[Header] | None:
        trailers, self._trailers = self._trailers, None
        return trailers

    def note_received(self, size: int) -> bool:
        """Flow-controlled bytes arrived; True when they may be acknowledged now."""
        if self.paused:
            self._unacked += size
            return False
        return True


class Http2ClientConnection(DirectResponses, PooledConnection):
    # Whole GET exchanges without h2's per-stream machinery (http2_direct.py); the
    # differential tests turn it off for the reference run.
    DIRECT_EXCHANGES = True

    def __init__(self, pool: Http2Pool) -> None:
        super().__init__()
        self.pool = pool
        # Request headers come from our own codec (already validated); skipping h2's checks
        # of them is a large part of the per-request cost.
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = BoundedH2Connection(config=config)
        # The same request fields go out and the same response blocks come back on every
        # stream: their encodings and decodings are kept while the tables stand still.
        self.h2.encoder = CachingEncoder()
        self.h2.decoder = CachingDecoder(self.h2.decoder.max_header_list_size)
        self.streams: dict[int, Http2Stream] = {}
        self.ready = False  # connected and the preface written
        self.going_away = False
        self.goaway_last_stream_id: int | None = None
        self._pending_bytes = b""
        self._frame_left = 0
        self._blocked: dict[int, Http2Stream] = {}
        self._write_paused = False
        self.streams_started = 0
        self.direct: DirectStreams[Http2Stream] = DirectStreams(self.h2, _STREAM_WINDOW)
        # What the frames of the current read said, for `_dispatch`: h2's events and the
        # direct path's (DIRECT_HEADERS, stream, response, ended) / (DIRECT_BODY, ...).
        self._events: list = []
        self._heads_at: dict[int, int] = {}
        self._flush_scheduled = False
        self._end_check_scheduled = False
        # The server's and our stream limit, the lesser; None: to be read again (whatever h2
        # takes in may carry SETTINGS: `_receive` forgets it).
        self._stream_limit: int | None = None
        self._idle_since = 0.0  # when the last stream ended (the lazy idle timer reads it)

    # -- capacity ---------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        if not self.ready or self.going_away or self._closing:
            return 0
        limit = self._stream_limit
        if limit is None:
            limit = self._stream_limit = min(
                self.pool.cluster.config.h2_max_concurrent_streams,
                self.h2.remote_settings.max_concurrent_streams,
            )
        max_requests = self.pool.cluster.config.max_requests_per_connection
        if max_requests:
            limit = min(limit, max_requests - self.streams_started + len(self.streams))
        return max(0, limit - len(self.streams))

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW)
        self.ready = True
        self._flush()

    def data_received(self, data: bytes) -> None:
        """Frames in. As with h2 alone, what the frames between two GOAWAYs (cut out here)
        say reaches the streams once h2 (and the direct path) took them all."""
        if self._pending_bytes:
            data = self._pending_bytes + data
            self._pending_bytes = b""
        direct = self.direct.streams
        start = 0
        position = 0
        size = len(data)
        while position < size:
            if self._frame_left:
                step = min(self._frame_left, size - position)
                self._frame_left -= step
                position += step
                continue
            if size - position < _FRAME_HEADER:
                break
            length_high, length_low, frame_type, _, stream_id = _unpack_frame_head(data, position)
            length = length_high << 8 | length_low
            end = position + _FRAME_HEADER + length
            if frame_type == _GOAWAY:
                if end > size:
                    break
                if position > start and not self._receive(data[start:position]):
                    return
                self._dispatch()
                self._on_goaway(data[position + _FRAME_HEADER : end])
                start = position = end
                continue
            if direct:
                stream_id &= 0x7FFFFFFF
                if stream_id in direct:
                    if position > start and not self._receive(data[start:position]):
                        return
                    start = position
                    if frame_type <= _HEADERS and length <= self.h2.max_inbound_frame_size:
                        if end > size:
                            break  # the whole frame first
                        if not self._direct_frame(stream_id, frame_type, data, position, end):
                            return
                        start = position = end
                        continue
                    self.direct.materialize(stream_id)
            if end <= size:  # (h2 takes it with the frames around it)
                position = end
            else:
                self._frame_left = end - size
                position = size
        if position < size:
            self._pending_bytes = data[position:]
        if position <= start or self._receive(data[start:position]):
            self._dispatch()
        self._flush()

    def pause_writing(self) -> None:
        self._write_paused = True
        for stream in list(self.streams.values()):
            if not stream.done:
                stream.handler.pause_request_body()

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            if not stream.done:
                stream.handler.resume_request_body()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ready = False
        self._count_lost(self.pool.cluster.stats)
        streams = list(self.streams.values())
        self.streams.clear()
        self.pool.connection_closed(self)
        for stream in streams:
            self.pool.stream_done(stream)
            stream.fail(CONNECTION_TERMINATION)

    # -- frames in --------------------------------------------------------------------------

    def _receive(self, data: bytes) -> bool:
        """h2 takes whole frames; their events wait for `_dispatch`."""
        self._stream_limit = None
        try:
            self._events += self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._events = []
            self._heads_at.clear()
            self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
            self._fail_all(PROTOCOL_ERROR)
            return False
        return True

    def _dispatch(self) -> None:
        events, self._events = self._events, []
        if self._heads_at:
            self._heads_at.clear()
        for event in events:
            if type(event) is tuple:
                kind = event[0]
                if kind is DIRECT_WHOLE:
                    self._on_direct_whole(event[1], event[2], event[3])
                elif kind is DIRECT_HEADERS:
                    self._on_direct_headers(event[1], event[2], event[3])
                else:
                    self._on_direct_body(event[1], event[2])
                continue
            handler = _EVENT_HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.done:
            return
        status = 0
        headers: list[Header] = []
        for name, value in event.headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                headers.append((name, value))
        ended = event.stream_ended is not None
        if ended:
            self._finish(stream)
        stream.handler.on_response_headers(status, headers, ended)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length
        if stream is None or stream.done:
            if size:
                self.h2.acknowledge_received_data(size, event.stream_id)
            return
        if size and stream.note_received(size):
            self.h2.acknowledge_received_data(size, event.stream_id)
        ended = event.stream_ended is not None
        if ended:
            self._finish(stream)
        stream.handler.on_response_data(event.data, ended)

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.done:
            return
        self._finish(stream)
        stream.handler.on_response_trailers(list(event.headers))

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        self._blocked.pop(event.stream_id, None)
        if stream is None:
            return
        self.pool.stream_done(stream)
        self.pool.cluster.stats.upstream_rq_rx_reset.value += 1
        refused = event.error_code == _REFUSED_STREAM
        stream.fail(REMOTE_REFUSED_STREAM_RESET if refused else REMOTE_RESET)
        self._after_stream_end()

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self._blocked.pop(event.stream_id, None)
            if stream is not None:
                self.flush_stream(stream, write=False)
        else:
            self._unblock_all()

    def _unblock_all(self) -> None:
        blocked = list(self._blocked.values())
        self._blocked.clear()
        for stream in blocked:
            self.flush_stream(stream, write=False)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        # A larger initial window or stream limit may unblock streams and pending requests.
        self._unblock_all()
        self.pool.connection_has_capacity(self)

    def _on_goaway(self, payload: bytes) -> None:
        last_stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        self.going_away = True
        self.goaway_last_stream_id = last_stream_id
        self.pool.cluster.stats.upstream_cx_close_notify.value += 1
        for stream_id in sorted(self.streams):
            if stream_id > last_stream_id:
                stream = self.streams.pop(stream_id)
                self._blocked.pop(stream_id, None)
                self.direct.materialize(stream_id)  # as h2 would still hold it
                self.pool.stream_done(stream)
                stream.fail(REMOTE_REFUSED_STREAM_RESET)
        self.pool.connection_going_away(self)
        self._after_stream_end()

    # -- frames out -------------------------------------------------------------------------

    def start_stream(self, stream: Http2Stream) -> None:
        stream._conn = self
        self.streams_started += 1
        head = stream.head
        end_now = stream.request_end_pending and not stream.has_body_or_trailers()
        direct = (
            end_now and self.DIRECT_EXCHANGES and head.method != b"HEAD" and self.direct.can_open()
        )
        # Envoy's order of the pseudo-headers.
        pseudo = (
            (b":authority", head.authority),
            (b":path", head.path),
            (b":method", head.method),
            (b":scheme", head.scheme),
        )
        if direct:
            # x-request-id is unique per request: indexing it would only churn the HPACK table.
            block = self.h2.encoder.encode_request(
                pseudo, head.headers, _FORBIDDEN_REQUEST_HEADERS, b"x-request-id"
            )
            if block is None:
                stream.stream_id = self.direct.open(stream, self._header_list(pseudo, head))
            else:
                stream.stream_id = self.direct.open_block(stream, block)
            self.streams[stream.stream_id] = stream
            stream.request_end_pending = False
            if self._write_paused:
                stream.handler.pause_request_body()
            if not self._flush_scheduled:
                # The requests of one loop iteration go out in one write.
                self._flush_scheduled = True
                running_loop().call_soon(self._scheduled_flush)
            return
        stream_id = self.h2.get_next_available_stream_id()
        stream.stream_id = stream_id
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, self._header_list(pseudo, head), end_stream=end_now)
        if end_now:
            stream.request_end_pending = False
        else:
            self.flush_stream(stream, write=False)
        if self._write_paused:
            stream.handler.pause_request_body()
        self._flush()

    @staticmethod
    def _header_list(pseudo: tuple[Header, ...], head: RequestHead) -> list:
        """The request's header fields for h2 (and hpack): hop-by-hop ones dropped,
        x-request-id never indexed."""
        headers: list = list(pseudo)
        for name, value in head.headers:
            if name in _FORBIDDEN_REQUEST_HEADERS or (name == b"te" and value != b"trailers"):
                continue
            if name == b"x-request-id":
                headers.append(NeverIndexedHeaderTuple(name, value))
            else:
                headers.append((name, value))
        return headers

    def flush_stream(self, stream: Http2Stream, write: bool = True) -> None:
        """Send what the stream has buffered, as far as flow control allows."""
        if stream.done or stream.stream_id not in self.streams:
            return
        h2conn = self.h2
        stream_id = stream.stream_id
        try:
            while stream.has_output:
                window = min(
                    h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size
                )
                if stream._outbuf and window <= 0:
                    self._blocked[stream_id] = stream
                    break
                data, drained = stream.take_output(window)
                end = drained and stream.request_end_pending and stream._trailers is None
                if data or end:
                    h2conn.send_data(stream_id, data, end_stream=end)
                if drained and stream.request_end_pending:
                    trailers = stream.take_trailers()
                    if trailers is not None:
                        h2conn.send_headers(stream_id, trailers, end_stream=True)
                    stream.request_end_pending = False
                    break
                if drained:
                    break
        except h2.exceptions.StreamClosedError:
            pass  # the server already ended the stream (e.g. it answered before the body)
        if write:
            self._flush()

    def acknowledge(self, stream: Http2Stream, size: int) -> None:
        if stream.stream_id in self.streams:
            self.direct.materialize(stream.stream_id)
            self.h2.acknowledge_received_data(size, stream.stream_id)
            self._flush()

    def cancel_stream(self, stream: Http2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self._blocked.pop(stream.stream_id, None)
        self.direct.materialize(stream.stream_id)
        self.pool.stream_done(stream)
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.h2.reset_stream(stream.stream_id, _CANCEL)
        self._flush()
        self._after_stream_end()

    def _finish(self, stream: Http2Stream) -> None:
        """The response ended: the stream is over for us (a request body still unsent is
        dropped, as the server needs no more of it)."""
        stream.done = True
        if self.streams.pop(stream.stream_id, None) is not None:
            self._blocked.pop(stream.stream_id, None)
            self.pool.stream_done(stream)
            if not self._end_check_scheduled:
                # Once per loop iteration, however many streams ended in it.
                self._end_check_scheduled = True
                running_loop().call_soon(self._scheduled_end_check)

    def _scheduled_end_check(self) -> None:
        self._end_check_scheduled = False
        self._after_stream_end()

    def _after_stream_end(self) -> None:
        if self.streams or self.transport is None:
            return
        if self.going_away or self.pool.retired:
            self.close()
            return
        max_requests = self.pool.cluster.config.max_requests_per_connection
        if max_requests and self.streams_started >= max_requests:
            self.pool.cluster.stats.upstream_cx_max_requests.value += 1
            self.close()
            return
        self.pool.connection_has_capacity(self)
        if not self.streams:
            timeout = self.pool.cluster.config.idle_timeout_s
            if timeout:
                # One lazy timer: not moved per stream, it re-arms itself when it fires early.
                loop = running_loop()
                self._idle_since = loop.time()
                if self._idle_timer is None:
                    self._idle_timer = loop.call_later(timeout, self._on_idle_timeout, timeout)

    def _on_idle_timeout(self, timeout: float) -> None:
        """Close once the connection has had no stream for `timeout` on end."""
        self._idle_timer = None
        if self.transport is None or self._closing:
            return
        busy = bool(self.streams)
        self._idle_timer = recheck_idle(busy, self._idle_since, timeout, self._on_idle_timeout)
        if self._idle_timer is None:
            self.pool.cluster.stats.upstream_cx_idle_timeout.value += 1
            self.close()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _fail_all(self, reason: str) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self.pool.stream_done(stream)
            stream.fail(reason)
        self.abort()

    def close(self) -> None:
        """Close with a GOAWAY of our own once nothing is in flight."""
        if self._closing:
            return
        self._closing = True
        self.pool.connection_going_away(self)
        if self.transport is None:
            return
        try:
            self.h2.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self.transport.close()


_EVENT_HANDLERS = {
    h2.events.ResponseReceived: Http2ClientConnection._on_response,
    h2.events.DataReceived: Http2ClientConnection._on_data,
    h2.events.TrailersReceived: Http2ClientConnection._on_trailers,
    h2.events.StreamReset: Http2ClientConnection._on_reset,
    h2.events.WindowUpdated: Http2ClientConnection._on_window,
    h2.events.RemoteSettingsChanged: Http2ClientConnection._on_settings,
}


class Http2Pool(ConnectionPool[Http2Stream, Http2ClientConnection]):
    stream_class = Http2Stream
    connection_class = Http2ClientConnection

    def __init__(self, cluster: PoolOwner, host: Host) -> None:
        super().__init__(cluster, host)
        self.connections: list[Http2ClientConnection] = []  # usable (not going away)
        self.draining: set[Http2ClientConnection] = set()

    # -- ConnectionPool hooks ---------------------------------------------------------------

    def _free_connection(self) -> Http2ClientConnection | None:
        for conn in self.connections:
            if conn.capacity > 0:
                return conn
        return None

    def _start(self, conn: Http2ClientConnection, stream: Http2Stream) -> None:
        conn.start_stream(stream)

    def _wants_connection(self) -> bool:
        # One connection at a time: once up, it takes as many pending streams as it may.
        return bool(self.pending) and not self.connecting

    def _open_connections(self) -> list[Http2ClientConnection]:
        return [*self.connections, *self.draining]

    def _count_protocol_connection(self, stats: ClusterStats) -> None:
        stats.upstream_cx_http2_total.value += 1

    def _connected(self, conn: Http2ClientConnection) -> None:
        self.connections.append(conn)
        self.connection_has_capacity(conn)

    def _eject_pending(self, reason: str) -> None:
        # Another connect still under way will serve them all.
        if self.connecting:
            return
        while self.pending:
            self._eject_one(reason)

    def _forget_connection(self, conn: Http2ClientConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        self.draining.discard(conn)

    # -- connections ------------------------------------------------------------------------

    def connection_has_capacity(self, conn: Http2ClientConnection) -> None:
        while self.pending and conn.capacity > 0:
            self._attach(conn, self._dequeue())
        if self._wants_connection():
            self._maybe_connect()
        if self.retired and not conn.streams:
            conn.close()

    def connection_going_away(self, conn: Http2ClientConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
            self.draining.add(conn)
        if self._wants_connection():
            self._maybe_connect()

    # -- lifecycle --------------------------------------------------------------------------

    def retire(self) -> None:
        self.retired = True
        for conn in list(self.connections):
            if not conn.streams:
                conn.close()
