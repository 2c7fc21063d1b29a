"""Route tables: virtual host selection, route matching, actions, config errors (pure)."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError
from xds_proxy.http.router import (
    DirectResponseAction,
    RedirectAction,
    RequestView,
    RouteTable,
    path_without_query,
)

DATE = b"Sat, 28 Nov 2026 00:00:00 GMT"


def table(config: dict, **kwargs) -> RouteTable:
    """The table after the support table's gate (config/), as the HCM builder receives it."""
    message = json_format.ParseDict(config, route_pb2.RouteConfiguration())
    require_valid(message, "route_config")
    return RouteTable(message, "route_config", **kwargs)


def vhost(name: str, domains: list[str], routes: list[dict] | None = None) -> dict:
    body = {"inline_string": name}
    return {
        "name": name,
        "domains": domains,
        "routes": routes
        if routes is not None
        else [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": body}}],
    }


def route(match: dict, body: str = "ok", status: int = 200) -> dict:
    return {"match": match, "direct_response": {"status": status, "body": {"inline_string": body}}}


def body_of(found) -> str | None:
    if found is None:
        return None
    assert isinstance(found, DirectResponseAction)
    return found.response.body.decode()


# -- virtual host selection ----------------------------------------------------------------

DOMAINS = table(
    {
        "name": "rc",
        "virtual_hosts": [
            vhost("exact", ["example.com", "x.com:8080"]),
            vhost("suffix-long", ["*.b.foo.com"]),
            vhost("suffix", ["*.foo.com"]),
            vhost("suffix-dash", ["*-bar.com"]),
            vhost("prefix", ["api.*"]),
            vhost("prefix-long", ["api.v2.*"]),
            vhost("any", ["*"]),
        ],
    }
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "exact"),
        ("EXAMPLE.com", "exact"),
        ("example.com:99", "any"),  # the port is part of the host by default
        ("x.com:8080", "exact"),
        ("x.com", "any"),
        ("a.foo.com", "suffix"),
        ("a.b.foo.com", "suffix-long"),
        ("b.foo.com", "suffix"),  # "*.b.foo.com" needs at least one character for '*'
        (".foo.com", "any"),  # ...and so does "*.foo.com"
        ("foo.com", "any"),
        ("x-bar.com", "suffix-dash"),
        ("api.example.org", "prefix"),
        ("api.v2.example.org", "prefix-long"),
        ("api.", "any"),
        ("example.com.foo.com", "suffix"),  # suffix wildcards win over prefix ones
        ("", "any"),
    ],
)
def test_virtual_host_precedence(host: str, expected: str) -> None:
    found = DOMAINS.virtual_host(host)
    assert found is not None and found.name == expected


def test_suffix_before_prefix_wildcard() -> None:
    routes = table({"virtual_hosts": [vhost("prefix", ["api.*"]), vhost("suffix", ["*.com"])]})
    assert routes.virtual_host("api.x.com").name == "suffix"  # type: ignore[union-attr]


def test_no_default_virtual_host_means_no_route() -> None:
    routes = table({"virtual_hosts": [vhost("only", ["only.example"])]})
    assert routes.virtual_host("other") is None
    assert routes.route("other", "/", {}) is None
    assert routes.not_found.status == 404


def test_host_cache_returns_same_answers() -> None:
    for _ in range(3):
        assert DOMAINS.virtual_host("a.foo.com").name == "suffix"  # type: ignore[union-attr]
        assert DOMAINS.virtual_host("nothing.example").name == "any"  # type: ignore[union-attr]


@pytest.mark.parametrize("option", ["ignore_port_in_host_matching", "strip_any_host_port"])
def test_port_stripping_options(option: str) -> None:
    config = {"virtual_hosts": [vhost("exact", ["example.com"]), vhost("any", ["*"])]}
    if option == "ignore_port_in_host_matching":
        config["ignore_port_in_host_matching"] = True
        routes = table(config)
    else:
        routes = table(config, strip_any_host_port=True)
    assert routes.virtual_host("example.com:99").name == "exact"  # type: ignore[union-attr]
    assert routes.virtual_host("[::1]:80").name == "any"  # type: ignore[union-attr]


