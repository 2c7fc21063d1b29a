"""HTTP/2 server connection (h2) for the HTTP connection manager.

h2 drives the frames, with three exceptions (docs/architecture.md#known-traps):
- h2 moves to CLOSED on any GOAWAY it sends, after which in-flight streams can no longer be
  answered. Both drain GOAWAY frames (docs/draining.md) are therefore written by us
  as raw frames, and streams above the final GOAWAY's `last_stream_id` are refused by us
  with RST_STREAM(REFUSED_STREAM). h2's GOAWAY is only used when the connection ends at once
  (protocol errors, floods).
- It also moves to CLOSED on a GOAWAY it receives: the client's GOAWAY frames are cut out of
  the byte stream (h2_frames.GoAwayCutter); the client's open streams still get answers.
- h2 enforces its own MAX_CONCURRENT_STREAMS as a connection error; we advertise the HCM's
  `max_concurrent_streams` but refuse the streams above it ourselves (a stream error, as RFC
  9113 section 5.1.2 asks), so one eager client does not lose its other streams.

Local replies (direct_response, redirects, 404) are sent when the request ends (END_STREAM,
after its body and trailers), so a stream with an open request body is in flight; their
request bodies are discarded with their flow-control credit returned at once. Routes to
clusters start an `Exchange` at the request headers (`_ForwardSink` below writes its
response); the request body streams upstream, and the credit is held back while the
upstream asks for a pause. Response bodies follow the peer's flow-control windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from xds_proxy.access_log.record import LogRecord
from xds_proxy.codec.h2_connection import BoundedH2Connection
from xds_proxy.codec.responses import HTTP_DATE
from xds_proxy.http import http2_log
from xds_proxy.http.conn_manager import (
    DrainState,
    HcmConfig,
    close_after_delayed_close_timeout,
)
from xds_proxy.http.h2_frames import GoAwayCutter
from xds_proxy.http.router import (
    DirectResponseAction,
    RedirectAction,
    RequestView,
    RouteTable,
    joined_headers,
)
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.upstream.forward import DownstreamRequest, Exchange, ForwardAction

MAX_STREAM_ID = 2**31 - 1
# The protocol's initial windows, before SETTINGS and WINDOW_UPDATE change them.
DEFAULT_WINDOW = 65535
# Rapid reset (CVE-2023-44487): once this many streams have closed on a connection, a
# connection where at least half of them were reset by the client before their response
# completed is closed (Envoy's premature-reset rule, same ratio).
PREMATURE_RESET_MIN_STREAMS = 200
# SETTINGS / PING floods: control frames we must acknowledge, per connection.
CONTROL_FRAMES_PER_SECOND = 2000  # a reading client that pings without end
CONTROL_FRAMES_UNREAD = 1000  # acknowledgements piling up unread in our write buffer

_OPEN = int(DrainState.NOT_DRAINING)
_DRAINING = int(DrainState.DRAINING)  # first GOAWAY sent, new streams still served
_CLOSING = int(DrainState.CLOSING)  # final GOAWAY sent, close once no stream is active

_NO_BODY_STATUSES = frozenset({204, 304})
# Inbound headers are validated by h2; outbound ones are ours (built from validated input),
# and skipping their validation saves about a tenth of the per-request cost.
_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


_NOT_ROUTED = object()
# A forwarded response body buffered beyond this (the client's windows are closed) pauses
# the upstream until it drains.
RESPONSE_BUFFER_LIMIT = 1 << 20
# One read can hold thousands of HEADERS frames: the connection is fed this much at a time,
# and no more while the client's socket is full (the rest waits, unparsed, as in http1.py).
PARSE_SLICE = 4 * 1024
# What a stream whose response waits for the client's flow-control windows is charged against
# the connection's buffer limit: its state here and in h2 (a local reply's body is shared by
# all its streams; a forwarded one pauses its upstream at RESPONSE_BUFFER_LIMIT).
BLOCKED_STREAM_COST = 4 * 1024

_LocalReply = tuple[int, bytes, tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...]]


def goaway_frame(last_stream_id: int, error_code: int = 0) -> bytes:
    """A GOAWAY frame written around h2 (which would end in-flight streams)."""
    return GoAwayFrame(
        stream_id=0, last_stream_id=last_stream_id, error_code=error_code
    ).serialize()


class _Stream:
    """What we keep of a request until its response is complete."""

    __slots__ = (
        "action",
        "authority",
        "body_complete",
        "exchange",
        "headers",
        "last_rx",
        "method",
        "path",
        "paused",
        "pending",
        "record",
        "responded",
        "response_paused",
        "routes",
        "started",
        "trailers",
        "withheld",
    )

    def __init__(
        self, method: bytes, authority: bytes, path: bytes, headers: list, routes: RouteTable
    ) -> None:
        self.method = method
        self.authority = authority
        self.path = path
        self.headers = headers
        self.action: object = _NOT_ROUTED
        self.pending = b""  # response body not yet allowed by flow control
        self.body_complete = True  # the response body ends with `pending` (local replies)
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after `pending`
        self.responded = False  # response headers sent
        self.exchange: Exchange | None = None  # set when the request is forwarded upstream
        self.paused = False  # the upstream does not take the request body fast enough
        self.withheld = 0  # flow-control credit held back from the client while paused
        self.response_paused = False  # the upstream was asked to pause the response
        self.started = 0.0  # loop time of the request headers (request_timeout)
        self.last_rx = 0.0  # loop time of the latest request frame (stream_idle_timeout)
        self.routes = routes  # the table this request is routed with (read once)
        self.record: LogRecord | None = None  # the access-log record (http2_log.py)


class Http2Connection(asyncio.Protocol):
    """One downstream HTTP/2 connection (prior knowledge, or handed over by codec AUTO)."""

    ACCESS_LOG_PROTOCOL = "HTTP/2"  # PROTOCOL in a listener's connection-level access log

    def __init__(self, config: HcmConfig, ctx: FilterChainContext) -> None:
        self._config = config
        self._ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._h2 = BoundedH2Connection(_H2_CONFIG)
        self._streams: dict[int, _Stream] = {}
        self._replies: dict[object, _LocalReply] = {}
        self._state = _OPEN
        self._last_stream_id = MAX_STREAM_ID  # what the latest GOAWAY promised to process
        self._drain_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._stream_timer: asyncio.TimerHandle | None = None
        self._closed_streams = 0
        self._premature_resets = 0
        self._control_window_start = 0.0
        self._control_frames = 0
        self._control_unread = 0
        self._goaway_cutter = GoAwayCutter()
        self._client_gone = False  # the client sent GOAWAY: close once its streams are done
        self._max_concurrent = config.http2_max_concurrent_streams
        self._max_header_bytes = config.max_request_headers_bytes
        self._max_header_count = config.max_headers_count
        # Streams whose responses wait for flow-control credit: a client that opens streams
        # and never grants credit gets REFUSED_STREAM once they cost more than the
        # connection's buffer limit, instead of an ever larger pile of pending responses.
        self._blocked: set[int] = set()
        self._buffer_limit = 1 << 20  # the transport's high watermark, read at connection_made
        self._held: list[bytes] | None = None  # input read while the client's socket is full
        self._write_paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._buffer_limit = transport.get_write_buffer_limits()[1]  # type: ignore[attr-defined]
        stats = self._config.stats
        stats.cx_total.value += 1
        stats.cx_active.value += 1
        stats.cx_http2_total.value += 1
        stats.cx_http2_active.value += 1
        self._ctx.register(self)
        conn = self._h2
        settings = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._max_concurrent,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._config.http2_initial_stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self._max_header_bytes,
        }
        conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        conn.initiate_connection()
        # h2 would refuse streams above the limit with a connection error: we refuse them
        # ourselves, per stream. The advertised value was sent above.
        settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
        conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        # hpack's own bound (name + value + 32 per header) only stops absurd blocks; the
        # HCM limit is checked per stream, as a stream error.
        conn.decoder.max_header_list_size = (
            self._max_header_bytes + 32 * self._max_header_count + 4096
        )
        connection_window = self._config.http2_initial_connection_window
        if connection_window > DEFAULT_WINDOW:
            conn.increment_flow_control_window(connection_window - DEFAULT_WINDOW)
        self._flush()
        self._start_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._held is not None or self._write_paused:
            self._held = [*(self._held or ()), data]
            return
        if len(data) <= PARSE_SLICE:
            self._receive(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), PARSE_SLICE):
            if self.transport is None or self.transport.is_closing():
                return
            if self._write_paused:
                self._held = [data[start:]]  # parsed once the client reads again
                return
            self._receive(bytes(view[start : start + PARSE_SLICE]))

    def _receive(self, data: bytes) -> None:
        cutter = self._goaway_cutter
        data, goaways = cutter.feed(data)
        if cutter.control_frames:
            count, cutter.control_frames = cutter.control_frames, 0
            if self._control_frame_flood(count):
                return
        try:
            events = self._h2.receive_data(data) if data else []
        except h2.exceptions.ProtocolError as error:
            self._protocol_error(error)
            return
        try:
            for event in events:
                kind = type(event)
                if kind is h2.events.RequestReceived:
                    self._on_request(event)  # type: ignore[arg-type]
                elif kind is h2.events.StreamEnded:
                    self._on_request_end(event.stream_id)  # type: ignore[attr-defined]
                elif kind is h2.events.DataReceived:
                    self._on_data(event)  # type: ignore[arg-type]
                elif kind is h2.events.WindowUpdated:
                    self._on_window_update(event.stream_id)  # type: ignore[attr-defined]
                elif kind is h2.events.TrailersReceived:
                    self._on_trailers(event)  # type: ignore[arg-type]
                elif kind is h2.events.StreamReset:
                    self._on_reset(event.stream_id)  # type: ignore[attr-defined]
                elif kind is h2.events.ConnectionTerminated:
                    # The client leaves: what it still expects cannot be sent through h2.
                    self._flush()
                    self._close_now()
                    return
                if self.transport is None or self.transport.is_closing():
                    return
        except h2.exceptions.ProtocolError as error:
            self._protocol_error(error)
            return
        if goaways:  # after the streams that came with it are registered
            self._on_client_goaway(goaways[-1][1])
        self._flush()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        """The client does not read: stop reading it, and stop the upstreams' responses."""
        self._write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()
        for stream in self._streams.values():
            if stream.exchange is not None and not stream.response_paused:
                stream.exchange.pause_response()

    def resume_writing(self) -> None:
        self._write_paused = False
        held = self._held
        if held is not None:
            self._held = None
            self.data_received(b"".join(held))  # may fill the client's socket again
            if self._write_paused:
                return
        if self.transport is not None:
            self.transport.resume_reading()
        for stream in list(self._streams.values()):
            if stream.exchange is not None and not stream.response_paused:
                stream.exchange.resume_response()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._drain_timer, self._close_timer, self._idle_timer, self._stream_timer):
            if timer is not None:
                timer.cancel()
        self._drain_timer = self._close_timer = self._idle_timer = self._stream_timer = None
        stats = self._config.stats
        stats.cx_active.value -= 1
        stats.cx_destroy.value += 1
        stats.cx_http2_active.value -= 1
        if self._streams:
            stats.rq_active.value -= len(self._streams)
            streams = list(self._streams.values())
            self._streams.clear()
            for stream in streams:
                if stream.exchange is not None:
                    stream.exchange.downstream_reset()
                elif stream.record is not None:
                    http2_log.gone(self._config, stream.record)
        self._ctx.unregister(self)
        self.transport = None

    # -- streams ---------------------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        conn = self._h2
        if stream_id > self._last_stream_id or len(self._streams) >= self._max_concurrent:
            # Above the final GOAWAY's last_stream_id, or above max_concurrent_streams.
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self._blocked) * BLOCKED_STREAM_COST >= self._buffer_limit:
            # The client grants no credit for what it already asked: refuse more (it may
            # retry: REFUSED_STREAM means nothing was processed).
            self._count("downstream_rq_refused_flow_control")
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        method = authority = path = b""
        size = 0
        for name, value in event.headers:  # type: ignore[union-attr]
            size += len(name) + len(value)
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            elif name == b"host" and not authority:
                authority = value
        stats = self._config.stats
        stats.rq_total.value += 1
        stats.rq_http2_total.value += 1
        if size > self._max_header_bytes or len(event.headers) > self._max_header_count:  # type: ignore[arg-type]
            # Envoy resets such a stream (the headers never reach a filter).
            self._count("http2.header_overflow")
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        stats.rq_active.value += 1
        if not self._streams and self._idle_timer is not None:
            self._idle_since = 0.0
        routes = self._config.routes.current  # this request's table, read once
        stream = _Stream(method, authority, path, event.headers, routes)  # type: ignore[arg-type]
        self._streams[stream_id] = stream
        if self._config.access_log is not None:
            ended = event.stream_ended is not None
            stream.record = http2_log.begin(self._config, self.transport, event.headers, ended)  # type: ignore[arg-type]
        if self._stream_timer is None and event.stream_ended is None:
            self._arm_stream_timer()  # a request body follows: bound how long it may take
        stream.started = stream.last_rx = self._loop.time()  # type: ignore[union-attr]
        if routes.forwards:
            # Forwarded requests start at their headers, so their bodies stream upstream.
            stream.action = action = self._route(stream)
            if type(action) is ForwardAction:
                self._start_forward(stream_id, stream, action, event.stream_ended is not None)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        length = event.flow_controlled_length
        stream = self._streams.get(event.stream_id)  # type: ignore[arg-type]
        if stream is not None:
            stream.last_rx = self._loop.time()  # type: ignore[union-attr]
            if stream.record is not None:
                http2_log.received(stream.record, len(event.data), event.stream_ended is not None)  # type: ignore[arg-type]
        exchange = stream.exchange if stream is not None else None
        if exchange is not None and stream.paused:  # type: ignore[union-attr]
            stream.withheld += length  # type: ignore[union-attr]
        elif length:
            # Credit goes back at once: local replies discard the body, and an upstream that
            # falls behind pauses us (pause_request_body) before its buffers grow.
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._h2.acknowledge_received_data(length, event.stream_id)  # type: ignore[arg-type]
        if exchange is not None:
            exchange.request_data(event.data, event.stream_ended is not None)  # type: ignore[arg-type]

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)  # type: ignore[arg-type]
        if stream is not None and stream.exchange is not None:
            stream.exchange.request_trailers(list(event.headers))  # type: ignore[arg-type]

    def _on_request_end(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.responded or stream.exchange is not None:
            return
        self._respond(stream_id, stream)

    def _route(self, stream: _Stream) -> object:
        routes = stream.routes
        if not routes.needs_headers:
            return routes.route_raw(stream.authority, stream.path)
        headers = joined_headers(
            [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in stream.headers]
        )
        if ":authority" in headers:
            headers["host"] = headers[":authority"]
        return routes.route(
            stream.authority.decode("latin-1"), stream.path.decode("latin-1"), headers
        )

    def _start_forward(
        self, stream_id: int, stream: _Stream, action: ForwardAction, end_stream: bool
    ) -> None:
        sink = _ForwardSink(self, stream_id, stream)
        exchange = stream.exchange = Exchange(action, sink)
        if stream.record is not None:
            exchange.log_to(stream.record, self._config.access_log)  # type: ignore[arg-type]
        headers = [
            (name, value) for name, value in stream.headers if name[:1] != b":" and name != b"host"
        ]
        peer = self.transport.get_extra_info("peername") if self.transport else None
        request = DownstreamRequest(
            stream.method,
            stream.path,
            stream.authority,
            headers,
            peer[0] if peer else "",
            http2=True,
        )
        config = self._config
        exchange.start(
            request, end_stream, self._ctx.clusters, config.proxy_policy, action.mutations
        )

    def _respond(self, stream_id: int, stream: _Stream) -> None:
        config = self._config
        if self._state == _OPEN and self._ctx.drain_decision.drain_close():
            self._start_drain()
        action = stream.action
        if action is _NOT_ROUTED:
            action = self._route(stream)
        stats = config.stats
        head_only = stream.method == b"HEAD"
        if type(action) is RedirectAction:
            request = RequestView(
                stream.method.decode("latin-1"),
                stream.authority.decode("latin-1"),
                stream.path.decode("latin-1"),
                head_only,
            )
            status = action.status
            stats.rq_redirect.value += 1
            body = b""
            headers_out = [
                (b":status", str(status).encode()),
                (b"location", action.location(request).encode("latin-1")),
                (b"date", HTTP_DATE.now()),
                (b"server", config.server_name.encode("latin-1")),
                (b"content-length", b"0"),
            ]
        else:
            reply = self._replies.get(action)
            if reply is None:
                reply = self._local_reply(action)
            status, body, before_date, after_date = reply
            if action is None:
                stats.no_route.value += 1
            elif type(action) is DirectResponseAction:
                stats.rq_direct_response.value += 1
            headers_out = [*before_date, (b"date", HTTP_DATE.now()), *after_date]
        stats.rq_by_class[status // 100].value += 1
        stream.responded = True
        if head_only or not body:
            self._h2.send_headers(stream_id, headers_out, end_stream=True)
            self._stream_done(stream_id)
            return
        self._h2.send_headers(stream_id, headers_out)
        stream.pending = body
        self._send_pending(stream_id, stream)

    def _local_reply(self, action: object) -> _LocalReply:
        """A local reply's status, body and header blocks around `date`, built once per
        action and connection (Envoy's order: content-length, content-type, date, server)."""
        if action is None:
            not_found = self._config.routes.current.not_found  # the HCM's, the same in any table
            status, body = not_found.status, not_found.body
        elif type(action) is DirectResponseAction:
            status, body = action.response.status, action.response.body
        else:  # never: forwarded streams are answered by their exchange
            status, body = 500, b""
        status_header = (b":status", str(status).encode())
        server = (b"server", self._config.server_name.encode("latin-1"))
        if body:
            before = (
                status_header,
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"text/plain"),
            )
            after: tuple[tuple[bytes, bytes], ...] = (server,)
        else:
            before = (status_header,)
            has_length = status not in _NO_BODY_STATUSES and status >= 200
            after = (server, (b"content-length", b"0")) if has_length else (server,)
        reply = (status, body, before, after)
        if len(self._replies) < 64:
            self._replies[action] = reply
        return reply

    def _send_pending(self, stream_id: int, stream: _Stream) -> None:
        """Send as much of the response body as the flow-control windows allow; end the
        stream (with trailers, if any) once the body is complete and sent."""
        conn = self._h2
        pending = stream.pending
        complete = stream.body_complete and stream.trailers is None
        if complete and len(pending) <= 16384 and len(pending) <= conn.outbound_flow_control_window:
            # The common case: a small body, a connection window with room; only the
            # stream window is left to check (cheaper than local_flow_control_window).
            h2_stream = conn.streams.get(stream_id)
            if h2_stream is not None and len(pending) <= h2_stream.outbound_flow_control_window:
                stream.pending = b""
                conn.send_data(stream_id, pending, end_stream=True)
                self._stream_done(stream_id)
                return
        ended = False
        while pending:
            window = conn.local_flow_control_window(stream_id)
            if window <= 0:
                break
            size = min(window, conn.max_outbound_frame_size, len(pending))
            chunk, pending = pending[:size], pending[size:]
            ended = complete and not pending
            conn.send_data(stream_id, chunk, end_stream=ended)
        stream.pending = pending
        if pending:
            self._blocked.add(stream_id)
        else:
            self._blocked.discard(stream_id)
        exchange = stream.exchange
        if pending:
            if (
                exchange is not None
                and not stream.response_paused
                and len(pending) > RESPONSE_BUFFER_LIMIT
            ):
                stream.response_paused = True
                exchange.pause_response()
            return
        if stream.response_paused and exchange is not None:
            stream.response_paused = False
            exchange.resume_response()
        if not stream.body_complete:
            return
        if stream.trailers is not None:
            conn.send_headers(stream_id, stream.trailers, end_stream=True)
        elif not ended:
            conn.send_data(stream_id, b"", end_stream=True)
        self._stream_done(stream_id)

    def _on_window_update(self, stream_id: int) -> None:
        if stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None and stream.pending:
                self._send_pending(stream_id, stream)
            return
        for waiting_id, stream in list(self._streams.items()):
            if stream.pending and stream.responded:
                self._send_pending(waiting_id, stream)

    def _on_reset(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.record is not None and stream.exchange is None:
            http2_log.reset(self._config, stream.record)
        self._blocked.discard(stream_id)
        if stream.exchange is not None:
            stream.exchange.downstream_reset(disconnected=False)
        self._config.stats.rq_active.value -= 1
        self._closed_streams += 1
        self._premature_resets += 1
        if (
            self._closed_streams >= PREMATURE_RESET_MIN_STREAMS
            and self._premature_resets * 2 >= self._closed_streams
        ):
            self._count("downstream_rq_too_many_premature_resets")
            self._abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        self._after_stream()

    def _stream_done(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.record is not None and stream.exchange is None:
            action = self._route(stream) if stream.action is _NOT_ROUTED else stream.action
            http2_log.local_done(self._config, stream.record, action, stream.method == b"HEAD")
        self._blocked.discard(stream_id)
        self._config.stats.rq_active.value -= 1
        self._closed_streams += 1
        self._after_stream()

    def _after_stream(self) -> None:
        if self._streams:
            return
        if self._client_gone:
            self._flush()
            self._close_now()
        elif self._state == _CLOSING:
            self._schedule_close()
        elif self._idle_timer is not None:
            self._idle_since = self._loop.time()  # type: ignore[union-attr]

    # -- drain (DrainableConnection) -------------------------------------------------------

    def on_drain(self) -> None:
        """Told on the idle schedule: active or idle, the client gets the first GOAWAY now."""
        if self._state == _OPEN and self.transport is not None:
            self._start_drain()
            self._flush()

    def close_at_deadline(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._state != _CLOSING:
            self._final_goaway()
        self._flush()
        transport.close()

    def _start_drain(self) -> None:
        """GOAWAY(2^31-1, NO_ERROR) now; the final GOAWAY exactly `drain_timeout` later."""
        self._state = _DRAINING
        self._config.stats.cx_drain_close.value += 1
        self._write_raw(goaway_frame(MAX_STREAM_ID))
        self._drain_timer = self._loop.call_later(  # type: ignore[union-attr]
            self._config.drain_timeout_s, self._on_drain_timeout
        )

    def _on_drain_timeout(self) -> None:
        self._drain_timer = None
        if self.transport is None or self._state == _CLOSING:
            return
        self._final_goaway()
        if not self._streams:
            self._schedule_close()

    def _final_goaway(self) -> None:
        self._state = _CLOSING
        self._last_stream_id = self._h2.highest_inbound_stream_id
        self._write_raw(goaway_frame(self._last_stream_id))
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _schedule_close(self) -> None:
        """No stream is active after the final GOAWAY: close after `delayed_close_timeout`
        unless the client closes first (Envoy's FlushWriteAndDelay)."""
        if self._close_timer is not None or self.transport is None:
            return
        delay = self._config.delayed_close_timeout_s
        if delay <= 0:
            self._flush()
            self.transport.close()
            return
        self._close_timer = self._loop.call_later(delay, self._on_delayed_close)  # type: ignore[union-attr]

    def _on_delayed_close(self) -> None:
        self._close_timer = None
        close_after_delayed_close_timeout(self.transport, self._config.stats)

    # -- stream timeouts -------------------------------------------------------------------

    def _stream_deadline(self, stream: _Stream) -> float | None:
        config = self._config
        deadlines = []
        if config.stream_idle_timeout_s:
            deadlines.append(stream.last_rx + config.stream_idle_timeout_s)
        if config.request_timeout_s:
            deadlines.append(stream.started + config.request_timeout_s)
        return min(deadlines) if deadlines else None

    def _arm_stream_timer(self) -> None:
        """One timer per connection for `stream_idle_timeout` and `request_timeout` of
        requests still being received (answered ones and forwarded ones are not timed here;
        an exchange has its route timeout)."""
        config = self._config
        timeouts = [t for t in (config.stream_idle_timeout_s, config.request_timeout_s) if t]
        if not timeouts:
            return
        first = min(timeouts)
        self._stream_timer = self._loop.call_later(first, self._on_stream_timer)  # type: ignore[union-attr]

    def _on_stream_timer(self) -> None:
        self._stream_timer = None
        if self.transport is None:
            return
        now = self._loop.time()  # type: ignore[union-attr]
        config = self._config
        earliest: float | None = None
        for stream_id, stream in list(self._streams.items()):
            if stream.responded or stream.exchange is not None:
                continue
            deadline = self._stream_deadline(stream)
            if deadline is None:
                continue
            if deadline > now:
                earliest = deadline if earliest is None else min(earliest, deadline)
                continue
            idle = config.stream_idle_timeout_s
            if idle and now >= stream.last_rx + idle:
                config.stats.rq_idle_timeout.value += 1
                reply = config.stream_timeout_reply
            else:
                config.stats.rq_timeout.value += 1
                reply = config.request_timeout_reply
            self._timeout_reply(stream_id, stream, reply.status, reply.body)
        if earliest is not None:
            self._stream_timer = self._loop.call_at(earliest, self._on_stream_timer)  # type: ignore[union-attr]
        self._flush()

    def _timeout_reply(self, stream_id: int, stream: _Stream, status: int, body: bytes) -> None:
        """408 before the request ended, then RST_STREAM(NO_ERROR): the rest of the request
        is not wanted (what Envoy does after an early response on HTTP/2)."""
        server = self._config.server_name.encode("latin-1")
        headers = [
            (b":status", str(status).encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"text/plain"),
            (b"date", HTTP_DATE.now()),
            (b"server", server),
        ]
        self._config.stats.rq_by_class[status // 100].value += 1
        stream.responded = True
        if stream.record is not None:
            idle = body == self._config.stream_timeout_reply.body
            http2_log.timed_out(stream.record, status, body, server, idle)
        conn = self._h2
        conn.send_headers(stream_id, headers)
        conn.send_data(stream_id, body, end_stream=True)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        self._stream_done(stream_id)

    # -- idle timeout ----------------------------------------------------------------------

    def _start_idle_timer(self) -> None:
        idle = self._config.idle_timeout_s
        if idle:
            self._idle_since = self._loop.time()  # type: ignore[union-attr]
            self._idle_timer = self._loop.call_later(idle, self._on_idle_timer)  # type: ignore[union-attr]

    def _on_idle_timer(self) -> None:
        """Envoy's idle_timeout on a codec connection runs the drain sequence."""
        self._idle_timer = None
        idle = self._config.idle_timeout_s
        if self.transport is None or not idle or self._state == _CLOSING:
            return
        now = self._loop.time()  # type: ignore[union-attr]
        if self._streams or not self._idle_since or now < self._idle_since + idle:
            since = self._idle_since if self._idle_since and not self._streams else now
            self._idle_timer = self._loop.call_at(since + idle, self._on_idle_timer)  # type: ignore[union-attr]
            return
        self._config.stats.cx_idle_timeout.value += 1
        if self._state == _OPEN:
            self._start_drain()
        self._final_goaway()
        self._flush()
        self._schedule_close()

    def _on_client_goaway(self, error_code: int) -> None:
        """The client opens no more streams: those it has still get their responses (with
        NO_ERROR), then the connection closes; an error GOAWAY ends it at once."""
        if error_code or not self._streams:
            self._flush()
            self._close_now()
        else:
            self._client_gone = True

    # -- errors and floods -----------------------------------------------------------------

    def _protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        self._config.stats.cx_protocol_error.value += 1
        if self._h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
            # h2 queued its own GOAWAY for this one (frame size, padding errors).
            self._flush()
            self._close_now()
            return
        code = getattr(error, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._abort(code)

    def _control_frame_flood(self, count: int) -> bool:
        """Count PING / SETTINGS frames (each needs an ACK from us) before h2 answers them;
        True if this is a flood and the connection is being closed."""
        transport = self.transport
        if transport is None:
            return True
        now = time.monotonic()
        if now - self._control_window_start >= 1.0:
            self._control_window_start = now
            self._control_frames = 0
        self._control_frames += count
        if transport.get_write_buffer_size():
            self._control_unread += count  # our earlier ACKs are not read yet
        else:
            self._control_unread = 0
        if (
            self._control_frames > CONTROL_FRAMES_PER_SECOND
            or self._control_unread > CONTROL_FRAMES_UNREAD
        ):
            self._count("http2.inbound_control_flood")
            self._abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        return False

    def _abort(self, error_code: int) -> None:
        """End the connection now with GOAWAY(error_code); only this connection suffers."""
        transport = self.transport
        if transport is None:
            return
        self._flush()
        transport.write(goaway_frame(self._h2.highest_inbound_stream_id, int(error_code)))
        self._close_now()

    def _close_now(self) -> None:
        transport = self.transport
        if transport is not None:
            self._state = _CLOSING
            transport.close()

    def _count(self, name: str) -> None:
        """A rare-path counter `http.<stat_prefix>.<name>`."""
        self._ctx.stats.counter(f"http.{self._config.stat_prefix}.{name}").value += 1

    # -- output ----------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _write_raw(self, frame: bytes) -> None:
        """A frame of ours, after everything h2 has queued so far."""
        if self.transport is None:
            return
        data = self._h2.data_to_send()
        self.transport.write(data + frame if data else frame)


class _ForwardSink:
    """The `DownstreamSink` of one forwarded stream: the upstream's response, written as
    HTTP/2 frames on the stream (Envoy's order: the upstream's headers, date unless the
    upstream sent one, server)."""

    __slots__ = ("_conn", "_head_only", "_stream", "_stream_id")

    def __init__(self, conn: Http2Connection, stream_id: int, stream: _Stream) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._stream = stream
        self._head_only = stream.method == b"HEAD"

    def _alive(self) -> bool:
        conn = self._conn
        return conn.transport is not None and conn._streams.get(self._stream_id) is self._stream

    def send_response_headers(
        self, status: int, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        if not self._alive():
            return
        conn = self._conn
        config = conn._config
        out = [(b":status", str(status).encode())]
        has_date = False
        for name, value in headers:
            name = name.lower()
            if name == b"date":
                has_date = True
            elif name == b"content-length" and status == 204:
                continue
            out.append((name, value))
        if not has_date:
            out.append((b"date", HTTP_DATE.now()))
        out.append((b"server", config.server_name.encode("latin-1")))
        self._send_headers(status, out, end_stream)

    def _send_headers(self, status: int, out: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        conn = self._conn
        config = conn._config
        if conn._state == _OPEN and conn._ctx.drain_decision.drain_close():
            conn._start_drain()
        config.stats.rq_by_class[status // 100].value += 1
        stream = self._stream
        stream.responded = True
        stream.body_complete = False
        conn._h2.send_headers(self._stream_id, out, end_stream=end_stream)
        if end_stream:
            conn._stream_done(self._stream_id)
        conn._flush()

    def send_response_data(self, data: bytes, end_stream: bool) -> None:
        if not self._alive():
            return
        stream = self._stream
        if data and not self._head_only:
            stream.pending += data
        if end_stream:
            stream.body_complete = True
        self._conn._send_pending(self._stream_id, stream)
        self._conn._flush()

    def send_response_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if not self._alive():
            return
        stream = self._stream
        stream.trailers = [(name.lower(), value) for name, value in trailers]
        stream.body_complete = True
        self._conn._send_pending(self._stream_id, stream)
        self._conn._flush()

    def send_local_reply(
        self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if not self._alive():
            return
        server = self._conn._config.server_name.encode("latin-1")
        out = [(b":status", str(status).encode()), *headers]
        if body:
            out += [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain")]
        out += [(b"date", HTTP_DATE.now()), (b"server", server)]
        if not body:
            out.append((b"content-length", b"0"))
        end = self._head_only or not body
        self._send_headers(status, out, end)
        if not end:
            self.send_response_data(body, True)

    def reset_downstream(self) -> None:
        if not self._alive():
            return
        conn = self._conn
        conn._h2.reset_stream(self._stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        conn._stream_done(self._stream_id)
        conn._flush()

    def pause_request_body(self) -> None:
        self._stream.paused = True

    def resume_request_body(self) -> None:
        stream = self._stream
        stream.paused = False
        withheld, stream.withheld = stream.withheld, 0
        if withheld and self._alive():
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self._conn._h2.acknowledge_received_data(withheld, self._stream_id)
            self._conn._flush()
