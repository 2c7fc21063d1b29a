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
clusters start an `Exchange` at the request headers (`Http2ForwardSink` writes its
response); the request body streams upstream, and the credit is held back while the
upstream asks for a pause. Response bodies follow the peer's flow-control windows.

The common request, a HEADERS frame with END_STREAM whose header block h2 has already decoded
on this connection, answered by a local reply, skips h2 (`Http2Replies._answer_directly`);
h2's state is moved as h2 would move it. The parts: this class (input, streams, output), its
base `Http2Replies` (http2_replies.py: local and direct replies, on the same object), the
`Http2Lifecycle` it holds (http2_lifecycle.py: drain, timers, client GOAWAY, errors, floods;
it sees the connection through `LifecycleHost`), `Http2ForwardSink` (http2_forward.py,
through `ForwardHost`), `Http2Stream` (http2_stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from xds_proxy.access_log.record import Downstream
from xds_proxy.codec.h2_connection import BoundedH2Connection
from xds_proxy.codec.h2_fast import ResponseFrames
from xds_proxy.http import http2_log
from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.http.h2_frames import GoAwayCutter
from xds_proxy.http.http2_checks import checked_request
from xds_proxy.http.http2_direct import KnownRequest, KnownRequests
from xds_proxy.http.http2_forward import Http2ForwardSink
from xds_proxy.http.http2_lifecycle import Http2Lifecycle, goaway_frame
from xds_proxy.http.http2_replies import Http2Replies
from xds_proxy.http.http2_stream import (
    ANSWERED,
    BLOCKED_STREAM_COST,
    CLOSING,
    DEFAULT_WINDOW,
    H2_CONFIG,
    LEARN,
    MAX_STREAM_ID,
    NOT_ROUTED,
    PARSE_SLICE,
    PREMATURE_RESET_MIN_STREAMS,
    Http2Stream,
    LocalReply,
)
from xds_proxy.http.path_normalization import FRAGMENT_MARK
from xds_proxy.http.router import joined_headers
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.upstream.forward import DownstreamRequest, Exchange, ForwardAction

__all__ = ["BLOCKED_STREAM_COST", "MAX_STREAM_ID", "Http2Connection", "goaway_frame"]


class Http2Connection(Http2Replies, asyncio.Protocol):
    """One downstream HTTP/2 connection (prior knowledge, or handed over by codec AUTO)."""

    # False: h2 answers every request, from the same reads (the reference of the differential
    # tests in tests/unit/test_h2_fast_differential.py).
    DIRECT_ANSWERS = True
    ACCESS_LOG_PROTOCOL = "HTTP/2"  # PROTOCOL in a listener's connection-level access log

    def __init__(self, config: HcmConfig, ctx: FilterChainContext) -> None:
        self._config = config
        self._ctx = ctx
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._h2 = BoundedH2Connection(H2_CONFIG)
        self._streams: dict[int, Http2Stream] = {}
        self._replies: dict[object, LocalReply] = {}
        self._closed_streams = 0
        self._premature_resets = 0
        self._goaway_cutter = GoAwayCutter()
        self._life = Http2Lifecycle(self, config, ctx)  # drain, timers, errors, floods
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
        # Whole requests answered without h2: their header blocks, their replies as frames.
        self._known_requests = KnownRequests(self._max_header_bytes, self._max_header_count)
        self._reply_frames: dict[object, ResponseFrames] = {}
        self._learning = 0  # the stream whose request headers are being learned
        self._learned: list[tuple[bytes, bytes]] | None = None
        self._downstream: Downstream | None = None  # for access-log records, made once

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
        self._life.start(self._loop)
        # Last: registering can start a drain at once (one already under way), which needs
        # the lifecycle's loop and must follow our SETTINGS.
        self._ctx.register(self)

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
        pieces, goaways = cutter.split(data)
        if cutter.control_frames:
            count, cutter.control_frames = cutter.control_frames, 0
            if self._life.control_frame_flood(count):
                return
        for_h2: list[bytes] = []
        for piece in pieces:
            if type(piece) is bytes:
                if piece:
                    for_h2.append(piece)
                continue
            # A HEADERS frame carrying a whole request: h2 first catches up on what came
            # before it, then the request is answered here if it can be, else by h2.
            if for_h2:
                data, for_h2 = b"".join(for_h2), []
                if not self._receive_h2(data):
                    return
            stream_id, frame = piece  # type: ignore[misc]
            direct = self.DIRECT_ANSWERS and self._config.plain_requests
            answered = self._answer_directly(stream_id, frame) if direct else None
            if answered is LEARN:
                if not self._learn_request(stream_id, frame):
                    return
            elif answered is not ANSWERED and not self._receive_h2(frame):
                return
            transport = self.transport
            if transport is None or transport.is_closing():
                return
        if for_h2 and not self._receive_h2(b"".join(for_h2)):
            return
        if goaways:  # after the streams that came with it are registered
            self._life.on_client_goaway(goaways[-1][1])
        self._flush()

    def _receive_h2(self, data: bytes) -> bool:
        """h2 takes `data`; False if the connection is ending."""
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self._life.protocol_error(error)
            return False
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
                    self._life.close_now()
                    return False
                if self.transport is None or self.transport.is_closing():
                    return False
        except h2.exceptions.ProtocolError as error:
            self._life.protocol_error(error)
            return False
        return True

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
        self._life.stop()
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
        if stream_id == self._learning and event.stream_ended is not None:
            self._learned = event.headers  # type: ignore[assignment]
        if stream_id > self._life.last_stream_id or len(self._streams) >= self._max_concurrent:
            # Above the final GOAWAY's last_stream_id, or above max_concurrent_streams.
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self._blocked) * BLOCKED_STREAM_COST >= self._buffer_limit:
            # The client grants no credit for what it already asked: refuse more (it may
            # retry: REFUSED_STREAM means nothing was processed).
            self._life.count("downstream_rq_refused_flow_control")
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        request = KnownRequest(event.headers, self._max_header_bytes, self._max_header_count)  # type: ignore[arg-type]
        method, authority, path = request.method, request.authority, request.path
        stats = self._config.stats
        stats.rq_total.value += 1
        stats.rq_http2_total.value += 1
        if request.oversized:
            # Envoy resets such a stream (the headers never reach a filter).
            self._life.count("http2.header_overflow")
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        headers = event.headers
        config = self._config
        if FRAGMENT_MARK in path or (
            not config.plain_requests and (config.underscores or config.path_rules)
        ):
            ended = event.stream_ended is not None
            checked = checked_request(config, conn, self.transport, stream_id, headers, path, ended)  # type: ignore[arg-type]
            if checked is None:
                return
            headers, path = checked  # type: ignore[assignment]
        stats.rq_active.value += 1
        if not self._streams and self._life.idle_timer is not None:
            self._life.idle_since = 0.0
        routes = self._config.routes.current  # this request's table, read once
        stream = Http2Stream(method, authority, path, headers, routes)  # type: ignore[arg-type]
        self._streams[stream_id] = stream
        if self._config.access_log is not None:
            ended = event.stream_ended is not None
            stream.record = http2_log.begin(self._config, self._log_downstream(), headers, ended)
            stream.record.path = path  # after the path rules, if any
        if self._life.stream_timer is None and event.stream_ended is None:
            self._life.arm_stream_timer()  # a request body follows: bound how long it may take
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

    def _route(self, stream: Http2Stream) -> object:
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
        self, stream_id: int, stream: Http2Stream, action: ForwardAction, end_stream: bool
    ) -> None:
        sink = Http2ForwardSink(self, stream_id, stream)
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
            peer=peer,
            local=self.transport.get_extra_info("sockname") if self.transport else None,
        )
        config = self._config
        transport = self.transport
        if transport is not None and (tls := transport.get_extra_info("ssl_object")) is not None:
            request.ssl, request.scheme = tls, b"https"
        exchange.start(
            request, end_stream, self._ctx.clusters, config.proxy_policy, action.mutations
        )

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
            self._life.count("downstream_rq_too_many_premature_resets")
            self._life.abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return
        self._after_stream()

    def _stream_done(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.record is not None and stream.exchange is None:
            action = self._route(stream) if stream.action is NOT_ROUTED else stream.action
            http2_log.local_done(self._config, stream.record, action, stream.method == b"HEAD")
        self._blocked.discard(stream_id)
        self._config.stats.rq_active.value -= 1
        self._closed_streams += 1
        self._after_stream()

    def _after_stream(self) -> None:
        if self._streams:
            return
        if self._life.client_gone:
            self._flush()
            self._life.close_now()
        elif self._life.state == CLOSING:
            self._life.schedule_close()
        elif self._life.idle_timer is not None:
            self._life.idle_since = self._loop.time()  # type: ignore[union-attr]

    # -- drain (DrainableConnection) -------------------------------------------------------

    def on_drain(self) -> None:
        self._life.on_drain()

    def close_at_deadline(self) -> None:
        self._life.close_at_deadline()

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
