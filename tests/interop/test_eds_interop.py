"""EDS on Envoy 1.40 and on ours, side by side: each takes LDS, CDS and EDS over one ADS stream
(SotW) from its own control-plane-stub, both stubs serve the same resources (but each
process's listener port), and both must do the same.

- Warming at start-up: an EDS cluster without its assignment holds the initialisation (CDS →
  EDS → LDS): the listener routing to it is not there; the assignment arrives, the cluster
  warms, then the listener starts and serves the endpoint.
- Host add/remove under HTTP/1.1 and HTTP/2 load: the assignment changes every 200 ms; no
  request fails, every host that was assigned took requests, and the idle connections to a
  removed host close.
- Weights, priorities and locality weights spread requests alike (within a stated tolerance
  of the expected share: EDF is deterministic per worker, the priority draw is random).
- `/clusters` lists the same hosts with the same weight, priority, locality, hostname and
  health flags, and `/config_dump?include_eds` the same ClusterLoadAssignment.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from control_plane_stub.resources import ENDPOINT_TYPE
from tests.helpers.envoy import EnvoyProcess, load_bootstrap, with_xds_address
from tests.helpers.http_client import HttpConnection, get, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, endpoint
from tests.integration.test_rds_churn import H1Client, H2Loop
from tests.interop.test_stub_eds_sds_interop import DRAIN_ARGS, eds_cluster, listener
from tests.interop.test_stub_rds_interop import without_retry_policy

pytestmark = pytest.mark.envoy

KINDS = ("envoy", "ours")


class SideBySide:
    """Envoy and ours, each with its own stub; `push` gives both stubs the same resources,
    with each process's listener `L` on its own port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stubs: dict[str, StubProcess] = {}
        self.processes: dict[str, EnvoyProcess] = {}
        self.ports = {kind: free_port() for kind in KINDS}

    def start_stubs(self) -> None:
        for kind in KINDS:
            self.stubs[kind] = StubProcess(self.workdir / f"stub-{kind}").start()

    def start_processes(self) -> None:
        for kind in KINDS:
            bootstrap = with_xds_address(
                load_bootstrap("ads-sotw"), self.stubs[kind].xds_address, node_id=kind
            )
            bootstrap["dynamic_resources"]["cds_config"] = {"resource_api_version": "V3", "ads": {}}
            process: EnvoyProcess
            if kind == "envoy":
                process = EnvoyProcess(bootstrap, self.workdir / kind, extra_args=DRAIN_ARGS)
            else:
                bootstrap = without_retry_policy(bootstrap)
                process = ProxyProcess(bootstrap, self.workdir / kind, extra_args=DRAIN_ARGS)
            self.processes[kind] = process.start()

    def push(self, with_listener: bool = False, **resources: Any) -> None:
        for kind, stub in self.stubs.items():
            if with_listener:
                route = {"route": {"cluster": "C"}}
                resources["listeners"] = [listener("L", self.ports[kind], route)]
            stub.client.set_resources(**resources)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
        for stub in self.stubs.values():
            stub.stop()


@contextmanager
def side_by_side(workdir: Path, started: bool = True) -> Iterator[SideBySide]:
    both = SideBySide(workdir)
    try:
        both.start_stubs()
        if started:
            both.start_processes()
        yield both
    finally:
        both.stop()


def eds_source() -> dict[str, Any]:
    return {"ads": {}}


def assignment(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"cluster_name": "C-svc", "endpoints": list(groups)}


def group(*lb_endpoints: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"lb_endpoints": list(lb_endpoints), **fields}


def weighted(port: int, weight: int = 1, **fields: Any) -> dict[str, Any]:
    return {**endpoint(port), "load_balancing_weight": weight, **fields}


def upstreams_of(port: int, requests: int) -> Counter:
    """`requests` GETs on one keep-alive connection: which upstream answered each."""
    seen: Counter = Counter()
    connection = HttpConnection(port)
    try:
        for _ in range(requests):
            response = connection.request()
            assert response.status == 200, response.text
            seen[response.headers["x-upstream"]] += 1
    finally:
        connection.close()
    return seen


