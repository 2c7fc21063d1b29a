"""A request's hash for the ring hash and Maglev balancers, from its route's `hash_policy`
(config/hash_policy.py builds the methods). Pure.

As Envoy (source/common/http/hash_policy.cc): a header's values are sorted and hashed in a
chain (each value's xxHash64 seeds the next); a cookie, a query parameter or the source IP is
the xxHash64 of its text; the methods' hashes combine as `rotl(previous, 1) ^ hash`; a
terminal method with a hash so far ends the list. None: no method gave a hash (the balancer
then picks a random host).
"""

from __future__ import annotations

from collections.abc import Sequence

from xds_proxy.config.hash_policy import (
    CookieHash,
    HashMethod,
    HeaderHash,
    QueryParameterHash,
    SourceIpHash,
)
from xds_proxy.upstream.stream import Header
from xds_proxy.xxhash64 import xxhash64

_MASK = (1 << 64) - 1


def request_hash(
    methods: Sequence[HashMethod],
    method: bytes,
    url: bytes,
    authority: bytes,
    headers: Sequence[Header],
    remote_ip: str,
) -> int | None:
    """The request's hash; `headers` are the downstream headers (lowercase names, without
    `host`), `url` the path with its query as received."""
    combined: int | None = None
    for hash_method in methods:
        found = _evaluate(hash_method, method, url, authority, headers, remote_ip)
        if found is not None:
            previous = 0 if combined is None else ((combined << 1) | (combined >> 63)) & _MASK
            combined = previous ^ found
        if hash_method.terminal and combined is not None:
            break
    return combined


def _evaluate(
    hash_method: HashMethod,
    method: bytes,
    url: bytes,
    authority: bytes,
    headers: Sequence[Header],
    remote_ip: str,
) -> int | None:
    if type(hash_method) is HeaderHash:
        return _header_hash(hash_method.name, method, url, authority, headers)
    if type(hash_method) is CookieHash:
        value = cookie_value(headers, hash_method.name.encode())
        return xxhash64(value) if value else None
    if type(hash_method) is QueryParameterHash:
        found = query_parameter(url, hash_method.name.encode())
        return None if found is None else xxhash64(found)
    if type(hash_method) is SourceIpHash:
        return xxhash64(remote_ip) if remote_ip else None
    return None


def _header_hash(
    name: str, method: bytes, url: bytes, authority: bytes, headers: Sequence[Header]
) -> int | None:
    if name in (":authority", "host"):  # Envoy finds `:authority` under `host` too
        values = [authority] if authority else []
    elif name == ":path":
        values = [url]
    elif name == ":method":
        values = [method]
    else:
        wanted = name.encode()
        values = [value for header, value in headers if header == wanted]
    if not values:
        return None
    result = 0
    for value in sorted(values):
        result = xxhash64(value, result)
    return result


def cookie_value(headers: Sequence[Header], name: bytes) -> bytes:
    """The value of cookie `name` in the request's `cookie` headers (quotes removed), or b""
    (Envoy's `parseCookieValue`)."""
    for header, value in headers:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, equals, cookie = pair.lstrip(b" ").partition(b"=")
            if not equals or key != name:
                continue
            if len(cookie) >= 2 and cookie.startswith(b'"') and cookie.endswith(b'"'):
                cookie = cookie[1:-1]
            return cookie
    return b""


def query_parameter(url: bytes, name: bytes) -> bytes | None:
    """The first value of query parameter `name` (b"" when it has no `=`), not decoded."""
    _, mark, query = url.partition(b"?")
    if not mark:
        return None
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == name:
            return value
    return None
