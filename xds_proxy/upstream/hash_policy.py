"""A request's hash for the ring hash and Maglev balancers, from its route's `hash_policy`
(config/hash_policy.py builds the methods). Pure.

As Envoy (source/common/http/hash_policy.cc): a header's values are sorted and hashed in a
chain (each value's xxHash64 seeds the next); a cookie, a query parameter or the source IP is
the xxHash64 of its text; the methods' hashes combine as `rotl(previous, 1) ^ hash`; a
terminal method with a hash so far ends the list. None: no method gave a hash (the balancer
then picks a random host). A cookie method with a `ttl` whose cookie the request lacks
generates it: the hex xxHash64 of the connection's addresses (`REMOTE` and `LOCAL` as
`ip:port`, concatenated), hashed like a received one and returned as a `set-cookie` value
for the response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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


class RequestHash(NamedTuple):
    key: int | None  # None: no method gave a hash
    set_cookie: bytes | None = None  # a generated cookie, for the response's `set-cookie`


def request_hash(
    methods: Sequence[HashMethod],
    method: bytes,
    url: bytes,
    authority: bytes,
    headers: Sequence[Header],
    remote_ip: str,
    connection: str = "",
) -> RequestHash:
    """The request's hash; `headers` are the downstream headers (lowercase names, without
    `host`), `url` the path with its query as received, `connection` the remote and local
    addresses as Envoy writes them one after the other (for a generated cookie)."""
    combined: int | None = None
    set_cookie: bytes | None = None
    for hash_method in methods:
        if type(hash_method) is CookieHash and hash_method.ttl_s is not None:
            found, generated = _cookie_or_new(hash_method, headers, connection)
            set_cookie = generated or set_cookie
        else:
            found = _evaluate(hash_method, method, url, authority, headers, remote_ip)
        if found is not None:
            previous = 0 if combined is None else ((combined << 1) | (combined >> 63)) & _MASK
            combined = previous ^ found
        if hash_method.terminal and combined is not None:
            break
    return RequestHash(combined, set_cookie)


def _cookie_or_new(
    cookie: CookieHash, headers: Sequence[Header], connection: str
) -> tuple[int, bytes | None]:
    """A ttl cookie's hash, and the `set-cookie` value when it had to be generated."""
    value = cookie_value(headers, cookie.name.encode())
    if value:
        return xxhash64(value), None
    if not connection:  # (Envoy hashes an empty value when it has no addresses)
        return xxhash64(b""), None
    generated = b"%016x" % xxhash64(connection)
    return xxhash64(generated), set_cookie_value(cookie, generated)


def set_cookie_value(cookie: CookieHash, value: bytes) -> bytes:
    """Envoy's `makeSetCookieValue(name, value, path, ttl, httponly=true, attributes)`."""
    parts = [b'%s="%s"' % (cookie.name.encode(), value)]
    if cookie.ttl_s:
        parts.append(b"Max-Age=%d" % cookie.ttl_s)
    if cookie.path:
        parts.append(b"Path=" + cookie.path.encode())
    for name, attribute in cookie.attributes:
        parts.append(name.encode() + (b"=" + attribute.encode() if attribute else b""))
    parts.append(b"HttpOnly")
    return b"; ".join(parts)


def address_text(address: tuple | None) -> str:
    """A socket address as Envoy's `asString()`: `1.2.3.4:80`, `[::1]:80`."""
    if not address:
        return ""
    ip, port = address[0], address[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