def test_duplicate_domain_is_an_error() -> None:
    with pytest.raises(ConfigError) as error:
        table({"name": "rc", "virtual_hosts": [vhost("a", ["x.com"]), vhost("b", ["X.com"])]})
    assert str(error.value) == (
        "route_config.virtual_hosts[1].domains: Only unique values for domains are permitted. "
        "Duplicate entry of domain x.com in route rc"
    )


# -- route matching ------------------------------------------------------------------------


def single_vhost(routes: list[dict]) -> RouteTable:
    return table({"virtual_hosts": [vhost("v", ["*"], routes)]})


@pytest.mark.parametrize(
    ("match", "path", "matches"),
    [
        ({"prefix": "/api"}, "/api", True),
        ({"prefix": "/api"}, "/api/v1?x=1", True),
        ({"prefix": "/api"}, "/apix", True),
        ({"prefix": "/api"}, "/API", False),
        ({"prefix": "/api", "case_sensitive": False}, "/API/x", True),
        ({"prefix": ""}, "/anything", True),
        ({"path": "/exact"}, "/exact", True),
        ({"path": "/exact"}, "/exact?q=1", True),
        ({"path": "/exact"}, "/exact#frag", True),
        ({"path": "/exact"}, "/exact/", False),
        ({"path": "/exact"}, "/EXACT", False),
        ({"path": "/exact", "case_sensitive": False}, "/EXACT", True),
        ({"safe_regex": {"regex": "/v[0-9]+/.*"}}, "/v12/users", True),
        ({"safe_regex": {"regex": "/v[0-9]+/.*"}}, "/v12/users?x", True),
        ({"safe_regex": {"regex": "/v[0-9]+"}}, "/v12/users", False),  # full match
        ({"safe_regex": {"regex": "/v[0-9]+"}}, "/x/v12", False),
        ({"prefix": "/a?b"}, "/a?b", False),  # the query string is not part of the path
    ],
)
def test_path_matchers(match: dict, path: str, matches: bool) -> None:
    routes = single_vhost([route(match, "hit")])
    assert (body_of(routes.route("h", path, {})) == "hit") is matches


def test_first_matching_route_wins() -> None:
    routes = single_vhost(
        [
            route({"path": "/a"}, "exact"),
            route({"prefix": "/a"}, "prefix"),
            route({"prefix": "/"}, "all"),
        ]
    )
    assert body_of(routes.route("h", "/a", {})) == "exact"
    assert body_of(routes.route("h", "/ab", {})) == "prefix"
    assert body_of(routes.route("h", "/b", {})) == "all"


