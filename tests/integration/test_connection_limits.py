"""Connection limits on a real xds-proxy process: the overload manager's global limit
(`global_downstream_max_connections`, `ignore_global_conn_limit`) and the
`envoy.filters.network.connection_limit` filter before an HCM or a tcp_proxy."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import pytest

from tests.helpers.certs import CertificateAuthority
from tests.helpers.h2_client import H2Client
from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import hcm, http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import TcpEcho, cluster_dict
from tests.integration.test_chain_matching import TLS_INSPECTOR, inspector
from tests.integration.test_downstream_tls import tls_chain, tls_connection
from xds_proxy.stats import listener_stat_prefix

GLOBAL_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
DC_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
CL_TYPE = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def overload_manager(max_connections: int) -> dict[str, Any]:
    return {
        "resource_monitors": [
            {
                "name": GLOBAL_MONITOR,
                "typed_config": {
                    "@type": DC_TYPE,
                    "max_active_downstream_connections": max_connections,
                },
            }
        ]
    }


def connection_limit(stat_prefix: str, max_connections: int, delay: str | None = None) -> dict:
    config: dict[str, Any] = {
        "@type": CL_TYPE,
        "stat_prefix": stat_prefix,
        "max_connections": max_connections,
    }
    if delay is not None:
        config["delay"] = delay
    return {"name": "envoy.filters.network.connection_limit", "typed_config": config}


def start_proxy(tmp_path, listeners: list[dict], **bootstrap: Any) -> ProxyProcess:
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, **bootstrap.pop("static", {})},
        **bootstrap,
    }
    proxy = ProxyProcess(doc, tmp_path, log_level="warning")
    proxy.start()
    try:
        proxy.wait_ready()
    except Exception:
        proxy.stop()
        raise
    return proxy


def served(conn: HttpConnection, body: str) -> bool:
    response = conn.request("/")
    return response.status == 200 and response.text == body


def closed_without_answer(port: int, timeout: float = 3.0) -> bool:
    """Connect, send a request; True when the proxy closes the connection without a byte."""
    conn = HttpConnection(port)
    try:
        try:
            conn.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return True
        conn.sock.settimeout(timeout)
        try:
            return conn.sock.recv(100) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    finally:
        conn.close()


@pytest.fixture
def proxies():
    started: list[ProxyProcess] = []
    yield started
    for proxy in started:
        proxy.stop()


def test_global_limit_closes_connections_over_it_and_spares_opted_out_listeners(
    tmp_path, proxies
) -> None:
    counted_port, exempt_port = free_port(), free_port()
    proxy = start_proxy(
        tmp_path,
        [
            http_listener("counted", counted_port, "counted"),
            http_listener("exempt", exempt_port, "exempt", ignore_global_conn_limit=True),
        ],
        overload_manager=overload_manager(2),
    )
    proxies.append(proxy)
    prefix = listener_stat_prefix("127.0.0.1", counted_port)
    held = [HttpConnection(counted_port) for _ in range(2)]
    assert all(served(conn, "counted") for conn in held)
    assert closed_without_answer(counted_port)
    assert proxy.stat(prefix + "downstream_global_cx_overflow") == 1
    assert proxy.stat(f"overload.{GLOBAL_MONITOR}.failed_updates") == 1
    assert proxy.stat(prefix + "downstream_cx_total") == 2  # the refused one never became one
    # The opted-out listener neither counts nor is limited; admin answers too.
    exempt = [HttpConnection(exempt_port) for _ in range(3)]
    assert all(served(conn, "exempt") for conn in exempt)
    assert proxy.get("/ready") == (200, "LIVE\n")
    assert closed_without_answer(counted_port)
    assert proxy.stat(prefix + "downstream_global_cx_overflow") == 2
    # A counted connection closes: its slot is free again.
    held.pop().close()
    wait_for(lambda: proxy.stat(prefix + "downstream_cx_active") == 1, timeout=5)
    again = HttpConnection(counted_port)
    assert served(again, "counted")
    assert proxy.stat(prefix + "downstream_global_cx_overflow") == 2
    for conn in [*held, *exempt, again]:
        conn.close()


def test_a_global_limit_slot_is_held_by_a_connection_in_its_listener_filters(
    tmp_path, proxies
) -> None:
    """The slot is taken at accept (as Envoy's), not when a filter chain takes over: a client
    that connects and sends nothing still holds it, and gives it back when it leaves."""
    port = free_port()
    listener = http_listener(
        "inspected",
        port,
        "ok",
        listener_filters=[
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                },
            }
        ],
    )
    proxy = start_proxy(tmp_path, [listener], overload_manager=overload_manager(1))
    proxies.append(proxy)
    prefix = listener_stat_prefix("127.0.0.1", port)
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    wait_for(lambda: proxy.stat(prefix + "downstream_pre_cx_active") == 1, timeout=5)
    assert closed_without_answer(port)
    assert proxy.stat(prefix + "downstream_global_cx_overflow") == 1
    silent.close()
    wait_for(lambda: proxy.stat(prefix + "downstream_pre_cx_active") == 0, timeout=5)
    conn = HttpConnection(port)
    assert served(conn, "ok")
    conn.close()


def test_connection_limit_before_an_hcm_closes_the_extra_connection_after_its_delay(
    tmp_path, proxies
) -> None:
    port = free_port()
    listener = http_listener(
        "limited",
        port,
        chains=[{"filters": [connection_limit("web", 1, delay="0.5s"), hcm("ok")]}],
    )
    proxy = start_proxy(tmp_path, [listener])
    proxies.append(proxy)
    assert proxy.stat("connection_limit.web.limited_connections") == 0
    assert proxy.stat("connection_limit.web.active_connections") == 0
    first = HttpConnection(port)
    assert served(first, "ok")
    extra = HttpConnection(port)
    started = time.monotonic()
    extra.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    wait_for(lambda: proxy.stat("connection_limit.web.limited_connections") == 1, timeout=3)
    # During the delay the rejected connection counts, in the filter and in its listener.
    assert proxy.stat("connection_limit.web.active_connections") == 2
    assert proxy.stat(listener_stat_prefix("127.0.0.1", port) + "downstream_cx_active") == 2
    assert extra.closed_by_peer(timeout=3)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 2.5, elapsed
    extra.close()
    wait_for(lambda: proxy.stat("connection_limit.web.active_connections") == 1, timeout=3)
    assert served(first, "ok")  # the admitted connection was never disturbed
    first.close()
    wait_for(lambda: proxy.stat("connection_limit.web.active_connections") == 0, timeout=3)
    after = HttpConnection(port)
    assert served(after, "ok")
    after.close()


def test_connection_limit_before_a_tcp_proxy(tmp_path, proxies) -> None:
    with TcpEcho() as echo:
        port = free_port()
        tcp = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "cluster": "echo"},
        }
        listener = http_listener(
            "tcp", port, chains=[{"filters": [connection_limit("tcp", 2), tcp]}]
        )
        proxy = start_proxy(
            tmp_path, [listener], static={"clusters": [cluster_dict("echo", [echo.port])]}
        )
        proxies.append(proxy)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        for index, client in enumerate(clients):
            client.sendall(b"hello %d" % index)
            assert client.recv(100) == b"hello %d" % index
        refused = socket.create_connection(("127.0.0.1", port), timeout=5)
        with contextlib.suppress(ConnectionResetError):  # closed: FIN, or RST (unread data)
            assert refused.recv(100) == b""
        refused.close()
        assert proxy.stat("connection_limit.tcp.limited_connections") == 1
        wait_for(lambda: proxy.stat("connection_limit.tcp.active_connections") == 2, timeout=3)
        assert echo.connections == 2  # the refused one never reached the upstream
        for client in clients:
            client.close()
        wait_for(lambda: proxy.stat("connection_limit.tcp.active_connections") == 0, timeout=3)


def test_an_http2_connection_on_an_auto_codec_holds_one_slot(tmp_path, proxies) -> None:
    """With `codec_type: AUTO` the HTTP/1.1 protocol hands an HTTP/2 connection over to the
    HTTP/2 one: still one connection for the limit, and none once it closes."""
    port = free_port()
    listener = http_listener(
        "auto", port, chains=[{"filters": [connection_limit("auto", 1), hcm("ok")]}]
    )
    proxy = start_proxy(tmp_path, [listener])
    proxies.append(proxy)
    client = H2Client(port)
    try:
        response = client.response(client.request("/"))
        assert response.status == 200
        assert proxy.stat("connection_limit.auto.active_connections") == 1
        assert closed_without_answer(port)
        assert proxy.stat("connection_limit.auto.limited_connections") == 1
    finally:
        client.close()
    wait_for(lambda: proxy.stat("connection_limit.auto.active_connections") == 0, timeout=3)
    conn = HttpConnection(port)
    assert served(conn, "ok")
    conn.close()


def test_limits_on_a_tls_chain(tmp_path, proxies) -> None:
    """The global slot is held through the TLS handshake and the served connection; the
    `connection_limit` before the HCM counts the TLS connections of its chain."""
    ca = CertificateAuthority("limits-ca")
    port = free_port()
    tls = tls_chain("secure", ca.issue("server", dns_names=["a.example.com"]))
    tls["filters"].insert(0, connection_limit("tls", 1))
    listener = http_listener("tls", port, chains=[tls], listener_filters=[inspector(TLS_INSPECTOR)])
    proxy = start_proxy(tmp_path, [listener], overload_manager=overload_manager(2))
    proxies.append(proxy)
    prefix = listener_stat_prefix("127.0.0.1", port)
    first = tls_connection(port, ca, "a.example.com")
    assert served(first, "secure")
    # Closed by the filter: Envoy decides before the handshake, xds-proxy after it (the chain's
    # protocol is created then), so the client sees either a failed handshake or EOF.
    with pytest.raises(OSError):  # ssl.SSLError and ConnectionError are OSErrors
        second = tls_connection(port, ca, "a.example.com")
        try:
            second.request("/")
        finally:
            second.close()
    assert proxy.stat("connection_limit.tls.limited_connections") == 1
    wait_for(lambda: proxy.stat(prefix + "downstream_cx_active") == 1, timeout=5)
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # takes the 2nd slot
    wait_for(lambda: proxy.stat(prefix + "downstream_pre_cx_active") == 1, timeout=5)
    assert closed_without_answer(port)
    assert proxy.stat(prefix + "downstream_global_cx_overflow") == 1
    silent.close()
    first.close()
    wait_for(lambda: proxy.stat("connection_limit.tls.active_connections") == 0, timeout=5)
    wait_for(lambda: proxy.stat(prefix + "downstream_pre_cx_active") == 0, timeout=5)
    again = tls_connection(port, ca, "a.example.com")
    assert served(again, "secure")
    again.close()