def test_listeners_start_only_once_the_eds_cluster_has_its_endpoints(tmp_path: Path) -> None:
    upstream = Http1Echo("first").start()
    try:
        with side_by_side(tmp_path, started=False) as both:
            both.push(with_listener=True, clusters=[eds_cluster("C", "C-svc", eds_source())])
            both.start_processes()
            for kind in KINDS:
                wait_for(
                    lambda kind=kind: (
                        both.stubs[kind].subscriptions(kind, ENDPOINT_TYPE) == [["C-svc"]]
                    ),
                    timeout=10,
                    what=f"{kind}: EDS [C-svc]",
                )
            time.sleep(0.5)  # a listener that started would accept by now (nothing to wait on)
            for kind, process in both.processes.items():
                assert process.stat("cluster_manager.warming_clusters") == 1, kind
                assert process.listeners() == {}, kind  # LDS waits for the cluster
                assert refused(both.ports[kind]), kind
            both.push(endpoints=[assignment(group(endpoint(upstream.port)))])
            for kind, process in both.processes.items():
                wait_for(
                    lambda kind=kind: not refused(both.ports[kind]),
                    timeout=10,
                    what=f"{kind}: the listener, after the cluster warmed",
                )
                response = get(both.ports[kind])
                assert (response.status, response.headers["x-upstream"]) == (200, "first")
                assert process.stat("cluster_manager.warming_clusters") == 0
                assert process.stat("cluster.C.membership_total") == 1
            assert all(stub.nacks() == [] for stub in both.stubs.values())
    finally:
        upstream.stop()


def test_hosts_added_and_removed_under_load_fail_no_request(tmp_path: Path) -> None:
    upstreams = {label: Http1Echo(label).start() for label in ("a", "b", "c")}
    rounds = [("a",), ("a", "b"), ("b",), ("b", "c"), ("c",), ("c", "a"), ("a",)]
    try:
        with side_by_side(tmp_path) as both:
            processes, ports = both.processes, both.ports

            def assign(labels: tuple[str, ...]) -> None:
                endpoints = [endpoint(upstreams[label].port) for label in labels]
                both.push(endpoints=[assignment(group(*endpoints))])

            assign(rounds[0])
            both.push(with_listener=True, clusters=[eds_cluster("C", "C-svc", eds_source())])
            for kind in KINDS:
                wait_for(lambda kind=kind: get(ports[kind]).status == 200, timeout=10, what=kind)
            stop = threading.Event()
            tallies = {kind: Counter() for kind in KINDS}
            clients = [
                client
                for kind in KINDS
                for client in (
                    H1Client(ports[kind], stop, tallies[kind]),
                    H1Client(ports[kind], stop, tallies[kind]),
                    H2Loop(ports[kind], stop, tallies[kind]),
                )
            ]
            for client in clients:
                client.start()
            try:
                wait_for(
                    lambda: all(t["ok"] > 5 and t["h2 ok"] > 5 for t in tallies.values()),
                    timeout=10,
                    what="load on both",
                )
                for _ in range(3):
                    for labels in rounds[1:]:
                        assign(labels)
                        time.sleep(0.2)  # the pace of the pushes, not synchronisation
                wait_for(
                    lambda: all(
                        p.stat("cluster.C.membership_total") == 1 for p in processes.values()
                    ),
                    timeout=5,
                    what="the last assignment",
                )
            finally:
                stop.set()
                for client in clients:
                    client.join(10)
            for kind, tally in tallies.items():
                failures = {k: v for k, v in tally.items() if k not in ("ok", "h2 ok")}
                assert failures == {}, (kind, tally)
                assert tally["ok"] > 20 and tally["h2 ok"] > 10, (kind, tally)
            served = {label: len(u.requests) for label, u in upstreams.items()}
            assert all(count > 0 for count in served.values()), served
            # b and c were removed: their idle pooled connections are closed (both proxies).
            wait_for(
                lambda: not upstreams["b"].open_transports and not upstreams["c"].open_transports,
                timeout=5,
                what="the removed hosts' connections closed",
            )
    finally:
        for upstream in upstreams.values():
            upstream.stop()


