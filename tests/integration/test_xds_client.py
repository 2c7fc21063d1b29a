"""The LDS client against a fake control plane on loopback (and against a real Envoy).

The fake control plane is a tiny grpc.aio LDS + ADS server written here: it records every
request of every stream and sends the responses a test queues. Real sockets, real gRPC; only
the proxy's listener manager is replaced by a recording apply callback.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (in the pool)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc
from google.protobuf import any_pb2, json_format

from tests.helpers.procs import VENV_BIN, Process, free_port, read_text_file
from tests.helpers.waiting import wait_until
from xds_proxy.stats import Stats
from xds_proxy.xds.client import LdsClient
from xds_proxy.xds.decode import LISTENER_TYPE_URL

CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "listener_manager.lds."
TIMEOUT = 5.0


# -- the fake control plane ------------------------------------------------------------------


class FakeStream:
    def __init__(self, method: str, metadata: dict[str, str]) -> None:
        self.method = method
        self.metadata = metadata
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.outgoing: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = asyncio.Queue()

    def send(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self.outgoing.put_nowait(response)

    def close(self) -> None:
        """End the stream from the server side (status OK)."""
        self.outgoing.put_nowait(None)


class FakeControlPlane(
    lds_pb2_grpc.ListenerDiscoveryServiceServicer, ads_pb2_grpc.AggregatedDiscoveryServiceServicer
):
    """Records requests per stream; responses are queued by the test."""

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.changed = asyncio.Condition()
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def start(self, port: int = 0) -> None:
        self._server = grpc.aio.server()
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(self, self._server)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _serve(
        self, method: str, requests: AsyncIterator, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = FakeStream(method, dict(context.invocation_metadata() or ()))
        self.streams.append(stream)
        await self._notify()

        async def read() -> None:
            async for request in requests:
                stream.requests.append(request)
                await self._notify()

        reader = asyncio.ensure_future(read())
        try:
            while (response := await stream.outgoing.get()) is not None:
                yield response
        finally:
            reader.cancel()

    async def StreamListeners(self, request_iterator, context):
        async for response in self._serve("lds", request_iterator, context):
            yield response

    async def StreamAggregatedResources(self, request_iterator, context):
        async for response in self._serve("ads", request_iterator, context):
            yield response

    async def until(self, condition: Callable[[], object], timeout: float = TIMEOUT) -> None:
        """Wait until `condition()` holds, re-checked on every stream and request."""

        async def check() -> None:
            async with self.changed:
                await self.changed.wait_for(condition)

        await asyncio.wait_for(check(), timeout)

    async def stream(self, index: int) -> FakeStream:
        await self.until(lambda: len(self.streams) > index)
        return self.streams[index]

    async def request(self, stream: FakeStream, index: int) -> discovery_pb2.DiscoveryRequest:
        await self.until(lambda: len(stream.requests) > index)
        return stream.requests[index]


# -- resources -------------------------------------------------------------------------------


def listener(name: str, port: int = 0) -> listener_pb2.Listener:
    result = listener_pb2.Listener(name=name)
    result.address.socket_address.address = "127.0.0.1"
    result.address.socket_address.port_value = port
    chain_filter = result.filter_chains.add().filters.add()
    chain_filter.name = "envoy.filters.network.direct_response"
    chain_filter.typed_config.Pack(direct_response.Config())
    return result


def response(
    version: str, nonce: str, *listeners: listener_pb2.Listener, extra: list[any_pb2.Any] = ()
) -> discovery_pb2.DiscoveryResponse:
    result = discovery_pb2.DiscoveryResponse(
        version_info=version, nonce=nonce, type_url=LISTENER_TYPE_URL
    )
    for item in listeners:
        result.resources.add().Pack(item)
    result.resources.extend(extra)
    return result


def summary(request: discovery_pb2.DiscoveryRequest) -> tuple:
    detail = None
    if request.HasField("error_detail"):
        # C++ DebugString starts with a marker that varies by process
        # (goo.gle/debugstr, /debugproto, /debugonly, then 1 to 4 spaces)
        message = re.sub(r"goo\.gle/debug\w+ +\n", "MARKER\n", request.error_detail.message)
        detail = (request.error_detail.code, message)
    return (
        request.version_info,
        request.response_nonce,
        list(request.resource_names),
        request.type_url,
        detail,
    )


# -- the client under test -------------------------------------------------------------------


def bootstrap_yaml(port: int, ads: bool, initial_fetch_timeout: str | None = None) -> str:
    timeout = f", initial_fetch_timeout: {initial_fetch_timeout}" if initial_fetch_timeout else ""
    grpc_services = "grpc_services: [{envoy_grpc: {cluster_name: xds}}]"
    if ads:  # exercise initial_metadata too (Envoy sends it as request headers)
        grpc_services = (
            "grpc_services: [{envoy_grpc: {cluster_name: xds}, "
            "initial_metadata: [{key: x-token, value: abc}]}]"
        )
    if ads:
        dynamic = (
            f"  lds_config: {{resource_api_version: V3, ads: {{}}{timeout}}}\n"
            f"  ads_config: {{api_type: GRPC, transport_api_version: V3, {grpc_services}}}\n"
        )
    else:
        dynamic = (
            f"  lds_config: {{resource_api_version: V3{timeout}, api_config_source: "
            f"{{api_type: GRPC, transport_api_version: V3, {grpc_services}}}}}\n"
        )
    return f"""