HEADER_CASES = [
    # (header matcher, request headers, matches)
    ({"name": "x-a", "exact_match": "1"}, {"x-a": "1"}, True),
    ({"name": "x-a", "exact_match": "1"}, {"x-a": "2"}, False),
    ({"name": "x-a", "exact_match": "1"}, {}, False),
    ({"name": "X-A", "exact_match": "1"}, {"x-a": "1"}, True),  # names are case-insensitive
    ({"name": "x-a", "prefix_match": "ab"}, {"x-a": "abc"}, True),
    ({"name": "x-a", "suffix_match": "bc"}, {"x-a": "abc"}, True),
    ({"name": "x-a", "contains_match": "b"}, {"x-a": "abc"}, True),
    ({"name": "x-a", "contains_match": "z"}, {"x-a": "abc"}, False),
    ({"name": "x-a", "present_match": True}, {"x-a": ""}, True),
    ({"name": "x-a", "present_match": True}, {}, False),
    ({"name": "x-a", "present_match": False}, {}, True),
    ({"name": "x-a", "present_match": False}, {"x-a": "1"}, False),
    ({"name": "x-a"}, {"x-a": "1"}, True),  # no specifier: present
    ({"name": "x-a"}, {}, False),
    ({"name": "x-a", "string_match": {"exact": "AbC", "ignore_case": True}}, {"x-a": "abc"}, True),
    ({"name": "x-a", "string_match": {"exact": "AbC"}}, {"x-a": "abc"}, False),
    ({"name": "x-a", "string_match": {"prefix": "ab"}}, {"x-a": "abc"}, True),
    ({"name": "x-a", "string_match": {"suffix": "BC", "ignore_case": True}}, {"x-a": "abc"}, True),
    ({"name": "x-a", "string_match": {"contains": "b"}}, {"x-a": "abc"}, True),
    ({"name": "x-a", "string_match": {"safe_regex": {"regex": "a.c"}}}, {"x-a": "abc"}, True),
    ({"name": "x-a", "string_match": {"safe_regex": {"regex": "a."}}}, {"x-a": "abc"}, False),
    ({"name": "x-a", "safe_regex_match": {"regex": "[0-9]+"}}, {"x-a": "123"}, True),
    ({"name": "x-a", "range_match": {"start": 10, "end": 20}}, {"x-a": "10"}, True),
    ({"name": "x-a", "range_match": {"start": 10, "end": 20}}, {"x-a": "20"}, False),
    ({"name": "x-a", "range_match": {"start": 10, "end": 20}}, {"x-a": "x"}, False),
    # invert_match: an absent header matches only an inverted present_match.
    ({"name": "x-a", "exact_match": "1", "invert_match": True}, {"x-a": "2"}, True),
    ({"name": "x-a", "exact_match": "1", "invert_match": True}, {"x-a": "1"}, False),
    ({"name": "x-a", "exact_match": "1", "invert_match": True}, {}, False),
    ({"name": "x-a", "present_match": True, "invert_match": True}, {}, True),
    ({"name": "x-a", "present_match": True, "invert_match": True}, {"x-a": "1"}, False),
    # treat_missing_header_as_empty
    (
        {"name": "x-a", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
        {},
        True,
    ),
    # pseudo headers
    ({"name": ":method", "exact_match": "POST"}, {":method": "POST"}, True),
    ({"name": ":authority", "exact_match": "h"}, {"host": "h"}, True),
    # repeated headers are joined with ","
    ({"name": "x-a", "exact_match": "1,2"}, {"x-a": "1,2"}, True),
]


@pytest.mark.parametrize(("matcher", "headers", "matches"), HEADER_CASES)
def test_header_matchers(matcher: dict, headers: dict, matches: bool) -> None:
    routes = single_vhost([route({"prefix": "/", "headers": [matcher]}, "hit")])
    assert routes.needs_headers
    assert (body_of(routes.route("h", "/", headers)) == "hit") is matches


def test_all_header_matchers_must_hold() -> None:
    routes = single_vhost(
        [
            route(
                {
                    "prefix": "/",
                    "headers": [
                        {"name": "a", "exact_match": "1"},
                        {"name": "b", "exact_match": "2"},
                    ],
                },
                "hit",
            )
        ]
    )
    assert body_of(routes.route("h", "/", {"a": "1", "b": "2"})) == "hit"
    assert routes.route("h", "/", {"a": "1"}) is None


def test_tables_without_header_matchers_do_not_need_headers() -> None:
    assert not single_vhost([route({"prefix": "/"})]).needs_headers


# -- actions -------------------------------------------------------------------------------


def request(path: str = "/", host: str = "h", head: bool = False) -> RequestView:
    return RequestView("HEAD" if head else "GET", host, path, head)


def test_direct_response_bytes_with_body() -> None:
    action = single_vhost([route({"prefix": "/"}, "hello\n")]).route("h", "/", {})
    assert isinstance(action, DirectResponseAction)
    status, data = action.render(request(), DATE, False)
    assert status == 200
    assert data == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\ncontent-type: text/plain\r\n"
        b"date: " + DATE + b"\r\nserver: envoy\r\n\r\nhello\n"
    )
    _, closing = action.render(request(), DATE, True)
    assert closing.endswith(b"server: envoy\r\nconnection: close\r\n\r\nhello\n")
    _, head = action.render(request(head=True), DATE, False)
    assert head.endswith(b"server: envoy\r\n\r\n") and b"content-length: 6" in head


