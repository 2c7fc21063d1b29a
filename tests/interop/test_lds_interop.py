"""The same LDS pushes against a real Envoy 1.40 and against xds-proxy: the same ACK/NACK
(version, error text), the same `/listeners`, the same listener_manager stats, the same
answers to real requests."""

from __future__ import annotations

import re

import pytest

from control_plane_stub.client import StubNack
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get, refused
from tests.helpers.listeners import http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

pytestmark = pytest.mark.envoy

COUNTERS = [
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
    "listener_manager.listener_in_place_updated",
    "listener_manager.listener_create_failure",
    "listener_manager.total_listeners_active",
    "listener_manager.lds.update_success",
    "listener_manager.lds.update_rejected",
]


def scenario(p1: int, p2: int) -> list[tuple[str, list[dict]]]:
    a1 = http_listener("a", p1, body="a1")
    b1 = http_listener("b", p2, body="b1")
    return [
        ("v1", [a1, b1]),
        ("v2", [a1, b1]),  # identical: nothing changes
        ("v3", [http_listener("a", p1, body="a2"), b1]),  # in-place (only the chain changed)
        ("v4", [http_listener("a", p1, body="a3", per_connection_buffer_limit_bytes=9999), b1]),
        (
            "v5",
            [
                http_listener("a", p1, body="a3", per_connection_buffer_limit_bytes=9999),
                b1,
                http_listener("c", p1, body="c"),
            ],
        ),  # duplicate address: NACK, rest applied
        ("v6", [b1]),  # remove a
        ("v7", [http_listener("a", p1, body="a4"), b1]),  # add a again
        ("v8", [http_listener("a", p2, body="a4"), http_listener("b", p1, body="b1")]),  # swap
        ("v9", []),  # remove everything
    ]


def normalise(text: str, ports: dict[int, str]) -> str:
    text = re.sub(r"goo\.gle/debug\w+ +\n?", "", text)
    for port, name in ports.items():
        text = text.replace(str(port), name)
    return text


def run_scenario(make_process, tmp_path) -> list[dict]:
    p1, p2 = free_port(), free_port()
    ports = {p1: "P1", p2: "P2"}
    stub = StubProcess(tmp_path / "stub").start()
    process = make_process(lds_bootstrap(stub.xds_address), tmp_path / "proxy")
    process.start()
    process.wait_ready()  # the first (empty) response is applied before the pushes start
    observed = []
    try:
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
            bodies = {name: get(port).text for name, port in active_ports.items()}
            idle_ports = [p for p in ports if p not in active_ports.values()]
            wait_for(
                lambda idle=idle_ports: all(refused(p) for p in idle), timeout=2, what="refusals"
            )
            observed.append(
                {
                    "version": version,
                    "nack": nack,
                    "listeners": {n: normalise(a, ports) for n, a in sorted(active.items())},
                    "bodies": bodies,
                    "stats": {name: process.stat(name) for name in COUNTERS},
                }
            )
    finally:
        process.stop()
        stub.stop()
    return observed


def test_same_pushes_same_outcome(tmp_path):
    envoy = run_scenario(
        lambda bootstrap, workdir: EnvoyProcess(
            bootstrap, workdir, extra_args=["--drain-time-s", "1", "--drain-strategy", "immediate"]
        ),
        tmp_path / "envoy",
    )
    ours = run_scenario(
        lambda bootstrap, workdir: ProxyProcess(
            bootstrap, workdir, extra_args=["--drain-time-s", "1", "--drain-strategy", "immediate"]
        ),
        tmp_path / "ours",
    )
    differences = []
    for theirs, mine in zip(envoy, ours, strict=True):
        for key in theirs:
            if theirs[key] != mine[key]:
                differences.append(
                    f"{theirs['version']} {key}: envoy {theirs[key]!r}, ours {mine[key]!r}"
                )
    assert differences == [], "\n".join(differences)
