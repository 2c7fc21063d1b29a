"""`--concurrency N`: one active health checker and one outlier detector, in the main process,
as Envoy has on its main thread. Real proxy processes with two workers, real upstreams:

- an upstream sees one checker's health checks, not one per process;
- a host whose first check fails in the main process gets no request from any worker (every
  worker's own first check would have passed);
- 5 consecutive 503s of a host, spread over both workers, eject it (each worker saw fewer
  than 5), and then no worker sends it a request;
- `/clusters` and the `health_check.*` / `outlier_detection.*` stats show one set of numbers.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import threading
import time
from typing import Any

from tests.helpers.http_client import HttpConnection, Response
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess, start_with_workers
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_cds import cds_bootstrap, routed_listener

WORKERS = 2
HEALTH_PATH = "/healthz"


class Upstream(Http1Echo):
    """An Http1Echo that answers health checks (`HEALTH_PATH`) with `health` (one status per
    check, then `health_after`), other requests with `status`, and notes when each came."""

    def __init__(
        self,
        label: str,
        status: int = 200,
        health: tuple[int, ...] = (),
        health_after: int = 200,
    ) -> None:
        super().__init__(label)
        self.status = status
        self.health = list(health)
        self.health_after = health_after
        self.checks: list[float] = []  # monotonic times of the health checks
        self.served: list[dict[str, str]] = []  # the other requests' headers
        self._lock = threading.Lock()

    def render(
        self, request: dict[str, Any], headers: dict[str, str], keep_alive: bool
    ) -> tuple[bytes, bool]:
        with self._lock:
            if request["path"] == HEALTH_PATH:
                self.checks.append(time.monotonic())
                status = self.health.pop(0) if self.health else self.health_after
            else:
                self.served.append(headers)
                status = self.status
        head = f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nx-upstream: {self.label}\r\n\r\n"
        return head.encode(), not keep_alive


def _check(interval: str) -> dict[str, Any]:
    return {
        "timeout": "1s",
        "interval": interval,
        "no_traffic_interval": interval,
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "http_health_check": {"path": HEALTH_PATH},
    }


def _start(tmp_path, port: int, cluster: dict[str, Any]) -> ProxyProcess:
    bootstrap = {
        "node": {"id": "workers-health", "cluster": "workers-health"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [routed_listener(port, "backends")],
            "clusters": [cluster],
        },
    }
    return start_with_workers(bootstrap, tmp_path, WORKERS)


def _accepted(proxy: ProxyProcess, port: int) -> dict[int, int]:
    """Connections each worker accepted so far."""
    prefix = f"listener.127.0.0.1_{port}.worker_"
    found = {}
    for name, value in proxy.stats(re.escape(prefix)).items():
        match = re.fullmatch(re.escape(prefix) + r"(\d+)\.downstream_cx_total", name)
        if match:
            found[int(match.group(1))] = int(value)
    return found


def _counted(proxy: ProxyProcess, port: int, total: int) -> dict[int, int] | None:
    accepted = _accepted(proxy, port)
    return accepted if sum(accepted.values()) == total else None


def _one_per_worker(proxy: ProxyProcess, port: int) -> dict[int, HttpConnection]:
    """A keep-alive connection on each worker (the kernel spreads them: open one at a time,
    each counted by the worker that took it, until every worker has one)."""
    mine: dict[int, HttpConnection] = {}
    spare: list[HttpConnection] = []
    for _ in range(200):
        before = _accepted(proxy, port)
        total = sum(before.values()) + 1
        conn = HttpConnection(port)
        after = wait_for(functools.partial(_counted, proxy, port, total), what="the count")
        worker = next(i for i, n in after.items() if n != before.get(i, 0))
        if worker in mine:
            spare.append(conn)
        else:
            mine[worker] = conn
        if len(mine) == WORKERS:
            break
    for conn in spare:
        conn.close()
    assert len(mine) == WORKERS, "the kernel gave every connection to one worker"
    return mine


def _get(conn: HttpConnection, sender: str) -> Response:
    conn.sock.sendall(f"GET / HTTP/1.1\r\nhost: t\r\nx-sender: {sender}\r\n\r\n".encode())
    return conn.read_response()


def _host_lines(proxy: ProxyProcess, port: int) -> dict[str, str]:
    """`/clusters` lines of the host on `port`: field -> value."""
    _, text = proxy.get("/clusters")
    prefix = f"backends::127.0.0.1:{port}::"
    return {
        line[len(prefix) :].split("::")[0]: line.split("::")[-1]
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_an_upstream_sees_one_checkers_health_checks(tmp_path) -> None:
    """Interval 0.3 s: one checker sends about 3 checks a second; one per process (three)
    would send about 10."""
    with Upstream("a") as upstream:
        port = free_port()
        cluster = cluster_dict("backends", [upstream.port], health_checks=[_check("0.3s")])
        proxy = _start(tmp_path, port, cluster)
        try:
            conns = _one_per_worker(proxy, port)  # every worker's cluster is up
            for index, conn in conns.items():
                assert _get(conn, f"w{index}").status == 200
            wait_for(lambda: len(upstream.checks) >= 8, timeout=10, what="8 health checks")
            first = upstream.checks[0]
            in_first_second = [at for at in upstream.checks if at - first < 1.0]
            assert len(in_first_second) <= 5, upstream.checks
            gaps = [b - a for a, b in zip(upstream.checks, upstream.checks[1:], strict=False)]
            assert min(gaps[:7]) > 0.2, gaps  # one checker: one interval apart
            # The stats and the upstream agree: one checker's attempts.
            attempts = proxy.stat("cluster.backends.health_check.attempt") or 0
            assert attempts <= len(upstream.checks) + 1
            assert attempts >= 8
            assert proxy.stat("cluster.backends.health_check.healthy") == 1
            for conn in conns.values():
                conn.close()
        finally:
            proxy.stop()


def test_a_host_failed_by_the_main_process_gets_no_request_from_any_worker(tmp_path) -> None:
    """B's first health check answers 503, every later one 200; interval 60 s: only the first
    check of each host happens during the test. The main process checks B once (503: failed);
    a worker checking for itself would get 200 and send B requests."""
    with Upstream("a") as a, Upstream("b", health=(503,)) as b:
        port = free_port()
        cluster = cluster_dict("backends", [a.port, b.port], health_checks=[_check("60s")])
        proxy = _start(tmp_path, port, cluster)
        try:
            conns = _one_per_worker(proxy, port)
            for _ in range(10):
                for index, conn in conns.items():
                    response = _get(conn, f"w{index}")
                    assert response.status == 200
                    assert response.headers["x-upstream"] == "a"
            assert b.served == []
            senders = {headers["x-sender"] for headers in a.served}
            assert senders == {f"w{index}" for index in range(WORKERS)}
            assert len(b.checks) == 1  # one checker
            assert len(a.checks) == 1
            assert _host_lines(proxy, b.port)["health_flags"] == "/failed_active_hc"
            assert _host_lines(proxy, a.port)["health_flags"] == "healthy"
            assert _host_lines(proxy, a.port)["rq_total"] == str(10 * WORKERS)
            assert proxy.stat("cluster.backends.health_check.healthy") == 1
            assert proxy.stat("cluster.backends.health_check.attempt") == 2
            assert proxy.stat("cluster.backends.health_check.failure") == 1
            assert proxy.stat("cluster.backends.membership_healthy") == 1
            for conn in conns.values():
                conn.close()
        finally:
            proxy.stop()


def test_consecutive_5xx_spread_over_both_workers_eject(tmp_path) -> None:
    """A answers 200, B 503. Requests alternate between a connection on each worker until B
    has answered 5 of them (each worker sent it fewer than 5): the main process's detector
    ejects B, and then no worker sends B a request."""
    outlier = {"consecutive_5xx": 5, "max_ejection_percent": 100, "interval": "30s"}
    with Upstream("a") as a, Upstream("b", status=503) as b:
        port = free_port()
        cluster = cluster_dict("backends", [a.port, b.port], outlier_detection=outlier)
        proxy = _start(tmp_path, port, cluster)
        try:
            conns = _one_per_worker(proxy, port)
            for _ in range(50):
                for index, conn in conns.items():
                    if len(b.served) < 5:
                        _get(conn, f"w{index}")
                if len(b.served) >= 5:
                    break
            by_worker = [headers["x-sender"] for headers in b.served]
            assert len(by_worker) == 5
            assert all(by_worker.count(f"w{index}") < 5 for index in range(WORKERS))
            wait_for(
                lambda: _host_lines(proxy, b.port)["health_flags"] == "/failed_outlier_check",
                timeout=5,
                what="B ejected",
            )
            for _ in range(10):
                for index, conn in conns.items():
                    assert _get(conn, f"w{index}").headers["x-upstream"] == "a"
            assert len(b.served) == 5
            stats = proxy.stats(r"cluster\.backends\.outlier_detection\.")
            assert stats["cluster.backends.outlier_detection.ejections_active"] == "1"
            assert stats["cluster.backends.outlier_detection.ejections_enforced_total"] == "1"
            assert (
                stats["cluster.backends.outlier_detection.ejections_detected_consecutive_5xx"]
                == "1"
            )
            lines = _host_lines(proxy, b.port)
            assert lines["rq_total"] == "5"
            assert lines["rq_error"] == "5"
            for conn in conns.values():
                conn.close()
        finally:
            proxy.stop()


def test_a_cds_cluster_and_its_replacement_follow_the_main_processs_checks(tmp_path) -> None:
    """A cluster from CDS, then a changed version of it (a new checker, whose first check of
    B passes): each version's flags are its own checker's, in every worker."""
    with Upstream("a") as a, Upstream("b", health=(503,)) as b:
        stub = StubProcess(tmp_path, xds=f"127.0.0.1:{free_port()}").start()
        proxy = None
        try:
            port = free_port()
            first = cluster_dict("backends", [a.port, b.port], health_checks=[_check("60s")])
            listeners = stub.client.set_resources(
                listeners=[routed_listener(port, "backends")], clusters=[first]
            )["listeners"]
            proxy = ProxyProcess(cds_bootstrap(stub.xds_address), tmp_path, "warning")
            proxy.concurrency = WORKERS
            proxy.start()
            proxy.wait_ready()
            stub.client.wait(listeners, timeout=10)
            conns = _one_per_worker(proxy, port)
            for _ in range(5):
                for index, conn in conns.items():
                    assert _get(conn, f"w{index}").headers["x-upstream"] == "a"
            assert b.served == []
            assert len(b.checks) == 1

            second = dict(first, health_checks=[_check("61s")])  # a new version, new checker
            stub.client.set_resources(
                listeners=[routed_listener(port, "backends")], clusters=[second]
            )
            wait_for(lambda: proxy.stat("cluster_manager.cluster_modified") == 1, what="the update")
            wait_for(lambda: _host_lines(proxy, b.port)["health_flags"] == "healthy")
            assert len(b.checks) == 2  # one per version, in the main process
            for _ in range(5):
                for index, conn in conns.items():
                    _get(conn, f"w{index}")
            senders = {headers["x-sender"] for headers in b.served}
            assert senders == {f"w{index}" for index in range(WORKERS)}
            for conn in conns.values():
                conn.close()
        finally:
            if proxy is not None:
                proxy.stop()
            stub.stop()


def test_traffic_through_a_worker_moves_the_checker_off_its_no_traffic_interval(tmp_path) -> None:
    """`no_traffic_interval` 2 s, `interval` 0.1 s: once a worker has opened an upstream
    connection, the main process's checker (which opens none) checks every 0.1 s."""
    check = dict(_check("0.1s"), no_traffic_interval="2s")
    with Upstream("a") as upstream:
        port = free_port()
        cluster = cluster_dict("backends", [upstream.port], health_checks=[check])
        proxy = _start(tmp_path, port, cluster)
        try:
            wait_for(lambda: upstream.checks, what="the first check")
            conns = _one_per_worker(proxy, port)
            for index, conn in conns.items():
                assert _get(conn, f"w{index}").status == 200
            before = len(upstream.checks)
            # At 2 s a check, 10 more would take 20 s; at 0.1 s, about 3 s at most (the
            # check already waiting, then the traffic seen).
            wait_for(lambda: len(upstream.checks) >= before + 10, timeout=6, what="10 checks")
            for conn in conns.values():
                conn.close()
        finally:
            proxy.stop()


def test_a_restarted_worker_takes_the_main_processs_flags(tmp_path) -> None:
    """A worker killed and started again learns every host's health from the main process
    (it runs no check of its own): B, failed by the main process's only check, gets nothing."""
    with Upstream("a") as a, Upstream("b", health=(503,)) as b:
        port = free_port()
        cluster = cluster_dict("backends", [a.port, b.port], health_checks=[_check("60s")])
        proxy = _start(tmp_path, port, cluster)
        try:
            wait_for(lambda: _host_lines(proxy, b.port)["health_flags"] == "/failed_active_hc")
            pids = dict(re.findall(r"worker (\d+) started \(pid (\d+)\)", proxy.log()))
            os.kill(int(pids["0"]), signal.SIGKILL)
            wait_for(lambda: proxy.stat("xds_proxy.workers.restarted") == 1, what="a restart")
            wait_for(lambda: proxy.stat("xds_proxy.workers.active") == WORKERS)
            conns = _one_per_worker(proxy, port)
            for _ in range(5):
                for index, conn in conns.items():
                    assert _get(conn, f"w{index}").headers["x-upstream"] == "a"
            assert b.served == []
            assert len(b.checks) == 1
            for conn in conns.values():
                conn.close()
        finally:
            proxy.stop()