SPREADS = {
    # weights 1:3 on one locality: b takes 3/4 (EDF: exact per worker)
    "weights": (
        lambda a, b, x: [group(weighted(a, 1), weighted(b, 3))],
        {},
        ("b", 0.75, 0.03),
    ),
    # P0: a healthy and x unhealthy (1 of 2: 70 % of the load), P1: b takes the other 30 %
    "priorities": (
        lambda a, b, x: [
            group(weighted(a), weighted(x, health_status="UNHEALTHY")),
            group(weighted(b), priority=1),
        ],
        {},
        ("b", 0.30, 0.08),
    ),
    # locality weights 1:3 (locality_weighted_lb_config): b's locality takes 3/4
    "localities": (
        lambda a, b, x: [
            group(weighted(a), locality={"zone": "z1"}, load_balancing_weight=1),
            group(weighted(b), locality={"zone": "z2"}, load_balancing_weight=3),
        ],
        {"common_lb_config": {"locality_weighted_lb_config": {}}},
        ("b", 0.75, 0.03),
    ),
}


@pytest.mark.parametrize("case", sorted(SPREADS))
def test_weights_priorities_and_localities_spread_requests_as_envoy_does(
    case: str, tmp_path: Path
) -> None:
    build, cluster_fields, (label, share, tolerance) = SPREADS[case]
    a, b = Http1Echo("a").start(), Http1Echo("b").start()
    unused = free_port()
    requests = 400
    try:
        with side_by_side(tmp_path) as both:
            ports = both.ports
            both.push(endpoints=[assignment(*build(a.port, b.port, unused))])
            both.push(
                with_listener=True,
                clusters=[{**eds_cluster("C", "C-svc", eds_source()), **cluster_fields}],
            )
            for kind in KINDS:
                wait_for(lambda kind=kind: get(ports[kind]).status == 200, timeout=10, what=kind)
            spreads = {kind: upstreams_of(ports[kind], requests) for kind in KINDS}
            for kind, seen in spreads.items():
                assert abs(seen[label] / requests - share) <= tolerance, (kind, spreads)
            assert all(stub.nacks() == [] for stub in both.stubs.values())
    finally:
        a.stop()
        b.stop()


HOST_FIELDS = ("hostname", "health_flags", "weight", "region", "zone", "sub_zone", "priority")


def eds_hosts(process: EnvoyProcess) -> dict[str, str]:
    """Cluster C's host lines of `/clusters`, without the traffic numbers."""
    _, text = process.get("/clusters")
    lines = {}
    for line in text.splitlines():
        parts = line.split("::")
        if parts[0] != "C":
            continue
        if len(parts) == 3 and parts[1] in ("eds_service_name", "added_via_api"):
            lines[parts[1]] = parts[2]
        elif len(parts) == 4 and parts[2] in HOST_FIELDS:
            lines[f"{parts[1]} {parts[2]}"] = parts[3]
    return lines


def json_hosts(process: EnvoyProcess) -> list[dict]:
    _, text = process.get("/clusters?format=json")
    for status in json.loads(text)["cluster_statuses"]:
        if status["name"] == "C":
            return [
                {key: value for key, value in host.items() if key != "stats"}
                for host in status.get("host_statuses", [])
            ] + [{"eds_service_name": status.get("eds_service_name")}]
    return []


def eds_dump(process: EnvoyProcess) -> list[dict]:
    _, text = process.get("/config_dump?include_eds")
    for config in json.loads(text)["configs"]:
        if config["@type"].endswith("EndpointsConfigDump"):
            return [
                entry["endpoint_config"]
                for entry in config.get("dynamic_endpoint_configs", [])
                if entry["endpoint_config"]["cluster_name"] == "C-svc"
            ]
    return []


