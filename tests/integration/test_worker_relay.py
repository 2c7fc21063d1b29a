"""The main process's relay (`xds_proxy/workers/relay.py`) with a real gRPC client on its
UNIX socket: what a worker is sent, and when the main process may ACK."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_proxy.workers.relay import WORKER_METADATA, Relay

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


class Worker:
    """One ADS stream to the relay, as a worker opens it."""

    def __init__(self, path: str, index: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix:{path}")
        self.requests: asyncio.Queue = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.StreamAggregatedResources(
            self._requests(), metadata=((WORKER_METADATA, str(index)),)
        )

    async def _requests(self):
        while True:
            yield await self.requests.get()

    def ask(self, type_url: str, names=(), nonce: str = "", version: str = "", error=None):
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=version,
        )
        if error is not None:
            request.error_detail.message = error
        self.requests.put_nowait(request)

    async def response(self) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.call.read(), 5)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


@pytest.fixture
async def relay(tmp_path):
    relay = Relay()
    await relay.start(str(tmp_path / "relay.sock"))
    yield relay, str(tmp_path / "relay.sock")
    await relay.stop()


async def test_a_worker_gets_what_main_holds_and_main_waits_for_its_ack(relay) -> None:
    relay, path = relay
    relay.publish(LDS, {"a": b"", "b": b""}, "v1")
    relay.publish(CDS, {}, "")
    worker = Worker(path, 0)
    try:
        worker.ask(CDS)
        first = await worker.response()
        assert first.type_url == CDS and len(first.resources) == 0
        assert relay.pending()  # it has not asked for the listeners yet
        worker.ask(CDS, nonce=first.nonce, version=first.version_info)
        worker.ask(LDS)
        listeners = await worker.response()
        assert listeners.version_info == "v1"  # the main process's version, as it is
        assert len(listeners.resources) == 2
        assert relay.pending()
        worker.ask(LDS, nonce=listeners.nonce, version="v1")
        assert await relay.wait_answered(5, 1)
        # A change goes out at once; main may ACK only after the worker answered it.
        assert relay.publish(LDS, {"a": b""}, "v2")
        assert not relay.publish(LDS, {"a": b""}, "v3")  # nothing changed: nothing sent
        update = await worker.response()
        assert update.version_info == "v2" and len(update.resources) == 1
        assert not await relay.wait_answered(0.2, 1)
        worker.ask(LDS, nonce=update.nonce, version="v1", error="bad listener")  # a NACK
        assert await relay.wait_answered(5, 1)
    finally:
        await worker.close()


async def test_named_resources_go_to_the_workers_that_ask_for_them(relay) -> None:
    relay, path = relay
    relay.publish(RDS, {"r1": b"one", "r2": b"two"}, "")
    worker = Worker(path, 0)
    try:
        worker.ask(RDS, names=["r2", "r3"])
        response = await worker.response()
        assert [r.value for r in response.resources] == [b"two"]
        worker.ask(RDS, names=["r2", "r3"], nonce=response.nonce)
        assert await relay.wait_answered(5, 1)
        relay.publish(RDS, {"r1": b"one", "r2": b"two", "r3": b"three"}, "")
        response = await worker.response()
        assert sorted(r.value for r in response.resources) == [b"three", b"two"]
    finally:
        await worker.close()


async def test_start_up_waits_for_every_worker(relay) -> None:
    relay, path = relay
    relay.publish(LDS, {}, "")
    relay.publish(CDS, {}, "")
    first = Worker(path, 0)
    try:
        for type_url in (CDS, LDS):
            first.ask(type_url)
            response = await first.response()
            first.ask(type_url, nonce=response.nonce)
        assert await relay.wait_answered(5, 1)
        assert not await relay.wait_answered(0.2, 2)  # worker 1 is not connected
    finally:
        await first.close()
