"""REST EDS from a real sovereign: the listener (its routes over REST RDS) and two clusters
come over REST LDS and CDS, and the clusters are EDS clusters whose ClusterLoadAssignments
sovereign serves over REST too (`POST /v3/discovery:endpoints`, one poller per cluster).
Run against Envoy 1.40 and against xds-proxy with the same bootstrap, the same data changes
and the same clients; what each step shows must be equal:

1. everything arrives: both EDS clusters are warm, the routed one serves, each cluster's
   `version_text` is the version sovereign serves, `config_dump?include_eds` shows both
   assignments;
2. the routed cluster's endpoint changes in sovereign's data: new requests move to the other
   upstream within a few polls, no request fails meanwhile, and no cluster or listener is
   rebuilt (CDS and LDS see the same versions: sovereign answers them 304);
3. nothing changes: sovereign answers 304, which counts only `update_attempt`;
4. a new EDS cluster whose assignment sovereign does not have yet (it answers 404: a failed
   fetch) warms until the assignment is in the data, then it is active with its host.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.sovereign import INSTALL_HINT, SovereignProcess, sovereign_binary
from tests.helpers.upstreams import Http1Echo, endpoint
from tests.interop.test_sovereign_interop import bootstrap, listener, rest_source, routes

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(180),
    pytest.mark.skipif(sovereign_binary() is None, reason=INSTALL_HINT),
]

CLUSTERS = ("backend", "spare")


def eds_cluster(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": rest_source()},
    }


def assignment(name: str, port: int) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint(port)]}]}


class Scenario:
    def __init__(self, tmp_path: Path, make_process: type[EnvoyProcess]) -> None:
        self.blue = Http1Echo("blue").start()
        self.green = Http1Echo("green").start()
        self.spare = Http1Echo("spare").start()
        self.port = free_port()
        self.backend = self.blue
        self.late: int | None = None  # the late cluster's port, once it has an assignment
        self.clusters = list(CLUSTERS)
        self.sovereign = SovereignProcess(tmp_path, self.resources()).start()
        self.process = make_process(bootstrap(self.sovereign.port), tmp_path)

    def resources(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            ("listener", listener(self.port)),
            ("routes", routes()),
            *[("cluster", eds_cluster(name)) for name in self.clusters],
            ("endpoints", assignment("backend", self.backend.port)),
            ("endpoints", assignment("spare", self.spare.port)),
        ] + ([("endpoints", assignment("late", self.late))] if self.late else [])

    def publish(self) -> None:
        self.sovereign.set_resources(self.resources())

    def stat(self, name: str) -> int:
        return self.process.stat(name) or 0

    def served_by(self) -> str | int:
        try:
            response = get(self.port)
        except OSError as error:
            return type(error).__name__
        return json.loads(response.body)["server"] if response.status == 200 else response.status

    def eds_versions_match(self) -> dict[str, bool]:
        """Each EDS cluster's version_text is the version sovereign serves for its name."""
        stats = self.process.stats("version_text")
        found = {}
        for name in CLUSTERS:
            status, body = self.sovereign.discover("endpoints", [name])
            serving = json.loads(body)["version_info"] if status == 200 else None
            found[name] = stats.get(f"cluster.{name}.version_text") == f'"{serving}"'
        return found

    def dumped_endpoints(self) -> list[tuple[str, list[int]]]:
        """config_dump?include_eds: each dynamic assignment's name and ports."""
        _, body = self.process.get("/config_dump?include_eds")
        found = []
        for config in json.loads(body)["configs"]:
            for item in config.get("dynamic_endpoint_configs", []):
                cla = item["endpoint_config"]
                ports = [
                    lb["endpoint"]["address"]["socket_address"]["port_value"]
                    for group in cla.get("endpoints", [])
                    for lb in group.get("lb_endpoints", [])
                ]
                found.append((cla["cluster_name"], ports))
        return sorted(found)

    def counters(self, names: tuple[str, ...]) -> dict[str, int]:
        return {name: self.stat(name) for name in names}

    def stop(self) -> None:
        self.process.stop()
        self.sovereign.stop()
        self.blue.stop()
        self.green.stop()
        self.spare.stop()


UPDATES = tuple(
    f"cluster.backend.{name}"
    for name in ("update_attempt", "update_success", "update_failure", "update_rejected")
)
REBUILDS = (
    "cluster_manager.cds.update_success",
    "cluster_manager.cluster_modified",
    "listener_manager.lds.update_success",
    "listener_manager.listener_modified",
)


