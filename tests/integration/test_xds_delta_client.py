"""The LDS client over Delta (DELTA_GRPC and delta ADS) and resource TTLs, on loopback gRPC.

The fake control plane of test_xds_client.py, taught the two Delta methods, records every
request; the sequences asserted here are the ones recorded from Envoy 1.40 for the same
script (see tests/unit/test_xds_delta.py). Real sockets, real gRPC, real timers; only the
listener manager is replaced by recording callbacks. The TTL tests read time from a
ManualClock they move themselves: the client's timer decides when to look, the clock what it
sees, so a slow machine cannot make a heartbeat late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from tests.helpers.clocks import ManualClock
from tests.helpers.waiting import wait_until
from tests.integration.test_xds_client import (
    FakeControlPlane,
    ShortDelays,
    bootstrap_yaml,
    listener,
)
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.xds.client import LdsClient
from xds_proxy.xds.decode import LISTENER_TYPE_URL, RESOURCE_WRAPPER_TYPE_URL

LDS = "listener_manager.lds."
DELTA = config_source_pb2.ApiConfigSource.DELTA_GRPC


class DeltaControlPlane(FakeControlPlane):
    async def DeltaListeners(self, request_iterator, context):
        async for response in self._serve("delta-lds", request_iterator, context):
            yield response

    async def DeltaAggregatedResources(self, request_iterator, context):
        async for response in self._serve("delta-ads", request_iterator, context):
            yield response


class Harness:
    """An LdsClient in the test's loop with recording apply and apply_delta callbacks."""

    def __init__(
        self,
        port: int,
        ads: bool = False,
        delta: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bootstrap = json_format.ParseDict(
            yaml.safe_load(bootstrap_yaml(port, ads)), bootstrap_pb2.Bootstrap()
        )
        if delta:
            dynamic = self.bootstrap.dynamic_resources
            source = dynamic.ads_config if ads else dynamic.lds_config.api_config_source
            source.api_type = DELTA
        self.stats = Stats()
        self.sotw_calls: list[tuple[str, list[str]]] = []
        self.delta_calls: list[tuple[str, list[str], list[str]]] = []
        self.answers: list[str | None] = []
        self.client = LdsClient(
            self.bootstrap,
            self.stats,
            self.apply,
            lambda: None,
            rng=ShortDelays(),
            apply_delta=self.apply_delta,
            clock=clock,
        )
        self.task: asyncio.Task | None = None

    def apply(self, version: str, listeners: list[listener_pb2.Listener]) -> str | None:
        self.sotw_calls.append((version, [item.name for item in listeners]))
        return self.answers.pop(0) if self.answers else None

    def apply_delta(
        self, version: str, listeners: list[listener_pb2.Listener], removed: list[str]
    ) -> str | None:
        self.delta_calls.append((version, [item.name for item in listeners], list(removed)))
        return self.answers.pop(0) if self.answers else None

    def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task

    def stat(self, name: str) -> int | str | None:
        return self.stats.value(name)


@pytest.fixture
async def control_plane() -> AsyncIterator[DeltaControlPlane]:
    plane = DeltaControlPlane()
    await plane.start()
    yield plane
    await plane.stop()


def delta_response(
    version: str,
    nonce: str,
    added: tuple[tuple[str, str, float | None], ...] = (),
    removed: tuple[str, ...] = (),
    heartbeats: tuple[tuple[str, str, float | None], ...] = (),
) -> discovery_pb2.DeltaDiscoveryResponse:
    result = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version, nonce=nonce, type_url=LISTENER_TYPE_URL
    )
    for name, resource_version, ttl_s in added + heartbeats:
        resource = result.resources.add(name=name, version=resource_version)
        if (name, resource_version, ttl_s) in added:
            resource.resource.Pack(listener(name))
        if ttl_s is not None:
            resource.ttl.FromMilliseconds(int(ttl_s * 1000))
    result.removed_resources.extend(removed)
    return result


