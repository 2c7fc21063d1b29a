"""A route's `hash_policy`: the builder (config/hash_policy.py) and the request hash
(upstream/hash_policy.py), with Envoy's rules (the same picks as Envoy:
tests/interop/test_hash_balancing_interop.py)."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format

from xds_proxy.config.hash_policy import (
    CookieHash,
    HashMethod,
    HeaderHash,
    QueryParameterHash,
    SourceIpHash,
    build_hash_policy,
)
from xds_proxy.upstream.hash_policy import (
    RequestHash,
    address_text,
    cookie_value,
    query_parameter,
    request_hash,
)
from xds_proxy.xxhash64 import xxhash64

MASK = (1 << 64) - 1


def build(policies: list[dict]) -> tuple[HashMethod, ...]:
    action = json_format.ParseDict(
        {"cluster": "c", "hash_policy": policies}, route_components_pb2.RouteAction()
    )
    return build_hash_policy(action.hash_policy, "route")


def hash_of(
    methods: tuple[HashMethod, ...],
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    url: bytes = b"/",
    authority: bytes = b"example.com",
    remote_ip: str = "10.1.2.3",
) -> int | None:
    return request_hash(methods, b"GET", url, authority, list(headers), remote_ip).key


def rotl(value: int) -> int:
    return ((value << 1) | (value >> 63)) & MASK


def test_builder() -> None:
    assert build(
        [
            {"header": {"header_name": "X-Key"}, "terminal": True},
            {"cookie": {"name": "s"}},
            {"connection_properties": {"source_ip": True}},
            {"connection_properties": {"source_ip": False}},  # adds nothing, as Envoy
            {"query_parameter": {"name": "q"}},
        ]
    ) == (
        HeaderHash("x-key", True),
        CookieHash("s"),
        SourceIpHash(),
        QueryParameterHash("q"),
    )
    assert build([]) == ()


def test_header_hash() -> None:
    methods = build([{"header": {"header_name": "x-key"}}])
    assert hash_of(methods, [(b"x-key", b"abc")]) == xxhash64("abc")
    assert hash_of(methods, [(b"other", b"abc")]) is None
    # Several values: sorted, each hash seeding the next; the order sent does not matter.
    both = xxhash64("b", xxhash64("a"))
    assert hash_of(methods, [(b"x-key", b"b"), (b"x-key", b"a")]) == both
    assert hash_of(methods, [(b"x-key", b"a"), (b"x", b"_"), (b"x-key", b"b")]) == both


@pytest.mark.parametrize("name", [":authority", "host"])
def test_authority_path_and_method(name: str) -> None:
    assert hash_of(build([{"header": {"header_name": name}}]), authority=b"h") == xxhash64("h")
    path = build([{"header": {"header_name": ":path"}}])
    assert hash_of(path, url=b"/a?b") == xxhash64("/a?b")
    assert hash_of(build([{"header": {"header_name": ":method"}}])) == xxhash64("GET")


def test_cookie_hash() -> None:
    methods = build([{"cookie": {"name": "session"}}])
    assert hash_of(methods, [(b"cookie", b"a=1; session=xyz; b=2")]) == xxhash64("xyz")
    assert hash_of(methods, [(b"cookie", b"a=1"), (b"cookie", b'session="q"')]) == xxhash64("q")
    assert hash_of(methods, [(b"cookie", b"a=1; sessionx=1")]) is None
    assert hash_of(methods, [(b"cookie", b"session=")]) is None  # empty: no hash, as Envoy


def test_cookie_parsing_as_envoy() -> None:
    headers = [(b"cookie", b"  k=v ; bad; x=1;k=second")]
    assert cookie_value(headers, b"k") == b"v "  # leading spaces trimmed from the name only
    assert cookie_value(headers, b"bad") == b""
    assert cookie_value(headers, b"x") == b"1"


def test_query_parameter_hash() -> None:
    methods = build([{"query_parameter": {"name": "user"}}])
    assert hash_of(methods, url=b"/p?x=1&user=u7&user=z") == xxhash64("u7")
    assert hash_of(methods, url=b"/p?user") == xxhash64("")
    assert hash_of(methods, url=b"/p?users=1") is None
    assert hash_of(methods, url=b"/p") is None
    assert query_parameter(b"/?a=%20", b"a") == b"%20"  # not decoded


def test_source_ip_hash() -> None:
    methods = build([{"connection_properties": {"source_ip": True}}])
    assert hash_of(methods, remote_ip="::1") == xxhash64("::1")
    assert hash_of(methods, remote_ip="") is None


def test_policies_combine_by_rotating_and_xoring() -> None:
    methods = build([{"header": {"header_name": "x-a"}}, {"header": {"header_name": "x-b"}}])
    a, b = xxhash64("1"), xxhash64("2")
    assert hash_of(methods, [(b"x-a", b"1"), (b"x-b", b"2")]) == rotl(a) ^ b
    assert hash_of(methods, [(b"x-b", b"2")]) == b  # the first gave nothing
    assert hash_of(methods, [(b"x-a", b"1")]) == a
    # The same policy twice does not cancel out.
    twice = build([{"header": {"header_name": "x-a"}}] * 2)
    assert hash_of(twice, [(b"x-a", b"1")]) == rotl(a) ^ a != 0


def test_terminal_ends_the_list_once_there_is_a_hash() -> None:
    methods = build(
        [
            {"header": {"header_name": "x-a"}, "terminal": True},
            {"header": {"header_name": "x-b"}},
        ]
    )
    a, b = xxhash64("1"), xxhash64("2")
    assert hash_of(methods, [(b"x-a", b"1"), (b"x-b", b"2")]) == a
    assert hash_of(methods, [(b"x-b", b"2")]) == b  # no hash yet: the next one counts
    later = build(
        [
            {"header": {"header_name": "x-a"}},
            {"header": {"header_name": "x-b"}, "terminal": True},
            {"header": {"header_name": "x-c"}},
        ]
    )
    headers = [(b"x-a", b"1"), (b"x-c", b"3")]
    # x-b gives nothing, but it is terminal and there is a hash so far (x-a's): Envoy stops.
    assert hash_of(later, headers) == a
    assert hash_of(later, [(b"x-c", b"3")]) == xxhash64("3")


def test_a_ttl_cookie_is_generated_when_the_request_has_none() -> None:
    methods = build(
        [
            {
                "cookie": {
                    "name": "sticky",
                    "ttl": "3600.5s",
                    "path": "/app",
                    "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "Secure"}],
                }
            }
        ]
    )
    assert methods == (
        CookieHash("sticky", False, 3600, "/app", (("SameSite", "Lax"), ("Secure", ""))),
    )
    connection = address_text(("10.0.0.9", 51000)) + address_text(("::1", 80))
    assert connection == "10.0.0.9:51000[::1]:80"
    value = b"%016x" % xxhash64(connection)
    found = request_hash(methods, b"GET", b"/", b"h", [], "10.0.0.9", connection)
    assert found == RequestHash(
        xxhash64(value),
        b'sticky="' + value + b'"; Max-Age=3600; Path=/app; SameSite=Lax; Secure; HttpOnly',
    )
    # A request with the cookie is hashed by it, and gets no new one.
    sent = [(b"cookie", b"sticky=" + value)]
    assert request_hash(methods, b"GET", b"/", b"h", sent, "", connection) == RequestHash(
        xxhash64(value)
    )
    # A zero ttl: a session cookie (no Max-Age).
    session = build([{"cookie": {"name": "s", "ttl": "0s"}}])
    generated = request_hash(session, b"GET", b"/", b"h", [], "", connection).set_cookie
    assert generated == b's="' + value + b'"; HttpOnly'
    # Without a ttl nothing is generated.
    assert request_hash(
        build([{"cookie": {"name": "s"}}]), b"GET", b"/", b"h", [], "", connection
    ) == RequestHash(None)