def test_clusters_admin_and_config_dump_show_the_same_hosts(tmp_path: Path) -> None:
    a, b = Http1Echo("a").start(), Http1Echo("b").start()
    unused = free_port()
    try:
        with side_by_side(tmp_path) as both:
            processes = both.processes
            host_a = weighted(a.port, 3)
            host_a["endpoint"]["hostname"] = "a.example"
            both.push(
                endpoints=[
                    assignment(
                        group(
                            host_a,
                            weighted(unused, health_status="DEGRADED"),
                            locality={"region": "r1", "zone": "z1", "sub_zone": "s1"},
                            load_balancing_weight=5,
                        ),
                        group(weighted(b.port, health_status="UNHEALTHY"), priority=1),
                    )
                ]
            )
            both.push(clusters=[eds_cluster("C", "C-svc", eds_source())])
            for kind, process in processes.items():
                wait_for(
                    lambda process=process: process.stat("cluster.C.membership_total") == 3,
                    timeout=10,
                    what=f"{kind}: C's hosts",
                )
            envoy, ours = processes["envoy"], processes["ours"]
            assert eds_hosts(ours) == eds_hosts(envoy)
            assert eds_hosts(ours)[f"127.0.0.1:{b.port} health_flags"] == "/failed_eds_health"
            assert json_hosts(ours) == json_hosts(envoy)
            assert eds_dump(ours) == eds_dump(envoy)
            for stat in ("membership_total", "membership_healthy", "membership_degraded"):
                assert ours.stat(f"cluster.C.{stat}") == envoy.stat(f"cluster.C.{stat}"), stat
    finally:
        a.stop()
        b.stop()


def test_a_nack_keeps_the_hosts_and_a_changed_cluster_keeps_serving(tmp_path: Path) -> None:
    a, b = Http1Echo("a").start(), Http1Echo("b").start()
    try:
        with side_by_side(tmp_path) as both:
            both.push(endpoints=[assignment(group(endpoint(a.port)))])
            both.push(with_listener=True, clusters=[eds_cluster("C", "C-svc", eds_source())])
            for kind in KINDS:
                wait_for(lambda kind=kind: get(both.ports[kind]).status == 200, timeout=10)
            # An address that is not an IP: NACKed with Envoy's text, the hosts stay.
            bad = endpoint(b.port)
            bad["endpoint"]["address"]["socket_address"]["address"] = "not-an-ip"
            both.push(endpoints=[assignment(group(bad))])
            for kind, stub in both.stubs.items():
                wait_for(lambda stub=stub: stub.nacks() != [], timeout=10, what=f"{kind} NACK")
            texts = {
                kind: [n["message"] for n in stub.nacks()] for kind, stub in both.stubs.items()
            }
            assert (
                texts["ours"]
                == texts["envoy"]
                == [
                    "malformed IP address: not-an-ip. Consider setting resolver_name or setting"
                    " cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'"
                ]
            )
            for kind, process in both.processes.items():
                assert get(both.ports[kind]).headers["x-upstream"] == "a", kind
                assert process.stat("cluster.C.update_rejected") == 1, kind
            # The cluster changes (not its endpoints): the old version serves while the new
            # one warms (Envoy: until the next assignment; ours: the held one, at once).
            changed = {**eds_cluster("C", "C-svc", eds_source()), "connect_timeout": "2s"}
            both.push(with_listener=True, clusters=[changed])
            for kind, process in both.processes.items():
                wait_for(
                    lambda process=process: process.stat("cluster_manager.cluster_modified") == 1,
                    timeout=10,
                    what=f"{kind}: C changed",
                )
                assert all(get(both.ports[kind]).status == 200 for _ in range(5)), kind
            both.push(endpoints=[assignment(group(endpoint(b.port)))])
            for kind, process in both.processes.items():
                wait_for(
                    lambda kind=kind: get(both.ports[kind]).headers.get("x-upstream") == "b",
                    timeout=10,
                    what=f"{kind}: the new endpoints",
                )
                assert process.stat("cluster_manager.warming_clusters") == 0, kind
    finally:
        a.stop()
        b.stop()


