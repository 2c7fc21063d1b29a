"""HTTP/1.1 upgrades (WebSocket) through xds-proxy with a real WebSocket upstream
(tests/helpers/websocket.py) and a raw-socket client: bytes both ways, big payloads with
back-pressure, early data sent with the handshake, the stream counted while it lasts and
the upstream connection never reused. tests/interop/test_upgrade_interop.py compares the
same behaviour with Envoy's."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.helpers.websocket import BINARY, TEXT, WebSocketEcho, WsClient, encode_frame, status_of
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route

WS = [{"upgrade_type": "websocket"}]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict]:
    servers = {"ws": WebSocketEcho(), "h1": Http1Echo()}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def proxy(upstreams, tmp_path_factory) -> Iterator[ProxyProcess]:
    port = free_port()
    listener = http_listener(port, [route("/plain", "h1"), route("/", "ws")], upgrade_configs=WS)
    # A small buffer limit: back-pressure starts early.
    listener["per_connection_buffer_limit_bytes"] = 32768
    clusters = [
        cluster_dict("ws", [upstreams["ws"].port], per_connection_buffer_limit_bytes=32768),
        cluster_dict("h1", [upstreams["h1"].port]),
    ]
    process = ProxyProcess(bootstrap([listener], clusters), tmp_path_factory.mktemp("proxy"))
    process.start()
    try:
        process.wait_ready()
        process.http_port = port  # type: ignore[attr-defined]
        yield process
    finally:
        process.stop()


def _stat(proxy: ProxyProcess, name: str) -> int:
    return proxy.stat(name) or 0


def test_session_is_counted_while_it_lasts_and_its_connection_never_reused(proxy) -> None:
    connections = _stat(proxy, "cluster.ws.upstream_cx_total")
    client = WsClient(proxy.http_port)
    assert status_of(client.handshake()) == 101
    assert _stat(proxy, "http.ingress.downstream_cx_upgrades_active") == 1
    assert _stat(proxy, "http.ingress.downstream_rq_active") == 1
    client.send(b"one", TEXT)
    assert client.recv_frame() == (TEXT, b"one")
    client.send(b"close-me", TEXT)
    assert client.recv_frame() == (0x8, b"\x03\xe8")
    assert client.read_rest() == b""
    client.close()
    wait_for(lambda: _stat(proxy, "http.ingress.downstream_cx_upgrades_active") == 0)
    assert _stat(proxy, "http.ingress.downstream_rq_active") == 0
    # The next session gets a new upstream connection.
    second = WsClient(proxy.http_port)
    assert status_of(second.handshake()) == 101
    second.close()
    assert _stat(proxy, "cluster.ws.upstream_cx_total") == connections + 2


def test_early_data_sent_with_the_handshake_reaches_the_upstream(proxy) -> None:
    client = WsClient(proxy.http_port)
    request = (
        b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    client.sock.sendall(request + encode_frame(TEXT, b"early", True))
    assert status_of(client.read_head()) == 101
    assert client.recv_frame() == (TEXT, b"early")
    client.close()


def test_big_payloads_both_ways_with_a_client_that_reads_late(proxy) -> None:
    """The client sends 8 MiB before it reads anything: its socket fills, the proxy stops
    reading the upstream (counted) but keeps reading the client, and every byte comes back."""
    paused = _stat(proxy, "cluster.ws.upstream_flow_control_paused_reading_total")
    client = WsClient(proxy.http_port, timeout=30)
    assert status_of(client.handshake()) == 101
    payloads = [bytes([index]) * 262144 for index in range(32)]
    sender = threading.Thread(target=lambda: [client.send(p, BINARY) for p in payloads])
    sender.start()
    sender.join(30)
    assert not sender.is_alive(), "the proxy stopped reading the client"
    wait_for(
        lambda: _stat(proxy, "cluster.ws.upstream_flow_control_paused_reading_total") > paused,
        what="the upstream paused",
    )
    for payload in payloads:
        assert client.recv_frame() == (BINARY, payload)
    client.close()


def test_an_upstream_that_stops_reading_stops_the_client_being_read(proxy, upstreams) -> None:
    """The upstream stops reading: the proxy stops reading the client, whose socket fills
    (it would buffer everything otherwise); once the upstream reads again every byte is
    echoed."""
    client = WsClient(proxy.http_port, timeout=30)
    assert status_of(client.handshake()) == 101
    client.send(b"pause", TEXT)
    wait_for(lambda: upstreams["ws"].paused, what="the upstream paused")
    frames = b"".join(encode_frame(BINARY, bytes([i]) * 262144, True) for i in range(128))
    client.sock.setblocking(False)
    sent = 0
    try:
        while sent < len(frames):
            sent += client.sock.send(frames[sent : sent + 65536])
    except BlockingIOError:
        pass
    assert sent < len(frames), "32 MiB went in while the upstream read nothing"
    client.sock.settimeout(30)
    upstreams["ws"].resume_reading()
    sender = threading.Thread(target=client.sock.sendall, args=(frames[sent:],))
    sender.start()
    for i in range(128):
        assert client.recv_frame() == (BINARY, bytes([i]) * 262144)
    sender.join(30)
    client.close()


def test_upgrade_to_a_plain_http_upstream_is_an_ordinary_response(proxy) -> None:
    """An upstream that does not speak the upgrade (Http1Echo's parser gives up on it and
    closes) gets a normal answer to the client, with `connection: close` (Envoy's too)."""
    client = WsClient(proxy.http_port)
    head = client.handshake("/plain")
    assert status_of(head) == 503
    assert "connection: close" in head.lower()
    assert client.read_rest().endswith(b"reset reason: connection termination")
    client.close()
