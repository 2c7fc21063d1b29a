"""`--concurrency N` on a real xds-proxy: worker processes accept on the main process's
sockets, a killed worker loses only its own connections and is replaced, and the global
connection limit counts across workers.

(The drain, churn, hot-restart and admin suites also run with two workers: `make test` runs
them again with `XDS_PROXY_TEST_CONCURRENCY=2`.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from typing import Any

import pytest

from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess, start_with_workers
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_upstream_proxy import http_listener as proxy_listener
from tests.integration.test_upstream_proxy import route

GLOBAL_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
DC_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


def start_proxy(
    tmp_path,
    port: int,
    workers: int = 2,
    listeners: list[dict] | None = None,
    clusters: list[dict] | None = None,
    **bootstrap: Any,
) -> ProxyProcess:
    static = {"listeners": [http_listener("web", port, "hello"), *(listeners or [])]}
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {**static, "clusters": clusters or []},
        **bootstrap,
    }
    return start_with_workers(doc, tmp_path, workers)


def worker_pids(proxy: ProxyProcess) -> dict[int, int]:
    """index -> pid of the workers running now (from the main process's log)."""
    pids: dict[int, int] = {}
    for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", proxy.log()):
        pids[int(index)] = int(pid)
    return pids


def per_worker(proxy: ProxyProcess, port: int, stat: str) -> dict[int, int]:
    prefix = f"listener.127.0.0.1_{port}.worker_"
    found = {}
    for name, value in proxy.stats(re.escape(prefix)).items():
        match = re.fullmatch(re.escape(prefix) + r"(\d+)\." + stat, name)
        if match:
            found[int(match.group(1))] = int(value)
    return found


def served(conn: HttpConnection) -> bool:
    try:
        response = conn.request("/")
    except OSError:
        return False
    return response.status == 200 and response.body == b"hello"


def open_served(proxy: ProxyProcess, port: int, count: int) -> list[HttpConnection]:
    """`count` keep-alive connections, each served once, all counted by the workers."""
    conns = [HttpConnection(port) for _ in range(count)]
    assert all(served(conn) for conn in conns)
    wait_for(lambda: sum(per_worker(proxy, port, "downstream_cx_active").values()) == count)
    return conns


def test_both_workers_accept_on_one_socket_and_stats_are_merged(tmp_path) -> None:
    port = free_port()
    proxy = start_proxy(tmp_path, port)
    try:
        conns = open_served(proxy, port, 40)
        active = per_worker(proxy, port, "downstream_cx_active")
        assert set(active) == {0, 1}
        assert proxy.stat(f"listener.127.0.0.1_{port}.downstream_cx_active") == 40
        assert proxy.stat(f"listener.127.0.0.1_{port}.downstream_cx_total") == 40
        assert proxy.stat("http.ingress_http.downstream_rq_2xx") == 40
        assert proxy.stat("server.concurrency") == 2
        for conn in conns:
            conn.close()
        wait_for(lambda: proxy.stat("server.total_connections") == 0)
    finally:
        proxy.stop()


def test_a_killed_worker_loses_only_its_connections_and_is_replaced(tmp_path) -> None:
    port = free_port()
    proxy = start_proxy(tmp_path, port)
    try:
        conns = open_served(proxy, port, 30)
        on_worker = per_worker(proxy, port, "downstream_cx_active")
        victim = 0 if on_worker.get(0) else 1
        pids = worker_pids(proxy)
        os.kill(pids[victim], signal.SIGKILL)
        killed_at = time.monotonic()
        failed = [conn for conn in conns if not served(conn)]
        # Exactly the victim's connections fail; every other worker's keeps serving.
        assert len(failed) == on_worker[victim]
        survivors = [conn for conn in conns if conn not in failed]
        for _ in range(3):
            assert all(served(conn) for conn in survivors)
        # New connections are served meanwhile (the shared socket never stops accepting).
        for _ in range(10):
            fresh = HttpConnection(port)
            assert served(fresh)
            fresh.close()
        wait_for(lambda: worker_pids(proxy).get(victim) not in (None, pids[victim]), timeout=10)
        wait_for(lambda: proxy.stat("xds_proxy.workers.active") == 2, timeout=10)
        assert proxy.stat("xds_proxy.workers.restarted") == 1

        # The replacement serves: connections land on it again.
        def replacement_accepts() -> bool:
            fresh = HttpConnection(port)
            ok = served(fresh)
            fresh.close()
            return ok and per_worker(proxy, port, "downstream_cx_total").get(victim, 0) > 0

        wait_for(replacement_accepts, timeout=10)
        print(f"replacement serving {time.monotonic() - killed_at:.2f} s after the kill")
        for conn in conns:
            conn.close()
    finally:
        proxy.stop()


@pytest.mark.parametrize("limit", [3])
def test_the_global_connection_limit_counts_across_workers(tmp_path, limit: int) -> None:
    port = free_port()
    overload = {
        "resource_monitors": [
            {
                "name": GLOBAL_MONITOR,
                "typed_config": {"@type": DC_TYPE, "max_active_downstream_connections": limit},
            }
        ]
    }
    proxy = start_proxy(tmp_path, port, overload_manager=overload)
    try:
        held = []
        # Connections spread over both workers; only `limit` of them are served in total.
        for _ in range(limit * 4):
            conn = HttpConnection(port)
            if served(conn):
                held.append(conn)
            else:
                conn.close()
        assert len(held) == limit
        overflow = proxy.stat(f"listener.127.0.0.1_{port}.downstream_global_cx_overflow")
        assert overflow == limit * 3
        # A freed slot can be taken by a connection on either worker.
        held.pop().close()
        wait_for(lambda: proxy.stat("server.total_connections") == limit - 1)
        conn = wait_for(lambda: (c := HttpConnection(port)) and served(c) and c, timeout=5)
        conn.close()
        for conn in held:
            conn.close()
    finally:
        proxy.stop()


def test_clusters_shows_the_workers_per_host_counts(tmp_path) -> None:
    """`/clusters` per-host stats are counted where requests go (the workers) and shown by
    the main process added up, in text and JSON."""
    echo = Http1Echo()
    echo.start()
    port = free_port()
    listener = proxy_listener(port, [route("/", "echo")])
    cluster = cluster_dict("echo", [echo.port])
    proxy = start_proxy(tmp_path, free_port(), listeners=[listener], clusters=[cluster])
    try:
        conns = [HttpConnection(port) for _ in range(6)]
        for conn in conns:
            for _ in range(5):
                assert conn.request("/x").status == 200
        host = f"echo::127.0.0.1:{echo.port}::"
        text = proxy.get("/clusters")[1]
        assert f"{host}rq_total::30\n" in text
        assert f"{host}rq_success::30\n" in text
        # Each worker that served opened its own upstream connection (the kernel may give
        # every connection to one worker).
        serving = [
            count for count in per_worker(proxy, port, "downstream_cx_total").values() if count
        ]
        assert int(re.search(rf"{re.escape(host)}cx_total::(\d+)", text).group(1)) >= len(serving)  # type: ignore[union-attr]
        status = json.loads(proxy.get("/clusters?format=json")[1])["cluster_statuses"]
        (echo_status,) = [found for found in status if found["name"] == "echo"]
        (host_status,) = echo_status["host_statuses"]
        stats = {stat["name"]: int(stat.get("value", 0)) for stat in host_status["stats"]}
        assert stats["rq_total"] == 30
        assert stats["rq_success"] == 30
        for conn in conns:
            conn.close()
    finally:
        proxy.stop()
        echo.stop()
