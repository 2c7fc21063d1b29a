"""xds-proxy's EDS with control-plane-stub and real clients, in every way a control plane can
serve it (ADS SotW and Delta; the plain EndpointDiscoveryService, GRPC and DELTA_GRPC: one
stream per name, as Envoy), and an EDS cluster of the bootstrap, which holds the listeners
back until it has its endpoints (Envoy's init order: static clusters, CDS, then LDS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane_stub.resources import CLUSTER_TYPE, ENDPOINT_TYPE
from tests.helpers.envoy import load_bootstrap, with_xds_address
from tests.helpers.http_client import get, refused
from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo
from tests.interop.test_stub_eds_sds_interop import (
    DRAIN_ARGS,
    MODES,
    assignment,
    config_source,
    eds_cluster,
    listener,
    subscriptions,
)
from tests.interop.test_stub_rds_interop import without_retry_policy


def start_proxy(mode: str, stub: StubProcess, node: str, workdir: Path) -> ProxyProcess:
    """xds-proxy with LDS and CDS over ADS (SotW or Delta, as the mode)."""
    bootstrap = with_xds_address(load_bootstrap(MODES[mode][0]), stub.xds_address, node_id=node)
    bootstrap["dynamic_resources"]["cds_config"] = {"resource_api_version": "V3", "ads": {}}
    proxy = ProxyProcess(without_retry_policy(bootstrap), workdir, extra_args=DRAIN_ARGS)
    proxy.start()
    proxy.wait_ready()
    return proxy


@pytest.mark.parametrize("mode", sorted(MODES))
def test_an_eds_cluster_warms_follows_its_endpoints_and_keeps_them(
    mode: str, tmp_path: Path
) -> None:
    source = MODES[mode][1]
    delta = mode.endswith("delta")
    node = f"proxy-eds-{mode}"
    port = free_port()
    first, second = Http1Echo("first").start(), Http1Echo("second").start()
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    try:
        proxy = start_proxy(mode, stub, node, tmp_path / "proxy")
        pushed = stub.client.set_resources(
            clusters=[eds_cluster("C", "C-svc", source)],
            listeners=[listener("L", port, {"route": {"cluster": "C"}})],
        )
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: subscriptions(stub, node, ENDPOINT_TYPE) == ["C-svc"],
            timeout=5,
            what="EDS [C-svc]",
        )
        # As Envoy: SotW keeps C warming; Delta's "does not exist" ends it with no hosts.
        wait_for(
            lambda: proxy.stat("cluster_manager.warming_clusters") == (0 if delta else 1),
            timeout=5,
            what="C's warming state",
        )
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        assert get(port).status == 503
        placed = stub.client.set_resources(endpoints=[assignment("C-svc", first.port)])
        stub.client.wait(placed["endpoints"], node=node, timeout=10, section="endpoints")
        stub.client.wait(pushed["clusters"], node=node, timeout=10, section="clusters")
        wait_for(lambda: get(port).headers.get("x-upstream") == "first", timeout=5)
        assert proxy.stat("cluster_manager.warming_clusters") == 0
        # The endpoints move: requests follow; no cluster or listener changes.
        changes = proxy.stats("^(cluster|listener)_manager\\.")
        moved = stub.client.set_resources(endpoints=[assignment("C-svc", second.port)])
        stub.client.wait(moved["endpoints"], node=node, timeout=10, section="endpoints")
        wait_for(lambda: get(port).headers.get("x-upstream") == "second", timeout=5)
        assert proxy.stats("^(cluster|listener)_manager\\.") == changes
        assert proxy.stat("cluster.C.membership_change") == 2
        assert proxy.stat("cluster.C.update_success") >= 2
        # The assignment leaves the set: the hosts stay, as Envoy's.
        removed = stub.client.set_resources(endpoints=[])
        stub.client.wait(removed["endpoints"], node=node, timeout=10, section="endpoints")
        assert get(port).headers.get("x-upstream") == "second"
        assert proxy.stat("cluster.C.membership_total") == 1
        assert stub.nacks() == []
    finally:
        if proxy is not None:
            proxy.stop()
        stub.stop()
        first.stop()
        second.stop()


def test_a_bootstrap_eds_cluster_holds_the_listeners_until_its_endpoints(tmp_path: Path) -> None:
    node = "proxy-static-eds"
    port = free_port()
    upstream = Http1Echo("static").start()
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = lds_bootstrap(stub.xds_address, node_id=node)
    grpc = {
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
        }
    }
    cluster = eds_cluster("C", "C-svc", {})
    cluster["eds_cluster_config"]["eds_config"] = config_source(grpc)
    bootstrap["static_resources"]["clusters"].append(cluster)
    proxy = ProxyProcess(bootstrap, tmp_path / "proxy", extra_args=DRAIN_ARGS)
    try:
        stub.client.set_resources(listeners=[listener("L", port, {"route": {"cluster": "C"}})])
        proxy.start()
        wait_for(
            lambda: subscriptions(stub, node, ENDPOINT_TYPE) == ["C-svc"],
            timeout=10,
            what="EDS [C-svc]",
        )
        # No LDS stream yet: the listener waits for C (server INITIALIZING, not LIVE).
        assert (
            subscriptions(stub, node, "type.googleapis.com/envoy.config.listener.v3.Listener") == []
        )
        assert refused(port) and proxy.get("/ready")[0] == 503
        assert subscriptions(stub, node, CLUSTER_TYPE) == []
        stub.client.set_resources(endpoints=[assignment("C-svc", upstream.port)])
        proxy.wait_ready()
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        assert get(port).headers.get("x-upstream") == "static"
    finally:
        proxy.stop()
        stub.stop()
        upstream.stop()
