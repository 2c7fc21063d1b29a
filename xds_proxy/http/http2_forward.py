"""The response of a forwarded HTTP/2 stream: the upstream's headers, body and trailers
written as frames on the stream, under the client's flow-control windows."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import h2.errors
import h2.exceptions

from xds_proxy.codec.h2_connection import BoundedH2Connection
from xds_proxy.codec.responses import HTTP_DATE
from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.http.http2_lifecycle import Http2Lifecycle
from xds_proxy.http.http2_stream import OPEN, Http2Stream
from xds_proxy.listener.context import FilterChainContext


class ForwardHost(Protocol):
    """The connection, as a forwarded stream's sink sees it."""

    transport: asyncio.Transport | None
    _config: HcmConfig
    _ctx: FilterChainContext
    _h2: BoundedH2Connection
    _life: Http2Lifecycle
    _streams: dict[int, Http2Stream]

    def _stream_done(self, stream_id: int) -> None: ...

    def _flush(self) -> None: ...

    def _send_pending(self, stream_id: int, stream: Http2Stream) -> None: ...


class Http2ForwardSink:
    """The `DownstreamSink` of one forwarded stream: the upstream's response, written as
    HTTP/2 frames on the stream (Envoy's order: the upstream's headers, date unless the
    upstream sent one, server)."""

    __slots__ = ("_conn", "_head_only", "_stream", "_stream_id", "server_sent")

    def __init__(self, conn: ForwardHost, stream_id: int, stream: Http2Stream) -> None:
        self._conn = conn
        self._stream_id = stream_id
        self._stream = stream
        self._head_only = stream.method == b"HEAD"
        self.server_sent = False  # the upstream's `server` header is in the response

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
        if config.server_name and not self.server_sent:
            out.append((b"server", config.server_name.encode("latin-1")))
        self._send_headers(status, out, end_stream)

    def _send_headers(self, status: int, out: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        conn = self._conn
        config = conn._config
        if conn._life.state == OPEN and conn._ctx.drain_decision.drain_close():
            conn._life.start_drain()
        config.stats.rq_by_class[status // 100].value += 1
        stream = self._stream
        stream.responded = True
        stream.body_complete = False
        conn._h2.send_headers(self._stream_id, out, end_stream=end_stream)
        if end_stream:
            conn._stream_done(self._stream_id)
        conn._flush()

    def send_whole_response(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.send_response_headers(status, headers, False)
        self.send_response_data(body, True)

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
        out.append((b"date", HTTP_DATE.now()))
        if server:
            out.append((b"server", server))
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
