"""HTTP/1.1 server connection (httptools) for the HTTP connection manager.

Requests are answered when they are complete, in order, so pipelined requests get their
responses in sequence; responses produced while one read chunk is parsed go out in one write.
Drain behaviour follows spec/draining.md section 4: a response that tells the client to go
away carries `connection: close`, then our side is half-closed once flushed and we linger up
to `delayed_close_timeout` for the client's FIN.

The per-request path is kept short on purpose (`make bench` compares it with Envoy): no
per-request timers (one lazy timer per connection covers the idle and request timeouts),
cached routing by raw host and URL, pre-rendered responses, plain attribute counters.

Requests routed to clusters (`route` actions) are matched when their headers are complete
and forwarded through an `Exchange` (xds_proxy/upstream/forward.py) whose body streams both
ways with back-pressure; their responses (`Http1ForwardSink`) keep request order with the
local ones through a small output queue, and no pipelined request is parsed before a pending
forwarded response is out.
"""

from __future__ import annotations

import asyncio
import collections
import socket

import httptools

from xds_proxy.config.hcm import Codec
from xds_proxy.http.conn_manager import (
    DrainState,
    HcmConfig,
    close_after_delayed_close_timeout,
)
from xds_proxy.http.http2 import Http2Connection
from xds_proxy.http.responses import HTTP_DATE, LocalResponse
from xds_proxy.http.router import DirectResponseAction, RequestView
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.upstream.forward import DownstreamRequest, Exchange, ForwardAction
from xds_proxy.upstream.http1_response import Http1ForwardSink

H2_PREFACE_START = b"PRI * HTTP/2.0\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Envoy limits the raw header block: request line, header lines, final CRLF. httptools hides
# the separators: " HTTP/1.1\r\n" plus the space after the method, ": " and CRLF per header.
_REQUEST_LINE_OVERHEAD = 12
_HEADER_LINE_OVERHEAD = 4

# DrainState as plain ints: cheaper to compare on the per-request path.
_OPEN = int(DrainState.NOT_DRAINING)
_DRAINING = int(DrainState.DRAINING)
_CLOSING = int(DrainState.CLOSING)


def _as_http10(response: bytes, close: bool) -> bytes:
    """An HTTP/1.0 client gets an HTTP/1.0 status line and `connection: keep-alive` when the
    connection stays open (rendered with `connection: close` first; the rare path)."""
    response = b"HTTP/1.0" + response[8:]
    if close:
        return response
    return response.replace(b"\r\nconnection: close\r\n", b"\r\nconnection: keep-alive\r\n", 1)


class _StopParsing(Exception):
    """Raised from a parser callback once the connection must not parse further."""


class _Queued:
    """A response in the connection's output queue while a forwarded one is in flight:
    responses go out in request order, so later ones wait here."""

    __slots__ = ("chunks", "close", "done", "sink")

    def __init__(self, sink: Http1ForwardSink | None, chunks: list[bytes], done: bool) -> None:
        self.sink = sink
        self.chunks = chunks
        self.done = done
        self.close = False


# Why reading is paused (bits): the client's socket is full, the upstream is not keeping up
# with a request body, too many pipelined bytes wait behind a pending forwarded response.
_PAUSE_WRITING, _PAUSE_UPSTREAM, _PAUSE_PIPELINE = 1, 2, 4
# Pipelined bytes kept while a forwarded response is pending, before reading pauses.
_HELD_INPUT_LIMIT = 64 * 1024
# One read can hold thousands of pipelined requests: the parser is fed this much at a time, and
# no more once the client's socket is full (the write side is above its high watermark, which
# the listener sets from `per_connection_buffer_limit_bytes`). The rest waits, unparsed, until
# the client reads: the answers one connection makes stay bounded by the limit plus one slice.
PARSE_SLICE = 4 * 1024


