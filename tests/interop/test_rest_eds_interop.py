"""REST EDS (`eds_config.api_config_source {api_type: REST}`) from the scripted REST control
plane (tests/helpers/rest_cp.py), which also serves LDS and CDS over REST; run against Envoy
1.40 and against xds-proxy with the same bootstrap, the same answers and the same clients;
what each step shows must be equal:

1. the endpoints poll fails (503): the EDS cluster keeps warming (LDS waits for it), every
   failed fetch counts `cluster.C.update_failure`;
2. the assignment arrives: the cluster is warm and serves;
3. the endpoints move: requests follow, none fails meanwhile;
4. a bad answer (an assignment both reject, sent again on every poll; then a failed fetch):
   the hosts stay;
5. nothing changes: the control plane answers 304, which counts only `update_attempt`.

And with `initial_fetch_timeout` while every poll fails: the timeout ends the warming with no
hosts (503), and the assignment arriving later is served.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.rest_cp import Reply, RestControlPlane, Scripted, by_type
from tests.helpers.upstreams import Http1Echo, LoopThread, cluster_dict, endpoint

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TYPES = {
    "listeners": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "clusters": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "endpoints": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
}


def rest_source() -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": ["cp"],
            "refresh_delay": "0.2s",
        },
    }


def listener(port: int) -> dict[str, Any]:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "C"}}
    hcm = {
        "@type": HCM,
        "stat_prefix": "web",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "@type": TYPES["listeners"],
        "name": "L",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def eds_cluster(initial_fetch_timeout: str | None = None) -> dict[str, Any]:
    source = rest_source()
    if initial_fetch_timeout is not None:
        source["initial_fetch_timeout"] = initial_fetch_timeout
    return {
        "@type": TYPES["clusters"],
        "name": "C",
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": source},
    }


def assignment(*ports: int, address: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "@type": TYPES["endpoints"],
        "cluster_name": "C",
        "endpoints": [{"lb_endpoints": [endpoint(port, address) for port in ports]}],
    }


class Scenario:
    """The control plane answers each type from `answers` (rest_cp.by_type)."""

    def __init__(
        self,
        tmp_path: Path,
        make_process: type[EnvoyProcess],
        initial_fetch_timeout: str | None = None,
    ) -> None:
        self.first = Http1Echo("first").start()
        self.second = Http1Echo("second").start()
        self.port = free_port()
        self.answers: dict[str, Scripted] = {
            "listeners": ("l1", [listener(self.port)]),
            "clusters": ("c1", [eds_cluster(initial_fetch_timeout)]),
            "endpoints": Reply(503),
        }
        self.loop = LoopThread()
        self.cp = RestControlPlane(respond=by_type(self.answers))
        self.loop.run(self.cp.start())
        boot = {
            "node": {"id": "proxy-1", "cluster": "web"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {"lds_config": rest_source(), "cds_config": rest_source()},
            "static_resources": {"clusters": [cluster_dict("cp", [self.cp.port])]},
        }
        self.process = make_process(boot, tmp_path)

    def stat(self, name: str) -> int:
        return self.process.stat(name) or 0

    def served_by(self) -> str | int:
        try:
            response = get(self.port)
        except OSError as error:
            return type(error).__name__
        return json.loads(response.body)["server"] if response.status == 200 else response.status

    def endpoint_polls(self) -> set[tuple[str, str, tuple[str, ...]]]:
        return {
            (seen.path, seen.headers.get("host", ""), tuple(seen.body.get("resource_names", [])))
            for seen in self.cp.seen
            if seen.path.endswith(":endpoints")
        }

    def stop(self) -> None:
        self.process.stop()
        self.loop.run(self.cp.stop())
        self.loop.stop()
        self.first.stop()
        self.second.stop()


def eds_stats(scenario: Scenario) -> dict[str, int]:
    names = ("update_attempt", "update_success", "update_failure", "update_rejected")
    return {name: scenario.stat(f"cluster.C.{name}") for name in names}


def run_scenario(make_process: type[EnvoyProcess], tmp_path: Path) -> list[tuple[str, Any]]:
    notes: list[tuple[str, Any]] = []
    scenario = Scenario(tmp_path, make_process)
    try:
        scenario.process.start()
        # 1. the endpoints poll fails: C keeps warming, LDS waits for it.
        wait_for(lambda: scenario.stat("cluster.C.update_failure") >= 3, timeout=15)
        notes.append(("1 warming", scenario.stat("cluster_manager.warming_clusters")))
        notes.append(("1 refused", refused(scenario.port)))
        notes.append(("1 success", scenario.stat("cluster.C.update_success")))

        # 2. the assignment arrives: C is warm and serves.
        scenario.answers["endpoints"] = ("e1", [assignment(scenario.first.port)])
        wait_for(lambda: scenario.served_by() == "first", timeout=15, what="served by first")
        notes.append(("2 warming", scenario.stat("cluster_manager.warming_clusters")))
        notes.append(("2 active", scenario.stat("cluster_manager.active_clusters")))
        notes.append(("2 hosts", scenario.stat("cluster.C.membership_total")))
        notes.append(("2 polls", scenario.endpoint_polls()))

        # 3. the endpoints move: requests follow, none fails.
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                result = scenario.served_by()
                if result not in ("first", "second"):
                    failures.append(str(result))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            scenario.answers["endpoints"] = ("e2", [assignment(scenario.second.port)])
            wait_for(lambda: scenario.served_by() == "second", timeout=15, what="moved")
        finally:
            stop.set()
            thread.join()
        notes.append(("3 failed while moving", failures))
        notes.append(("3 membership_change", scenario.stat("cluster.C.membership_change")))
        notes.append(
            ("3 version", scenario.process.stats("version_text")["cluster.C.version_text"])
        )

        # 4. bad answers keep the hosts: an assignment both reject (sent again on every
        # poll), then failed fetches.
        rejected = scenario.stat("cluster.C.update_rejected")
        bad = assignment(scenario.first.port, address="not-an-ip")
        scenario.answers["endpoints"] = ("e3", [bad])
        wait_for(lambda: scenario.stat("cluster.C.update_rejected") >= rejected + 3, timeout=15)
        notes.append(("4 rejected: served", scenario.served_by()))
        failed = scenario.stat("cluster.C.update_failure")
        scenario.answers["endpoints"] = Reply(500)
        wait_for(lambda: scenario.stat("cluster.C.update_failure") >= failed + 3, timeout=15)
        notes.append(("4 failed: served", scenario.served_by()))
        notes.append(
            ("4 version", scenario.process.stats("version_text")["cluster.C.version_text"])
        )

        # 5. 304s: only update_attempt moves.
        switched = len(scenario.cp.seen)
        scenario.answers["endpoints"] = ("e2", [assignment(scenario.second.port)])
        # A poll sent after the switch: the answer before it (a 500) has been counted.
        wait_for(
            lambda: any(s.path.endswith(":endpoints") for s in scenario.cp.seen[switched:]),
            timeout=5,
        )
        before = eds_stats(scenario)
        wait_for(
            lambda: scenario.stat("cluster.C.update_attempt") >= before["update_attempt"] + 4,
            timeout=15,
            what="304s counted",
        )
        after = eds_stats(scenario)
        moved = {name: after[name] > before[name] for name in after}
        notes.append(("5 moved", moved))
        notes.append(("5 served", scenario.served_by()))
        return notes
    except BaseException:
        print(scenario.process.log()[-6000:] if scenario.process.process else "")
        raise
    finally:
        scenario.stop()


def test_rest_eds_envoy_and_xds_proxy_agree(tmp_path: Path) -> None:
    envoy = run_scenario(EnvoyProcess, tmp_path / "envoy")
    ours = run_scenario(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
    expected = dict(envoy)
    assert (expected["1 warming"], expected["1 refused"], expected["2 warming"]) == (1, True, 0)
    assert expected["2 polls"] == {("/v3/discovery:endpoints", "cp", ("C",))}
    assert expected["3 failed while moving"] == []
    assert expected["4 failed: served"] == "second"
    assert expected["5 moved"] == {
        "update_attempt": True,
        "update_success": False,
        "update_failure": False,
        "update_rejected": False,
    }


def run_timeout_scenario(make_process: type[EnvoyProcess], tmp_path: Path) -> list[tuple[str, Any]]:
    """Every poll fails: `initial_fetch_timeout` (1 s) ends the warming with no hosts; the
    assignment arriving later is served."""
    notes: list[tuple[str, Any]] = []
    scenario = Scenario(tmp_path, make_process, initial_fetch_timeout="1s")
    try:
        scenario.process.start()
        wait_for(lambda: scenario.stat("cluster.C.update_failure") >= 1, timeout=10)
        notes.append(("warming while it fails", scenario.stat("cluster_manager.warming_clusters")))
        wait_for(lambda: scenario.stat("cluster.C.init_fetch_timeout") == 1, timeout=10)
        wait_for(lambda: scenario.served_by() == 503, timeout=10, what="active, no hosts")
        notes.append(
            ("warming after the timeout", scenario.stat("cluster_manager.warming_clusters"))
        )
        notes.append(("hosts", scenario.stat("cluster.C.membership_total")))
        scenario.answers["endpoints"] = ("e1", [assignment(scenario.first.port)])
        wait_for(lambda: scenario.served_by() == "first", timeout=15, what="served by first")
        notes.append(("init_fetch_timeout", scenario.stat("cluster.C.init_fetch_timeout")))
        notes.append(("hosts at last", scenario.stat("cluster.C.membership_total")))
        return notes
    except BaseException:
        print(scenario.process.log()[-6000:] if scenario.process.process else "")
        raise
    finally:
        scenario.stop()


def test_rest_eds_initial_fetch_timeout_ends_warming_as_envoys(tmp_path: Path) -> None:
    envoy = run_timeout_scenario(EnvoyProcess, tmp_path / "envoy")
    ours = run_timeout_scenario(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
    assert [value for _, value in envoy] == [1, 0, 0, 1, 1]
