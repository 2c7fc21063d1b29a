"""Route tables built once from a `RouteConfiguration`, matched per request.

Everything that can be decided at build time is: domains go into hash tables by kind, regexes
are compiled, direct responses are pre-rendered. Matching follows Envoy: virtual host by
`domains` (exact, then longest `*.suffix`, then longest `prefix.*`, then `*`; the wildcard must
match at least one character; case-insensitive; the port is part of the host unless told
otherwise), then the first route whose `match` holds. Path matchers see the path without its
query string and fragment, as in Envoy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from xds_proxy.codec.responses import LocalResponse, redirect_bytes
from xds_proxy.config.retry import build_virtual_host_retry
from xds_proxy.config.values import read_data_source
from xds_proxy.errors import ConfigError
from xds_proxy.upstream.forward import ForwardAction, HeaderMutations

StringPredicate = Callable[[str], bool]
# Request headers as the router sees them: lowercase name -> values joined with ",".
Headers = Mapping[str, str]

_DEFAULT_MAX_DIRECT_RESPONSE_BODY = 4096
_MISSING = object()
_NO_HEADERS: dict[str, str] = {}
_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}


class RegexError(ConfigError):
    """A regex that does not compile; `re2_text` is the error in RE2's words (what Envoy's
    RDS NACK says, e.g. `missing ): (abc`)."""

    def __init__(self, message: str, re2_text: str) -> None:
        super().__init__(message)
        self.re2_text = re2_text


def _re2_text(pattern: str, error: re.error) -> str:
    """RE2's message for the common errors, from Python's."""
    pos = error.pos or 0
    reason = error.msg
    if reason.startswith("missing ), unterminated subpattern"):
        return f"missing ): {pattern}"
    if reason.startswith("unbalanced parenthesis"):
        return f"unexpected ): {pattern}"
    if reason.startswith("unterminated character set"):
        return f"missing ]: {pattern[pos:]}"
    if reason.startswith("nothing to repeat"):
        return f"missing argument to repetition operator: {pattern[pos : pos + 1]}"
    if reason.startswith("multiple repeat"):
        return f"bad repetition operator: {pattern[max(pos - 1, 0) : pos + 1]}"
    if reason.startswith("bad escape"):
        return f"invalid escape sequence: {pattern[pos : pos + 2]}"
    return f"{reason}: {pattern}"


def compile_regex(regex: regex_pb2.RegexMatcher, path: str) -> re.Pattern[str]:
    try:
        return re.compile(regex.regex)
    except re.error as error:
        raise RegexError(
            f"{path}.regex: invalid regex '{regex.regex}': {error}", _re2_text(regex.regex, error)
        ) from None


def compile_string_matcher(matcher: string_pb2.StringMatcher, path: str) -> StringPredicate:
    """An Envoy `StringMatcher` as a predicate (regexes match the whole string)."""
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        pattern = compile_regex(matcher.safe_regex, f"{path}.safe_regex")
        return lambda value: pattern.fullmatch(value) is not None
    expected: str = getattr(matcher, kind)
    if matcher.ignore_case:
        expected = expected.lower()
        if kind == "exact":
            return lambda value: value.lower() == expected
        if kind == "prefix":
            return lambda value: value.lower().startswith(expected)
        if kind == "suffix":
            return lambda value: value.lower().endswith(expected)
        return lambda value: expected in value.lower()
    if kind == "exact":
        return expected.__eq__
    if kind == "prefix":
        return lambda value: value.startswith(expected)
    if kind == "suffix":
        return lambda value: value.endswith(expected)
    return lambda value: expected in value


class HeaderCondition:
    """One `HeaderMatcher`, with Envoy's rules for absent headers and `invert_match`."""

    __slots__ = (
        "_match_value",
        "_present",
        "invert",
        "is_present_match",
        "missing_as_empty",
        "name",
    )

    def __init__(self, matcher: route_components_pb2.HeaderMatcher, path: str) -> None:
        name = matcher.name.lower()
        self.name = "host" if name == ":authority" else name
        self.invert = matcher.invert_match
        self.missing_as_empty = matcher.treat_missing_header_as_empty
        self.is_present_match = False
        self._present = True
        kind = matcher.WhichOneof("header_match_specifier")
        self._match_value: StringPredicate
        if kind is None:
            # Envoy: no specifier means "the header is present".
            self.is_present_match = True
            self._match_value = lambda value: True
        elif kind == "present_match":
            self.is_present_match = True
            self._present = matcher.present_match
            present = matcher.present_match
            self._match_value = lambda value: present
        elif kind == "string_match":
            self._match_value = compile_string_matcher(matcher.string_match, f"{path}.string_match")
        elif kind == "safe_regex_match":
            pattern = compile_regex(matcher.safe_regex_match, f"{path}.safe_regex_match")
            self._match_value = lambda value: pattern.fullmatch(value) is not None
        elif kind == "range_match":
            start, end = matcher.range_match.start, matcher.range_match.end
            self._match_value = lambda value: _in_range(value, start, end)
        else:
            expected: str = getattr(matcher, kind)
            self._match_value = {
                "exact_match": lambda value: value == expected,
                "prefix_match": lambda value: value.startswith(expected),
                "suffix_match": lambda value: value.endswith(expected),
                "contains_match": lambda value: expected in value,
            }[kind]

    def matches(self, headers: Headers) -> bool:
        value = headers.get(self.name)
        if value is None:
            if not self.missing_as_empty:
                if self.invert:
                    return self.is_present_match and self._present
                return self.is_present_match and not self._present
            value = ""
        return self._match_value(value) != self.invert


