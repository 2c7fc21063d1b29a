"""HTTP/1.1 connections when a drain starts (docs/draining.md), on the real
`xds-proxy` process and on Envoy 1.40 for the part where both must agree."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_http1_proxy import bootstrap

DRAIN_ARGS = ["--drain-time-s", "3", "--drain-strategy", "immediate"]


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def start(kind: type[EnvoyProcess], tmp_path) -> tuple[EnvoyProcess, int]:
    port = free_port()
    process = kind(bootstrap(port, free_port()), tmp_path, extra_args=DRAIN_ARGS).start()
    try:
        process.wait_ready()
    except Exception:
        process.stop()
        raise
    return process, port


@pytest.mark.envoy
@pytest.mark.parametrize("kind", [ProxyProcess, EnvoyProcess], ids=["xds-proxy", "envoy"])
def test_request_in_progress_gets_connection_close(kind, tmp_path) -> None:
    process, port = start(kind, tmp_path)
    try:
        busy = connect(port)
        busy.sendall(b"GET /hello HTTP/1.1\r\nHo")  # a request has begun...
        # ...as the server sees it: both count a request from its first byte.
        wait_for(lambda: process.stat("http.web.downstream_rq_active") == 1, timeout=3)
        assert process.post("/drain_listeners?graceful&skip_exit")[0] == 200
        busy.sendall(b"st: h\r\n\r\n")
        response = read_response(busy)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nconnection: close\r\n" in response
        if kind is ProxyProcess:
            # We close once the response is flushed (RFC 9112 9.6); Envoy keeps the
            # connection until its drain_timeout (a deliberate difference, spec section 4).
            assert closed_by_peer(busy)
        wait_for(lambda: process.stat("http.web.downstream_cx_drain_close") == 1, timeout=3)
    finally:
        process.stop()


def test_idle_keep_alive_connections_are_closed_at_drain_start(tmp_path) -> None:
    """Better than Envoy, which never tells idle connections and cuts them at the deadline."""
    process, port = start(ProxyProcess, tmp_path)
    try:
        idle = [connect(port) for _ in range(3)]
        for sock in idle:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
            assert b"connection: close" not in read_response(sock)
        started = time.monotonic()
        assert process.post("/drain_listeners?graceful&skip_exit")[0] == 200
        for sock in idle:
            assert closed_by_peer(sock)
        assert time.monotonic() - started < 2.0  # long before the 3 s drain deadline
        wait_for(lambda: process.stat("http.web.downstream_cx_drain_close") == 3, timeout=3)
        wait_for(lambda: process.stat("http.web.downstream_cx_active") == 0, timeout=3)
    finally:
        process.stop()