@pytest.mark.parametrize(
    ("status", "tail"),
    [
        (200, b"server: envoy\r\ncontent-length: 0\r\n\r\n"),
        (204, b"server: envoy\r\n\r\n"),
        (503, b"server: envoy\r\ncontent-length: 0\r\n\r\n"),
    ],
)
def test_direct_response_without_body(status: int, tail: bytes) -> None:
    config = {"match": {"prefix": "/"}, "direct_response": {"status": status}}
    action = single_vhost([config]).route("h", "/", {})
    _, data = action.render(request(), DATE, False)  # type: ignore[union-attr]
    assert data.startswith(f"HTTP/1.1 {status} ".encode())
    assert data.endswith(b"date: " + DATE + b"\r\n" + tail)
    assert b"content-type" not in data


def test_closing_response_without_body_puts_connection_before_length() -> None:
    rendered = single_vhost([]).not_found.render(DATE, True)
    assert rendered.endswith(b"server: envoy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")


def test_server_name_is_used() -> None:
    message = json_format.ParseDict(
        {"virtual_hosts": [vhost("v", ["*"])]}, route_pb2.RouteConfiguration()
    )
    action = RouteTable(message, "rc", server="edge").route("h", "/", {})
    assert b"\r\nserver: edge\r\n" in action.render(request(), DATE, False)[1]  # type: ignore[union-attr]


def test_inline_bytes_body() -> None:
    config = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_bytes": "AAE="}},
    }
    action = single_vhost([config]).route("h", "/", {})
    assert action.render(request(), DATE, False)[1].endswith(b"\r\n\r\n\x00\x01")  # type: ignore[union-attr]


def redirect(config: dict, match: dict | None = None) -> RedirectAction:
    routes = single_vhost([{"match": match or {"prefix": "/"}, "redirect": config}])
    action = routes.route("h", (match or {}).get("prefix", "/") or "/", {})
    assert isinstance(action, RedirectAction)
    return action


@pytest.mark.parametrize(
    ("config", "path", "host", "location", "status"),
    [
        ({"path_redirect": "/new"}, "/old", "h", "http://h/new", 301),
        ({"path_redirect": "/new"}, "/old?x=1", "h", "http://h/new?x=1", 301),
        ({"path_redirect": "/new", "strip_query": True}, "/old?x=1", "h", "http://h/new", 301),
        ({"path_redirect": "/new?y=2"}, "/old?x=1", "h", "http://h/new?y=2", 301),
        ({"https_redirect": True}, "/p?q", "h", "https://h/p?q", 301),
        ({"https_redirect": True}, "/p", "h:80", "https://h/p", 301),
        (
            {"scheme_redirect": "https", "port_redirect": 8443},
            "/p",
            "h:80",
            "https://h:8443/p",
            301,
        ),
        ({"host_redirect": "other"}, "/p", "h", "http://other/p", 301),
        ({"port_redirect": 81}, "/p", "h:80", "http://h:81/p", 301),
        ({"response_code": "FOUND"}, "/p", "h", "http://h/p", 302),
        ({"response_code": "SEE_OTHER"}, "/p", "h", "http://h/p", 303),
        ({"response_code": "TEMPORARY_REDIRECT"}, "/p", "h", "http://h/p", 307),
        ({"response_code": "PERMANENT_REDIRECT"}, "/p", "h", "http://h/p", 308),
    ],
)
def test_redirects(config: dict, path: str, host: str, location: str, status: int) -> None:
    action = redirect(config)
    assert action.location(request(path, host)) == location
    got_status, data = action.render(request(path, host), DATE, False)
    assert got_status == status
    assert data.startswith(f"HTTP/1.1 {status} ".encode())
    assert f"\r\nlocation: {location}\r\ndate: ".encode() in data
    assert data.endswith(b"server: envoy\r\ncontent-length: 0\r\n\r\n")


