"""Listener warming on RDS: the steps of the warming spec, run against Envoy 1.40 and against
xds-proxy with the same control plane (control-plane-stub, SotW ADS) and the same clients.

Each step records what a client and an operator can see (states in config_dump, /listeners,
listener and RDS stats, ACK/NACK texts, refused vs served connections, which route version
answers, connection: close / GOAWAY on kept connections); the two records must be equal,
except in step 3c/3d, where xds-proxy does better than Envoy (a changed listener whose new
routes time out or are NACKed keeps its old version serving instead of answering 404).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from control_plane_stub.client import StubNack
from control_plane_stub.resources import ROUTE_TYPE
from tests.helpers.envoy import EnvoyProcess, load_bootstrap, with_xds_address
from tests.helpers.h2_client import H2Client
from tests.helpers.http_client import HttpConnection, get, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.interop.test_stub_rds_interop import ROUTER, without_retry_policy

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
DRAIN_ARGS = ["--drain-time-s", "1", "--drain-strategy", "immediate"]
LM = (
    "total_listeners_warming",
    "total_listeners_active",
    "total_listeners_draining",
    "total_filter_chains_draining",
    "listener_added",
    "listener_modified",
    "listener_removed",
    "listener_in_place_updated",
    "listener_create_success",
)
RDS = (
    "update_attempt",
    "update_success",
    "update_rejected",
    "update_empty",
    "init_fetch_timeout",
    "config_reload",
)


def listener(
    name: str,
    port: int,
    route: str,
    timeout: str = "0s",
    buffer: int | None = None,
) -> dict:
    result: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "rds": {
                                "route_config_name": route,
                                "config_source": {
                                    "ads": {},
                                    "resource_api_version": "V3",
                                    "initial_fetch_timeout": timeout,
                                },
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    if buffer is not None:
        result["per_connection_buffer_limit_bytes"] = buffer
    return result


def routes(name: str, body: str, **extra: Any) -> dict:
    return {
        "name": name,
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": body}},
                    }
                ],
            }
        ],
        **extra,
    }


class Run:
    """One process (Envoy or xds-proxy) with the stub, and what the steps look at."""

    def __init__(self, process: EnvoyProcess, stub, node: str) -> None:
        self.process = process
        self.stub = stub
        self.node = node
        self.labels: dict[str, str] = {}  # the stub's version hashes (ports differ) -> v1, v2

    def label(self, version: str) -> str:
        return self.labels.setdefault(version, f"v{len(self.labels) + 1}")

    def push(self, section: str = "listeners", **resources: Any) -> str | None:
        """Push; wait for the ACK of `section`; the NACK text, or None."""
        versions = self.stub.client.set_resources(**resources)
        try:
            self.stub.client.wait(versions[section], node=self.node, timeout=10, section=section)
        except StubNack as nack:
            return nack.detail
        return None

    def lm(self, skip: tuple[str, ...] = ()) -> dict[str, int | None]:
        return {
            name: self.process.stat(f"listener_manager.{name}") for name in LM if name not in skip
        }

    def rds(self, prefix: str, name: str) -> dict[str, int | None]:
        return {key: self.process.stat(f"http.{prefix}.rds.{name}.{key}") for key in RDS}

    def states(self) -> dict[str, list[str]]:
        _, body = self.process.get("/config_dump?resource=dynamic_listeners")
        found: dict[str, list[str]] = {}
        for entry in json.loads(body).get("configs", []):
            found[entry["name"]] = [
                f"{state.removesuffix('_state')}:{self.label(entry[state]['version_info'])}"
                for state in ("warming_state", "active_state", "draining_state")
                if state in entry
            ]
        return found

    def route_versions(self) -> dict[str, str]:
        _, body = self.process.get("/config_dump?resource=dynamic_route_configs")
        configs = json.loads(body).get("configs", [])
        return {c["route_config"]["name"]: c["version_info"] for c in configs}

    def subscribed(self) -> list[list[str]]:
        return self.stub.subscriptions(self.node, ROUTE_TYPE)

    def answer(self, port: int) -> tuple[int, str] | str:
        if refused(port):
            return "refused"
        response = get(port)
        return (response.status, response.text)


def bindable(port: int) -> bool:
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def run_steps(make_process, tmp_path: Path, ours: bool) -> list[tuple[str, Any]]:
    from tests.helpers.stub import StubProcess

    node = "warming-node"
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    process = make_process(without_retry_policy(bootstrap), tmp_path / "proc")
    process.start()
    process.wait_ready()
    run = Run(process, stub, node)
    seen: list[tuple[str, Any]] = []

    def note(step: str, value: Any) -> None:
        seen.append((step, value))

    port, port2, port3 = free_port(), free_port(), free_port()
    versions: dict[str, str] = {}
    try:
        # -- step 1: new listener, R not served, initial_fetch_timeout 1 s --------------------
        l_v1 = listener("L", port, "R", timeout="1s")
        note("1 ack", run.push(listeners=[l_v1], routes=[]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 1, timeout=5, what="warming")
        note("1 states", run.states())
        note("1 listeners", process.listeners())
        note("1 port", run.answer(port))
        note("1 lm", run.lm())
        note("1 rds", run.rds("L", "R"))
        note("1 subscribed", run.subscribed())
        wait_for(lambda: not refused(port), timeout=5, what="L active after the timeout")
        note("1 timeout states", run.states())
        note("1 timeout answer", run.answer(port))
        note("1 timeout rds", run.rds("L", "R"))
        keep = HttpConnection(port)
        first = keep.request()
        note("1 keep-alive", (first.status, first.closes))

        # -- step 2: R served: applied to the active listener, live -----------------------------
        note("2 nack", run.push("routes", routes=[routes("R", "R-v1")]))
        wait_for(lambda: get(port).text == "R-v1", timeout=5, what="R-v1")
        again = keep.request()
        note("2 keep-alive", (again.status, again.text, again.closes))
        note("2 lm", run.lm())
        note("2 rds", run.rds("L", "R"))
        keep.close()

        # -- step 4: a route-only update on kept H1 and H2 connections ---------------------------
        h1, h2 = HttpConnection(port), H2Client(port)
        before = run.lm()
        note("4 nack", run.push("routes", routes=[routes("R", "R-v2")]))
        wait_for(lambda: h1.request().text == "R-v2", timeout=5, what="R-v2 on H1")
        answer = h1.request()
        note("4 h1", (answer.text, answer.closes))
        response = h2.response(h2.request("/"))
        note("4 h2", (response.body.decode(), h2.goaways()))
        note("4 lm unchanged", run.lm() == before)
        note("4 rds", run.rds("L", "R"))
        h1.close()
        h2.close()

        # -- step 7: a SotW RDS response without R: ACKed, R kept --------------------------------
        note("7 nack", run.push("routes", routes=[]))
        note("7 answer", run.answer(port))
        note("7 rds", run.rds("L", "R"))
        note("7 route configs", sorted(run.route_versions()))

        # -- step 3a: full update to unserved R2: old serves until R2, then drains --------------
        versions["R"] = run.route_versions().get("R", "")
        held = HttpConnection(port)
        held.request()
        note("3a ack", run.push(listeners=[listener("L", port, "R2", buffer=32768)]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 1, timeout=5, what="warming v2")
        note("3a states", run.states())
        note("3a lm", run.lm())
        note("3a answers", {run.answer(port) for _ in range(10)})
        note("3a subscribed", run.subscribed())
        note("3a nack", run.push("routes", routes=[routes("R", "R-v2"), routes("R2", "R2-v1")]))
        wait_for(lambda: get(port).text == "R2-v1", timeout=5, what="R2-v1")
        old = held.request()
        note("3a old conn", (old.text, old.closes))
        note("3a after", run.states())
        wait_for(lambda: run.subscribed() == [["R2"]], timeout=10, what="R released")
        wait_for(lambda: run.lm()["total_listeners_draining"] == 0, timeout=10, what="drained")
        note("3a lm after", run.lm())
        held.close()

        # -- step 3b: in-place change of the HCM's rds (R2 -> R3), R3 not served -----------------
        note("3b ack", run.push(listeners=[listener("L", port, "R3", buffer=32768)]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 1, timeout=5, what="warming")
        note("3b states", run.states())
        note("3b answer", run.answer(port))
        note(
            "3b nack",
            run.push("routes", routes=[routes("R2", "R2-v1"), routes("R3", "R3-v1")]),
        )
        wait_for(lambda: get(port).text == "R3-v1", timeout=5, what="R3-v1")
        note("3b states after", run.states())
        # (a chain drain with no connections ends at once here; Envoy waits the whole DT)
        note("3b lm", run.lm(skip=("total_filter_chains_draining",)))

        # -- step 5a: a warming listener removed: dropped at once, port released ----------------
        l3 = listener("L3", port3, "R9")
        note("5a ack", run.push(listeners=[listener("L", port, "R3", buffer=32768), l3]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 1, timeout=5, what="L3 warming")
        note("5a ack remove", run.push(listeners=[listener("L", port, "R3", buffer=32768)]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 0, timeout=5, what="L3 gone")
        note("5a lm", run.lm(skip=("total_filter_chains_draining",)))
        note("5a states", run.states())
        note("5a bindable", bindable(port3))

        # -- step 6: an invalid route config for a new listener: NACK, listener serves 404 -------
        bad = routes("Ra", "never", validate_clusters=True)
        bad["virtual_hosts"][0]["routes"][0] = {
            "match": {"prefix": "/"},
            "route": {"cluster": "nope"},
        }
        good = [routes("R2", "R2-v1"), routes("R3", "R3-v1")]
        note(
            "6 ack",
            run.push(
                listeners=[listener("L", port, "R3", buffer=32768), listener("L2", port2, "Ra")]
            ),
        )
        note("6 nack", run.push("routes", routes=[*good, bad]))
        wait_for(lambda: not refused(port2), timeout=5, what="L2 active after the NACK")
        note("6 answer", run.answer(port2))
        note("6 rds", run.rds("L2", "Ra"))
        regex = routes("Ra", "never")
        regex["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "(abc"}}
        note("6 regex nack", run.push("routes", routes=[*good, regex]))
        note("6 still serving", run.answer(port))

        note("6 valid again", run.push("routes", routes=good))

        # -- step 3c: a changed listener whose new routes time out (1 s) -------------------------
        l2 = listener("L2", port2, "Ra")
        note("3c ack", run.push(listeners=[listener("L", port, "R4", timeout="1s"), l2]))
        wait_for(
            lambda: (run.rds("L", "R4")["init_fetch_timeout"] or 0) >= 1,
            timeout=5,
            what="R4's initial fetch timed out",
        )
        note("3c answer after the timeout", run.answer(port))
        note("3c rds", run.rds("L", "R4"))

        # -- step 3d: a changed listener whose new routes are NACKed (bad regex) -----------------
        note("3d ack", run.push(listeners=[listener("L", port, "R5", buffer=1024), l2]))
        bad_r5 = routes("R5", "never")
        bad_r5["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "(abc"}}
        note("3d nack", run.push("routes", routes=[*good, bad_r5]))
        time.sleep(0.3)
        note("3d answer after the NACK", run.answer(port))
        note("3d rds", run.rds("L", "R5"))
    finally:
        process.stop()
        stub.stop()
    return seen


# Where xds-proxy does better than Envoy (the spec's **better** rows): the observations that
# differ, with ours.
BETTER = {
    # a changed listener keeps serving its old version after its new routes timed out ...
    "3c answer after the timeout": (200, "R3-v1"),
    # ... or were NACKed
    "3d answer after the NACK": (200, "R3-v1"),
}


@pytest.mark.serial  # under load Envoy's and our RDS counts at step 3d can differ (a race)
def test_warming_steps_same_as_envoy_except_the_better_rows(tmp_path: Path) -> None:
    envoy = run_steps(
        lambda b, w: EnvoyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "envoy", ours=False
    )
    ours = run_steps(
        lambda b, w: ProxyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "ours", ours=True
    )
    theirs = dict(envoy)
    mine = dict(ours)
    assert [step for step, _ in envoy] == [step for step, _ in ours]
    # Envoy's rows of 3c: the new version is active with no routes: 404.
    assert theirs["3c answer after the timeout"] == (404, "")
    assert theirs["3d answer after the NACK"] == (404, "")
    differences = []
    for step, value in envoy:
        expected = BETTER.get(step, value)
        if mine[step] != expected:
            differences.append(f"{step}: envoy {value!r}, ours {mine[step]!r}")
    assert differences == [], "\n".join(differences)


def run_startup(make_process, tmp_path: Path) -> list[tuple[str, Any]]:
    """Spec row 0: L is in the first LDS response and R is not served yet."""
    from tests.helpers.stub import StubProcess

    node = "warming-node"
    port = free_port()
    stub = StubProcess(tmp_path / "stub").start()
    stub.client.set_resources(listeners=[listener("L", port, "R")], routes=[])
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    process = make_process(without_retry_policy(bootstrap), tmp_path / "proc")
    process.start()
    run = Run(process, stub, node)
    seen: list[tuple[str, Any]] = []
    try:
        wait_for(lambda: run.subscribed() == [["R"]], timeout=10, what="RDS [R]")
        time.sleep(0.3)
        seen.append(("ready", process.get("/ready")))
        seen.append(("states", run.states()))
        seen.append(("listed", sorted(process.listeners())))
        seen.append(("lm", run.lm(skip=("total_filter_chains_draining",))))
        seen.append(("workers", process.stat("listener_manager.workers_started")))
        seen.append(("port", run.answer(port)))
        run.push("routes", routes=[routes("R", "R-v1")])
        process.wait_ready(timeout=5)
        seen.append(("live answer", run.answer(port)))
        seen.append(("live states", run.states()))
        seen.append(("live lm", run.lm(skip=("total_filter_chains_draining",))))
    finally:
        process.stop()
        stub.stop()
    return seen


def test_startup_waits_for_the_routes_of_the_first_listeners_as_envoy(tmp_path: Path) -> None:
    envoy = run_startup(lambda b, w: EnvoyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "e")
    ours = run_startup(lambda b, w: ProxyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "o")
    assert dict(envoy)["ready"] == (503, "INITIALIZING\n")
    assert dict(envoy)["port"] == "refused"
    assert ours == envoy


def run_replacements(make_process, tmp_path: Path) -> list[tuple[str, Any]]:
    """Spec rows 5b (a warming version replaced) and 5c (the active config pushed back; a
    removal while a version warms)."""
    from tests.helpers.stub import StubProcess

    node = "warming-node"
    port, port2 = free_port(), free_port()
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    process = make_process(without_retry_policy(bootstrap), tmp_path / "proc")
    process.start()
    process.wait_ready()
    run = Run(process, stub, node)
    seen: list[tuple[str, Any]] = []

    def note(step: str, value: Any) -> None:
        seen.append((step, value))

    skip = ("total_filter_chains_draining",)
    try:
        # 5b
        note("5b v1", run.push(listeners=[listener("L", port, "R")], routes=[]))
        note("5b v2", run.push(listeners=[listener("L", port, "R", buffer=32768)]))
        note("5b v2 states", run.states())
        note("5b v2 lm", run.lm(skip))
        note("5b v3", run.push(listeners=[listener("L", port, "R3", buffer=32768)]))
        wait_for(lambda: run.subscribed() == [["R3"]], timeout=5, what="R3 only")
        note("5b v3 states", run.states())
        note("5b routes", run.push("routes", routes=[routes("R", "R-v1"), routes("R3", "R3-v1")]))
        wait_for(lambda: not refused(port), timeout=5, what="L active")
        note("5b answer", run.answer(port))
        note("5b lm", run.lm(skip))
        l_final = listener("L", port, "R3", buffer=32768)
        # 5c: active L2 v1 (R) + warming v2 (R2), then v1's config again
        l2 = listener("L2", port2, "R")
        note("5c v1", run.push(listeners=[l_final, l2]))
        wait_for(lambda: not refused(port2), timeout=5, what="L2 active")
        kept = HttpConnection(port2)
        kept.request()
        note("5c v2", run.push(listeners=[l_final, listener("L2", port2, "R2", buffer=32768)]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 1, timeout=5, what="warming")
        note("5c v3 = v1", run.push(listeners=[l_final, l2]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 0, timeout=5, what="discarded")
        note("5c states", run.states())
        note("5c lm", run.lm(skip))
        again = kept.request()
        note("5c kept", (again.text, again.closes))
        wait_for(lambda: run.subscribed() == [["R", "R3"]], timeout=5, what="R2 dropped")
        # remove while v1 is active and a new version warms
        note("5c v4", run.push(listeners=[l_final, listener("L2", port2, "R2", buffer=32768)]))
        wait_for(lambda: run.lm()["total_listeners_warming"] == 1, timeout=5, what="warming")
        note("5c remove", run.push(listeners=[l_final]))
        note("5c removed states", run.states())
        note("5c removed lm", run.lm((*skip, "total_listeners_draining")))
        note("5c refused", refused(port2))
        kept.close()
    finally:
        process.stop()
        stub.stop()
    return seen


def test_replaced_and_reverted_warming_versions_as_envoy(tmp_path: Path) -> None:
    envoy = run_replacements(lambda b, w: EnvoyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "e")
    ours = run_replacements(lambda b, w: ProxyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "o")
    differences = [
        f"{step}: envoy {value!r}, ours {mine!r}"
        for (step, value), (_, mine) in zip(envoy, ours, strict=True)
        if value != mine
    ]
    assert differences == [], "\n".join(differences)


def bad_regex(name: str) -> dict:
    config = routes(name, "never")
    config["virtual_hosts"][0]["routes"][0]["match"] = {"safe_regex": {"regex": "(x"}}
    return config


def run_partial_nacks(make_process, tmp_path: Path) -> list[tuple[str, Any]]:
    """Spec §2.6: which route configs of a NACKed response still apply (newest subscription
    first, up to the first error), and update_rejected on every subscription."""
    from tests.helpers.stub import StubProcess

    node = "warming-node"
    port_a, port_b = free_port(), free_port()
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    process = make_process(without_retry_policy(bootstrap), tmp_path / "proc")
    process.start()
    process.wait_ready()
    run = Run(process, stub, node)
    seen: list[tuple[str, Any]] = []
    try:
        run.push(listeners=[listener("L1", port_a, "Ra")], routes=[routes("Ra", "Ra-v1")])
        wait_for(lambda: not refused(port_a), timeout=5, what="L1")
        # L2's subscription (Rb) is newer than L1's (Ra)
        run.push(
            listeners=[listener("L1", port_a, "Ra"), listener("L2", port_b, "Rb")],
            routes=[routes("Ra", "Ra-v1"), routes("Rb", "Rb-v1")],
        )
        wait_for(lambda: not refused(port_b), timeout=5, what="L2")
        cases = {
            "valid Ra, bad Rb": [routes("Ra", "Ra-2"), bad_regex("Rb")],
            "bad Rb, valid Ra": [bad_regex("Rb"), routes("Ra", "Ra-3")],
            "bad Ra, valid Rb": [bad_regex("Ra"), routes("Rb", "Rb-4")],
            "valid Rb, bad Ra": [routes("Rb", "Rb-5"), bad_regex("Ra")],
        }
        for case, pushed in cases.items():
            nack = run.push("routes", routes=pushed)
            time.sleep(0.2)
            seen.append(
                (
                    case,
                    (
                        nack is not None and nack.endswith("missing ): (x"),
                        get(port_a).text,
                        get(port_b).text,
                        run.rds("L1", "Ra")["update_rejected"],
                        run.rds("L2", "Rb")["update_rejected"],
                    ),
                )
            )
    finally:
        process.stop()
        stub.stop()
    return seen


def test_a_nacked_response_applies_what_envoy_applies(tmp_path: Path) -> None:
    envoy = run_partial_nacks(
        lambda b, w: EnvoyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "e"
    )
    ours = run_partial_nacks(lambda b, w: ProxyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "o")
    assert dict(envoy)["bad Ra, valid Rb"][2] == "Rb-4"  # the newer subscription went first
    assert dict(envoy)["valid Ra, bad Rb"][1] == "Ra-v1"
    assert ours == envoy


def run_delta_absent(make_process, tmp_path: Path) -> list[tuple[str, Any]]:
    """Delta: the control plane says R "does not exist" (removed_resources). Envoy counts an
    update and stops R's initial fetch timer: L keeps warming past initial_fetch_timeout."""
    from tests.helpers.stub import StubProcess

    node = "warming-node"
    port = free_port()
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = with_xds_address(load_bootstrap("ads-delta"), stub.xds_address, node_id=node)
    process = make_process(without_retry_policy(bootstrap), tmp_path / "proc")
    process.start()
    process.wait_ready()
    run = Run(process, stub, node)
    seen: list[tuple[str, Any]] = []
    try:
        seen.append(("ack", run.push(listeners=[listener("L", port, "R", timeout="1s")])))
        time.sleep(1.6)  # past the 1 s initial-fetch timeout, which must not fire here
        seen.append(("states", run.states()))
        seen.append(("port", run.answer(port)))
        seen.append(("rds", run.rds("L", "R")))
        run.push("routes", routes=[routes("R", "R-v1")])
        wait_for(lambda: not refused(port), timeout=5, what="L active")
        seen.append(("answer", run.answer(port)))
        seen.append(("rds after", run.rds("L", "R")))
    finally:
        process.stop()
        stub.stop()
    return seen