def test_without_an_assignment_the_initial_fetch_timeout_activates_an_empty_cluster(
    tmp_path: Path,
) -> None:
    with side_by_side(tmp_path) as both:
        source = {"ads": {}, "initial_fetch_timeout": "1s"}
        cluster = eds_cluster("C", "C-svc", {})
        cluster["eds_cluster_config"]["eds_config"] = {"resource_api_version": "V3", **source}
        both.push(with_listener=True, clusters=[cluster])
        for kind, process in both.processes.items():
            wait_for(
                lambda process=process: process.stat("cluster.C.init_fetch_timeout") == 1,
                timeout=10,
                what=f"{kind}: C's initial fetch timed out",
            )
            wait_for(lambda kind=kind: not refused(both.ports[kind]), timeout=10, what=kind)
            assert process.stat("cluster_manager.warming_clusters") == 0, kind
            assert process.stat("cluster.C.membership_total") == 0, kind
            assert get(both.ports[kind]).status == 503, kind
        envoy, ours = both.processes["envoy"], both.processes["ours"]
        for stat in ("lb_healthy_panic", "upstream_cx_none_healthy", "update_attempt"):
            assert ours.stat(f"cluster.C.{stat}") == envoy.stat(f"cluster.C.{stat}"), stat


@pytest.mark.parametrize("ignore_health", [False, True])
def test_a_removed_host_passing_health_checks_stays_until_it_fails_them(
    ignore_health: bool, tmp_path: Path
) -> None:
    a, b = Http1Echo("a").start(), Http1Echo("b").start()
    try:
        with side_by_side(tmp_path) as both:
            cluster = eds_cluster("C", "C-svc", eds_source())
            cluster["health_checks"] = [
                {
                    "timeout": "1s",
                    "interval": "0.2s",
                    "no_traffic_interval": "0.2s",
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                    "http_health_check": {"path": "/health"},
                }
            ]
            cluster["ignore_health_on_host_removal"] = ignore_health
            both.push(endpoints=[assignment(group(endpoint(a.port), endpoint(b.port)))])
            both.push(with_listener=True, clusters=[cluster])
            for kind, process in both.processes.items():
                wait_for(
                    lambda process=process: process.stat("cluster.C.membership_healthy") == 2,
                    timeout=10,
                    what=f"{kind}: both hosts healthy",
                )
            both.push(endpoints=[assignment(group(endpoint(a.port)))])
            b_flags = f"127.0.0.1:{b.port} health_flags"
            if ignore_health:  # removed at once
                for kind, process in both.processes.items():
                    wait_for(
                        lambda process=process: process.stat("cluster.C.membership_total") == 1,
                        timeout=10,
                        what=f"{kind}: b removed",
                    )
                return
            for kind, process in both.processes.items():
                wait_for(
                    lambda process=process: (
                        eds_hosts(process).get(b_flags) == "/pending_dynamic_removal"
                    ),
                    timeout=10,
                    what=f"{kind}: b kept, pending its removal",
                )
                assert process.stat("cluster.C.membership_total") == 2, kind
            b.stop()  # b fails its next check: then it goes
            for kind, process in both.processes.items():
                wait_for(
                    lambda process=process: process.stat("cluster.C.membership_total") == 1,
                    timeout=10,
                    what=f"{kind}: b removed once it failed a check",
                )
                assert get(both.ports[kind]).headers["x-upstream"] == "a", kind
    finally:
        a.stop()
        b.stop()


