"""Requests of one downstream HTTP/1.1 connection: parsed with httptools, checked against
Envoy's limits, routed, and answered here unless they are forwarded to a cluster.

Requests are answered when they are complete, in order, so pipelined requests get their
responses in sequence; the responses produced while one slice of input is parsed go out in
one write (`out`). The per-request path is kept short on purpose (`make bench` compares it
with Envoy): cached routing by raw host and URL, pre-rendered responses, plain counters.

Requests routed to clusters (`route` actions) are matched when their headers are complete and
forwarded through an `Exchange` (xds_proxy/upstream/forward.py) whose body streams upstream as
it arrives; their responses keep request order through `Http1ResponseQueue`, and no pipelined
request is parsed before a pending forwarded response is out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import httptools

from xds_proxy.access_log.record import Downstream, LogRecord
from xds_proxy.codec.responses import HTTP_DATE, LocalResponse
from xds_proxy.config.hcm import Underscores
from xds_proxy.config.upgrades import upgrade_allowed
from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.http.http1_backpressure import HasTransport, Http1Backpressure
from xds_proxy.http.http1_lifecycle import Http1Lifecycle
from xds_proxy.http.http1_response_queue import Http1ResponseQueue
from xds_proxy.http.http1_upgrade import UpgradeSink, upgrade_type
from xds_proxy.http.path_normalization import (
    FRAGMENT_MARK,
    PATH_NORMALIZATION_FAILED,
    PathOutcome,
    PathRedirect,
    PathRules,
)
from xds_proxy.http.router import DirectResponseAction, RequestView, RouteAction, RouteTable
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.upstream.forward import DownstreamRequest, Exchange, ForwardAction

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Envoy limits the raw header block: request line, header lines, final CRLF. httptools hides
# the separators: " HTTP/1.1\r\n" plus the space after the method, ": " and CRLF per header.
_REQUEST_LINE_OVERHEAD = 12
_HEADER_LINE_OVERHEAD = 4


def _as_http10(response: bytes, close: bool) -> bytes:
    """An HTTP/1.0 client gets an HTTP/1.0 status line and `connection: keep-alive` when the
    connection stays open (rendered with `connection: close` first; the rare path)."""
    response = b"HTTP/1.0" + response[8:]
    if close:
        return response
    return response.replace(b"\r\nconnection: close\r\n", b"\r\nconnection: keep-alive\r\n", 1)


def split_absolute_url(url: bytes) -> tuple[bytes, bytes] | None:
    """`http://host/path?q` -> (b"host", b"/path?q"); None unless an absolute http(s) URL."""
    scheme, separator, rest = url.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for mark in (b"/", b"?"):
        found = rest.find(mark)
        if found != -1 and found < end:
            end = found
    authority, path = rest[:end], rest[end:]
    if not authority:
        return None
    return authority, path if path.startswith(b"/") else b"/" + path


def route_headers(pairs: Iterable[tuple[str, str]], method: bytes, url: bytes) -> dict[str, str]:
    """Headers as route matchers see them (only built when some route matches headers)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous},{value}"
    headers[":method"] = method.decode("latin-1")
    headers[":path"] = url.decode("latin-1")
    headers[":scheme"] = "http"
    return headers


# A local error reply's response flags and details (`RESPONSE_CODE_DETAILS`), as Envoy's.
_ERROR_DETAILS = {
    426: ("DPE", "low_version"),
    431: ("DPE", "http1.headers_too_large"),
    403: ("", "upgrade_failed"),
    408: ("", "request_header_timeout"),
}


_upgrade_rng = random.Random()


class _StopParsing(Exception):
    """Raised from a parser callback once the connection must not parse further."""