def _in_range(value: str, start: int, end: int) -> bool:
    try:
        number = int(value)
    except ValueError:
        return False
    return start <= number < end


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a route action needs to know about the request."""

    method: str
    host: str
    path: str  # path with query, as received
    head_only: bool


class DirectResponseAction:
    __slots__ = ("response", "route_name")

    def __init__(self, response: LocalResponse) -> None:
        self.response = response
        self.route_name = ""  # the route's name (access logs' ROUTE_NAME)

    def render(self, request: RequestView, date: bytes, close: bool) -> tuple[int, bytes]:
        return self.response.status, self.response.render(date, close, request.head_only)


class RedirectAction:
    """Envoy's `redirect`: scheme, host, port, path or prefix rewrite, query stripping."""

    __slots__ = (
        "host",
        "path",
        "port",
        "prefix",
        "prefix_rewrite",
        "route_name",
        "scheme",
        "server",
        "status",
        "strip_query",
    )

    def __init__(
        self,
        redirect: route_components_pb2.RedirectAction,
        path: str,
        route_prefix: str | None,
        server: str,
    ) -> None:
        self.scheme = "https" if redirect.https_redirect else (redirect.scheme_redirect or None)
        self.host = redirect.host_redirect or None
        self.port = redirect.port_redirect or None
        self.path = redirect.path_redirect if redirect.HasField("path_redirect") else None
        has_rewrite = redirect.HasField("prefix_rewrite")
        self.prefix_rewrite = redirect.prefix_rewrite if has_rewrite else None
        if self.prefix_rewrite is not None and route_prefix is None:
            raise ConfigError(f"{path}.prefix_rewrite: needs a route matching on 'prefix'")
        self.prefix = route_prefix or ""
        self.strip_query = redirect.strip_query
        self.status = _REDIRECT_CODES.get(redirect.response_code, 301)
        self.server = server
        self.route_name = ""  # the route's name (access logs' ROUTE_NAME)

    def location(self, request: RequestView) -> str:
        scheme = self.scheme or "http"
        host = self.host if self.host is not None else request.host
        if self.port is not None:
            host = f"{_strip_port(host)}:{self.port}"
        elif self.scheme is not None:
            host = _strip_default_port(host)
        original_path, _, query = request.path.partition("?")
        if self.path is not None:
            new_path, has_query, new_query = self.path.partition("?")
            if has_query:
                query = new_query
            path = new_path
        elif self.prefix_rewrite is not None:
            path = self.prefix_rewrite + original_path[len(self.prefix) :]
        else:
            path = original_path
        if self.strip_query or not query:
            return f"{scheme}://{host}{path}"
        return f"{scheme}://{host}{path}?{query}"

    def render(self, request: RequestView, date: bytes, close: bool) -> tuple[int, bytes]:
        return self.status, redirect_bytes(
            self.status, self.location(request), date, close, self.server
        )


RouteAction = DirectResponseAction | RedirectAction | ForwardAction


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if ":" in host else host


def _strip_default_port(host: str) -> str:
    if host.endswith((":80", ":443")):
        return _strip_port(host)
    return host


def path_without_query(path: str) -> str:
    end = len(path)
    for mark in "?#":
        found = path.find(mark)
        if found != -1 and found < end:
            end = found
    return path[:end]


# Path matcher kinds, small ints for a cheap dispatch in the per-request loop.
_PREFIX, _PATH, _REGEX = 0, 1, 2


