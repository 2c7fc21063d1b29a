"""Active health checks on Envoy 1.40 and on ours: the same cluster of three hosts (one
answers 200, one answers 503 to everything, one refuses connections), HTTP and TCP checks,
the default panic threshold and a panic threshold of 0. Both proxies must show the same
health flags in `/clusters`, the same healthy count, and send the same requests to the same
kinds of host (panic mode spreads over every host; without panic only healthy hosts serve)."""

from __future__ import annotations

import asyncio
import collections
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, LoopThread, cluster_dict
from tests.integration.test_cds import routed_listener

pytestmark = pytest.mark.envoy

REQUESTS = 30


class Always503:
    """An HTTP/1.1 server that answers every request 503 (a failing health endpoint)."""

    def __init__(self) -> None:
        self.port = 0

    def __enter__(self) -> Always503:
        self._thread = LoopThread()

        async def serve() -> asyncio.AbstractServer:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0)

        self._server = self._thread.run(serve())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nx-upstream: b\r\n"
                    b"content-length: 0\r\n\r\n"
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        self._thread.stop()


def _health_check(kind: str) -> dict[str, Any]:
    check: dict[str, Any] = {
        "timeout": "1s",
        "interval": "0.2s",
        "no_traffic_interval": "0.2s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
    }
    if kind == "http":
        check["http_health_check"] = {"path": "/healthz"}
    else:
        check["tcp_health_check"] = {}
    return check


def _bootstrap(listen_port: int, ports: list[int], kind: str, panic: float | None) -> dict:
    cluster = cluster_dict("backends", ports, health_checks=[_health_check(kind)])
    if panic is not None:
        cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": panic}}
    return {
        "node": {"id": "hc", "cluster": "hc"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [routed_listener(listen_port, "backends")],
            "clusters": [cluster],
        },
    }


def _outcomes(port: int) -> dict[str, int]:
    """REQUESTS GETs on new connections: 'a' (served by the healthy host), 'b' (the 503
    host) or the status of a local reply (the refusing host: 503 from the proxy)."""
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(REQUESTS):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        label = re.search(r"^x-upstream: (\w+)", head, re.MULTILINE)
        seen[label.group(1) if label else f"local {head.split()[1]}"] += 1
    return dict(seen)


def _flags(process: EnvoyProcess, ports: dict[int, str]) -> dict[str, str]:
    _, text = process.get("/clusters")
    flags = {}
    for line in text.splitlines():
        parts = line.split("::")
        if parts[0] == "backends" and len(parts) == 4 and parts[2] == "health_flags":
            flags[ports[int(parts[1].rsplit(":", 1)[1])]] = parts[3]
    return flags


def _scenario(
    process_class: type[EnvoyProcess], workdir: Path, kind: str, panic: float | None
) -> dict[str, Any]:
    with Http1Echo("a") as a, Always503() as b:
        refusing = free_port()
        names = {a.port: "a", b.port: "b", refusing: "c"}
        port = free_port()
        bootstrap = _bootstrap(port, [a.port, b.port, refusing], kind, panic)
        process = process_class(bootstrap, workdir).start()
        try:
            expected_healthy = 1 if kind == "http" else 2
            wait_for(
                lambda: (
                    process.stat("cluster.backends.membership_healthy") == expected_healthy
                    and (process.stat("cluster.backends.health_check.attempt") or 0) >= 6
                ),
                timeout=10,
                what="the first health-check rounds",
            )
            flags = _flags(process, names)
            outcomes = _outcomes(port)
            return {
                "flags": flags,
                "healthy": process.stat("cluster.backends.health_check.healthy"),
                "outcomes": outcomes,
                "panicked": (process.stat("cluster.backends.lb_healthy_panic") or 0) > 0,
            }
        finally:
            process.stop()


@pytest.mark.parametrize(
    ("kind", "panic"),
    [("http", None), ("http", 0.0), ("tcp", None)],
    ids=["http-default-panic", "http-no-panic", "tcp-connect"],
)
def test_health_checks_like_envoy(kind: str, panic: float | None, tmp_path: Path) -> None:
    envoy = _scenario(EnvoyProcess, tmp_path / "envoy", kind, panic)
    ours = _scenario(ProxyProcess, tmp_path / "ours", kind, panic)
    assert ours == envoy
    if kind == "http" and panic is None:
        # 1 healthy of 3 is below the 50 % threshold (x 1.4): every host takes traffic.
        assert envoy["panicked"] and envoy["outcomes"] == {"a": 10, "b": 10, "local 503": 10}
    elif kind == "http":
        assert not envoy["panicked"] and envoy["outcomes"] == {"a": REQUESTS}
    else:
        assert envoy["flags"]["c"] == "/failed_active_hc"
