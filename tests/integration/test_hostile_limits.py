"""Out of file descriptors: the proxy's accept loop meets EMFILE (its RLIMIT_NOFILE lowered
from outside with prlimit) and must neither die nor stop accepting for good."""

from __future__ import annotations

import os
import resource
import socket

import pytest

from tests.helpers.http_client import get
from tests.helpers.listeners import http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def proxy(tmp_path):
    port = free_port()
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [http_listener("limited", port, "ok")]},
    }
    process = ProxyProcess(bootstrap, tmp_path, log_level="warning")
    process.listener_port = port  # type: ignore[attr-defined]
    process.start()
    process.wait_ready()
    yield process
    process.stop()


def test_accept_at_emfile_neither_crashes_nor_stops_for_good(proxy) -> None:
    pid = proxy.process.popen.pid
    port = proxy.listener_port
    assert get(port).text == "ok"
    limit = open_fds(pid) + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(24)]
    try:
        wait_for(lambda: open_fds(pid) >= limit, timeout=5, what="the proxy at its fd limit")
        # At the limit: more connects wait in the backlog or are refused; the process lives.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert proxy.alive(), proxy.log()[-3000:]
    finally:
        for client in clients:
            client.close()
    # Descriptors free again: accepting resumes by itself.
    wait_for(lambda: get(port).text == "ok", timeout=10, what="accepting again after EMFILE")
    assert proxy.get("/ready") == (200, "LIVE\n")
    assert proxy.alive()
