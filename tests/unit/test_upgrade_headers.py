"""The header rules of an upgrade (http/http1_upgrade.py, upstream/stream.py): the type a
request asks for, what a forwarded upgrade keeps, what its response keeps."""

from __future__ import annotations

from xds_proxy.http.http1_upgrade import upgrade_type
from xds_proxy.upstream.stream import HOP_BY_HOP, UPGRADE_HOP_BY_HOP, upgrade_response_headers


def test_upgrade_type_is_the_first_upgrade_header_lowercase() -> None:
    headers = [(b"connection", b"Upgrade"), (b"upgrade", b" WebSocket "), (b"upgrade", b"h2c")]
    assert upgrade_type(headers) == "websocket"
    assert upgrade_type([(b"connection", b"upgrade")]) == ""
    assert upgrade_type(None) == ""


def test_an_upgrade_request_keeps_connection_and_upgrade_only() -> None:
    assert {b"connection", b"upgrade"} == HOP_BY_HOP - UPGRADE_HOP_BY_HOP


def test_a_response_accepting_the_upgrade_keeps_its_upgrade_headers() -> None:
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", b"x"),
        (b"keep-alive", b"timeout=5"),
        (b"server", b"upstream"),
    ]
    assert upgrade_response_headers(101, headers) == headers[:3]


def test_any_other_response_loses_them() -> None:
    headers = [(b"connection", b"close"), (b"upgrade", b"websocket"), (b"content-length", b"4")]
    assert upgrade_response_headers(403, headers) == [(b"content-length", b"4")]
    no_upgrade_token = [(b"connection", b"keep-alive"), (b"upgrade", b"websocket")]
    assert upgrade_response_headers(101, no_upgrade_token) == []