def test_a_request_in_flight_to_a_removed_host_finishes(tmp_path: Path) -> None:
    a, b = Http1Echo("a").start(), Http1Echo("b").start()
    try:
        with side_by_side(tmp_path) as both:
            both.push(endpoints=[assignment(group(endpoint(a.port)))])
            both.push(with_listener=True, clusters=[eds_cluster("C", "C-svc", eds_source())])
            for kind in KINDS:
                wait_for(lambda kind=kind: get(both.ports[kind]).status == 200, timeout=10)
            slow: dict[str, tuple[int, str]] = {}

            def slow_request(kind: str) -> None:
                connection = HttpConnection(both.ports[kind])
                try:
                    request = "GET /slow HTTP/1.1\r\nhost: x\r\nx-delay-ms: 1500\r\n\r\n"
                    connection.sock.sendall(request.encode())
                    response = connection.read_response()
                    slow[kind] = (response.status, response.headers["x-upstream"])
                finally:
                    connection.close()

            threads = [threading.Thread(target=slow_request, args=(kind,)) for kind in KINDS]
            for thread in threads:
                thread.start()
            wait_for(
                lambda: sum(r["path"] == "/slow" for r in a.requests) == 2,
                timeout=5,
                what="both slow requests at a",
            )
            both.push(endpoints=[assignment(group(endpoint(b.port)))])  # a removed
            for kind in KINDS:
                wait_for(
                    lambda kind=kind: get(both.ports[kind]).headers.get("x-upstream") == "b",
                    timeout=5,
                    what=f"{kind}: new requests to b",
                )
            for thread in threads:
                thread.join(10)
            assert slow == {kind: (200, "a") for kind in KINDS}
            # a's connections close once idle (both proxies retire the removed host's pool).
            wait_for(lambda: not a.open_transports, timeout=5, what="a's connections closed")
    finally:
        a.stop()
        b.stop()


def test_active_health_checks_go_to_the_endpoints_health_check_port(tmp_path: Path) -> None:
    a, b = Http1Echo("a").start(), Http1Echo("b").start()
    checked_elsewhere = Http1Echo("checks").start()
    refused_port = free_port()
    try:
        with side_by_side(tmp_path) as both:
            cluster = eds_cluster("C", "C-svc", eds_source())
            cluster["health_checks"] = [
                {
                    "timeout": "1s",
                    "interval": "0.2s",
                    "no_traffic_interval": "0.2s",
                    "unhealthy_threshold": 1,
                    "healthy_threshold": 1,
                    "http_health_check": {"path": "/health"},
                }
            ]
            host_a = endpoint(a.port)
            host_a["endpoint"]["health_check_config"] = {"port_value": checked_elsewhere.port}
            host_b = endpoint(b.port)
            host_b["endpoint"]["health_check_config"] = {"port_value": refused_port}
            both.push(endpoints=[assignment(group(host_a, host_b))])
            both.push(clusters=[cluster])
            flags = {f"127.0.0.1:{a.port} health_flags", f"127.0.0.1:{b.port} health_flags"}
            for kind, process in both.processes.items():
                wait_for(
                    lambda process=process: (
                        (process.stat("cluster.C.health_check.attempt") or 0) > 4
                    ),
                    timeout=10,
                    what=f"{kind}: checks",
                )
                wait_for(
                    lambda process=process: (
                        {key: value for key, value in eds_hosts(process).items() if key in flags}
                        == {
                            f"127.0.0.1:{a.port} health_flags": "healthy",
                            f"127.0.0.1:{b.port} health_flags": "/failed_active_hc",
                        }
                    ),
                    timeout=10,
                    what=f"{kind}: a healthy (its check port answers), b failed (refused)",
                )
            assert checked_elsewhere.requests
            assert eds_dump(both.processes["ours"]) == eds_dump(both.processes["envoy"])
            assert all(r["path"] == "/health" for r in checked_elsewhere.requests)
            assert not [r for r in a.requests if r["path"] == "/health"]
            assert not [r for r in b.requests if r["path"] == "/health"]
    finally:
        a.stop()
        b.stop()
        checked_elsewhere.stop()