class Http1RequestReader:
    """The httptools callbacks of one connection, and the request being read."""

    __slots__ = (
        "_action",
        "_backpressure",
        "_body_expected",
        "_config",
        "_connection",
        "_ctx",
        "_downstream",
        "_exchange",
        "_expect_continue",
        "_h2c",
        "_header_bytes",
        "_header_count",
        "_header_pairs",
        "_host",
        "_http10",
        "_lifecycle",
        "_loop",
        "_on_upgrade",
        "_path_redirect",
        "_phase_bytes",
        "_phase_first_chunk",
        "_raw_headers",
        "_record",
        "_reject",
        "_responses",
        "_routes",
        "_sockets",
        "_url",
        "answered",
        "answered_at",
        "headers_done",
        "in_request",
        "last_rx",
        "out",
        "parser",
        "request_started",
        "upgrade",
    )

    def __init__(
        self,
        connection: HasTransport,
        config: HcmConfig,
        ctx: FilterChainContext,
        lifecycle: Http1Lifecycle,
        responses: Http1ResponseQueue,
        backpressure: Http1Backpressure,
        on_upgrade: Callable[[Exchange, UpgradeSink, LogRecord | None, bytes], None],
    ) -> None:
        self._connection = connection
        # An allowed upgrade's exchange and response (http1_upgrade.py), and who takes the
        # connection over.
        self.upgrade: tuple[Exchange, UpgradeSink] | None = None
        self._on_upgrade = on_upgrade
        self._h2c = False  # an `Upgrade: h2c` request served as plain HTTP/1.1 (as Envoy)
        self._config = config
        self._ctx = ctx
        self._lifecycle = lifecycle
        self._responses = responses
        self._backpressure = backpressure
        self._loop: asyncio.AbstractEventLoop | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []  # responses produced by the slice being parsed
        self._reject: LocalResponse | None = None
        self.in_request = False
        self.answered = False  # at least one response written
        # When the last local answer was produced (kept only with an idle timeout).
        self.answered_at = 0.0
        # The request's timeouts: when it began (0.0: not running), when its last byte came.
        self.request_started = 0.0
        self.last_rx = 0.0
        self._http10 = False
        self._url = b""
        self._host: bytes | None = None
        self._header_pairs: list[tuple[str, str]] | None = None
        self._header_bytes = 0
        self._header_count = 0
        self._expect_continue = False
        self.headers_done = False
        self._phase_bytes = 0
        self._phase_first_chunk = 0
        # Forwarding to clusters (used only when the route table has `route` actions).
        self._action: object | None = None
        self._exchange: Exchange | None = None  # the forwarded request whose body is read
        self._raw_headers: list[tuple[bytes, bytes]] | None = None
        self._sockets: tuple[Any, Any, Any] | None = None  # _socket_info(), once read
        self._routes = config.routes.current  # the table of the request in progress
        self._body_expected = False
        # Access logging (only with an access_log configured): this request's record.
        self._record: LogRecord | None = None
        self._downstream: Downstream | None = None
        # UNESCAPE_AND_REDIRECT's answer to the request being read (path_normalization.py).
        self._path_redirect: PathRedirect | None = None

    def feed(self, data: bytes | memoryview) -> None:
        """Feed the parser; write the answers it produced in one go."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._reject is not None:
                self.reply_error(self._reject)
            elif not self._lifecycle.no_more_requests:
                raise
        except httptools.HttpParserUpgrade as upgrade:
            # Answered already (403 / 404, on_headers_complete), or an allowed upgrade whose
            # tunnel takes the rest: either way the rest is not HTTP/1.1. (An h2c request was
            # plain HTTP/1.1: a fresh parser goes on.)
            if self._h2c:
                self._h2c = False
                self._after_h2c(bytes(data[upgrade.args[0] :]))
            else:
                self._lifecycle.end_after_responses()
            if self.upgrade is not None:
                self.request_started = 0.0  # the tunnel runs its own stream idle timeout
                tail = bytes(data[upgrade.args[0] :])
                exchange, sink = self.upgrade
                self._on_upgrade(exchange, sink, self._record, tail)
        except httptools.HttpParserError:
            self._config.stats.cx_protocol_error.value += 1
            self.reply_error(self._config.bad_request)
        else:
            if self.in_request:
                self._partial_request(len(data))
        out = self.out
        if out:
            if self._responses.entries:
                self._responses.add_local(out[:])
            else:
                self._connection.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
            out.clear()
        if self._lifecycle.no_more_requests and not self._responses.entries:
            self._lifecycle.begin_close()

    def connected(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def write_out_now(self) -> None:
        """Write what was produced outside a parse (a timeout's reply, a drain's deadline)."""
        transport = self._connection.transport
        if self.out and transport is not None:
            transport.write(b"".join(self.out))
            self.out.clear()

    def connection_lost(self) -> None:
        if self.in_request:
            self.in_request = False
            self._config.stats.rq_active.value -= 1
            if self._record is not None and type(self._action) is not ForwardAction:
                self._log_gone()  # (a forwarded request's exchange logs its own end)

    def reset_exchange(self) -> None:
        """The connection is going away: cancel the forwarded request being read."""
        if self._exchange is not None:
            self._exchange.downstream_reset()
            self._exchange = None

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        # Envoy counts a request (and its stream as active) from its first byte.
        self.in_request = True
        stats = self._config.stats
        stats.rq_total.value += 1
        stats.rq_http1_total.value += 1
        stats.rq_active.value += 1
        self._url = b""
        self._host = None
        self._header_bytes = 0
        self._header_count = 0
        self._expect_continue = False
        self.headers_done = False
        self._phase_first_chunk = 0
        self._routes = routes = self._config.routes.current  # this request's table
        if routes.needs_headers:
            self._header_pairs = []
        if routes.forwards or self._config.upgrades:  # (an upgrade's type is read from them)
            self._raw_headers = []
            self._body_expected = False
            self._action = None
        if self._config.access_log is not None:
            downstream = self._downstream or self._new_downstream()
            self._record = LogRecord(downstream)  # (it reads the clocks)

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
        if config.underscores is not None and b"_" in name and self._underscore_dropped():
            return
        size = len(name)
        is_host = size == 4 and name.lower() == b"host"
        if is_host:
            self._host = value if self._host is None else self._host + b"," + value
        elif size == 6 and name.lower() == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        if self._header_pairs is not None:
            self._header_pairs.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        if self._record is not None and not is_host:
            self._record.request_headers.append((name.lower(), value))
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
        self.headers_done = True
        config = self._config
        parser = self.parser
        method = parser.get_method()
        size = self._header_bytes + len(self._url) + _REQUEST_LINE_OVERHEAD + len(method) + 2
        if size > config.max_request_headers_bytes:
            self._reject = config.headers_too_large
            raise _StopParsing
        record = self._record
        if record is not None:
            record.took_line(method, self._url)
        if self._url[:1] != b"/" and self._url != b"*" and method != b"CONNECT":
            # `GET http://host/path`: the URL's authority replaces Host, as in Envoy.
            absolute = split_absolute_url(self._url)
            if absolute is None:
                self._reject = config.bad_request
                raise _StopParsing
            self._host, self._url = absolute
        if parser.get_http_version() != "1.1":
            if not config.accept_http_10:
                self._reject = config.upgrade_required
                raise _StopParsing
            self._http10 = True
            if record is not None:
                record.protocol = "HTTP/1.0"
            if self._host is None and config.default_host_for_http_10:
                self._host = config.default_host_for_http_10.encode("latin-1")
        elif self._host is None:
            self._reject = config.bad_request_no_body
            raise _StopParsing
        if FRAGMENT_MARK in self._url:
            self._reject_path()
        if config.path_rules is not None:
            self._apply_path_rules(config.path_rules)
        if record is not None:
            record.took_request(method, self._url, self._host, b"http", config.proxy_policy)
        if parser.should_upgrade() and not self._plain_h2c():
            if method != b"CONNECT" and self._upgrade_allowed():
                return
            # Not allowed, and no CONNECT routes: Envoy answers 403 / 404 and closes.
            self._reject = (
                self._routes.not_found if method == b"CONNECT" else config.upgrade_forbidden
            )
            raise _StopParsing
        if self._expect_continue:
            self.out.append(_CONTINUE)
        if self._routes.forwards and self._path_redirect is None:
            self._route_early()

    def on_body(self, body: bytes) -> None:
        if self._record is not None:
            self._record.bytes_received += len(body)
        if self._exchange is not None:
            self._exchange.request_data(body, False)

    def on_message_complete(self) -> None:
        if self._exchange is not None or type(self._action) is ForwardAction:
            self._forwarded_request_complete()
            return
        config = self._config
        parser = self.parser
        lifecycle = self._lifecycle
        close = (
            lifecycle.no_more_requests
            or not parser.should_keep_alive()
            or lifecycle.wants_drain_close()
        )
        # HTTP/1.0 responses always say what happens to the connection, as in Envoy.
        render_close = close or self._http10
        routes = self._routes
        host = self._host if self._host is not None else b""
        if self._path_redirect is not None:
            action = self._path_redirect
            self._path_redirect = None
        elif routes.forwards:
            action = self._action  # matched when the headers were complete
        elif self._header_pairs is None:
            action = routes.route_raw(host, self._url)
        else:
            action = self._route_with_headers(routes, host)
        head_only = parser.get_method() == b"HEAD"
        stats = config.stats
        if action is None:
            stats.no_route.value += 1
            response = routes.not_found
            stats.rq_by_class[4].value += 1
            self.out.append(response.render(HTTP_DATE.now(), render_close, head_only))
        elif type(action) is DirectResponseAction:
            response = action.response
            stats.rq_direct_response.value += 1
            stats.rq_by_class[response.status // 100].value += 1
            self.out.append(response.render(HTTP_DATE.now(), render_close, head_only))
        else:
            request = RequestView(
                parser.get_method().decode("latin-1"),
                host.decode("latin-1"),
                self._url.decode("latin-1"),
                head_only,
            )
            status, payload = action.render(request, HTTP_DATE.now(), render_close)
            if type(action) is PathRedirect:
                stats.rq_redirected_with_normalized_path.value += 1
            else:
                stats.rq_redirect.value += 1
            stats.rq_by_class[status // 100].value += 1
            self.out.append(payload)
        record = self._record
        if record is not None:
            self._record = None
            self._log_local(record, action, head_only)
        if self._http10:
            self._http10 = False
            self.out[-1] = _as_http10(self.out[-1], close)
        self.in_request = False
        self.answered = True
        stats.rq_active.value -= 1
        self._header_pairs = None
        if self.request_started:
            self.request_started = 0.0
        if close:
            lifecycle.end_after_responses()
            raise _StopParsing
        if config.idle_timeout_s:
            self.answered_at = self._loop.time()  # type: ignore[union-attr]

    def _route_with_headers(self, routes: RouteTable, host: bytes) -> RouteAction | None:
        """Match a table in which some route looks at headers (the headers are collected)."""
        headers = route_headers(self._header_pairs or (), self.parser.get_method(), self._url)
        return routes.route(host.decode("latin-1"), self._url.decode("latin-1"), headers)

    # -- forwarding to clusters ------------------------------------------------------------

    def _plain_h2c(self) -> bool:
        """`Upgrade: h2c` (the rare path): Envoy's codec drops the upgrade (and
        `http2-settings`) and serves the request as plain HTTP/1.1; so do we, when the headers
        were kept (a table with cluster routes or an HCM with upgrade_configs)."""
        raw = self._raw_headers
        if upgrade_type(raw) != "h2c":
            return False
        self._raw_headers = [(n, v) for n, v in raw if n != b"http2-settings"]  # type: ignore[union-attr]
        self._h2c = True
        return True

    def _after_h2c(self, rest: bytes) -> None:
        """The parser stopped after an h2c request it took for an upgrade: a fresh one reads
        what follows (held first if a forwarded response is pending)."""
        self.parser = httptools.HttpRequestParser(self)
        if not rest or self._lifecycle.no_more_requests:
            return
        if self._backpressure.held is not None:
            self._backpressure.hold(rest)
        else:
            self.feed(rest)

    def _upgrade_allowed(self) -> bool:
        """An upgrade request (the rare path): False when refused (counted; the caller answers
        403); else it goes on (http1_upgrade.py), forwarded or answered here."""
        config = self._config
        stats = config.stats
        routes = self._routes
        host = self._host if self._host is not None else b""
        if self._header_pairs is None:
            action = routes.route_raw(host, self._url)
        else:
            action = self._route_with_headers(routes, host)
        forward = type(action) is ForwardAction
        route_upgrades = action.upgrades if forward else None  # type: ignore[union-attr]
        kind = upgrade_type(self._raw_headers)  # (None: no upgrade configured anywhere)
        if not upgrade_allowed(kind, config.upgrades, route_upgrades):
            stats.rq_ws_on_non_ws_route.value += 1
            return False
        stats.cx_upgrades_total.value += 1
        if not forward:
            # Answered here (404, direct response, redirect); the connection ends with it.
            self._action = action
            self._lifecycle.end_after_responses()
            return True
        stats.cx_upgrades_active.value += 1
        if self._expect_continue:
            self.out.append(_CONTINUE)
        self._route_early(upgrade=True)
        return True

    def _route_early(self, upgrade: bool = False) -> None:
        """Tables with `route` actions are matched once the headers are in, so that a
        forwarded request's body streams upstream as it arrives."""
        routes = self._routes
        host = self._host if self._host is not None else b""
        if self._header_pairs is None:
            action = routes.route_raw(host, self._url)
        else:
            action = self._route_with_headers(routes, host)
        self._action = action
        if type(action) is not ForwardAction:
            return
        parser = self.parser
        config = self._config
        if self.out:  # responses (and 100 Continue) produced before this request go first
            self._responses.write_local(self.out)
        if upgrade:  # (its response ends the connection)
            exchange = self._responses.add_forwarded(
                action, parser.get_method() == b"HEAD", self._http10, True, UpgradeSink
            )
            self.upgrade = (exchange, self._responses.entries[-1].sink)  # type: ignore[assignment]
        else:
            exchange = self._responses.add_forwarded(
                action, parser.get_method() == b"HEAD", self._http10, not parser.should_keep_alive()
            )
        self._exchange = exchange
        peer, local, tls = self._sockets or self._socket_info()
        request = DownstreamRequest(
            parser.get_method(),
            self._url,
            host,
            self._raw_headers or [],
            peer[0] if peer else "",
            peer=peer,
            local=local,
        )
        if upgrade:
            request.upgrade = True
        if tls is not None:
            request.ssl, request.scheme = tls, b"https"
        if self._record is not None:
            exchange.log_to(self._record, config.access_log)
        exchange.start(
            request,
            not self._body_expected and not upgrade,  # an upgrade's body never ends
            self._ctx.clusters,
            config.proxy_policy,
            action.mutations,
        )

    def _socket_info(self) -> tuple[Any, Any, Any]:
        """The connection's peer and local addresses and TLS object, read once."""
        transport = self._connection.transport
        if transport is None:
            return None, None, None
        self._sockets = (
            transport.get_extra_info("peername"),
            transport.get_extra_info("sockname"),
            transport.get_extra_info("ssl_object"),
        )
        return self._sockets

    def _forwarded_request_complete(self) -> None:
        if self.upgrade is not None:
            return  # the request goes on as the upgraded protocol's bytes
        exchange = self._exchange
        self._exchange = None
        if self._record is not None:
            self._record.request_end = time.monotonic()
        if exchange is not None and self._body_expected:
            exchange.request_data(b"", True)
        self.in_request = False
        self.answered = True
        self._config.stats.rq_active.value -= 1
        self._header_pairs = None
        self._raw_headers = None
        self._action = None
        if self.request_started:
            self.request_started = 0.0
        if self._responses.entries:
            # The response is still coming: parse no further request until it is out.
            self._backpressure.start_holding()
        if not self.parser.should_keep_alive() or self._http10:
            self._lifecycle.end_after_responses()
            raise _StopParsing

    # -- access logging (only with an access_log configured) -------------------------------

    def _new_downstream(self) -> Downstream:
        transport = self._connection.transport
        peer = transport.get_extra_info("peername") if transport else None
        local = transport.get_extra_info("sockname") if transport else None
        self._downstream = Downstream(peer, local)
        return self._downstream

    def _new_record(self) -> LogRecord:
        downstream = self._downstream or self._new_downstream()
        return LogRecord(downstream)

    def _log_local(self, record: LogRecord, action: object, head_only: bool) -> None:
        """A request answered here (direct response, 404, redirect)."""
        route_name = None
        if type(action) is DirectResponseAction:
            status, body = action.response.status, len(action.response.body)
            details, route_name = "direct_response", action.route_name
        elif action is None:
            status, body, details = 404, 0, "route_not_found"
            record.flags = "NR"
        elif type(action) is PathRedirect:
            status, body, details = action.status, 0, PATH_NORMALIZATION_FAILED
        else:
            status, body, details = action.status, 0, "direct_response"  # type: ignore[attr-defined]
            route_name = action.route_name  # type: ignore[attr-defined]
        config = self._config
        server = config.proxy_policy.server_name
        sent = 0 if head_only else body
        record.answered_here(status, body, server, details, route_name, sent, True)
        config.access_log.log(record)  # type: ignore[union-attr]

    def _log_gone(self) -> None:
        """The client went away before its request was answered here."""
        record = self._record
        self._record = None
        if record is None:
            return
        if not self.headers_done:
            # The connection manager never saw the request's headers.
            record.method = record.path = record.authority = record.scheme = None
            record.request_headers = []
            record.protocol = "HTTP/1.1"
        record.flags, record.details = "DC", "downstream_remote_disconnect"
        record.end = time.monotonic()
        self._config.access_log.log(record)  # type: ignore[union-attr]

    def _log_error(self, response: LocalResponse) -> None:
        """A local error reply: the request so far (if any), as Envoy logs it."""
        config = self._config
        record = self._record if self.in_request and self._record is not None else None
        self._record = None
        if record is None:
            record = self._new_record()
        flags, details = _ERROR_DETAILS.get(response.status, ("", None))
        if response is config.upgrade_forbidden and record.authority is not None:
            # Envoy routes the request before it refuses the upgrade.
            action = self._routes.route_raw(record.authority, self._url)
            if action is not None:
                record.route_name = action.route_name
                if type(action) is ForwardAction:
                    record.upstream_cluster = action.pick_cluster(_upgrade_rng)
        if response is config.bad_request_no_body:
            flags, details = "", "missing_host_header"
            record.request_end = time.monotonic()
        elif response is config.bad_request:
            flags, details = "DPE", "http1.codec_error"
        elif response is config.path_rejected:
            flags, details = "", PATH_NORMALIZATION_FAILED
        elif response is config.underscore_rejected:
            flags, details = "DPE", "http1.unexpected_underscore"
        elif response is config.request_timeout_reply:
            flags, details = "", "request_overall_timeout"
        elif response is config.stream_timeout_reply:
            flags, details = "SI", "stream_idle_timeout"
        if flags == "DPE":
            # The codec refused the request: the connection manager never saw its headers.
            record.method = record.path = record.authority = record.scheme = None
            record.request_headers = []
            record.protocol = "HTTP/1.1"
        record.flags = flags
        record.details = details
        body = len(response.body)
        record.local_reply(response.status, body, config.proxy_policy.server_name)
        record.bytes_sent = body
        record.end = time.monotonic()
        config.access_log.log(record)  # type: ignore[union-attr]

    # -- the rare paths --------------------------------------------------------------------

    def _underscore_dropped(self) -> bool:
        """A header name with an underscore, on an HCM that drops (True) or refuses them."""
        config = self._config
        stats = config.stats
        if config.underscores is Underscores.DROP_HEADER:
            stats.underscores_dropped.value += 1  # type: ignore[union-attr]
            return True
        stats.underscores_rejected.value += 1  # type: ignore[union-attr]
        stats.cx_protocol_error.value += 1
        self._reject = config.underscore_rejected
        raise _StopParsing

    def _apply_path_rules(self, rules: PathRules) -> None:
        """normalize_path, merge_slashes and path_with_escaped_slashes_action, before
        routing; a refused path is a 400 and the connection closes, a redirect a 307."""
        outcome, self._url = rules.apply(self._url)
        if outcome is PathOutcome.CONTINUE:
            return
        config = self._config
        if outcome is PathOutcome.REDIRECT:
            self._path_redirect = PathRedirect(self._url, config.server_name)
            return
        self._reject_path()

    def _reject_path(self) -> None:
        """A 400 (`path_normalization_failed`); the connection closes."""
        config = self._config
        config.stats.rq_failed_path_normalization.value += 1
        record = self._record
        if record is not None:
            record.path = self._url
            record.authority = self._host
            record.scheme = b"http"
        self._reject = config.path_rejected
        raise _StopParsing

    def _partial_request(self, size: int) -> None:
        """A request is still incomplete after a read: bound its header block and start the
        request timeouts (the rare path; complete requests never come here)."""
        if not self.headers_done:
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
                    self.reply_error(self._config.headers_too_large)
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
        self.last_rx = now
        if not self.request_started:
            self.request_started = now
        self._lifecycle.request_progressed()

    def reply_error(self, response: LocalResponse) -> None:
        """A local error reply: always the last response on this connection."""
        stats = self._config.stats
        if self._config.access_log is not None:
            self._log_error(response)
        if self.in_request:
            self.in_request = False
            stats.rq_active.value -= 1
        else:  # the parser failed before it saw a request begin
            stats.rq_total.value += 1
            stats.rq_http1_total.value += 1
        stats.rq_by_class[response.status // 100].value += 1
        self.out.append(response.render(HTTP_DATE.now(), True))
        self._lifecycle.end_after_responses()
