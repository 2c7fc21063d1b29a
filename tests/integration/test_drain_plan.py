"""`POST /listeners/plan` on the real processes (control-plane-stub + xds-proxy): a dry run of
an LDS push that changes nothing, and that predicts the push that follows.

Connections are held fixed with requests half sent (a drain leaves them open until its
deadline), so the counts of the plan and of `/drain_status` after the real push are the
same numbers. Every outcome is covered: added, full_update, in_place (chain names and
counts), no_op, removed, rejected (the exact NACK text), would_warm and policy_update.
"""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from control_plane_stub.client import StubNack
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess, run_cli
from tests.interop.test_warming_interop import listener as rds_listener

POLICY = "xds_proxy.drain"
DRAIN_TIME_S = 30  # drains outlive the test: half-sent requests stay until the deadline


@pytest.fixture
def stub(tmp_path) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path / "stub").start()
    yield process
    process.stop()


@pytest.fixture
def proxy(stub, tmp_path) -> Iterator[ProxyProcess]:
    args = ["--drain-time-s", str(DRAIN_TIME_S), "--drain-strategy", "immediate"]
    process = ProxyProcess(
        lds_bootstrap(stub.xds_address, ads=True), tmp_path / "proxy", extra_args=args
    ).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def post_plan(proxy: ProxyProcess, body: bytes, query: str = "") -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{proxy.admin_address}/listeners/plan{query}", data=body, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def plan(proxy: ProxyProcess, listeners: list[dict], query: str = "", **extra) -> dict:
    status, body = post_plan(proxy, json.dumps({"listeners": listeners, **extra}).encode(), query)
    assert status == 200, body
    return json.loads(body)


def push(stub: StubProcess, listeners: list[dict]) -> str:
    version = stub.client.set_resources(listeners=listeners)["listeners"]
    with contextlib.suppress(StubNack):  # the rejected listener: the others are applied
        stub.client.wait(version, timeout=10)
    return version


