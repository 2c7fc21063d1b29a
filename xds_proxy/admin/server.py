"""The admin HTTP transport: a small HTTP/1.1 server (httptools, keep-alive) that parses the
query string and hands `(method, path, query)` to a handler.

Only the transport lives here; `xds_proxy/admin/handlers.py` decides what each path answers.
Requests on one connection are handled one at a time, so pipelined requests keep their order
even when the handler is async. Query flags count by presence, as in Envoy: `?graceful`
gives `{"graceful": [""]}`.

Request bodies are read for the paths in `body_paths` only (`POST /listeners/plan`), up to
`MAX_BODY_BYTES`: a larger body is answered 413 and the connection closed; the handler then
gets the body as a fourth argument. Every other body is read and dropped, as before.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httptools

from xds_proxy.codec.responses import HTTP_DATE, reason_phrase

log = logging.getLogger(__name__)


@dataclass
class AdminResponse:
    status: int
    body: bytes | str
    content_type: str = "text/plain; charset=UTF-8"
    headers: Sequence[tuple[str, str]] = ()


Query = dict[str, list[str]]
AdminHandler = Callable[..., Awaitable[AdminResponse] | AdminResponse]


def parse_query(raw: str) -> Query:
    """Envoy's admin query parsing: every name is kept, even without a value."""
    return parse_qs(raw, keep_blank_values=True)


def render_admin_response(response: AdminResponse, keep_alive: bool, head_only: bool) -> bytes:
    body = response.body.encode() if isinstance(response.body, str) else response.body
    lines = [
        f"HTTP/1.1 {response.status} {reason_phrase(response.status)}",
        f"content-type: {response.content_type}",
        "cache-control: no-cache, max-age=0",
        "x-content-type-options: nosniff",
        *(f"{name}: {value}" for name, value in response.headers),
        f"date: {HTTP_DATE.now().decode()}",
        "server: envoy",
        f"content-length: {len(body)}",
    ]
    if not keep_alive:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


# Envoy's admin listener keeps the HCM default max_request_headers_kb (60): a longer request
# line is answered 431 instead of being buffered without end.
MAX_URL_BYTES = 60 * 1024


# The body a path in `body_paths` may carry (a plan's listeners).
MAX_BODY_BYTES = 4 * 1024 * 1024


class _UrlTooLong(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


@dataclass
class _Request:
    method: str  # "" for a request that could not be parsed: answered `error_status`, closed
    url: str
    keep_alive: bool
    error_status: int = 400
    body: bytes | None = None  # read for `body_paths` only


class AdminConnection(asyncio.Protocol):
    def __init__(self, handler: AdminHandler, body_paths: frozenset[str] = frozenset()) -> None:
        self._handler = handler
        self._body_paths = body_paths
        self._body: bytearray | None = None  # the current request's, when its path reads one
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._worker = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the request was queued; nothing after it is read
        except httptools.HttpParserError as error:
            self._failed = True
            status = 400
            if isinstance(error.__context__, _UrlTooLong):
                status = 431
            elif isinstance(error.__context__, _BodyTooLarge):
                status = 413
            self._queue.put_nowait(_Request("", "", False, status))

    def eof_received(self) -> bool:
        self._queue.put_nowait(None)  # answer what is queued, then close
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            raise _UrlTooLong

    def on_headers_complete(self) -> None:
        path = urlsplit(self._url.decode("latin-1")).path
        self._body = bytearray() if path in self._body_paths else None

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            return
        if len(self._body) + len(body) > MAX_BODY_BYTES:
            raise _BodyTooLarge
        self._body += body

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("latin-1")
        keep_alive = self._parser.should_keep_alive()
        body = bytes(self._body) if self._body is not None else None
        self._queue.put_nowait(_Request(method, self._url.decode("latin-1"), keep_alive, body=body))
        self._url = b""
        self._body = None

    async def _serve(self) -> None:
        while True:
            request = await self._queue.get()
            if request is None or self._transport is None:
                break
            if not request.method:
                response = AdminResponse(request.error_status, reason_phrase(request.error_status))
                request.keep_alive = False
            else:
                response = await self._call(request)
            if self._transport is None:
                break
            self._transport.write(
                render_admin_response(response, request.keep_alive, request.method == "HEAD")
            )
            if not request.keep_alive:
                break
        if self._transport is not None:
            self._transport.close()

    async def _call(self, request: _Request) -> AdminResponse:
        parts = urlsplit(request.url)
        try:
            query = parse_query(parts.query)
            if request.body is None:
                result = self._handler(request.method, parts.path, query)
            else:
                result = self._handler(request.method, parts.path, query, request.body)
            if inspect.isawaitable(result):
                result = await result
            return result  # type: ignore[return-value]
        except Exception as error:
            log.exception("admin handler failed for %s %s", request.method, request.url)
            return AdminResponse(500, f"{type(error).__name__}: {error}\n")


async def start_admin_server(
    host: str, port: int, handler: AdminHandler, body_paths: frozenset[str] = frozenset()
) -> asyncio.Server:
    """Listen on host:port (0 picks a free port: read it from the returned server's sockets);
    request bodies are read for `body_paths` only."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: AdminConnection(handler, body_paths), host, port)
