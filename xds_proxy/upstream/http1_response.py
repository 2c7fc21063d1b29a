"""A forwarded response written to an HTTP/1.1 downstream: the `DownstreamSink` of an
`Exchange`, rendering what Envoy's HTTP/1.1 codec writes.

Header order as Envoy 1.40 writes a proxied response: the upstream's headers (hop-by-hop ones
dropped, `content-length` where the upstream put it), `x-envoy-upstream-service-time`, `date`
(unless the upstream sent one), `server`, then the codec's own `connection: close` and
`transfer-encoding: chunked` (or `content-length: 0` for an empty body).

The connection owns ordering (pipelined responses go out in request order), keep-alive and
back-pressure; it implements `Http1Owner`. Bytes are written through `owner.forward_write`,
which may hold them back while an earlier response is still being written.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from xds_proxy.codec.responses import HTTP_DATE, LocalResponse, reason_phrase
from xds_proxy.upstream.running_loop import running_loop
from xds_proxy.upstream.stream import Header

if TYPE_CHECKING:
    from xds_proxy.upstream.forward import Exchange

_NO_BODY_STATUSES = frozenset({204, 304})


class Http1Owner(Protocol):
    def forward_write(self, response: Http1ForwardSink, data: bytes) -> None: ...

    def forward_done(self, response: Http1ForwardSink, close: bool) -> None:
        """The response is complete; `close`: the connection ends after it."""
        ...

    def forward_reset(self, response: Http1ForwardSink) -> None:
        """The response broke off after its headers: the connection must close now."""
        ...

    def forward_close_decision(self, response: Http1ForwardSink) -> bool:
        """Must this response carry `connection: close` (request, HTTP/1.0 or drain)?"""
        ...

    def forward_pause_reading(self) -> None: ...

    def forward_resume_reading(self) -> None: ...

    def forward_count(self, status: int) -> None:
        """Count the response in `http.<stat_prefix>.downstream_rq_<N>xx`."""
        ...


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int, http10: bool = False) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode()
    return b"HTTP/1.0" + line[8:] if http10 else line


class _PendingHeads:
    """Response heads written on the next loop iteration unless their body came first: one
    `call_soon` per iteration for all of them, instead of one per response."""

    __slots__ = ("_loop", "_sinks")

    def __init__(self) -> None:
        self._sinks: list[Http1ForwardSink] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def defer(self, sink: Http1ForwardSink) -> None:
        loop = running_loop()
        if loop is not self._loop:
            # Another loop (tests run several, one after the other): what the last one left
            # is gone with it.
            self._loop = loop
            self._sinks = []
        if not self._sinks:
            loop.call_soon(self._flush)
        self._sinks.append(sink)

    def _flush(self) -> None:
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink._flush_head()


_PENDING_HEADS = _PendingHeads()


class Http1ForwardSink:
    """One forwarded request's response, as HTTP/1.1 bytes."""

    __slots__ = (
        "_chunked",
        "_close",
        "_head_only",
        "_http10",
        "_owner",
        "_pending_head",
        "_server",
        "close_requested",
        "complete",
        "exchange",
        "server_sent",
    )

    def __init__(self, owner: Http1Owner, head_only: bool, http10: bool, server: bytes) -> None:
        self._owner = owner
        self._head_only = head_only
        self._http10 = http10
        self._server = server
        self._chunked = False
        self._close = False
        self._pending_head = b""
        self.complete = False
        self.exchange: Exchange | None = None  # set by the connection
        self.close_requested = False  # the request asked for `connection: close`
        self.server_sent = False  # the upstream's `server` header is in the response

    # -- DownstreamSink ---------------------------------------------------------------------

    def send_response_headers(self, status: int, headers: list[Header], end_stream: bool) -> None:
        head = self._render_head(status, headers, end_stream)
        if end_stream:
            self._owner.forward_write(self, head)
            self._finish()
            return
        # The body usually follows in the same read: one write for both saves a syscall.
        # If it does not, the headers go out on the next loop iteration.
        self._pending_head = head
        _PENDING_HEADS.defer(self)

    def send_whole_response(self, status: int, headers: list[Header], body: bytes) -> None:
        self._pending_head = self._render_head(status, headers, False)
        self.send_response_data(body, True)  # (in one write with the head)

    def _render_head(self, status: int, headers: list[Header], end_stream: bool) -> bytes:
        """The response head as it goes out (status line, headers, framing, `date`,
        `server`, `connection`); counts the response and decides whether the connection
        closes after it."""
        owner = self._owner
        owner.forward_count(status)
        close = owner.forward_close_decision(self)
        lines = [status_line(status, self._http10)]
        has_length = has_date = False
        for name, value in headers:
            if name == b"content-length":
                if status == 204:
                    continue  # a 204 has no body: Envoy drops the header
                has_length = True
            elif name == b"date":
                has_date = True
            lines += (name, b": ", value, b"\r\n")
        if not has_date:
            lines += (b"date: ", HTTP_DATE.now(), b"\r\n")
        if self._server and not self.server_sent:
            lines += (b"server: ", self._server, b"\r\n")
        no_body = self._head_only or status in _NO_BODY_STATUSES or status < 200
        if not has_length and not no_body and not end_stream and self._http10:
            close = True  # HTTP/1.0 has no chunking: the body ends with the connection
        if close and status != 101:  # an accepted upgrade: the connection ends with it
            lines.append(b"connection: close\r\n")
        elif self._http10:
            lines.append(b"connection: keep-alive\r\n")
        if not has_length and not no_body:
            if end_stream:
                lines.append(b"content-length: 0\r\n")
            elif not self._http10:
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        self._close = close
        return b"".join(lines)

    def _flush_head(self) -> None:
        if self._pending_head:
            head, self._pending_head = self._pending_head, b""
            self._owner.forward_write(self, head)

    def send_response_data(self, data: bytes, end_stream: bool) -> None:
        if self.complete:
            return
        if self._head_only:
            payload = b""
        elif self._chunked:
            payload = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            if end_stream:
                payload += b"0\r\n\r\n"
        else:
            payload = data
        if self._pending_head:
            payload = self._pending_head + payload
            self._pending_head = b""
        if payload:
            self._owner.forward_write(self, payload)
        if end_stream:
            self._finish()

    def send_response_trailers(self, trailers: list[Header]) -> None:
        # Envoy's HTTP/1.1 codec drops trailers unless told otherwise: end the body.
        self.send_response_data(b"", True)

    def send_local_reply(self, status: int, body: bytes, headers: list[Header]) -> None:
        owner = self._owner
        owner.forward_count(status)
        close = owner.forward_close_decision(self)
        rendered = LocalResponse(status, body, self._server.decode("latin-1")).render(
            HTTP_DATE.now(), close or self._http10, self._head_only
        )
        if self._http10:
            rendered = b"HTTP/1.0" + rendered[8:]
            if not close:
                rendered = rendered.replace(
                    b"\r\nconnection: close\r\n", b"\r\nconnection: keep-alive\r\n", 1
                )
        if headers:  # Envoy puts them first (e.g. `x-envoy-overloaded`)
            extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
            line_end = rendered.index(b"\r\n") + 2
            rendered = rendered[:line_end] + extra + rendered[line_end:]
        self._close = close
        owner.forward_write(self, rendered)
        self._finish()

    def reset_downstream(self) -> None:
        if self.complete:
            return
        self._flush_head()
        self.complete = True
        self._owner.forward_reset(self)

    def pause_request_body(self) -> None:
        self._owner.forward_pause_reading()

    def resume_request_body(self) -> None:
        self._owner.forward_resume_reading()

    # -- internals --------------------------------------------------------------------------

    def _finish(self) -> None:
        self.complete = True
        self._owner.forward_done(self, self._close)
