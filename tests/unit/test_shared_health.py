"""Host health with `--concurrency N`, in one process: a main process's cluster manager
(`DecidingHealth`) and two workers' (`FollowingHealth`), wired as the events channel wires
them (every message through JSON). The main process decides; the workers report and follow.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from tests.helpers.upstreams import cluster_dict
from tests.helpers.waiting import wait_until
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.host import Host
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.upstream.outlier import Result
from xds_proxy.upstream.shared_health import (
    DecidingHealth,
    FollowingHealth,
    version_key,
)

PORTS = (1001, 1002)
OUTLIER = {"consecutive_5xx": 5, "max_ejection_percent": 100, "interval": "30s"}


class Proxy:
    """One main process and two workers, each with its cluster manager."""

    def __init__(self) -> None:
        self.main = ClusterManager(Stats())
        deciding = self.main.health
        assert isinstance(deciding, DecidingHealth)
        self.deciding = deciding
        self.workers = [ClusterManager(Stats()) for _ in range(2)]
        self.reports: list[dict[str, Any]] = []
        self.following: list[FollowingHealth] = [
            worker.follow_main(self._report) for worker in self.workers
        ]
        deciding.tell = self._tell
        self.told: list[dict[str, Any]] = []

    def _report(self, message: dict[str, Any]) -> None:
        self.reports.append(message)
        self.deciding.take(json.loads(json.dumps(message)))

    def _tell(self, message: dict[str, Any]) -> None:
        self.told.append(message)
        for following in self.following:
            following.follow(json.loads(json.dumps(message)))

    def add(self, cluster: dict[str, Any]) -> None:
        message = json_format.ParseDict(cluster, cluster_pb2.Cluster())
        for manager in (self.main, *self.workers):
            manager.add_or_update(message, version_info="1")

    def clusters(self, name: str) -> list[Cluster]:
        return [manager.clusters[name] for manager in (self.main, *self.workers)]


def _host(cluster: Cluster, port: int) -> Host:
    return next(host for host in cluster.hosts if host.address[1] == port)


async def _settle(proxy: Proxy) -> None:
    """Until every worker's results reached the main process and its decisions the workers."""
    await wait_until(
        lambda: not proxy.deciding.pending and not any(f.pending for f in proxy.following),
        what="results reported and decisions told",
    )


async def test_consecutive_5xx_count_across_workers_and_the_ejection_reaches_every_worker() -> None:
    proxy = Proxy()
    proxy.add(cluster_dict("backends", PORTS, outlier_detection=OUTLIER))
    main, first, second = proxy.clusters("backends")
    for _ in range(3):
        first.report_status(_host(first, 1002), 503)
    for _ in range(2):
        second.report_status(_host(second, 1002), 503)
    assert not _host(main, 1002).failed_outlier_check  # nothing decided before the reports
    await _settle(proxy)
    for cluster in (main, first, second):
        assert _host(cluster, 1002).failed_outlier_check
        assert not _host(cluster, 1001).failed_outlier_check
        assert {cluster.pick_host().address[1] for _ in range(10)} == {1001}
    assert main.stats.membership_healthy.value == 1
    assert proxy.main.stats.value("cluster.backends.outlier_detection.ejections_active") == 1
    # The workers decide nothing and keep no detector stats.
    assert first.stats.membership_healthy.value == 1
    for worker in proxy.workers:
        assert worker.stats.value("cluster.backends.outlier_detection.ejections_active") is None


async def test_a_success_between_two_workers_failures_resets_the_count() -> None:
    proxy = Proxy()
    proxy.add(cluster_dict("backends", PORTS, outlier_detection=OUTLIER))
    _, first, second = proxy.clusters("backends")
    for _ in range(4):
        first.report_status(_host(first, 1002), 503)
    await _settle(proxy)
    second.report_status(_host(second, 1002), 200)
    await _settle(proxy)
    for _ in range(4):
        first.report_status(_host(first, 1002), 503)
    await _settle(proxy)
    assert not _host(first, 1002).failed_outlier_check
    second.report_result(_host(second, 1002), Result.CONNECT_FAILED)  # a 503 for the detector
    await _settle(proxy)
    assert _host(first, 1002).failed_outlier_check
    assert _host(second, 1002).failed_outlier_check


