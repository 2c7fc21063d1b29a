"""Local replies of `Http2Connection` (direct_response, redirects, 404, timeouts): through
h2 (`_respond`, `_send_pending` under the peer's flow-control windows), or, for a whole
request (HEADERS with END_STREAM) whose header block h2 has already decoded on this
connection, without h2 (`_answer_directly`: the reply's frames are encoded once, h2's state is
moved as h2 would move it; fuzzed against h2 in tests/unit/test_h2_fast_differential.py).
A part of `Http2Connection` (http2.py), on the same object."""

from __future__ import annotations

import contextlib

import h2.errors
import h2.exceptions

from xds_proxy.access_log.record import Downstream
from xds_proxy.codec.h2_fast import FRAME_HEADER_SIZE, ResponseFrames
from xds_proxy.codec.responses import HTTP_DATE
from xds_proxy.http import http2_log
from xds_proxy.http.http2_stream import (
    ANSWERED,
    BLOCKED_STREAM_COST,
    LEARN,
    NOT_ROUTED,
    OPEN,
    RESPONSE_BUFFER_LIMIT,
    Http2Stream,
    LocalReply,
)
from xds_proxy.http.router import DirectResponseAction, RedirectAction, RequestView


class Http2Replies:
    """The replies of `Http2Connection` (a base class of it: the methods below run on the
    connection)."""

    # -- whole requests answered without h2 ------------------------------------------------

    def _learn_request(self, stream_id: int, frame: bytes) -> bool:
        """h2 takes a whole-request frame whose block is new; if decoding it left the
        decoder's table as it was, its headers (as h2 validated them) are remembered for the
        next frame with the same block. False if the connection is ending."""
        token = self._h2.decode_token()
        self._learning = stream_id
        self._learned = None
        alive = self._receive_h2(frame)
        headers, self._learned, self._learning = self._learned, None, 0
        if alive and headers is not None and self._h2.decode_token() == token:
            self._known_requests.remember(frame[FRAME_HEADER_SIZE:], headers)
        return alive

    def _answer_directly(self, stream_id: int, frame: bytes) -> object:
        """Answer a whole request (HEADERS with END_STREAM) with a local reply, as h2 and
        `_on_request` / `_respond` would, without them: ANSWERED if done, LEARN if its
        header block is not known yet, anything else if h2 must take it."""
        conn = self._h2
        known = self._known_requests.get(frame[FRAME_HEADER_SIZE:], conn.decode_token())
        if known is None:
            return LEARN
        if (
            known.oversized
            or known.fragment
            or stream_id > self._life.last_stream_id
            or len(self._streams) >= self._max_concurrent
            or len(self._blocked) * BLOCKED_STREAM_COST >= self._buffer_limit
            or not conn.may_open_directly(stream_id)
        ):
            return None  # refused or reset by the general path
        config = self._config
        routes = config.routes.current  # this request's table, read once
        if routes.needs_headers:
            return None
        action = routes.route_raw(known.authority, known.path)
        if action is not None and type(action) is not DirectResponseAction:
            return None  # forwarded or redirected: the general path
        frames = self._reply_frames.get(action)
        if frames is None:
            frames = self._direct_frames(action)
        head_only = known.method == b"HEAD"
        body_length = 0 if head_only else len(frames.body)
        if conn.encoder.header_table.resized or body_length > conn.direct_send_room():
            return None
        stats = config.stats
        stats.rq_total.value += 1
        stats.rq_http2_total.value += 1
        if self._life.state == OPEN and self._ctx.drain_decision.drain_close():
            self._life.start_drain()
        if action is None:
            stats.no_route.value += 1
        else:
            stats.rq_direct_response.value += 1
        stats.rq_by_class[frames.status // 100].value += 1
        conn.answered_directly(
            stream_id, frames.frames(stream_id, HTTP_DATE.now(), head_only), body_length
        )
        self._closed_streams += 1
        if config.access_log is not None:
            record = http2_log.begin(config, self._log_downstream(), known.headers, True)
            http2_log.local_done(config, record, action, head_only)
        if not self._streams:
            self._after_stream()
        return ANSWERED

    def _log_downstream(self) -> Downstream:
        """The connection's addresses for its access-log records."""
        if self._downstream is None:
            self._downstream = http2_log.downstream(self.transport)
        return self._downstream

    def _direct_frames(self, action: object) -> ResponseFrames:
        status, body, before, after = self._replies.get(action) or self._local_reply(action)
        frames = ResponseFrames(before, after, body, status)
        if len(self._reply_frames) < 64:
            self._reply_frames[action] = frames
        return frames

    def _respond(self, stream_id: int, stream: Http2Stream) -> None:
        config = self._config
        if self._life.state == OPEN and self._ctx.drain_decision.drain_close():
            self._life.start_drain()
        action = stream.action
        if action is NOT_ROUTED:
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
                *_server_header(config.server_name),
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

    def _local_reply(self, action: object) -> LocalReply:
        """A local reply's status, body and header blocks around `date`, built once per
        action and connection (Envoy's order: a direct response's added headers,
        content-length and content-type when there is a body, date, server)."""
        added: tuple[tuple[bytes, bytes], ...] = ()
        if action is None:
            not_found = self._config.routes.current.not_found  # the HCM's, the same in any table
            status, body = not_found.status, not_found.body
        elif type(action) is DirectResponseAction:
            status, body = action.response.status, action.response.body
            added = action.response.headers  # response_headers_to_add, first (as Envoy)
        else:  # never: forwarded streams are answered by their exchange
            status, body = 500, b""
        status_header = (b":status", str(status).encode())
        server = _server_header(self._config.server_name)
        if any(name == b"server" for name, _ in added):
            server = ()  # the mutation's `server` holds the server name (LocalResponse)
        if body:
            before = (
                status_header,
                *added,
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"text/plain"),
            )
            after: tuple[tuple[bytes, bytes], ...] = server
        else:  # Envoy writes no `content-length: 0` on HTTP/2 (its HTTP/1.1 codec does)
            before = (status_header, *added)
            after = server
        reply = (status, body, before, after)
        if len(self._replies) < 64:
            self._replies[action] = reply
        return reply

    def _send_pending(self, stream_id: int, stream: Http2Stream) -> None:
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

    def _timeout_reply(self, stream_id: int, stream: Http2Stream, status: int, body: bytes) -> None:
        """408 before the request ended, then RST_STREAM(NO_ERROR): the rest of the request
        is not wanted (what Envoy does after an early response on HTTP/2)."""
        server = self._config.server_name.encode("latin-1")
        headers = [
            (b":status", str(status).encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"text/plain"),
            (b"date", HTTP_DATE.now()),
            *_server_header(self._config.server_name),
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


def _server_header(server_name: str) -> tuple[tuple[bytes, bytes], ...]:
    """The `server` header of a local reply; none without a server name (PASS_THROUGH)."""
    return ((b"server", server_name.encode("latin-1")),) if server_name else ()
