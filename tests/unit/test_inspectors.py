"""The listener filters' parsers: TLS ClientHello (tls_inspector) and HTTP (http_inspector)."""

from __future__ import annotations

import ssl

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2

from xds_proxy.config.support import check_listener
from xds_proxy.listener.inspectors import (
    NEED_MORE,
    ClientHello,
    HttpInspector,
    TlsInspector,
    TlsVerdict,
    listener_filters,
    parse_client_hello,
    sniff_http,
)


def client_hello(server_name: str | None = None, alpn: list[str] | None = None) -> bytes:
    """The bytes Python's own TLS client sends first."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def split_into_records(hello: bytes, size: int) -> bytes:
    """The same handshake message carried by several TLS records of `size` bytes each."""
    body = hello[5:]
    out = b""
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += hello[:3] + len(piece).to_bytes(2, "big") + piece
    return out


def test_sni_and_alpn() -> None:
    hello = client_hello("api.example.com", ["h2", "http/1.1"])
    assert parse_client_hello(hello) == ClientHello("api.example.com", ("h2", "http/1.1"))


def test_server_name_is_lowercased() -> None:
    assert parse_client_hello(client_hello("API.Example.COM")).server_name == "api.example.com"


def test_no_sni_no_alpn() -> None:
    assert parse_client_hello(client_hello()) == ClientHello("", ())


def test_every_prefix_needs_more() -> None:
    hello = client_hello("a.example.com", ["h2"])
    for cut in range(1, len(hello)):
        assert parse_client_hello(hello[:cut]) is NEED_MORE, cut
    assert parse_client_hello(hello + b"trailing application data") == ClientHello(
        "a.example.com", ("h2",)
    )


@pytest.mark.parametrize("record_size", [1, 7, 100, 256])
def test_client_hello_split_over_records(record_size: int) -> None:
    fragmented = split_into_records(client_hello("b.example.com", ["http/1.1"]), record_size)
    assert parse_client_hello(fragmented) == ClientHello("b.example.com", ("http/1.1",))
    for cut in range(1, len(fragmented), 37):
        assert parse_client_hello(fragmented[:cut]) is NEED_MORE


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0", b"\x00", b"\x16\x02", b"\x80\x2e\x01\x03\x01"],
)
def test_not_tls(data: bytes) -> None:
    assert parse_client_hello(data) is TlsVerdict.NOT_TLS


def test_one_byte_that_could_be_tls_needs_more() -> None:
    assert parse_client_hello(b"\x16") is NEED_MORE
    assert parse_client_hello(b"\x16\x03\x01\x00") is NEED_MORE


def test_too_large() -> None:
    hello = client_hello("c.example.com")
    assert parse_client_hello(hello, limit=len(hello) - 6) is TlsVerdict.TOO_LARGE
    assert isinstance(parse_client_hello(hello, limit=len(hello) - 5), ClientHello)
    huge = b"\x16\x03\x01\x40\x00\x01\x01\x00\x00"  # announces a 64 KiB ClientHello
    assert parse_client_hello(huge) is TlsVerdict.TOO_LARGE


def test_malformed() -> None:
    hello = bytearray(client_hello("d.example.com"))
    not_a_client_hello = bytes(hello[:5]) + b"\x02" + bytes(hello[6:])  # a ServerHello type
    assert parse_client_hello(not_a_client_hello) is TlsVerdict.MALFORMED
    # a message that ends inside its session id
    body = bytes(hello[9 : 9 + 36])
    short = b"\x16\x03\x01" + (len(body) + 4).to_bytes(2, "big") + b"\x01\x00\x00\x24" + body
    assert parse_client_hello(short) is TlsVerdict.MALFORMED
    assert parse_client_hello(b"\x16\x03\x01\x00\x00") is TlsVerdict.MALFORMED


def test_random_bytes_never_raise() -> None:
    import random

    rng = random.Random(7)
    hello = client_hello("e.example.com", ["h2"])
    for _ in range(2000):
        mutated = bytearray(hello)
        for _ in range(rng.randint(1, 5)):
            mutated[rng.randrange(5, len(mutated))] = rng.randrange(256)
        result = parse_client_hello(bytes(mutated))
        assert result is NEED_MORE or isinstance(result, ClientHello | TlsVerdict)


# -- http_inspector ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "http/1.1"),
        (b"POST /upload?x=1 HTTP/1.0\r\n", "http/1.0"),
        (b"GET / HTTP/1.1\n", "http/1.1"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", "h2c"),
        (b"GET / HTTP/2.0\r\n", None),
        (b"GET /\r\n", None),
        (b"\x16\x03\x01\x02\x00", None),
        (b"SSH-2.0-OpenSSH_9.6\r\n", None),
        (b"GET  / HTTP/1.1\r\n", None),
        (b"G(T / HTTP/1.1\r\n", None),
    ],
)
def test_sniff_http(data: bytes, expected: str | None) -> None:
    assert sniff_http(data) == expected


def test_sniff_http_waits_for_the_first_line() -> None:
    line = b"GET /index.html HTTP/1.1\r\n"
    for cut in range(1, len(line)):
        assert sniff_http(line[:cut]) is NEED_MORE, line[:cut]
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for cut in range(1, len(preface)):
        assert sniff_http(preface[:cut]) is NEED_MORE


def test_sniff_http_gives_up_on_a_line_that_cannot_be_http() -> None:
    assert sniff_http(b"GET / HTTP/1.2") is None
    assert sniff_http(b"GET / XTTP") is None
    assert sniff_http(b"GET " + b"a" * 9000) is None  # no line end within the inspected size


# -- listener_filters config ------------------------------------------------------------------


def listener_with(*filters, **fields) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name="l", **fields)
    for message in filters:
        entry = listener.listener_filters.add(name="f")
        entry.typed_config.Pack(message)
    return listener


def test_no_listener_filters() -> None:
    assert listener_filters(listener_pb2.Listener(name="l")) is None


def test_both_inspectors_in_order_with_defaults() -> None:
    config = listener_filters(
        listener_with(tls_inspector_pb2.TlsInspector(), http_inspector_pb2.HttpInspector())
    )
    assert config is not None
    assert config.inspectors == (TlsInspector(), HttpInspector())
    assert config.timeout_s == 15.0
    assert config.continue_on_timeout is False


def test_timeout_and_options() -> None:
    inspector = tls_inspector_pb2.TlsInspector(close_connection_on_client_hello_parsing_errors=True)
    inspector.max_client_hello_size.value = 1024
    listener = listener_with(inspector, continue_on_listener_filters_timeout=True)
    listener.listener_filters_timeout.FromMilliseconds(250)
    config = listener_filters(listener)
    assert config is not None
    assert config.inspectors == (TlsInspector(1024, True),)
    assert config.timeout_s == 0.25
    assert config.continue_on_timeout is True


def test_fingerprinting_is_refused() -> None:
    inspector = tls_inspector_pb2.TlsInspector()
    inspector.enable_ja3_fingerprinting.value = True
    assert (
        "listener_filters[0].typed_config.enable_ja3_fingerprinting: not supported"
        in check_listener(listener_with(inspector))
    )