async def test_results_go_in_batches_and_only_for_clusters_with_outlier_detection() -> None:
    proxy = Proxy()
    proxy.add(cluster_dict("backends", PORTS, outlier_detection=OUTLIER))
    proxy.add(cluster_dict("plain", PORTS))
    _, first, _ = proxy.clusters("backends")
    _, plain, _ = proxy.clusters("plain")
    for _ in range(100):
        first.report_status(_host(first, 1001), 200)
        plain.report_status(_host(plain, 1001), 503)
    await _settle(proxy)
    assert len(proxy.reports) == 1
    (report,) = proxy.reports
    assert list(report["outcomes"]) == [version_key_of(proxy.main, "backends")]
    assert report["outcomes"][version_key_of(proxy.main, "backends")] == {
        "127.0.0.1:1001": [200] * 100
    }


def version_key_of(manager: ClusterManager, name: str) -> str:
    return version_key(name, manager.records[name].message)


async def test_followed_checks_take_the_main_processs_flags_and_warm_with_its_first_round() -> None:
    check = {
        "timeout": "1s",
        "interval": "60s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "tcp_health_check": {},
    }
    proxy = Proxy()
    proxy.add(cluster_dict("checked", PORTS, health_checks=[check]))
    for worker in proxy.workers:
        worker.start()  # the workers' clusters: no check runs
    _, first, second = proxy.clusters("checked")
    assert first.resolved is not None and not first.resolved.is_set()
    assert _host(first, 1001).health_flags() == "/failed_active_hc/pending_active_hc"
    key = version_key_of(proxy.main, "checked")
    proxy._tell({"health": {key: {"127.0.0.1:1001": 0, "127.0.0.1:1002": 1}}})
    await asyncio.sleep(0)
    for cluster in (first, second):
        assert cluster.resolved is not None and cluster.resolved.is_set()  # warm
        assert _host(cluster, 1001).health_flags() == "healthy"
        assert _host(cluster, 1002).health_flags() == "/failed_active_hc"
        assert {cluster.pick_host().address[1] for _ in range(10)} == {1001}
        assert cluster.stats.membership_healthy.value == 1
    for worker in proxy.workers:  # no checker here: nothing to add to the main process's
        assert worker.stats.value("cluster.checked.health_check.attempt") is None
        assert worker.stats.value("cluster.checked.health_check.healthy") is None
    # Another version of the cluster (a new config) does not take the first one's flags.
    changed = cluster_dict("checked", PORTS, health_checks=[dict(check, interval="61s")])
    message = json_format.ParseDict(changed, cluster_pb2.Cluster())
    proxy.workers[0].add_or_update(message, version_info="2")
    replaced = proxy.workers[0].warming["checked"][0]  # warms until its first round
    assert _host(replaced, 1001).health_flags() == "/failed_active_hc/pending_active_hc"
    # The main process's version is gone: the workers forget its flags.
    proxy.deciding.retired(key)
    await asyncio.sleep(0)
    assert proxy.told[-1]["gone"] == [key]
    assert key not in proxy.following[0]._versions


async def test_a_worker_host_the_main_process_never_checked_does_not_hold_warming_back() -> None:
    """A DNS cluster may resolve a host in a worker that the main process has not: the worker's
    version warms when the main process's first round is over; that host stays unhealthy."""
    check = {
        "timeout": "1s",
        "interval": "60s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "tcp_health_check": {},
    }
    worker = ClusterManager(Stats())
    following = worker.follow_main(lambda message: None)
    cluster = json_format.ParseDict(
        cluster_dict("checked", (*PORTS, 1003), health_checks=[check]), cluster_pb2.Cluster()
    )
    worker.add_or_update(cluster)
    worker.start()
    built = worker.clusters["checked"]
    key = version_key("checked", cluster.SerializeToString(deterministic=True))
    following.follow({"health": {key: {"127.0.0.1:1001": 2 | 1}}})  # still pending there
    await asyncio.sleep(0)
    assert built.resolved is not None and not built.resolved.is_set()
    following.follow({"health": {key: {"127.0.0.1:1001": 0, "127.0.0.1:1002": 0}}})
    await asyncio.sleep(0)
    assert built.resolved.is_set()
    assert _host(built, 1003).health_flags() == "/failed_active_hc/pending_active_hc"
    assert {built.pick_host().address[1] for _ in range(10)} == {1001, 1002}