def test_delta_does_not_exist_stops_the_initial_fetch_timer_as_envoy(tmp_path: Path) -> None:
    envoy = run_delta_absent(lambda b, w: EnvoyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "e")
    ours = run_delta_absent(lambda b, w: ProxyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "o")
    assert dict(envoy)["port"] == "refused"  # still warming after the 1 s timeout
    assert ours == envoy


def run_static_rds(make_process, tmp_path: Path) -> list[tuple[str, Any]]:
    """A bootstrap (static) listener whose routes come from RDS over the ADS stream: the
    server stays INITIALIZING and the port refuses until the routes are there."""
    from tests.helpers.stub import StubProcess

    node = "warming-node"
    port = free_port()
    stub = StubProcess(tmp_path / "stub").start()
    stub.client.set_resources(listeners=[], routes=[])
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    bootstrap["static_resources"]["listeners"] = [listener("S", port, "RS")]
    process = make_process(without_retry_policy(bootstrap), tmp_path / "proc")
    process.start()
    run = Run(process, stub, node)
    seen: list[tuple[str, Any]] = []
    try:
        wait_for(lambda: run.subscribed() == [["RS"]], timeout=10, what="RDS [RS]")
        time.sleep(0.3)
        seen.append(("ready", process.get("/ready")))
        seen.append(("port", run.answer(port)))
        seen.append(("listed", sorted(process.listeners())))
        seen.append(("streams", len(run.subscribed())))
        run.push("routes", routes=[routes("RS", "static-routes")])
        process.wait_ready(timeout=5)
        seen.append(("live answer", run.answer(port)))
        seen.append(("rds", run.rds("S", "RS")))
    finally:
        process.stop()
        stub.stop()
    return seen


def test_a_static_listener_warms_on_rds_as_envoy(tmp_path: Path) -> None:
    envoy = run_static_rds(lambda b, w: EnvoyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "e")
    ours = run_static_rds(lambda b, w: ProxyProcess(b, w, extra_args=DRAIN_ARGS), tmp_path / "o")
    assert dict(envoy)["ready"] == (503, "INITIALIZING\n")
    assert ours == envoy