def test_prefix_rewrite_redirect() -> None:
    action = redirect({"prefix_rewrite": "/v2/"}, {"prefix": "/v1/"})
    assert action.location(request("/v1/users?x=1")) == "http://h/v2/users?x=1"


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            [{"match": {"prefix": "/"}}],
            "route_config.virtual_hosts[0].routes[0]: one of route, redirect, direct_response, "
            "filter_action, non_forwarding_action is required",
        ),
        (
            [{"match": {"prefix": "/", "grpc": {}}, "direct_response": {"status": 200}}],
            "route_config.virtual_hosts[0].routes[0].match.grpc: not supported",
        ),
        (
            [{"match": {"safe_regex": {"regex": "("}}, "direct_response": {"status": 200}}],
            "route_config.virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex '(': "
            "missing ), unterminated subpattern at position 0",
        ),
        (
            [{"match": {"prefix": "/"}, "direct_response": {"status": 99}}],
            "route_config.virtual_hosts[0].routes[0].direct_response.status: must be >= 200, "
            "got 99",
        ),
        (
            [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "x" * 4097}},
                }
            ],
            "route_config.virtual_hosts[0].routes[0].direct_response.body: response body size "
            "is 4097 bytes; maximum is 4096",
        ),
        (
            [
                {
                    "match": {"prefix": "/"},
                    "redirect": {"path_redirect": "/x"},
                    "response_headers_to_add": [{"header": {"key": "a", "value": "b"}}],
                }
            ],
            "route_config.virtual_hosts[0].routes[0].response_headers_to_add: not supported yet",
        ),
        (
            [
                {
                    "match": {"prefix": "/"},
                    "redirect": {"regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}},
                }
            ],
            "route_config.virtual_hosts[0].routes[0].redirect.regex_rewrite: not supported",
        ),
        (
            [
                {
                    "match": {"prefix": "/", "headers": [{"name": ""}]},
                    "direct_response": {"status": 200},
                }
            ],
            "route_config.virtual_hosts[0].routes[0].match.headers[0].name: must not be empty",
        ),
    ],
)
def test_config_errors(routes: list[dict], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        single_vhost(routes)
    assert str(error.value) == message


def test_route_metadata_is_accepted() -> None:
    config = {"match": {"prefix": "/"}, "direct_response": {"status": 200}}
    config["metadata"] = {"filter_metadata": {"team": {"owner": "web"}}}
    assert single_vhost([config]).route("h", "/", {}) is not None


def test_vhost_without_domains_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"virtual_hosts\[0\].domains: must have at least 1"):
        table({"virtual_hosts": [{"name": "v", "routes": []}]})


def test_larger_body_allowed_by_route_config() -> None:
    config = {
        "max_direct_response_body_size_bytes": 10000,
        "virtual_hosts": [vhost("v", ["*"], [route({"prefix": "/"}, "x" * 5000)])],
    }
    assert len(body_of(table(config).route("h", "/", {})) or "") == 5000


def test_unknown_route_config_field_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^route_config.vhds: not supported$"):
        table({"vhds": {"config_source": {"ads": {}}}})


@pytest.mark.parametrize(
    ("path", "stripped"),
    [("/a?b#c", "/a"), ("/a#c?b", "/a"), ("/a", "/a"), ("", ""), ("?x", "")],
)
def test_path_without_query(path: str, stripped: str) -> None:
    assert path_without_query(path) == stripped
