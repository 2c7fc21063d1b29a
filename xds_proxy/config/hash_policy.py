"""A route's `hash_policy` translated once into the methods that hash a request (frozen); the
hash itself is computed per request by upstream/hash_policy.py.

Envoy's rules (source/common/http/hash_policy.cc): each method gives a hash or nothing; the
hashes of the methods that give one are combined in order, the running value rotated left by
one bit before each XOR; a `terminal` method that has a hash so far ends the list. A
`connection_properties` without `source_ip` adds no method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2


@dataclass(frozen=True, slots=True)
class HeaderHash:
    """The values of a request header (lowercase name; `:authority` or `host`, `:path` and
    `:method` name the request's), sorted, hashed in a chain."""

    name: str
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class CookieHash:
    """The value of a cookie of the request (the first one of that name). With a `ttl`, a
    request without the cookie gets one generated from its connection's addresses, sent back
    in a `set-cookie` (`NAME="VALUE"; Max-Age=TTL; Path=PATH; ATTRIBUTES; HttpOnly`)."""

    name: str
    terminal: bool = False
    ttl_s: int | None = None  # whole seconds, as Envoy
    path: str = ""
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SourceIpHash:
    """The downstream peer's IP address, as text."""

    terminal: bool = False


@dataclass(frozen=True, slots=True)
class QueryParameterHash:
    """The first value of a query parameter (not URL-decoded, as Envoy)."""

    name: str
    terminal: bool = False


HashMethod = HeaderHash | CookieHash | SourceIpHash | QueryParameterHash


def build_hash_policy(
    policies: Sequence[route_components_pb2.RouteAction.HashPolicy], path: str
) -> tuple[HashMethod, ...]:
    """A RouteAction's `hash_policy` list (checked by the support table) as hash methods."""
    methods: list[HashMethod] = []
    for policy in policies:
        kind = policy.WhichOneof("policy_specifier")
        terminal = policy.terminal
        if kind == "header":
            methods.append(HeaderHash(policy.header.header_name.lower(), terminal))
        elif kind == "cookie":
            cookie = policy.cookie
            ttl_s = cookie.ttl.seconds if cookie.HasField("ttl") else None
            attributes = tuple((item.name, item.value) for item in cookie.attributes)
            methods.append(CookieHash(cookie.name, terminal, ttl_s, cookie.path, attributes))
        elif kind == "connection_properties":
            if policy.connection_properties.source_ip:
                methods.append(SourceIpHash(terminal))
        elif kind == "query_parameter":
            methods.append(QueryParameterHash(policy.query_parameter.name, terminal))
    return tuple(methods)