class Route:
    __slots__ = ("action", "case_sensitive", "headers", "kind", "name", "regex", "value")

    def __init__(
        self,
        route: route_components_pb2.Route,
        path: str,
        server: str,
        max_body: int,
        outer_mutations: tuple[HeaderMutations, ...] = (),
    ) -> None:
        self.name = route.name
        match = route.match
        match_path = f"{path}.match"
        kind = match.WhichOneof("path_specifier")
        self.case_sensitive = not match.HasField("case_sensitive") or match.case_sensitive.value
        self.regex: re.Pattern[str] | None = None
        self.value = ""
        if kind == "prefix":
            self.kind = _PREFIX
            self.value = match.prefix
        elif kind == "path":
            self.kind = _PATH
            self.value = match.path
        else:  # safe_regex (the table accepts these three)
            self.kind = _REGEX
            self.regex = compile_regex(match.safe_regex, f"{match_path}.safe_regex")
        if not self.case_sensitive:
            self.value = self.value.lower()
        headers = match.headers
        self.headers = (
            tuple(
                HeaderCondition(header, f"{match_path}.headers[{index}]")
                for index, header in enumerate(headers)
            )
            if headers
            else ()
        )
        action_kind = route.WhichOneof("action")
        levels = (HeaderMutations(route, path), *outer_mutations)
        if action_kind == "redirect":
            # Response header mutations on redirects are not built yet.
            for level in levels:
                if level.has_response:
                    raise ConfigError(f"{level.response_field}: not supported yet")
        if action_kind == "direct_response":
            added: list[tuple[bytes, bytes]] = []
            for level in levels:  # route, virtual host, route configuration: Envoy's order
                if level.response_adds or level.response_removes:
                    level.apply_response(added)
            self.action: RouteAction = DirectResponseAction(
                _direct_response(
                    route.direct_response,
                    f"{path}.direct_response",
                    server,
                    max_body,
                    tuple(added),
                )
            )
        elif action_kind == "redirect":
            self.action = RedirectAction(
                route.redirect,
                f"{path}.redirect",
                self.value if self.kind == _PREFIX else None,
                server,
            )
        else:  # route (the table accepts these three)
            matched = match.prefix if kind == "prefix" else match.path if kind == "path" else ""
            forward = ForwardAction(route.route, f"{path}.route", kind, matched)
            # Most specific first: route, virtual host, route configuration (Envoy's order).
            forward.mutations = tuple(level for level in levels if not level.empty)
            self.action = forward
        self.action.route_name = route.name

    def matches(self, path: str, headers: Headers) -> bool:
        if not self.case_sensitive:
            path = path.lower()
        kind = self.kind
        if kind == _PREFIX:
            if not path.startswith(self.value):
                return False
        elif kind == _PATH:
            if path != self.value:
                return False
        elif self.regex.fullmatch(path) is None:  # type: ignore[union-attr]
            return False
        return all(header.matches(headers) for header in self.headers)