def run_scenario(make_process: type[EnvoyProcess], tmp_path: Path) -> list[tuple[str, Any]]:
    notes: list[tuple[str, Any]] = []
    scenario = Scenario(tmp_path, make_process)
    try:
        scenario.process.start()
        # 1. everything arrives.
        wait_for(lambda: scenario.served_by() == "blue", timeout=30, what="served by blue")
        wait_for(lambda: all(scenario.eds_versions_match().values()), timeout=10, what="versions")
        notes.append(("1 eds versions", scenario.eds_versions_match()))
        notes.append(("1 warming", scenario.stat("cluster_manager.warming_clusters")))
        notes.append(
            ("1 hosts", [scenario.stat(f"cluster.{n}.membership_total") for n in CLUSTERS])
        )
        dumped = [("backend", [scenario.blue.port]), ("spare", [scenario.spare.port])]
        notes.append(("1 config_dump", scenario.dumped_endpoints() == dumped))

        # 2. the endpoint moves in sovereign's data: traffic follows, nothing fails, nothing
        # is rebuilt.
        rebuilds = scenario.counters(REBUILDS)
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                result = scenario.served_by()
                if result not in ("blue", "green"):
                    failures.append(str(result))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            scenario.backend = scenario.green
            scenario.publish()
            wait_for(lambda: scenario.served_by() == "green", timeout=20, what="served by green")
        finally:
            stop.set()
            thread.join()
        notes.append(("2 failed while moving", failures))
        notes.append(("2 served", scenario.served_by()))
        wait_for(lambda: all(scenario.eds_versions_match().values()), timeout=10, what="versions")
        notes.append(("2 eds versions", scenario.eds_versions_match()))
        notes.append(("2 nothing rebuilt", scenario.counters(REBUILDS) == rebuilds))
        notes.append(("2 spare unchanged", scenario.stat("cluster.spare.membership_change")))
        notes.append(("2 spare no_rebuild", scenario.stat("cluster.spare.update_no_rebuild") > 0))
        notes.append(("2 membership_change", scenario.stat("cluster.backend.membership_change")))
        dumped = [("backend", [scenario.green.port]), ("spare", [scenario.spare.port])]
        notes.append(("2 config_dump", scenario.dumped_endpoints() == dumped))

        # 3. 304s: only update_attempt moves.
        before = scenario.counters(UPDATES)
        wait_for(
            lambda: scenario.stat(UPDATES[0]) >= before[UPDATES[0]] + 4,
            timeout=20,
            what="304s counted",
        )
        after = scenario.counters(UPDATES)
        notes.append(("3 moved", {name: after[name] > before[name] for name in UPDATES}))
        notes.append(("3 served", scenario.served_by()))

        # 4. a new EDS cluster warms until sovereign has its assignment.
        scenario.clusters.append("late")
        scenario.publish()
        wait_for(lambda: scenario.stat("cluster.late.update_failure") >= 3, timeout=20)
        notes.append(("4 warming", scenario.stat("cluster_manager.warming_clusters")))
        notes.append(("4 success", scenario.stat("cluster.late.update_success")))
        scenario.late = scenario.spare.port
        scenario.publish()
        wait_for(lambda: scenario.stat("cluster.late.update_success") >= 1, timeout=20, what="late")
        wait_for(lambda: scenario.stat("cluster_manager.warming_clusters") == 0, timeout=10)
        notes.append(("4 hosts", scenario.stat("cluster.late.membership_total")))
        notes.append(("4 served", scenario.served_by()))
        return notes
    except BaseException:
        print(scenario.process.log()[-6000:] if scenario.process.process else "")
        print(scenario.sovereign.log()[-3000:])
        raise
    finally:
        scenario.stop()


def test_sovereign_eds_envoy_and_xds_proxy_agree(tmp_path: Path) -> None:
    envoy = run_scenario(EnvoyProcess, tmp_path / "envoy")
    ours = run_scenario(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
    expected = dict(envoy)
    assert expected["1 eds versions"] == {"backend": True, "spare": True}
    assert expected["1 config_dump"] and expected["2 config_dump"]
    assert expected["2 failed while moving"] == []
    assert expected["2 served"] == "green"
    assert expected["2 nothing rebuilt"] and expected["2 spare no_rebuild"]
    assert (expected["4 warming"], expected["4 hosts"]) == (1, 1)
    assert expected["3 moved"] == {
        "cluster.backend.update_attempt": True,
        "cluster.backend.update_success": False,
        "cluster.backend.update_failure": False,
        "cluster.backend.update_rejected": False,
    }
