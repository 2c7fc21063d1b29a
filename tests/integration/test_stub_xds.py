"""control-plane-stub as a real process, driven by real xDS streams (XdsProbe) and its CLI."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2

from control_plane_stub.client import StubClient, StubError, StubNack
from control_plane_stub.probe import XdsProbe
from control_plane_stub.resources import CLUSTER_TYPE, LISTENER_TYPE
from tests.helpers.procs import wait_for
from tests.helpers.stub import StubProcess, run_cli

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path).start()
    try:
        yield process
    finally:
        process.stop()


def names(response) -> list[str]:
    if hasattr(response, "system_version_info"):
        return sorted(resource.name for resource in response.resources)
    result = []
    for body in response.resources:
        message = listener_pb2.Listener()
        body.Unpack(message)
        result.append(message.name)
    return sorted(result)


def listener(name: str, port: int = 10000) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
    }


async def push(stub: StubProcess, **kwargs) -> dict[str, str]:
    return await asyncio.to_thread(stub.client.set_resources, **kwargs)


async def open_probe(stub: StubProcess, node: str, **kwargs) -> XdsProbe:
    probe = await XdsProbe(stub.xds_address, node, **kwargs).start()
    probe.subscribe()
    return probe


# ---------------------------------------------------------------- SotW and Delta LDS


async def test_sotw_push_ack_and_wait(stub: StubProcess) -> None:
    probe = await open_probe(stub, "n1")
    try:
        empty = await probe.next()
        assert empty.type_url == LISTENER_TYPE and list(empty.resources) == []
        probe.ack(empty)
        versions = await push(stub, listeners=[listener("a"), listener("b")])
        response = await probe.next()
        assert names(response) == ["a", "b"]
        assert response.version_info == versions["listeners"]
        probe.ack(response)
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--version", versions["listeners"], "--timeout", "5"
        )
        assert waited.returncode == 0, waited.stderr
        [node] = stub.client.status()["nodes"]
        [row] = node["streams"]
        assert row["acked_version"] == versions["listeners"]
        assert row["mode"] == "sotw"
        # The same content again sends nothing: the next response is the next change.
        assert await push(stub, listeners=[listener("b"), listener("a")]) == versions
        changed = await push(stub, listeners=[listener("c")])
        assert (await probe.next()).version_info == changed["listeners"]
    finally:
        await probe.close()


async def test_sotw_nack_is_reported_and_not_resent(stub: StubProcess) -> None:
    probe = await open_probe(stub, "n1")
    try:
        probe.ack(await probe.next())
        bad = await push(stub, listeners=[listener("bad")])
        refused = await probe.next()
        probe.nack(refused, "listener 'bad': nope")
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--version", bad["listeners"], "--timeout", "5"
        )
        assert waited.returncode == 2
        assert "listener 'bad': nope" in waited.stderr and "'n1'" in waited.stderr
        with pytest.raises(StubNack, match="nope"):
            await asyncio.to_thread(stub.client.wait, bad["listeners"], timeout=5)
        shown = json.loads(stub.cli("status", "--json").stdout)
        nack = shown["nodes"][0]["streams"][0]["nack"]
        assert nack == {
            "version": bad["listeners"],
            "nonce": refused.nonce,
            "code": 3,
            "message": "listener 'bad': nope",
        }
        # Nothing was resent in between: the next response is the next change.
        good = await push(stub, listeners=[listener("good")])
        following = await probe.next()
        assert (following.version_info, names(following)) == (good["listeners"], ["good"])
        probe.ack(following)
        await asyncio.to_thread(stub.client.wait, good["listeners"], timeout=5)
    finally:
        await probe.close()


async def test_delta_lds_incremental_and_reconnect(stub: StubProcess) -> None:
    await push(stub, listeners=[listener("a"), listener("b")])
    probe = await open_probe(stub, "d1", mode="delta")
    try:
        first = await probe.next()
        assert names(first) == ["a", "b"]
        probe.ack(first)
        known = {r.name: r.version for r in first.resources}
        await push(stub, listeners=[listener("a"), listener("c")])
        update = await probe.next()
        assert names(update) == ["c"] and list(update.removed_resources) == ["b"]
        probe.ack(update)
        known.pop("b")
        known.update({r.name: r.version for r in update.resources})
    finally:
        await probe.close()
    # Reconnect telling what we have: nothing to send but an (empty) answer.
    again = await XdsProbe(stub.xds_address, "d1", mode="delta").start()
    try:
        again.subscribe(initial_versions=known)
        response = await again.next()
        assert list(response.resources) == [] and list(response.removed_resources) == []
    finally:
        await again.close()


async def test_ads_sotw_serves_listeners_clusters_and_empty_other_types(
    stub: StubProcess,
) -> None:
    await push(stub, listeners=[listener("a")], clusters=[{"name": "c", "connect_timeout": "1s"}])
    probe = await XdsProbe(stub.xds_address, "ads", ads=True).start()
    try:
        probe.subscribe(LISTENER_TYPE)
        probe.subscribe(CLUSTER_TYPE)
        probe.subscribe(ROUTE_TYPE, names=("routes",))
        responses = {}
        for _ in range(3):
            response = await probe.next()
            responses[response.type_url] = response
        assert len(responses[LISTENER_TYPE].resources) == 1
        assert len(responses[CLUSTER_TYPE].resources) == 1
        assert len(responses[ROUTE_TYPE].resources) == 0
        kinds = {s["type_url"] for s in stub.client.status()["nodes"][0]["streams"]}
        assert kinds == {LISTENER_TYPE, CLUSTER_TYPE, ROUTE_TYPE}
    finally:
        await probe.close()


async def test_ads_delta_unknown_type_is_answered_empty(stub: StubProcess) -> None:
    probe = await XdsProbe(stub.xds_address, "ads-d", mode="delta", ads=True).start()
    try:
        probe.subscribe("type.googleapis.com/made.up.Type", names=("x",))
        response = await probe.next()
        assert response.type_url == "type.googleapis.com/made.up.Type"
        assert list(response.resources) == []
    finally:
        await probe.close()


async def test_large_response_over_4_mib(stub: StubProcess) -> None:
    body = "x" * 4096
    many = [
        {**listener(f"l{i}", 20000 + i), "stat_prefix": body} for i in range(1200)
    ]  # about 5 MiB in one SotW response
    probe = await open_probe(stub, "big")
    try:
        probe.ack(await probe.next())
        versions = await push(stub, listeners=many)
        response = await probe.next(timeout=20)
        assert len(response.resources) == 1200
        assert response.ByteSize() > 4 * 1024 * 1024
        assert response.version_info == versions["listeners"]
    finally:
        await probe.close()


# ---------------------------------------------------------------- bad clients


async def test_garbage_on_one_stream_does_not_disturb_another(stub: StubProcess) -> None:
    probe = await open_probe(stub, "steady")
    try:
        probe.ack(await probe.next())
        async with grpc.aio.insecure_channel(stub.xds_address) as channel:
            call = channel.stream_stream(
                "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )()
            await call.write(b"\xff\xff\xff not a protobuf")
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(call.read(), 5)
        versions = await push(stub, listeners=[listener("a")])
        assert (await probe.next()).version_info == versions["listeners"]
        assert stub.alive()
    finally:
        await probe.close()


async def test_disconnected_streams_are_cleaned_up(stub: StubProcess) -> None:
    probes = [await open_probe(stub, f"gone-{i}", mode=("sotw", "delta")[i % 2]) for i in range(8)]
    for probe in probes:
        await probe.next()
    assert len(stub.client.status()["nodes"]) == 8
    for probe in probes:
        await probe.close()
    await asyncio.to_thread(
        wait_for, lambda: stub.client.status() == {"nodes": []}, 5, 0.02, "streams cleaned up"
    )
    # A push afterwards has nobody to send to and the stub keeps serving.
    await push(stub, listeners=[listener("a")])
    late = await open_probe(stub, "late")
    try:
        assert names(await late.next()) == ["a"]
    finally:
        await late.close()


# ---------------------------------------------------------------- per-node sets


async def test_node_sets_and_wait_per_node(stub: StubProcess, tmp_path: Path) -> None:
    await push(stub, listeners=[listener("shared")])
    one = await open_probe(stub, "one", auto_ack=True)
    two = await open_probe(stub, "two", auto_ack=True)
    try:
        assert names(await one.next()) == ["shared"]
        assert names(await two.next()) == ["shared"]
        own_file = tmp_path / "own.yaml"
        own_file.write_text(yaml.safe_dump({"listeners": [listener("own")]}))
        pushed = await asyncio.to_thread(stub.cli, "push", "--node", "one", str(own_file))
        assert pushed.returncode == 0, pushed.stderr
        own_version = pushed.stdout.split()[1]
        assert names(await one.next()) == ["own"]
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--node", "one", "--version", own_version, "--timeout", "5"
        )
        assert waited.returncode == 0, waited.stderr
        # Without --node every connected node must have it: "two" never will.
        waited = await asyncio.to_thread(
            stub.cli, "wait", "--version", own_version, "--timeout", "0.5"
        )
        assert waited.returncode == 1 and "not ACKed" in waited.stderr
        # A default push reaches "two" only.
        default = await push(stub, listeners=[listener("next")])
        assert names(await two.next()) == ["next"]
        await asyncio.to_thread(stub.client.wait, default["listeners"], node="two", timeout=5)
        assert one.pending() == 0
    finally:
        await one.close()
        await two.close()


def test_wait_with_nobody_connected_times_out(stub: StubProcess) -> None:
    waited = stub.cli("wait", "--version", "v", "--timeout", "0.3")
    assert waited.returncode == 1
    assert "no node connected" in waited.stderr
    with pytest.raises(TimeoutError):
        stub.client.wait("v", node="nobody", timeout=0.3)


# ---------------------------------------------------------------- push: refusals and raw


def test_push_refuses_bad_files_and_keeps_the_served_set(stub: StubProcess, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"listeners": [listener("a")]}))
    first = stub.cli("push", str(good))
    assert first.returncode == 0
    cases = {
        "unparsable.yaml": ("listeners: [\n", ":2:1: "),
        "noname.yaml": ("listeners:\n  - address: {}\n", ":2:5: listeners[0].name: required"),
        "dupe.yaml": (
            "listeners:\n  - name: a\n  - name: a\n",
            ":3:5: listeners[1].name: duplicate name 'a'",
        ),
        "unknown.yaml": (
            "listeners:\n  - name: a\n    listener_filters:\n      - name: f\n"
            "        typed_config: {'@type': type.googleapis.com/x.Nope}\n",
            ":5:24: listeners[0].listener_filters[0].typed_config.@type: unknown @type",
        ),
    }
    for file_name, (text, expected) in cases.items():
        path = tmp_path / file_name
        path.write_text(text)
        refused = stub.cli("push", str(path))
        assert refused.returncode == 1, file_name
        assert refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert line.startswith(f"control-plane-stub: {path}{expected}"), line
    # The set is still the first one.
    assert stub.client.set_resources() == dict(line.split() for line in first.stdout.splitlines())


def test_server_refuses_what_the_client_api_did_not_check(stub: StubProcess) -> None:
    from control_plane_stub.generated.xds_stub.v1 import control_pb2, control_pb2_grpc

    with grpc.insecure_channel(stub.control_address) as channel:
        service = control_pb2_grpc.ControlServiceStub(channel)
        request = control_pb2.SetResourcesRequest()
        request.listeners.resources.add(name="a").body.type_url = LISTENER_TYPE
        request.listeners.resources.add(name="a").body.type_url = LISTENER_TYPE
        with pytest.raises(grpc.RpcError) as caught:
            service.SetResources(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in caught.value.details()


async def test_raw_push_sends_exactly_what_was_given(stub: StubProcess, tmp_path: Path) -> None:
    garbage = b"\xff\xfe garbage"
    raw_file = tmp_path / "raw.yaml"
    raw_file.write_text(
        yaml.safe_dump(
            {
                "listeners": [
                    listener("dup"),
                    listener("dup", 10001),
                    {"@type": LISTENER_TYPE, "value_base64": base64.b64encode(garbage).decode()},
                    {
                        "name": "odd",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "name": "f",
                                        "typed_config": {"@type": "type.googleapis.com/x.Unknown"},
                                    }
                                ]
                            }
                        ],
                    },
                ]
            }
        )
    )
    refused = stub.cli("push", str(raw_file))
    assert refused.returncode == 1
    probe = await open_probe(stub, "raw")
    try:
        probe.ack(await probe.next())
        pushed = await asyncio.to_thread(stub.cli, "push", "--raw", str(raw_file))
        assert pushed.returncode == 0, pushed.stderr
        response = await probe.next()
        bodies = list(response.resources)
        assert len(bodies) == 4
        assert bodies[2].value == garbage
        first, second = listener_pb2.Listener(), listener_pb2.Listener()
        bodies[0].Unpack(first)
        bodies[1].Unpack(second)
        assert first.name == second.name == "dup"
        odd = listener_pb2.Listener()
        bodies[3].Unpack(odd)
        assert odd.filter_chains[0].filters[0].typed_config.type_url.endswith("x.Unknown")
    finally:
        await probe.close()


def test_client_errors_are_one_line(stub: StubProcess) -> None:
    with pytest.raises(StubError, match=r"^listeners\[1\]\.name: duplicate name 'a'"):
        stub.client.set_resources(listeners=[{"name": "a"}, {"name": "a"}])
    unreachable = StubClient("127.0.0.1:1", rpc_timeout=1)
    with pytest.raises(StubError, match="cannot reach"):
        unreachable.status()
    unreachable.close()
    result = run_cli("status", "--control", "127.0.0.1:1")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------- status output, serve options


async def test_status_table_and_json(stub: StubProcess) -> None:
    probe = await open_probe(stub, "table-node", mode="delta")
    try:
        response = await probe.next()
        probe.nack(response, "refused for the table")
        await asyncio.to_thread(
            wait_for,
            lambda: stub.client.status()["nodes"][0]["streams"][0]["nack"] is not None,
            5,
            0.02,
            "nack recorded",
        )
        table = stub.cli("status").stdout
        assert "table-node" in table and "Listener" in table and "delta" in table
        assert "refused for the table" in table
        document = json.loads(stub.cli("status", "--json").stdout)
        row = document["nodes"][0]["streams"][0]
        assert row["connected_since"].endswith("Z")
        assert row["sent"]["nonce"] == response.nonce
    finally:
        await probe.close()
    await asyncio.to_thread(
        wait_for, lambda: stub.client.status() == {"nodes": []}, 5, 0.02, "empty status"
    )
    assert stub.cli("status").stdout.strip() == "no node connected"


async def test_serve_watch_reloads_the_file(tmp_path: Path) -> None:
    resources = tmp_path / "watched.yaml"
    resources.write_text(yaml.safe_dump({"listeners": [listener("v1")]}))
    stub = StubProcess(tmp_path, resources=resources, extra_args=["--watch"]).start()
    probe = None
    try:
        probe = await open_probe(stub, "watcher", auto_ack=True)
        assert names(await probe.next()) == ["v1"]
        resources.write_text(yaml.safe_dump({"listeners": [listener("v2"), listener("v3")]}))
        assert names(await probe.next(timeout=10)) == ["v2", "v3"]
        # A broken version is refused and the set stays.
        resources.write_text("listeners: [\n")
        await asyncio.to_thread(
            wait_for, lambda: "watched.yaml:2:1" in stub.log(), 5, 0.05, "refusal logged"
        )
        resources.write_text(yaml.safe_dump({"listeners": [listener("v4")]}))
        assert names(await probe.next(timeout=10)) == ["v4"]
    finally:
        if probe is not None:
            await probe.close()
        stub.stop()


def test_serve_refuses_bad_resources_and_addresses(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners:\n  - {}\n")
    result = run_cli(
        "serve",
        "--xds",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--resources",
        str(bad),
        timeout=15,
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith("listeners[0].name: required")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("serve", "--xds", "nonsense", "--control", "127.0.0.1:0", timeout=15)
    assert result.returncode == 1 and "HOST:PORT" in result.stderr
    result = run_cli("push")
    assert result.returncode == 1 and result.stderr.startswith("control-plane-stub: ")


def test_ready_file_and_sigterm(stub: StubProcess) -> None:
    ready = json.loads(stub.ready_path.read_text())
    assert ready == {"xds": stub.xds_address, "control": stub.control_address}
    assert all(not address.endswith(":0") for address in ready.values())
    assert stub.stop() == 0