node: {{id: node-1, cluster: cluster-1}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
dynamic_resources:
{dynamic}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


class ShortDelays(random.Random):
    """Back-off draws of at most 50 ms, so reconnect tests stay fast (the ladder is unit-tested)."""

    def randrange(self, stop: int) -> int:  # type: ignore[override]
        return min(stop - 1, 50)


class Harness:
    """An LdsClient running in the test's loop, with a scripted apply callback."""

    def __init__(
        self,
        port: int,
        ads: bool = False,
        initial_fetch_timeout: str | None = None,
        apply: Callable[[str, list[listener_pb2.Listener]], str | None] | None = None,
    ):
        text = bootstrap_yaml(port, ads, initial_fetch_timeout)
        self.bootstrap = json_format.ParseDict(yaml.safe_load(text), bootstrap_pb2.Bootstrap())
        self.stats = Stats()
        self.applied: list[tuple[str, list[str]]] = []
        self.answers: list[str | None] = []
        self.initialized = 0
        self.client = LdsClient(
            self.bootstrap, self.stats, apply or self.apply, self.on_initialized, rng=ShortDelays()
        )
        self.task: asyncio.Task | None = None

    def apply(self, version: str, listeners: list[listener_pb2.Listener]) -> str | None:
        self.applied.append((version, [item.name for item in listeners]))
        return self.answers.pop(0) if self.answers else None

    def on_initialized(self) -> None:
        self.initialized += 1

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
async def control_plane() -> AsyncIterator[FakeControlPlane]:
    plane = FakeControlPlane()
    await plane.start()
    yield plane
    await plane.stop()


# -- tests -----------------------------------------------------------------------------------


async def test_plain_lds_ack_nack_and_reconnect_with_last_version(
    control_plane: FakeControlPlane,
) -> None:
    harness = Harness(control_plane.port)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        assert stream.method == "lds"
        first = await control_plane.request(stream, 0)
        assert summary(first) == ("", "", [], LISTENER_TYPE_URL, None)
        assert (first.node.id, first.node.cluster) == ("node-1", "cluster-1")
        assert first.node.user_agent_name == "xds-proxy"
        assert harness.initialized == 0
        assert harness.stat(LDS + "control_plane.connected_state") == 1
        assert harness.stat("control_plane.connected_state") is None

        stream.send(response("v1", "n1", listener("a"), listener("b")))
        ack = await control_plane.request(stream, 1)
        assert summary(ack) == ("v1", "n1", [], LISTENER_TYPE_URL, None)
        assert ack.node.id == "node-1"
        assert harness.applied == [("v1", ["a", "b"])]
        assert harness.initialized == 1
        assert harness.client.last_accepted_version == "v1"

        rejection = "Error adding/updating listener(s) c: bad address\n"
        harness.answers.append(rejection)
        stream.send(response("v2", "n2", listener("a"), listener("c")))
        nack = await control_plane.request(stream, 2)
        assert summary(nack) == ("v1", "n2", [], LISTENER_TYPE_URL, (13, rejection))
        assert nack.node.id == "node-1"

        corrupt = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\xff\xff\xff")
        stream.send(response("v3", "n3", listener("a"), extra=[corrupt]))
        nack = await control_plane.request(stream, 3)
        assert nack.version_info == "v1" and nack.response_nonce == "n3"
        assert nack.error_detail.message.startswith("Unable to unpack as")
        assert len(harness.applied) == 2  # nothing of the corrupt response was applied

        assert harness.stat(LDS + "update_attempt") == 4
        assert harness.stat(LDS + "update_success") == 1
        assert harness.stat(LDS + "update_rejected") == 2
        assert harness.stat(LDS + "version_text") == "v1"
        assert harness.stat(LDS + "version") == 9194640092791331756

        # control plane lost: nothing is applied, connected_state drops, failures count
        port = control_plane.port
        await control_plane.stop()
        await wait_until(lambda: harness.stat(LDS + "update_failure") >= 2)
        assert harness.stat(LDS + "control_plane.connected_state") == 0
        assert len(harness.applied) == 2
        assert harness.client.last_accepted_version == "v1"

        await control_plane.start(port)
        stream = await control_plane.stream(1)
        again = await control_plane.request(stream, 0)
        assert summary(again) == ("v1", "", [], LISTENER_TYPE_URL, None)
        assert again.node.id == "node-1"
        await wait_until(lambda: harness.stat(LDS + "control_plane.connected_state") == 1)
        stream.send(response("v1", "n1", listener("a"), listener("b")))
        ack = await control_plane.request(stream, 1)
        assert summary(ack) == ("v1", "n1", [], LISTENER_TYPE_URL, None)
        assert harness.applied[-1] == ("v1", ["a", "b"])
        assert harness.initialized == 1
    finally:
        await harness.stop()


async def test_ads_stream_ignores_other_types_and_names_connected_state_at_the_root(
    control_plane: FakeControlPlane,
) -> None:
    harness = Harness(control_plane.port, ads=True)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        assert stream.method == "ads"
        assert stream.metadata["x-token"] == "abc"
        first = await control_plane.request(stream, 0)
        assert summary(first) == ("", "", [], LISTENER_TYPE_URL, None)
        assert harness.stat("control_plane.connected_state") == 1
        assert harness.stat(LDS + "control_plane.connected_state") is None

        other = discovery_pb2.DiscoveryResponse(
            version_info="c1", nonce="nc", type_url=CLUSTER_TYPE_URL
        )
        stream.send(other)
        stream.send(response("v1", "n1", listener("a")))
        ack = await control_plane.request(stream, 1)
        assert summary(ack) == ("v1", "n1", [], LISTENER_TYPE_URL, None)
        assert len(stream.requests) == 2  # nothing was sent for the cluster response
        assert harness.applied == [("v1", ["a"])]
        assert harness.stat(LDS + "update_attempt") == 2

        wrong = any_pb2.Any(type_url=CLUSTER_TYPE_URL)
        stream.send(response("v2", "n2", listener("a"), extra=[wrong]))
        nack = await control_plane.request(stream, 2)
        assert nack.version_info == "v1"
        assert nack.error_detail.message.startswith(
            f"{CLUSTER_TYPE_URL} does not match the message-wide type URL {LISTENER_TYPE_URL}"
        )

        # the server ends the stream (status OK): a failure, then a new stream
        stream.close()
        stream = await control_plane.stream(1)
        again = await control_plane.request(stream, 0)
        assert summary(again) == ("v1", "", [], LISTENER_TYPE_URL, None)
        assert harness.stat(LDS + "update_failure") == 1
    finally:
        await harness.stop()


async def test_initial_fetch_timeout_ends_initialisation_once(
    control_plane: FakeControlPlane,
) -> None:
    harness = Harness(control_plane.port, initial_fetch_timeout="0.3s")
    loop = asyncio.get_running_loop()
    started = loop.time()
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        assert harness.initialized == 0
        await wait_until(lambda: harness.initialized == 1)
        assert loop.time() - started >= 0.3
        assert harness.stat(LDS + "init_fetch_timeout") == 1
        assert harness.stat(LDS + "update_attempt") == 2
        # a response after the timeout is applied and ACKed, and does not initialise again
        stream.send(response("v1", "n1", listener("a")))
        ack = await control_plane.request(stream, 1)
        assert summary(ack) == ("v1", "n1", [], LISTENER_TYPE_URL, None)
        assert harness.initialized == 1
    finally:
        await harness.stop()


async def test_first_response_cancels_the_initial_fetch_timeout(
    control_plane: FakeControlPlane,
) -> None:
    harness = Harness(control_plane.port, initial_fetch_timeout="0.2s")
    harness.answers.append("Error adding/updating listener(s) a: no\n")
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        stream.send(response("v1", "n1", listener("a")))  # NACKed: still ends initialisation
        await control_plane.request(stream, 1)
        assert harness.initialized == 1
        # well past the timeout: no timeout was counted
        await asyncio.sleep(0.3)  # not synchronisation: proves that nothing happens
        assert harness.stat(LDS + "init_fetch_timeout") == 0
        assert harness.initialized == 1
    finally:
        await harness.stop()


async def test_unreachable_control_plane_initialises_at_the_timeout_and_keeps_retrying() -> None:
    plane = FakeControlPlane()
    # Nobody listens on this port: free_port's are below the ephemeral range, so no other
    # process's port-0 listener nor a client's source port (a self-connect) can take it.
    port = free_port()
    harness = Harness(port, initial_fetch_timeout="0.2s")
    harness.start()
    try:
        await wait_until(lambda: harness.initialized == 1)
        await wait_until(lambda: harness.stat(LDS + "update_failure") >= 3)
        assert harness.stat(LDS + "control_plane.connected_state") == 0
        assert harness.applied == []
        # the control plane comes up: the client finds it
        await plane.start(port)
        stream = await plane.stream(0)
        first = await plane.request(stream, 0)
        assert summary(first) == ("", "", [], LISTENER_TYPE_URL, None)
    finally:
        await harness.stop()
        await plane.stop()


async def test_responses_larger_than_4_mib(control_plane: FakeControlPlane) -> None:
    harness = Harness(control_plane.port)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        big = [listener(f"{i:03d}-" + "x" * 100_000) for i in range(50)]
        message = response("big", "n1", *big)
        assert message.ByteSize() > 4 * 1024 * 1024  # gRPC's default receive limit
        stream.send(message)
        ack = await control_plane.request(stream, 1)
        assert summary(ack) == ("big", "n1", [], LISTENER_TYPE_URL, None)
        assert len(harness.applied[0][1]) == 50
    finally:
        await harness.stop()


async def test_apply_exception_is_a_nack_and_the_stream_survives(
    control_plane: FakeControlPlane,
) -> None:
    def broken(version: str, listeners: list) -> str | None:
        raise ValueError("manager bug")

    harness = Harness(control_plane.port, apply=broken)
    harness.start()
    try:
        stream = await control_plane.stream(0)
        await control_plane.request(stream, 0)
        stream.send(response("v1", "n1", listener("a")))
        nack = await control_plane.request(stream, 1)
        assert summary(nack) == ("", "n1", [], LISTENER_TYPE_URL, (13, "manager bug"))
        assert len(control_plane.streams) == 1
    finally:
        await harness.stop()


# -- the same script against a real Envoy ----------------------------------------------------


def admin_stats(admin_file: Path) -> dict[str, object]:
    address = read_text_file(admin_file)
    with urllib.request.urlopen(f"http://{address}/stats?format=json", timeout=2) as reply:
        document = json.load(reply)
    return {item["name"]: item.get("value") for item in document["stats"] if "value" in item}


async def run_script(plane: FakeControlPlane, connected_state: str, read_stats) -> tuple:
    """Pushes a fixed script and returns (request summaries, stats) as seen by the server."""
    stream = await plane.stream(0)
    await plane.request(stream, 0)
    corrupt = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\xff\xff\xff")
    wrong = any_pb2.Any(type_url=CLUSTER_TYPE_URL)
    steps = [
        response("v1", "n1", listener("a")),
        response("v2", "n2", listener("a"), extra=[corrupt]),
        response("v3", "n3", listener("a"), extra=[wrong]),
        discovery_pb2.DiscoveryResponse(version_info="c", nonce="nc", type_url=CLUSTER_TYPE_URL),
        response("version-text-longer-than-thirty-two-bytes", "n5", listener("a")),
    ]
    for step in steps:
        stream.send(step)
    await plane.until(lambda: len(stream.requests) >= 5)
    names = [
        LDS + name
        for name in (
            "update_attempt",
            "update_success",
            "update_rejected",
            "update_failure",
            "version",
            "version_text",
            "init_fetch_timeout",
        )
    ] + [connected_state]
    stats = await asyncio.to_thread(read_stats)
    before = {name: stats.get(name) for name in names}
    port = plane.port
    await plane.stop()
    await plane.start(port)
    again = await plane.request(await plane.stream(1), 0)
    return [summary(r) for r in stream.requests] + [summary(again)], before


@pytest.mark.envoy
@pytest.mark.parametrize("ads", [False, True], ids=["lds", "ads"])
async def test_same_requests_and_stats_as_envoy(ads: bool, tmp_path: Path) -> None:
    connected_state = (
        "control_plane.connected_state" if ads else LDS + "control_plane.connected_state"
    )

    envoy_plane = FakeControlPlane()
    await envoy_plane.start()
    config = tmp_path / "envoy.yaml"
    config.write_text(bootstrap_yaml(envoy_plane.port, ads))
    admin_file = tmp_path / "admin"
    envoy = Process(
        [
            str(VENV_BIN / "envoy"),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--admin-address-path",
            str(admin_file),
            "-l",
            "error",
        ],
        tmp_path / "envoy.log",
    )
    try:
        await wait_until(lambda: read_text_file(admin_file), timeout=10)
        envoy_requests, envoy_stats = await run_script(
            envoy_plane, connected_state, lambda: admin_stats(admin_file)
        )
    finally:
        envoy.stop()
        await envoy_plane.stop()

    our_plane = FakeControlPlane()
    await our_plane.start()
    harness = Harness(our_plane.port, ads=ads)
    harness.start()
    try:
        our_requests, our_stats = await run_script(
            our_plane,
            connected_state,
            lambda: {name: harness.stat(name) for name in [*envoy_stats]},
        )
    finally:
        await harness.stop()
        await our_plane.stop()

    assert our_requests == envoy_requests, envoy.log()[-2000:]
    assert our_stats == envoy_stats