def half_sent(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection whose request is half sent: a drain leaves it open until its deadline."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
    return sock


def with_policy(listener: dict, **policy) -> dict:
    return {**listener, "metadata": {"filter_metadata": {POLICY: policy}}}


def two_chains(name: str, port: int, gone_body: str) -> dict:
    return http_listener(
        name,
        port,
        chains=[
            chain("kept", name="keep", source_prefix="127.0.0.1/32"),
            chain(gone_body, name="gone", source_prefix="127.0.0.2/32"),
        ],
    )


def stable_state(proxy: ProxyProcess) -> tuple:
    """What a plan must not change: /listeners, config_dump, and every stat but the clocks."""
    stats = {
        name: value
        for name, value in proxy.stats().items()
        if "uptime" not in name and not name.startswith("server.memory")
    }
    return proxy.get("/listeners"), proxy.get("/config_dump"), stats


def test_plan_changes_nothing_and_predicts_the_push_that_follows(stub, proxy) -> None:
    ports = {name: free_port() for name in ("full", "inplace", "same", "gone", "pol", "new")}
    warm_port, bad_port = free_port(), free_port()
    v1 = [
        http_listener("full", ports["full"]),
        two_chains("inplace", ports["inplace"], "gone-v1"),
        http_listener("same", ports["same"]),
        http_listener("gone", ports["gone"]),
        with_policy(http_listener("pol", ports["pol"]), drain_time_s=5),
    ]
    first = push(stub, v1)
    wait_for(lambda: len(proxy.listeners()) == 5, timeout=5, what="five listeners")
    held = [half_sent(ports["full"]) for _ in range(2)]
    held += [half_sent(ports["inplace"]) for _ in range(2)]  # chain "keep"
    held += [half_sent(ports["inplace"], "127.0.0.2") for _ in range(3)]  # chain "gone"
    held += [half_sent(ports["gone"])]
    wait_for(lambda: proxy.stat("server.total_connections") == 8, timeout=5, what="8 held")

    v2 = [
        http_listener("full", ports["full"], per_connection_buffer_limit_bytes=9000),
        two_chains("inplace", ports["inplace"], "gone-v2"),
        http_listener("same", ports["same"]),
        with_policy(http_listener("pol", ports["pol"]), drain_time_s=7),
        http_listener("new", ports["new"]),
        rds_listener("warm", warm_port, "routes-not-served"),
        with_policy(http_listener("bad", bad_port), drain_strategy="slow"),
    ]
    before = stable_state(proxy)
    report = plan(proxy, v2, version="v2")
    assert stable_state(proxy) == before  # nothing changed: listeners, config_dump, stats

    assert report["mode"] == "sotw" and report["version_info"] == "v2"
    bad_line = (
        'bad: metadata.filter_metadata["xds_proxy.drain"].drain_strategy: '
        "must be one of gradual, immediate, got 'slow'"
    )
    assert report["would_ack"] is False
    assert report["nack"] == f"Error adding/updating listener(s) {bad_line}\n"
    by_name = {entry["name"]: entry for entry in report["listeners"]}
    assert by_name["gone"] == {
        "name": "gone",
        "outcome": "removed",
        "draining_version": first,
        "connections": 1,
    }
    full = by_name["full"]
    assert full["outcome"] == "full_update" and full["connections"] == 2
    assert full["changed"] == ["per_connection_buffer_limit_bytes"]
    inplace = by_name["inplace"]
    assert inplace["outcome"] == "in_place"
    assert inplace["draining_chains"] == [{"chain": "gone", "index": 1, "connections": 3}]
    assert by_name["same"] == {
        "name": "same",
        "outcome": "no_op",
        "reason": "identical: the same bytes",
    }
    assert by_name["pol"]["outcome"] == "policy_update"
    assert by_name["pol"]["drain_policy"] == {"drain_time_s": 7.0}
    assert by_name["new"] == {"name": "new", "outcome": "added"}
    assert by_name["warm"] == {
        "name": "warm",
        "outcome": "added",
        "would_warm": ["routes-not-served"],
    }
    assert by_name["bad"] == {"name": "bad", "outcome": "rejected", "nack": bad_line}
    assert report["connections_to_drain"] == 1 + 2 + 3

    # The push itself: the drains the plan predicted, with the same counts.
    modified = proxy.stat("listener_manager.listener_modified")
    second = push(stub, v2)
    wait_for(lambda: len(drains(proxy)) == 3, timeout=5, what="three drains")
    seen = {(d["listener"], d["kind"], d["filter_chain"], d["connections"]) for d in drains(proxy)}
    assert seen == {
        ("gone", "listener", None, 1),
        ("full", "listener", None, 2),
        ("inplace", "filter_chain", "gone", 3),
    }
    assert stub.nacks()[-1]["message"] == report["nack"]
    status = json.loads(proxy.get("/drain_status")[1])
    assert [w["listener"] for w in status["warming"]] == ["warm"]
    # pol: applied to the running version without a drain, counted as modified.
    dump = json.loads(proxy.get("/config_dump?resource=dynamic_listeners")[1])
    pol = next(c for c in dump["configs"] if c["name"] == "pol")
    assert "draining_state" not in pol
    assert pol["active_state"]["listener"]["metadata"]["filter_metadata"][POLICY] == {
        "drain_time_s": 7.0
    }
    assert pol["active_state"]["version_info"] == second
    # full, inplace and pol (new, warm added; same no-op; bad rejected)
    assert proxy.stat("listener_manager.listener_modified") == modified + 3
    for sock in held:
        sock.close()


def drains(proxy: ProxyProcess) -> list[dict]:
    return json.loads(proxy.get("/drain_status")[1])["drains"]


def test_delta_plan_and_the_body_rules(stub, proxy) -> None:
    port, other = free_port(), free_port()
    push(stub, [http_listener("a", port), http_listener("b", other)])
    wait_for(lambda: len(proxy.listeners()) == 2, timeout=5, what="two listeners")
    # Delta: only the listeners given; b is not named, so it is kept.
    report = plan(proxy, [http_listener("a", port, body="x")], "?delta", removed=["c"])
    assert report["mode"] == "delta"
    assert [(e["name"], e["outcome"]) for e in report["listeners"]] == [("a", "in_place")]
    report = plan(proxy, [], "?delta", removed=["b"])
    assert [(e["name"], e["outcome"]) for e in report["listeners"]] == [("b", "removed")]
    # State of the world: b missing means removed.
    report = plan(proxy, [http_listener("a", port)])
    assert [(e["name"], e["outcome"]) for e in report["listeners"]] == [
        ("b", "removed"),
        ("a", "no_op"),
    ]
    # A DiscoveryResponse, in YAML.
    listener = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener"}
    listener.update(http_listener("a", port))
    body = json.dumps({"version_info": "9", "resources": [listener]})
    status, text = post_plan(proxy, body.encode())
    assert status == 200 and json.loads(text)["version_info"] == "9"
    # Refused bodies.
    assert post_plan(proxy, b"[1, 2")[0] == 400
    assert post_plan(proxy, json.dumps({"listeners": [{"nope": 1}]}).encode())[0] == 400
    assert post_plan(proxy, json.dumps({"removed": ["a"]}).encode())[0] == 400
    status, _ = post_plan(proxy, b"x" * (4 * 1024 * 1024 + 1))
    assert status == 413
    assert proxy.get("/listeners/plan")[0] == 405
    assert proxy.alive()


def test_stub_plan_and_push_dry_run_print_the_plan_and_push_nothing(stub, proxy, tmp_path) -> None:
    port, other = free_port(), free_port()
    version = push(stub, [two_chains("web", port, "gone-v1"), http_listener("old", other)])
    wait_for(lambda: len(proxy.listeners()) == 2, timeout=5, what="two listeners")
    held = [half_sent(port, "127.0.0.2") for _ in range(2)]
    wait_for(lambda: proxy.stat("server.total_connections") == 2, timeout=5, what="2 held")
    path = tmp_path / "next.yaml"
    path.write_text(
        yaml.safe_dump({"version": "next", "listeners": [two_chains("web", port, "gone-v2")]})
    )
    planned = run_cli("plan", str(path), "--admin", proxy.admin_address)
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    assert lines[0].split() == ["LISTENER", "OUTCOME", "DRAINS", "DETAIL"]
    assert lines[1].split()[:3] == ["old", "removed", "0"]
    assert lines[2].split()[:3] == ["web", "in_place", "2"] and "chains gone (2)" in lines[2]
    assert lines[-2:] == ["connections that would drain: 2", "would ACK"]
    dry = stub.cli("push", "--dry-run", "--admin", proxy.admin_address, str(path))
    assert dry.returncode == 0 and dry.stdout == planned.stdout
    assert stub.client.status()["nodes"][0]["streams"][0]["sent"]["version"] == version
    assert set(proxy.listeners()) == {"web", "old"}  # nothing pushed, nothing changed
    as_json = run_cli("plan", "--json", str(path), "--admin", proxy.admin_address)
    assert json.loads(as_json.stdout)["version_info"] == "next"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"listeners": [with_policy(http_listener("web", port), drain_time_s="soon")]}
        )
    )
    nacked = run_cli("plan", str(bad), "--admin", proxy.admin_address)
    assert nacked.returncode == 2
    assert "would NACK: Error adding/updating listener(s) web: metadata" in nacked.stdout
    refused = stub.cli("push", "--dry-run", str(path))
    assert refused.returncode == 1 and "--dry-run needs --admin" in refused.stderr
    for sock in held:
        sock.close()