def summary(request: discovery_pb2.DeltaDiscoveryRequest) -> tuple:
    error = None
    if request.HasField("error_detail"):
        error = (request.error_detail.code, request.error_detail.message)
    return (
        request.HasField("node"),
        request.type_url,
        request.response_nonce,
        list(request.resource_names_subscribe),
        dict(request.initial_resource_versions),
        error,
    )


def wire(nonce: str = "", initial: dict | None = None, error=None) -> tuple:
    return (True, LISTENER_TYPE_URL, nonce, [], initial or {}, error)


@pytest.mark.parametrize("ads", [False, True], ids=["delta-lds", "delta-ads"])
async def test_envoy_recorded_script_on_the_wire(control_plane, ads: bool) -> None:
    harness = Harness(control_plane.port, ads=ads)
    harness.answers = [None, None, "duplicate address"]
    harness.start()
    try:
        stream = await control_plane.stream(0)
        assert stream.method == ("delta-ads" if ads else "delta-lds")
        script = [
            delta_response("sv1", "n1", added=(("a", "va1", None),)),
            delta_response("sv2", "n2", added=(("b", "vb1", None),)),
            delta_response("sv3", "n3", added=(("c", "vc1", None),)),
            delta_response("sv4", "n4", removed=("b", "zzz")),
            delta_response("sv5", "n5", added=(("t", "vt1", 0.3),)),
        ]
        for index, message in enumerate(script):
            await control_plane.request(stream, index)
            stream.send(message)
        await control_plane.request(stream, len(script))
        assert [summary(r) for r in stream.requests] == [
            wire(),
            wire("n1"),
            wire("n2"),
            wire("n3", error=(13, "duplicate address")),
            wire("n4"),
            wire("n5"),
        ]
        await wait_until(lambda: len(harness.delta_calls) == 6, timeout=3)  # the TTL expiry
        assert harness.delta_calls == [
            ("sv1", ["a"], []),
            ("sv2", ["b"], []),
            ("sv3", ["c"], []),
            ("sv4", [], ["b", "zzz"]),
            ("sv5", ["t"], []),
            ("", [], ["t"]),
        ]
        assert harness.stat(LDS + "version_text") == ""
        stream.close()
        second = await control_plane.stream(1)
        assert summary(await control_plane.request(second, 0)) == wire(initial={"a": "va1"})
        second.send(delta_response("sv6", "m1"))
        assert summary(await control_plane.request(second, 1)) == wire("m1")
        cp = "control_plane." if ads else LDS + "control_plane."
        stats = {
            name: harness.stat(LDS + name)
            for name in ("update_attempt", "update_success", "update_rejected", "update_failure")
        }
        assert stats == {
            "update_attempt": 10,
            "update_success": 6,
            "update_rejected": 1,
            "update_failure": 1,
        }
        assert harness.stat(LDS + "version_text") == "sv6"
        assert harness.client.last_accepted_version == "sv6"
        assert harness.stat(cp + "connected_state") == 1
        assert harness.sotw_calls == []
    finally:
        await harness.stop()


async def test_delta_heartbeats_keep_a_listener_until_they_stop(control_plane) -> None:
    """TTLs on the injected clock: the test moves time, the client's real timer only decides
    when to look at it (binary fractions of a second, so deadlines compare exactly)."""
    clock = ManualClock()
    harness = Harness(control_plane.port, clock=clock)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        stream.send(delta_response("1", "n1", added=(("a", "va", 0.5), ("b", "vb", None))))
        await control_plane.request(stream, 1)
        for beat in range(4):  # every 0.25 s for 1 s: longer than the TTL
            clock.advance(0.25)
            stream.send(delta_response(f"hb{beat}", f"h{beat}", heartbeats=(("a", "va", 0.5),)))
            await control_plane.request(stream, 2 + beat)
        assert all(not removed for _, _, removed in harness.delta_calls)
        assert [added for _, added, _ in harness.delta_calls] == [["a", "b"], [], [], [], []]
        clock.advance(0.25)  # half the last heartbeat's TTL
        await clock.looked_at()
        assert len(harness.delta_calls) == 5  # still held
        clock.advance(0.25)  # the last heartbeat's TTL, to the nanosecond
        await wait_until(lambda: harness.delta_calls[-1][2] == ["a"], timeout=2)
        assert harness.client.resource_versions == {"b": "vb"}
    finally:
        await harness.stop()


