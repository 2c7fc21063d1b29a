"""The Inspection protocol: bytes in any pieces, inspectors in order, timeouts, early close.
Its transport here is a recording stand-in for asyncio's (the loopback tests are in
test_tls.py and tests/integration/test_chain_matching.py)."""

from __future__ import annotations

import asyncio

from tests.unit.test_inspectors import client_hello
from xds_proxy.listener.inspectors import (
    Detected,
    HttpInspector,
    Inspection,
    ListenerFilters,
    TlsInspector,
)
from xds_proxy.stats import Stats

PREFIX = "listener.127.0.0.1_1."


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def start(*inspectors, timeout: float = 5.0, continue_on_timeout: bool = False):
    stats, finished = Stats(), []
    config = ListenerFilters(tuple(inspectors), timeout, continue_on_timeout)
    inspection = Inspection(config, stats, PREFIX, lambda t, d, b: finished.append((d, b)))
    transport = RecordingTransport()
    inspection.connection_made(transport)
    return inspection, transport, stats, finished


async def test_client_hello_in_pieces_is_handed_over_whole() -> None:
    hello = client_hello("a.example.com", ["h2"])
    inspection, transport, stats, finished = start(TlsInspector(), HttpInspector())
    for offset in range(0, len(hello), 10):
        assert not finished
        inspection.data_received(hello[offset : offset + 10])
    assert finished == [(Detected("a.example.com", "tls", ("h2",)), hello)]
    assert stats.value("tls_inspector.tls_found") == 1
    assert stats.value("tls_inspector.sni_found") == 1
    assert stats.value("http_inspector.http11_found") is None  # skipped for TLS
    assert stats.value(PREFIX + "downstream_pre_cx_active") == 0
    assert not transport.closed


async def test_plaintext_goes_through_both_inspectors() -> None:
    inspection, _, stats, finished = start(TlsInspector(), HttpInspector())
    inspection.data_received(b"GET / HT")
    assert not finished  # the TLS inspector knows it is not TLS; HTTP needs the line end
    assert stats.value("tls_inspector.tls_not_found") == 1
    inspection.data_received(b"TP/1.0\r\n\r\n")
    assert finished == [(Detected(application_protocols=("http/1.0",)), b"GET / HTTP/1.0\r\n\r\n")]
    assert stats.value("http_inspector.http10_found") == 1


async def test_order_of_listener_filters_is_kept() -> None:
    # http_inspector first: it sees the ClientHello as not HTTP; then tls_inspector finds TLS.
    inspection, _, stats, finished = start(HttpInspector(), TlsInspector())
    hello = client_hello("b.example.com")
    inspection.data_received(hello)
    assert finished == [(Detected("b.example.com", "tls", ()), hello)]
    assert stats.value("http_inspector.http_not_found") == 1


async def test_too_large_client_hello_closes() -> None:
    inspection, transport, stats, finished = start(TlsInspector(max_client_hello_size=256))
    inspection.data_received(client_hello("c.example.com"))
    assert transport.closed and not finished
    assert stats.value("tls_inspector.client_hello_too_large") == 1
    assert stats.value(PREFIX + "downstream_pre_cx_active") == 0


async def test_malformed_client_hello_continues_unless_configured() -> None:
    bad = b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"
    inspection, transport, _, finished = start(TlsInspector())
    inspection.data_received(bad)
    assert finished == [(Detected(), bad)] and not transport.closed
    inspection, transport, _, finished = start(TlsInspector(close_on_parse_error=True))
    inspection.data_received(bad)
    assert transport.closed and not finished


async def test_peer_closing_first_drops_the_connection() -> None:
    inspection, transport, stats, finished = start(TlsInspector())
    inspection.data_received(b"\x16\x03")
    assert inspection.eof_received() is False
    assert transport.closed and not finished
    inspection.connection_lost(None)
    assert stats.value(PREFIX + "downstream_pre_cx_active") == 0


async def test_timeout_closes() -> None:
    inspection, transport, stats, finished = start(TlsInspector(), timeout=0.05)
    inspection.data_received(b"\x16")
    closed = asyncio.Event()
    transport.close = lambda: closed.set()  # type: ignore[method-assign]
    await asyncio.wait_for(closed.wait(), 2)
    assert not finished
    assert stats.value(PREFIX + "downstream_pre_cx_timeout") == 1


async def test_timeout_continues_with_what_is_known() -> None:
    handed = asyncio.Event()
    stats = Stats()
    finished: list = []
    config = ListenerFilters((TlsInspector(), HttpInspector()), 0.05, True)

    def done(transport, detected, data) -> None:
        finished.append((detected, data))
        handed.set()

    inspection = Inspection(config, stats, PREFIX, done)
    inspection.connection_made(RecordingTransport())
    inspection.data_received(b"GET /")
    await asyncio.wait_for(handed.wait(), 2)
    assert finished == [(Detected(), b"GET /")]
    assert stats.value(PREFIX + "downstream_pre_cx_timeout") == 1