def _direct_response(
    action: route_components_pb2.DirectResponseAction,
    path: str,
    server: str,
    max_body: int,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> LocalResponse:
    body = b""
    if action.HasField("body"):
        body = read_data_source(action.body, f"{path}.body")
        if len(body) > max_body:
            raise ConfigError(
                f"{path}.body: response body size is {len(body)} bytes; maximum is {max_body}"
            )
    return LocalResponse(action.status, body, server, headers)


def _route_cluster_names(action: route_components_pb2.RouteAction) -> list[str]:
    if action.WhichOneof("cluster_specifier") == "weighted_clusters":
        return [entry.name for entry in action.weighted_clusters.clusters]
    return [action.cluster]


class VirtualHost:
    __slots__ = ("forwards", "name", "needs_headers", "routes")

    def __init__(
        self,
        vhost: route_components_pb2.VirtualHost,
        path: str,
        server: str,
        max_body: int,
        outer_mutations: tuple[HeaderMutations, ...] = (),
    ) -> None:
        self.name = vhost.name
        mutations = (HeaderMutations(vhost, path), *outer_mutations)
        self.routes = tuple(
            Route(route, f"{path}.routes[{index}]", server, max_body, mutations)
            for index, route in enumerate(vhost.routes)
        )
        self.needs_headers = any(route.headers for route in self.routes)
        self.forwards = any(type(route.action) is ForwardAction for route in self.routes)
        host_retry = build_virtual_host_retry(vhost, path)
        for route in self.routes:
            if type(route.action) is ForwardAction:
                route.action.use_virtual_host(host_retry)

    def find(self, path: str, headers: Headers) -> RouteAction | None:
        path = path_without_query(path)
        for route in self.routes:
            if route.matches(path, headers):
                return route.action
        return None


class RouteTable:
    """A `RouteConfiguration`, ready for per-request lookups."""

    _HOST_CACHE_LIMIT = 1024
    _ROUTE_CACHE_LIMIT = 4096

    def __init__(
        self,
        config: route_pb2.RouteConfiguration,
        path: str,
        server: str = "envoy",
        strip_any_host_port: bool = False,
    ) -> None:
        config_mutations = (HeaderMutations(config, path),)
        max_body = _DEFAULT_MAX_DIRECT_RESPONSE_BODY
        if config.HasField("max_direct_response_body_size_bytes"):
            max_body = config.max_direct_response_body_size_bytes.value
        self.strip_port = strip_any_host_port or config.ignore_port_in_host_matching
        self.server = server
        self.not_found = LocalResponse(404, b"", server)
        self._exact: dict[str, VirtualHost] = {}
        suffixes: dict[int, dict[str, VirtualHost]] = {}
        prefixes: dict[int, dict[str, VirtualHost]] = {}
        self._default: VirtualHost | None = None
        seen: set[str] = set()
        for index, proto in enumerate(config.virtual_hosts):
            vhost_path = f"{path}.virtual_hosts[{index}]"
            vhost = VirtualHost(proto, vhost_path, server, max_body, config_mutations)
            for domain in proto.domains:
                domain = domain.lower()
                if domain in seen:
                    raise ConfigError(
                        f"{vhost_path}.domains: Only unique values for domains are permitted. "
                        f"Duplicate entry of domain {domain} in route {config.name}"
                    )
                seen.add(domain)
                if domain == "*":
                    self._default = vhost
                elif domain.startswith("*"):
                    suffixes.setdefault(len(domain) - 1, {})[domain[1:]] = vhost
                elif domain.endswith("*"):
                    prefixes.setdefault(len(domain) - 1, {})[domain[:-1]] = vhost
                else:
                    self._exact[domain] = vhost
        # Longest wildcard first, as Envoy.
        self._suffixes = sorted(suffixes.items(), reverse=True)
        self._prefixes = sorted(prefixes.items(), reverse=True)
        self._host_cache: dict[str, VirtualHost | None] = {}
        self._route_cache: dict[tuple[bytes, bytes], RouteAction | None] = {}
        self.needs_headers = any(
            vhost.needs_headers
            for vhost in (
                *self._exact.values(),
                *(v for _, table in self._suffixes for v in table.values()),
                *(v for _, table in self._prefixes for v in table.values()),
                *((self._default,) if self._default else ()),
            )
        )
        self.forwards = any(
            vhost.forwards
            for vhost in (
                *self._exact.values(),
                *(v for _, table in self._suffixes for v in table.values()),
                *(v for _, table in self._prefixes for v in table.values()),
                *((self._default,) if self._default else ()),
            )
        )
        # Envoy checks an inline route table's clusters when it loads (validate_clusters
        # defaults to true there); the HCM builder does, with the cluster manager at hand.
        self.validate_clusters = (
            config.validate_clusters.value if config.HasField("validate_clusters") else True
        )
        self.cluster_names = frozenset(
            name
            for vhost in config.virtual_hosts
            for route in vhost.routes
            if route.WhichOneof("action") == "route"
            for name in _route_cluster_names(route.route)
        )

    def virtual_host(self, host: str) -> VirtualHost | None:
        cached = self._host_cache.get(host, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        found = self._lookup(host)
        if len(self._host_cache) >= self._HOST_CACHE_LIMIT:
            self._host_cache.clear()
        self._host_cache[host] = found
        return found

    def _lookup(self, host: str) -> VirtualHost | None:
        host = host.lower()
        if self.strip_port:
            host = _strip_port(host)
        found = self._exact.get(host)
        if found is not None:
            return found
        size = len(host)
        for length, table in self._suffixes:
            if length < size:
                found = table.get(host[size - length :])
                if found is not None:
                    return found
        for length, table in self._prefixes:
            if length < size:
                found = table.get(host[:length])
                if found is not None:
                    return found
        return self._default

    def route_raw(self, host: bytes, url: bytes) -> RouteAction | None:
        """The per-request fast path for tables without header matchers: answers are cached
        by raw host and URL, so a repeated request costs one dict lookup."""
        key = (host, url)
        found = self._route_cache.get(key, _MISSING)
        if found is _MISSING:
            found = self.route(host.decode("latin-1"), url.decode("latin-1"), _NO_HEADERS)
            if len(self._route_cache) >= self._ROUTE_CACHE_LIMIT:
                self._route_cache.clear()
            self._route_cache[key] = found
        return found  # type: ignore[return-value]

    def route(self, host: str, path: str, headers: Headers) -> RouteAction | None:
        vhost = self.virtual_host(host)
        if vhost is None:
            return None
        return vhost.find(path, headers)


class RouteHandle:
    """The route table an HCM serves, held so that it can be swapped under live connections
    (RDS delivers a new table for the same HCM): a connection reads `current` once per request
    and keeps that table for the request's whole life."""

    __slots__ = ("current",)

    def __init__(self, table: RouteTable) -> None:
        self.current = table


def build_route_table(
    config: route_pb2.RouteConfiguration,
    path: str,
    server: str = "envoy",
    strip_any_host_port: bool = False,
) -> RouteTable:
    return RouteTable(config, path, server, strip_any_host_port)


def joined_headers(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Request headers as matchers see them: lowercase names, repeated values joined by ','."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous},{value}"
    return headers