class Http1Connection(asyncio.Protocol):
    """One downstream HTTP/1.1 connection."""

    __slots__ = (
        "_action",
        "_answered",
        "_body_expected",
        "_close_timer",
        "_config",
        "_ctx",
        "_drain_counted",
        "_exchange",
        "_expect_continue",
        "_header_bytes",
        "_header_count",
        "_header_pairs",
        "_headers_done",
        "_held",
        "_held_size",
        "_host",
        "_http10",
        "_in_request",
        "_last_idle_at",
        "_last_rx",
        "_loop",
        "_out",
        "_phase_bytes",
        "_phase_first_chunk",
        "_queue",
        "_raw_headers",
        "_read_paused",
        "_reject",
        "_request_started",
        "_routes",
        "_sniff_buffer",
        "_sniffing",
        "_state",
        "_stop_after_response",
        "_timer",
        "_timer_at",
        "_url",
        "_write_paused",
        "parser",
        "transport",
    )

    def __init__(self, config: HcmConfig, ctx: FilterChainContext) -> None:
        self._config = config
        self._ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: list[bytes] = []
        self._state = _OPEN
        self._drain_counted = False
        self._sniffing = config.codec is Codec.AUTO
        self._sniff_buffer = b""
        self._close_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._last_idle_at = 0.0
        self._last_rx = 0.0
        self._request_started = 0.0
        self._stop_after_response = False
        self._reject: LocalResponse | None = None
        self._in_request = False
        self._answered = False  # at least one response written
        self._http10 = False
        self._url = b""
        self._host: bytes | None = None
        self._header_pairs: list[tuple[str, str]] | None = None
        self._header_bytes = 0
        self._header_count = 0
        self._expect_continue = False
        self._headers_done = False
        self._phase_bytes = 0
        self._phase_first_chunk = 0
        # Forwarding to clusters (used only when the route table has `route` actions).
        self._action: object | None = None
        self._exchange: Exchange | None = None
        self._raw_headers: list[tuple[bytes, bytes]] | None = None
        self._routes = config.routes.current  # the table of the request in progress
        self._body_expected = False
        self._queue: collections.deque[_Queued] = collections.deque()
        self._read_paused = 0
        self._held: list[bytes] | None = None  # input held while a response is pending
        self._held_size = 0
        self._write_paused = False  # the transport is above its high watermark

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self._config.stats
        stats.cx_total.value += 1
        stats.cx_active.value += 1
        stats.cx_http1_total.value += 1
        stats.cx_http1_active.value += 1
        self._loop = loop = asyncio.get_running_loop()
        self._ctx.register(self)
        idle = self._config.idle_timeout_s
        if idle:
            self._last_idle_at = loop.time()
            self._arm_timer(self._last_idle_at + idle)

    def data_received(self, data: bytes) -> None:
        if self._state == _CLOSING:
            return  # lingering close: discard what the client still sends
        if self._held is not None:
            # A forwarded response is pending, or the client is not reading our answers:
            # pipelined bytes wait (reading goes on, so a client that goes away is still
            # noticed, up to a bound).
            self._hold(data)
            return
        if self._sniffing:
            sniffed = self._sniff(data)
            if sniffed is None:
                return
            data = sniffed
        if self._write_paused:
            self._hold(data)
            return
        if len(data) <= PARSE_SLICE:
            self._parse(data)
            return
        view = memoryview(data)
        self._parse(view[:PARSE_SLICE])
        for start in range(PARSE_SLICE, len(data), PARSE_SLICE):
            if self._state == _CLOSING or self.transport is None or self._stop_after_response:
                return  # the parser has stopped: what follows is never read
            if self._held is not None or self._write_paused:
                self._hold(data[start:])
                return
            self._parse(view[start : start + PARSE_SLICE])

    def _hold(self, data: bytes) -> None:
        if self._held is None:
            self._held = []
            self._held_size = 0
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > _HELD_INPUT_LIMIT:
            self._pause_reading(_PAUSE_PIPELINE)

    def _release_held(self) -> None:
        """Parse what was held back (it may be held again at once)."""
        held = self._held
        self._held = None
        self._held_size = 0
        self._resume_reading(_PAUSE_PIPELINE)
        if held:
            self.data_received(held[0] if len(held) == 1 else b"".join(held))

    def _parse(self, data: bytes | memoryview) -> None:
        """Feed the parser; write the answers it produced in one go."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._reject is not None:
                self._reply_error(self._reject)
            elif not self._stop_after_response:
                raise
        except httptools.HttpParserUpgrade:
            # Answered already (403 / 404 above); what follows is not HTTP/1.1 any more.
            self._stop_after_response = True
        except httptools.HttpParserError:
            self._config.stats.cx_protocol_error.value += 1
            self._reply_error(self._config.bad_request)
        else:
            if self._in_request:
                self._partial_request(len(data))
        out = self._out
        if out:
            if self._queue:
                self._queue.append(_Queued(None, out[:], True))
            else:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
            out.clear()
        if self._stop_after_response and not self._queue:
            self._begin_close()

    def eof_received(self) -> bool:
        # Every complete request has been answered in data_received; a half-closed client
        # sends nothing more, so close once our writes are flushed.
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading(_PAUSE_WRITING)
        if self._queue and self._queue[0].sink is not None:
            exchange = self._queue[0].sink.exchange
            if exchange is not None:
                exchange.pause_response()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._held is not None and not self._queue and self._state != _CLOSING:
            self._release_held()  # may fill the client's socket (and pause writing) again
        if self._state != _CLOSING and not self._write_paused:
            self._resume_reading(_PAUSE_WRITING)
        if self._queue and self._queue[0].sink is not None and not self._write_paused:
            exchange = self._queue[0].sink.exchange
            if exchange is not None:
                exchange.resume_response()

    def _pause_reading(self, reason: int) -> None:
        if not self._read_paused and self.transport is not None:
            self.transport.pause_reading()
        self._read_paused |= reason

    def _resume_reading(self, reason: int) -> None:
        was = self._read_paused
        self._read_paused &= ~reason
        if was and not self._read_paused and self.transport is not None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._close_timer, self._timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._timer = None
        stats = self._config.stats
        stats.cx_active.value -= 1
        stats.cx_http1_active.value -= 1
        stats.cx_destroy.value += 1
        if self._in_request:
            self._in_request = False
            stats.rq_active.value -= 1
        self._reset_forwards()
        self._ctx.unregister(self)
        self.transport = None

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        # Envoy counts a request (and its stream as active) from its first byte.
        self._in_request = True
        stats = self._config.stats
        stats.rq_total.value += 1
        stats.rq_http1_total.value += 1
        stats.rq_active.value += 1
        self._url = b""
        self._host = None
        self._header_bytes = 0
        self._header_count = 0
        self._expect_continue = False
        self._headers_done = False
        self._phase_first_chunk = 0
        self._routes = routes = self._config.routes.current  # this request's table
        if routes.needs_headers:
            self._header_pairs = []
        if routes.forwards:
            self._raw_headers = []
            self._body_expected = False
            self._action = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) + _REQUEST_LINE_OVERHEAD > self._config.max_request_headers_bytes:
            self._reject = self._config.headers_too_large
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + _HEADER_LINE_OVERHEAD
        self._header_count += 1
        config = self._config
        if (
            self._header_bytes + len(self._url) + _REQUEST_LINE_OVERHEAD
            > config.max_request_headers_bytes
            or self._header_count > config.max_headers_count
        ):
            self._reject = config.headers_too_large
            raise _StopParsing
        size = len(name)
        if size == 4 and name.lower() == b"host":
            self._host = value if self._host is None else self._host + b"," + value
        elif size == 6 and name.lower() == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        if self._header_pairs is not None:
            self._header_pairs.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        if self._raw_headers is not None:
            name = name.lower()
            if name == b"content-length":
                self._body_expected = value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                self._body_expected = True
            elif name == b"expect" and self._expect_continue:
                return  # answered here with 100 Continue, as Envoy does
            if name != b"host":
                self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        config = self._config
        parser = self.parser
        method = parser.get_method()
        size = self._header_bytes + len(self._url) + _REQUEST_LINE_OVERHEAD + len(method) + 2
        if size > config.max_request_headers_bytes:
            self._reject = config.headers_too_large
            raise _StopParsing
        if (
            self._url[:1] != b"/"
            and self._url != b"*"
            and method != b"CONNECT"
            and not self._absolute_url()
        ):
            self._reject = config.bad_request
            raise _StopParsing
        if parser.get_http_version() != "1.1":
            if not config.accept_http_10:
                self._reject = config.upgrade_required
                raise _StopParsing
            self._http10 = True
            if self._host is None and config.default_host_for_http_10:
                self._host = config.default_host_for_http_10.encode("latin-1")
        elif self._host is None:
            self._reject = config.bad_request_no_body
            raise _StopParsing
        if parser.should_upgrade():
            # No upgrade_configs and no CONNECT routes: Envoy answers 403 / 404 and closes.
            self._reject = (
                self._routes.not_found if method == b"CONNECT" else config.upgrade_forbidden
            )
            raise _StopParsing
        if self._expect_continue:
            self._out.append(_CONTINUE)
        if self._routes.forwards:
            self._route_early()

    def on_body(self, body: bytes) -> None:
        if self._exchange is not None:
            self._exchange.request_data(body, False)

    def on_message_complete(self) -> None:
        if self._exchange is not None or type(self._action) is ForwardAction:
            self._forwarded_request_complete()
            return
        config = self._config
        parser = self.parser
        close = (
            self._stop_after_response or not parser.should_keep_alive() or self._wants_drain_close()
        )
        # HTTP/1.0 responses always say what happens to the connection, as in Envoy.
        render_close = close or self._http10
        routes = self._routes
        host = self._host if self._host is not None else b""
        if routes.forwards:
            action = self._action  # matched when the headers were complete
        elif self._header_pairs is None:
            action = routes.route_raw(host, self._url)
        else:
            action = routes.route(
                host.decode("latin-1"), self._url.decode("latin-1"), self._request_headers()
            )
        head_only = parser.get_method() == b"HEAD"
        stats = config.stats
        if action is None:
            stats.no_route.value += 1
            response = routes.not_found
            stats.rq_by_class[4].value += 1
            self._out.append(response.render(HTTP_DATE.now(), render_close, head_only))
        elif type(action) is DirectResponseAction:
            response = action.response
            stats.rq_direct_response.value += 1
            stats.rq_by_class[response.status // 100].value += 1
            self._out.append(response.render(HTTP_DATE.now(), render_close, head_only))
        else:
            request = RequestView(
                parser.get_method().decode("latin-1"),
                host.decode("latin-1"),
                self._url.decode("latin-1"),
                head_only,
            )
            status, payload = action.render(request, HTTP_DATE.now(), render_close)
            stats.rq_redirect.value += 1
            stats.rq_by_class[status // 100].value += 1
            self._out.append(payload)
        if self._http10:
            self._http10 = False
            self._out[-1] = _as_http10(self._out[-1], close)
        self._in_request = False
        self._answered = True
        stats.rq_active.value -= 1
        self._header_pairs = None
        if self._request_started:
            self._request_started = 0.0
        if close:
            self._stop_after_response = True
            raise _StopParsing
        if self._timer is not None:
            self._last_idle_at = self._loop.time()  # type: ignore[union-attr]

    def _absolute_url(self) -> bool:
        """`GET http://host/path`: the URL's authority replaces Host, as in Envoy."""
        scheme, separator, rest = self._url.partition(b"://")
        if not separator or scheme.lower() not in (b"http", b"https"):
            return False
        end = len(rest)
        for mark in (b"/", b"?"):
            found = rest.find(mark)
            if found != -1 and found < end:
                end = found
        authority, path = rest[:end], rest[end:]
        if not authority:
            return False
        self._host = authority
        self._url = path if path.startswith(b"/") else b"/" + path
        return True

    def _request_headers(self) -> dict[str, str]:
        """Headers as route matchers see them (only built when some route matches headers)."""
        headers: dict[str, str] = {}
        for name, value in self._header_pairs or ():
            previous = headers.get(name)
            headers[name] = value if previous is None else f"{previous},{value}"
        headers[":method"] = self.parser.get_method().decode("latin-1")
        headers[":path"] = self._url.decode("latin-1")
        headers[":scheme"] = "http"
        return headers

    # -- drain hooks (DrainableConnection) -------------------------------------------------

    @property
    def is_idle(self) -> bool:
        """Between requests of a keep-alive connection: a drain may close it at once.

        A connection that has not sent its first request yet is not idle: its client has just
        connected and is about to send, and closing it would lose that request; it is answered
        with `connection: close` instead."""
        return (
            self._answered
            and not self._in_request
            and not self._queue
            and self._held is None  # requests read but not parsed yet are not idle
            and self._state != _CLOSING
        )

    def on_drain(self) -> None:
        """Told to leave: the next response carries `connection: close`; an idle connection is
        closed with a FIN once it has stayed idle for IDLE_CLOSE_GRACE_S more. A busy client
        is idle only between a response and its next request: closing at once would cross that
        request on the wire (the client sees EOF and must retry); within the grace it arrives
        and is answered with `connection: close` instead."""
        if self._state != _OPEN or self.transport is None:
            return
        self._state = _DRAINING
        if self.is_idle and not self._out:
            self._loop.call_later(IDLE_CLOSE_GRACE_S, self._close_if_still_idle)  # type: ignore[union-attr]

    def _close_if_still_idle(self) -> None:
        transport = self.transport
        if (
            transport is not None
            and self._state == _DRAINING
            and self.is_idle
            and not self._out
            and not _request_bytes_waiting(transport)
        ):
            self._count_drain_close()
            self._begin_close()

    def close_at_deadline(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
        self._reset_forwards()
        self._state = _CLOSING
        transport.close()

    # -- forwarding to clusters (the Http1Owner of Http1ForwardSink) ----------------------

    def _route_early(self) -> None:
        """Tables with `route` actions are matched once the headers are in, so that a
        forwarded request's body streams upstream as it arrives."""
        routes = self._routes
        host = self._host if self._host is not None else b""
        if self._header_pairs is None:
            action = routes.route_raw(host, self._url)
        else:
            action = routes.route(
                host.decode("latin-1"), self._url.decode("latin-1"), self._request_headers()
            )
        self._action = action
        if type(action) is not ForwardAction:
            return
        parser = self.parser
        config = self._config
        sink = Http1ForwardSink(
            self, parser.get_method() == b"HEAD", self._http10, config.server_name.encode()
        )
        sink.close_requested = not parser.should_keep_alive()
        exchange = Exchange(action, sink)
        sink.exchange = exchange
        if self._out:  # responses (and 100 Continue) produced before this request go first
            if self._queue:
                self._queue.append(_Queued(None, self._out[:], True))
            elif self.transport is not None:
                self.transport.write(b"".join(self._out))
            self._out.clear()
        self._queue.append(_Queued(sink, [], False))
        self._exchange = exchange
        peer = self.transport.get_extra_info("peername") if self.transport else None
        request = DownstreamRequest(
            parser.get_method(),
            self._url,
            host,
            self._raw_headers or [],
            peer[0] if peer else "",
        )
        exchange.start(
            request,
            not self._body_expected,
            self._ctx.clusters,
            config.proxy_policy,
            action.mutations,
        )

    def _forwarded_request_complete(self) -> None:
        exchange = self._exchange
        self._exchange = None
        if exchange is not None and self._body_expected:
            exchange.request_data(b"", True)
        self._in_request = False
        self._answered = True
        self._config.stats.rq_active.value -= 1
        self._header_pairs = None
        self._raw_headers = None
        self._action = None
        if self._request_started:
            self._request_started = 0.0
        if self._queue and self._held is None:
            # The response is still coming: parse no further request until it is out.
            self._held = []
            self._held_size = 0
        if not self.parser.should_keep_alive() or self._http10:
            self._stop_after_response = True
            raise _StopParsing

    def forward_write(self, response: Http1ForwardSink, data: bytes) -> None:
        queue = self._queue
        if queue and queue[0].sink is response:
            if self.transport is not None:
                self.transport.write(data)
            return
        for entry in queue:
            if entry.sink is response:
                entry.chunks.append(data)
                return

    def forward_done(self, response: Http1ForwardSink, close: bool) -> None:
        for entry in self._queue:
            if entry.sink is response:
                entry.done = True
                entry.close = close
                break
        self._advance_queue()

    def forward_reset(self, response: Http1ForwardSink) -> None:
        self._reset_forwards(except_sink=response)
        self._queue.clear()
        transport = self.transport
        if transport is not None:
            self._state = _CLOSING
            transport.close()

    def forward_close_decision(self, response: Http1ForwardSink) -> bool:
        if response.close_requested or self._wants_drain_close():
            return True
        # A later request already ended the connection: the last response says so.
        return self._stop_after_response and bool(self._queue) and self._queue[-1].sink is response

    def forward_pause_reading(self) -> None:
        self._pause_reading(_PAUSE_UPSTREAM)

    def forward_resume_reading(self) -> None:
        self._resume_reading(_PAUSE_UPSTREAM)

    def forward_count(self, status: int) -> None:
        self._config.stats.rq_by_class[status // 100].value += 1

    def _advance_queue(self) -> None:
        """Write every finished response at the head of the queue, in order."""
        queue = self._queue
        transport = self.transport
        while queue and queue[0].done:
            entry = queue.popleft()
            if transport is not None and entry.chunks:
                transport.write(b"".join(entry.chunks))
            if entry.close:
                self._stop_after_response = True
                self._reset_forwards()
                queue.clear()
                break
        if queue:
            head = queue[0]
            if head.chunks and transport is not None:
                transport.write(b"".join(head.chunks))
                head.chunks.clear()
            return
        if self._stop_after_response:
            self._begin_close()
            return
        if self._timer is not None and self._loop is not None:
            self._last_idle_at = self._loop.time()
        if self._held is not None:
            self._release_held()

    def _reset_forwards(self, except_sink: Http1ForwardSink | None = None) -> None:
        """The connection is going away: cancel every forwarded request still in flight."""
        if self._exchange is not None:
            self._exchange.downstream_reset()
            self._exchange = None
        for entry in list(self._queue):
            sink = entry.sink
            if sink is not None and sink is not except_sink and sink.exchange is not None:
                sink.exchange.downstream_reset()

    # -- internals -------------------------------------------------------------------------

    def _wants_drain_close(self) -> bool:
        if self._state == _DRAINING or self._ctx.drain_decision.drain_close():
            self._count_drain_close()
            return True
        return False

    def _count_drain_close(self) -> None:
        if not self._drain_counted:
            self._drain_counted = True
            self._config.stats.cx_drain_close.value += 1

    def _sniff(self, data: bytes) -> bytes | None:
        """Codec AUTO: a connection that starts with the HTTP/2 preface becomes HTTP/2.

        Returns the bytes for the HTTP/1.1 parser, or None to wait for more (or when handed
        over)."""
        buffered = self._sniff_buffer + data if self._sniff_buffer else data
        if len(buffered) < len(H2_PREFACE_START) and H2_PREFACE_START.startswith(buffered):
            self._sniff_buffer = buffered
            return None
        self._sniffing = False
        self._sniff_buffer = b""
        if buffered.startswith(H2_PREFACE_START):
            self._hand_over_to_http2(buffered)
            return None
        return buffered

    def _hand_over_to_http2(self, data: bytes) -> None:
        """The transport moves to an `Http2Connection`, which counts and registers itself
        (before this one unregisters, so a draining chain never looks empty meanwhile)."""
        stats = self._config.stats
        stats.cx_total.value -= 1
        stats.cx_active.value -= 1
        stats.cx_http1_total.value -= 1
        stats.cx_http1_active.value -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self.transport
        assert transport is not None
        self.transport = None
        self._state = _CLOSING
        successor = Http2Connection(self._config, self._ctx)
        transport.set_protocol(successor)
        successor.connection_made(transport)
        self._ctx.unregister(self)
        successor.data_received(data)

    def _partial_request(self, size: int) -> None:
        """A request is still incomplete after a read: bound its header block and start the
        request timeouts (the rare path; complete requests never come here)."""
        if not self._headers_done:
            # httptools buffers a header line whole. Bytes fed after the chunk in which the
            # request began are all header bytes: a lower bound of the real size.
            if not self._phase_first_chunk:
                self._phase_first_chunk = self._phase_bytes = size
            else:
                self._phase_bytes += size
                if (
                    self._phase_bytes - self._phase_first_chunk
                    > self._config.max_request_headers_bytes
                ):
                    self._reply_error(self._config.headers_too_large)
                    return
        else:
            self._phase_first_chunk = 0
        config = self._config
        if not (
            config.request_headers_timeout_s
            or config.request_timeout_s
            or config.stream_idle_timeout_s
        ):
            return
        now = self._loop.time()  # type: ignore[union-attr]
        self._last_rx = now
        if not self._request_started:
            self._request_started = now
        deadline = self._request_deadline()
        if deadline is not None:
            self._arm_timer(deadline)

    def _request_deadline(self) -> float | None:
        config = self._config
        deadlines = []
        if config.request_headers_timeout_s and not self._headers_done:
            deadlines.append(self._request_started + config.request_headers_timeout_s)
        if config.request_timeout_s:
            deadlines.append(self._request_started + config.request_timeout_s)
        if config.stream_idle_timeout_s:
            deadlines.append(self._last_rx + config.stream_idle_timeout_s)
        return min(deadlines) if deadlines else None

    def _arm_timer(self, when: float) -> None:
        """One timer per connection, moved only when a deadline comes earlier than it."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport is None or self._state == _CLOSING:
            return
        config = self._config
        now = self._loop.time()  # type: ignore[union-attr]
        if self._in_request and self._request_started:
            stats = config.stats
            started = self._request_started
            if (
                config.request_headers_timeout_s
                and not self._headers_done
                and now >= started + config.request_headers_timeout_s
            ):
                stats.rq_header_timeout.value += 1
                self._timeout_reply(config.request_header_timeout_reply)
                return
            if config.request_timeout_s and now >= started + config.request_timeout_s:
                stats.rq_timeout.value += 1
                self._timeout_reply(config.request_timeout_reply)
                return
            if config.stream_idle_timeout_s and now >= self._last_rx + config.stream_idle_timeout_s:
                stats.rq_idle_timeout.value += 1
                self._timeout_reply(config.stream_timeout_reply)
                return
            deadline = self._request_deadline()
            if deadline is not None:
                self._arm_timer(deadline)
                return
        idle = config.idle_timeout_s
        if not idle:
            return
        if self._in_request or self._queue:
            self._arm_timer(now + idle)  # a request or a forwarded response in flight
            return
        if now < self._last_idle_at + idle:
            self._arm_timer(self._last_idle_at + idle)
            return
        config.stats.cx_idle_timeout.value += 1
        self._begin_close()

    def _timeout_reply(self, response: LocalResponse) -> None:
        self._reply_error(response)
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
            self._out.clear()
        self._begin_close()

    def _reply_error(self, response: LocalResponse) -> None:
        """A local error reply: always the last response on this connection."""
        stats = self._config.stats
        if self._in_request:
            self._in_request = False
            stats.rq_active.value -= 1
        else:  # the parser failed before it saw a request begin
            stats.rq_total.value += 1
            stats.rq_http1_total.value += 1
        stats.rq_by_class[response.status // 100].value += 1
        self._out.append(response.render(HTTP_DATE.now(), True))
        self._stop_after_response = True

    def _begin_close(self) -> None:
        """Half-close once flushed, then wait for the client's FIN (lingering close)."""
        transport = self.transport
        if transport is None or self._state == _CLOSING:
            return
        self._state = _CLOSING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        delay = self._config.delayed_close_timeout_s
        if delay <= 0 or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._close_timer = self._loop.call_later(delay, self._on_delayed_close_timeout)  # type: ignore[union-attr]

    def _on_delayed_close_timeout(self) -> None:
        self._close_timer = None
        close_after_delayed_close_timeout(self.transport, self._config.stats)


IDLE_CLOSE_GRACE_S = 0.05


def _request_bytes_waiting(transport: asyncio.BaseTransport) -> bool:
    """Has the client already sent bytes that the event loop has not read yet? Closing then
    would lose a request that is on its way; it is answered with `connection: close` instead."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, OSError):
        return False
