"""A changed DNS cluster warms: the old version serves until the new one's first DNS answer
(as Envoy's cluster warming), with `cluster_manager.warming_clusters` counting it. The
resolver is the test's, so each lookup ends when the test says. New and changed EDS clusters
warm until their assignment (the test plays the EDS owner through the EndpointWatcher port)."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from google.protobuf import json_format

from tests.helpers.waiting import wait_until
from xds_proxy.admin.clusters import clusters_dump
from xds_proxy.config.cluster import DnsFamily, EndpointAddress
from xds_proxy.config.endpoints import Assignment
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.xds.eds import EndpointSubscriptions


def dns_cluster(port: int, name: str = "web") -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "STRICT_DNS",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "backend.test",
                                            "port_value": port,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        },
        cluster_pb2.Cluster(),
    )


class ControlledResolver:
    """Every lookup waits until `answer(port)` is called for its port."""

    def __init__(self) -> None:
        self.waiting: dict[int, list[asyncio.Future]] = {}

    def __call__(self, endpoint: EndpointAddress, family: DnsFamily) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(endpoint.port, []).append(future)
        return future

    async def answer(self, port: int) -> None:
        await wait_until(lambda: self.waiting.get(port), what=f"a DNS lookup of port {port}")
        for future in self.waiting.pop(port):
            future.set_result([("127.0.0.1", port)])
        for _ in range(5):  # let the cluster and the manager see it
            await asyncio.sleep(0)


def ports(manager: ClusterManager, name: str = "web") -> list[int]:
    return [host.address[1] for host in manager.clusters[name].hosts]


async def test_a_changed_dns_cluster_serves_the_old_hosts_until_the_new_ones_resolve() -> None:
    stats = Stats()
    resolver = ControlledResolver()
    manager = ClusterManager(stats, resolve=resolver)
    manager.start()
    manager.add_or_update(dns_cluster(1001), version_info="v1")
    await resolver.answer(1001)
    first = manager.clusters["web"]
    assert ports(manager) == [1001]

    assert manager.add_or_update(dns_cluster(1002), version_info="v2")
    assert manager.clusters["web"] is first  # still serving
    assert stats.gauge("cluster_manager.warming_clusters").value == 1
    dump = clusters_dump(manager, "v2")
    assert [c.version_info for c in dump.dynamic_active_clusters] == ["v1"]
    assert [c.version_info for c in dump.dynamic_warming_clusters] == ["v2"]
    assert not manager.add_or_update(dns_cluster(1002))  # the same again: nothing to do

    await resolver.answer(1002)
    assert ports(manager) == [1002]
    assert first.retired
    assert stats.gauge("cluster_manager.warming_clusters").value == 0
    assert stats.counter("cluster_manager.cluster_modified").value == 1
    assert [c.version_info for c in clusters_dump(manager, "v2").dynamic_active_clusters] == ["v2"]
    manager.close()


async def test_a_newer_version_replaces_the_warming_one_and_removal_ends_warming() -> None:
    stats = Stats()
    resolver = ControlledResolver()
    manager = ClusterManager(stats, resolve=resolver)
    manager.start()
    manager.add_or_update(dns_cluster(2001))
    await resolver.answer(2001)
    manager.add_or_update(dns_cluster(2002))
    warming_first = manager.warming["web"][0]
    manager.add_or_update(dns_cluster(2003))
    assert warming_first.retired
    for _ in range(5):
        await asyncio.sleep(0)
    assert ports(manager) == [2001]  # neither warming version has answered yet
    await resolver.answer(2003)
    assert ports(manager) == [2003]

    manager.add_or_update(dns_cluster(2004))
    assert manager.remove("web")
    assert "web" not in manager.clusters and not manager.warming
    assert stats.gauge("cluster_manager.warming_clusters").value == 0
    manager.close()


async def test_a_new_dns_cluster_is_active_at_once() -> None:
    """Nothing to keep serving: the new cluster is there (no hosts until its answer)."""
    manager = ClusterManager(Stats(), resolve=ControlledResolver())
    manager.start()
    manager.add_or_update(dns_cluster(3001, "fresh"))
    assert manager.clusters["fresh"].hosts == []
    assert not manager.warming
    manager.close()


# -- EDS clusters ----------------------------------------------------------------------------


class Watcher:
    """The EndpointWatcher port: which cluster versions watch (the test assigns)."""

    def __init__(self) -> None:
        self.watching: list = []
        self.flushes = 0

    def watch(self, cluster) -> None:
        self.watching.append(cluster)

    def unwatch(self, cluster) -> None:
        self.watching.remove(cluster)

    def flush(self) -> None:
        self.flushes += 1

    def check_source(self, source, path: str) -> None:
        pass


def eds_cluster(timeout: str = "1s") -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": "web",
            "type": "EDS",
            "connect_timeout": timeout,
            "eds_cluster_config": {"eds_config": {"ads": {}}},
        },
        cluster_pb2.Cluster(),
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_eds_cluster_warms_until_its_assignment_and_a_changed_one_keeps_serving() -> None:
    stats = Stats()
    watcher = Watcher()
    manager = ClusterManager(stats, endpoints=watcher)
    manager.start()
    try:
        assert manager.add_or_update(eds_cluster(), version_info="v1")
        new = watcher.watching[0]
        assert "web" not in manager.clusters and "web" in manager.warming
        assert manager.known("web")  # a route may name it while it warms
        assert stats.gauge("cluster_manager.warming_clusters").value == 1
        warm = asyncio.ensure_future(manager.wait_warm())
        await settle()
        assert not warm.done()
        new.set_assignment(Assignment((EndpointAddress("127.0.0.1", 81),)))
        await asyncio.wait_for(warm, 1)
        assert ports(manager) == [81] and manager.clusters["web"] is new
        assert stats.gauge("cluster_manager.warming_clusters").value == 0
        # Changed: the old version serves until the new one has its assignment.
        assert manager.add_or_update(eds_cluster("2s"), version_info="v2")
        changed = watcher.watching[1]
        assert manager.clusters["web"] is new and manager.warming["web"][0] is changed
        changed.set_assignment(Assignment((EndpointAddress("127.0.0.1", 82),)))
        await settle()
        assert manager.clusters["web"] is changed and ports(manager) == [82]
        assert new.retired and watcher.watching == [changed]
        manager.flush_watches()
        assert watcher.flushes == 1
    finally:
        manager.close()


async def test_the_end_of_the_initial_fetch_activates_it_empty_and_removal_unwatches() -> None:
    stats = Stats()
    watcher = Watcher()
    manager = ClusterManager(stats, endpoints=watcher)
    manager.start()
    try:
        manager.add_or_update(eds_cluster())
        watcher.watching[0].initial_fetch_over()
        await manager.wait_warm()
        assert manager.clusters["web"].hosts == [] and "web" not in manager.warming
        assert manager.clusters["web"].pick_host() is None
        manager.add_or_update(eds_cluster("3s"))  # warming again ...
        assert manager.remove("web")  # ... and removed: both versions let their names go
        assert watcher.watching == [] and not manager.warming
        assert stats.counter("cluster_manager.cluster_removed").value == 1
    finally:
        manager.close()


def test_eds_without_a_watcher_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^cluster\.type: EDS clusters need an EDS subscription"):
        ClusterManager(Stats()).add_or_update(eds_cluster())


def test_an_eds_source_that_cannot_subscribe_rejects_the_cluster_at_once() -> None:
    """As Envoy: the CDS update is NACKed naming the field, instead of a cluster that warms
    forever (here a REST source without its required refresh_delay)."""
    bootstrap = json_format.ParseDict(
        {
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds",
                        "type": "STATIC",
                        "load_assignment": {
                            "cluster_name": "xds",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {
                                                    "socket_address": {
                                                        "address": "127.0.0.1",
                                                        "port_value": 1,
                                                    }
                                                }
                                            }
                                        }
                                    ]
                                }
                            ],
                        },
                    }
                ]
            }
        },
        bootstrap_pb2.Bootstrap(),
    )
    manager = ClusterManager(Stats(), endpoints=EndpointSubscriptions(Stats(), bootstrap))
    cluster = eds_cluster()
    source = cluster.eds_cluster_config.eds_config
    source.Clear()
    source.api_config_source.api_type = config_source_pb2.ApiConfigSource.REST
    source.api_config_source.cluster_names.append("xds")
    with pytest.raises(ConfigError, match="refresh_delay"):
        manager.add_or_update(cluster, "resources[0]")
    assert manager.get("web") is None
