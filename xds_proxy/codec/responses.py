"""Local responses (direct_response, redirects, error replies) rendered the way Envoy renders
them, with their bytes precomputed so the per-request path only splices in the date.

Envoy's header order, observed on 1.40:
- with a body: `content-length`, `content-type: text/plain`, `date`, `server`;
- without a body: `date`, `server`, then `content-length: 0` from the codec (none for 204/304
  and 1xx); `connection: close` (when the connection goes away) sits after `server`.
"""

from __future__ import annotations

import time
from email.utils import formatdate

_NO_BODY_STATUSES = frozenset({204, 304})


# Envoy 1.40's reason phrases (measured: a direct_response per status 200..599); any other
# status is "Unknown", as in Envoy.
_REASON_PHRASES: dict[int, str] = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    202: "Accepted",
    203: "Non-Authoritative Information",
    204: "No Content",
    205: "Reset Content",
    206: "Partial Content",
    207: "Multi-Status",
    208: "Already Reported",
    226: "IM Used",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Payload Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    421: "Misdirected Request",
    422: "Unprocessable Entity",
    423: "Locked",
    424: "Failed Dependency",
    425: "Too Early",
    426: "Upgrade Required",
    428: "Precondition Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates",
    507: "Insufficient Storage",
    508: "Loop Detected",
    510: "Not Extended",
    511: "Network Authentication Required",
    599: "Last Unassigned Server Error Code",
}


def reason_phrase(status: int) -> str:
    return _REASON_PHRASES.get(status, "Unknown")


class HttpDate:
    """The `date` header value, formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode("ascii")
        return self._value


HTTP_DATE = HttpDate()


class LocalResponse:
    """A fixed response (status, optional text body) as Envoy writes it for HTTP/1.1."""

    __slots__ = (
        "_close_tail",
        "_head",
        "_head_only_close",
        "_head_only_keep",
        "_keep_tail",
        "body",
        "headers",
        "status",
    )

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        server: str = "envoy",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """`headers`: a direct response's `response_headers_to_add` (route, virtual host, then
        route configuration), first in the response as Envoy writes them; a `server` among
        them takes the server name in its place."""
        self.status = status
        if server and any(name == b"server" for name, _ in headers):
            headers = tuple(
                (name, server.encode("latin-1") if name == b"server" else value)
                for name, value in headers
            )
            server = ""  # written where the mutation put it
        self.headers = headers
        status_line = f"HTTP/1.1 {status} {reason_phrase(status)}\r\n".encode("latin-1")
        status_line += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        # No server name: no `server` header (server_header_transformation PASS_THROUGH).
        server_line = f"\r\nserver: {server}\r\n".encode("latin-1") if server else b"\r\n"
        self.body = body
        if body:
            self._head = (
                status_line
                + f"content-length: {len(body)}\r\ncontent-type: text/plain\r\ndate: ".encode()
            )
            self._keep_tail = server_line + b"\r\n" + body
            self._close_tail = server_line + b"connection: close\r\n\r\n" + body
            self._head_only_keep = server_line + b"\r\n"
            self._head_only_close = server_line + b"connection: close\r\n\r\n"
        else:
            self._head = status_line + b"date: "
            length = (
                b"" if status in _NO_BODY_STATUSES or status < 200 else b"content-length: 0\r\n"
            )
            self._keep_tail = server_line + length + b"\r\n"
            self._close_tail = server_line + b"connection: close\r\n" + length + b"\r\n"
            self._head_only_keep = self._keep_tail
            self._head_only_close = self._close_tail

    def render(self, date: bytes, close: bool, head_only: bool = False) -> bytes:
        if head_only:
            tail = self._head_only_close if close else self._head_only_keep
        else:
            tail = self._close_tail if close else self._keep_tail
        return self._head + date + tail


def redirect_bytes(status: int, location: str, date: bytes, close: bool, server: str) -> bytes:
    """A redirect as Envoy writes it: `location`, `date`, `server`, `content-length: 0`."""
    connection = "connection: close\r\n" if close else ""
    server_line = f"\r\nserver: {server}\r\n" if server else "\r\n"
    return (
        f"HTTP/1.1 {status} {reason_phrase(status)}\r\nlocation: {location}\r\ndate: ".encode(
            "latin-1"
        )
        + date
        + f"{server_line}{connection}content-length: 0\r\n\r\n".encode("latin-1")
    )
