"""The same Delta pushes against a real Envoy 1.40 and against xds-proxy (DELTA_GRPC LDS and
delta ADS): the same ACK/NACK, the same `/listeners`, the same listener_manager and LDS
subscription stats, the same answers to real requests."""

from __future__ import annotations

import pytest

from control_plane_stub.client import StubNack
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get, refused
from tests.helpers.listeners import bootstrap_for
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.integration.test_xds_delta_proxy import run_ttl_scenario
from tests.interop.test_lds_interop import COUNTERS, normalise, scenario

pytestmark = pytest.mark.envoy

SUBSCRIPTION_STATS = [
    "listener_manager.lds.update_attempt",
    "listener_manager.lds.update_failure",
]
DRAIN_ARGS = ["--drain-time-s", "1", "--drain-strategy", "immediate"]


def run_scenario(make_process, mode: str, tmp_path) -> list[dict]:
    p1, p2 = free_port(), free_port()
    ports = {p1: "P1", p2: "P2"}
    stub = StubProcess(tmp_path / "stub").start()
    process = make_process(bootstrap_for(mode, stub.xds_address), tmp_path / "proxy")
    observed = []
    try:
        process.start()
        process.wait_ready()
        for version, listeners in scenario(p1, p2):
            stub.client.set_resources(listeners=listeners, version=version)
            try:
                stub.client.wait(version, timeout=10)
                nack = None
            except StubNack as error:
                nack = normalise(error.detail, ports)
            active = process.listeners()
            active_ports = {
                name: int(address.rpartition(":")[2]) for name, address in active.items()
            }
            idle = [port for port in ports if port not in active_ports.values()]
            wait_for(lambda idle=idle: all(refused(p) for p in idle), timeout=2, what="refusals")
            stats = process.stats()
            observed.append(
                {
                    "version": version,
                    "nack": nack,
                    "listeners": {n: normalise(a, ports) for n, a in sorted(active.items())},
                    "bodies": {name: get(port).text for name, port in active_ports.items()},
                    "stats": {name: process.stat(name) for name in COUNTERS + SUBSCRIPTION_STATS},
                    "version_text": stats.get("listener_manager.lds.version_text"),
                    "stream": stub.client.status()["nodes"][0]["streams"][0]["mode"],
                }
            )
    finally:
        process.stop()
        stub.stop()
    return observed


@pytest.mark.parametrize("mode", ["delta", "delta-ads"])
def test_same_delta_pushes_same_outcome(mode: str, tmp_path) -> None:
    envoy = run_scenario(
        lambda bootstrap, workdir: EnvoyProcess(bootstrap, workdir, extra_args=DRAIN_ARGS),
        mode,
        tmp_path / "envoy",
    )
    ours = run_scenario(
        lambda bootstrap, workdir: ProxyProcess(bootstrap, workdir, extra_args=DRAIN_ARGS),
        mode,
        tmp_path / "ours",
    )
    assert {step["stream"] for step in envoy} == {"delta"}
    differences = [
        f"{theirs['version']} {key}: envoy {theirs[key]!r}, ours {mine[key]!r}"
        for theirs, mine in zip(envoy, ours, strict=True)
        for key in theirs
        if theirs[key] != mine[key]
    ]
    assert differences == [], "\n".join(differences)


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_ttl_expiry_same_as_envoy(mode: str, tmp_path) -> None:
    envoy = run_ttl_scenario(
        lambda bootstrap, workdir: EnvoyProcess(bootstrap, workdir, extra_args=DRAIN_ARGS),
        mode,
        tmp_path / "envoy",
    )
    ours = run_ttl_scenario(
        lambda bootstrap, workdir: ProxyProcess(bootstrap, workdir, extra_args=DRAIN_ARGS),
        mode,
        tmp_path / "ours",
    )
    assert envoy["listeners"] == ["staying"]
    assert ours == envoy