def wrapped(name: str, version: str, ttl_s: float | None, body: bool = True):
    resource = discovery_pb2.Resource(name=name, version=version)
    if body:
        resource.resource.Pack(listener(name))
    if ttl_s is not None:
        resource.ttl.FromMilliseconds(int(ttl_s * 1000))
    packed = discovery_pb2.DiscoveryResponse().resources.add()
    packed.Pack(resource)
    assert packed.type_url == RESOURCE_WRAPPER_TYPE_URL
    return packed


def sotw_response(version: str, nonce: str, *resources) -> discovery_pb2.DiscoveryResponse:
    result = discovery_pb2.DiscoveryResponse(
        version_info=version, nonce=nonce, type_url=LISTENER_TYPE_URL
    )
    for resource in resources:
        if isinstance(resource, listener_pb2.Listener):
            result.resources.add().Pack(resource)
        else:
            result.resources.append(resource)
    return result


async def test_sotw_ttl_expiry_removes_and_heartbeats_refresh(control_plane) -> None:
    clock = ManualClock()
    harness = Harness(control_plane.port, delta=False, clock=clock)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        stream.send(sotw_response("v1", "n1", wrapped("a", "1", 0.5), listener("b")))
        await control_plane.request(stream, 1)
        clock.advance(0.25)
        stream.send(sotw_response("v2", "n2", wrapped("a", "1", 0.5, body=False), listener("b")))
        ack = await control_plane.request(stream, 2)
        assert not ack.HasField("error_detail")
        assert harness.sotw_calls == [("v1", ["a", "b"]), ("v2", ["a", "b"])]
        clock.advance(0.375)  # past the first deadline: the heartbeat moved it
        await clock.looked_at()
        assert harness.delta_calls == []
        clock.advance(0.125)  # the heartbeat's deadline
        await wait_until(lambda: harness.delta_calls == [("", [], ["a"])], timeout=2)
        assert harness.stat(LDS + "update_success") == 3
        assert harness.stat(LDS + "version_text") == ""
        # the SotW version on the wire is still the last accepted response's
        stream.send(sotw_response("v3", "n3", listener("b")))
        assert (await control_plane.request(stream, 3)).version_info == "v3"
    finally:
        await harness.stop()


async def test_sotw_bodyless_resource_with_a_new_version_is_applied_empty(control_plane) -> None:
    """Not a heartbeat: like Envoy, an empty listener goes to the manager (which rejects it)."""
    harness = Harness(control_plane.port, delta=False)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        stream.send(sotw_response("v1", "n1", wrapped("a", "1", None)))
        await control_plane.request(stream, 1)
        harness.answers = ["address is necessary"]
        stream.send(sotw_response("v2", "n2", wrapped("a", "2", None, body=False)))
        nack = await control_plane.request(stream, 2)
        assert nack.error_detail.message == "address is necessary"
        assert harness.sotw_calls[-1] == ("v2", ["a"])
    finally:
        await harness.stop()


def test_delta_needs_apply_delta() -> None:
    bootstrap = json_format.ParseDict(
        yaml.safe_load(bootstrap_yaml(1, False)), bootstrap_pb2.Bootstrap()
    )
    bootstrap.dynamic_resources.lds_config.api_config_source.api_type = DELTA
    with pytest.raises(ConfigError, match="apply_delta"):
        LdsClient(bootstrap, Stats(), lambda v, items: None, lambda: None)
