"""A hostile control plane against the real proxy: a tiny grpc.aio LDS server in the test
that sends the wrong type URL, repeats or omits nonces, sends 4 MiB+ responses, resets the
stream every few ms, or never answers. The proxy must live, answer what deserves an answer,
and keep serving what it serves."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401 - for ParseDict
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc
from google.protobuf import any_pb2, json_format

from tests.helpers.http_client import get
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from xds_proxy.xds.decode import LISTENER_TYPE_URL

CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RESET_AFTER_S = 0.005  # "resets every few ms": how long a stream lives in reset mode


class FakeLds(lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    """SotW LDS whose every move the test decides. Runs on its own thread and loop."""

    def __init__(self) -> None:
        self.mode = "script"  # "script": send what the test queues; "reset"; "silent"
        self.requests: queue.Queue[discovery_pb2.DiscoveryRequest] = queue.Queue()
        self.streams = 0
        self.reset_response: discovery_pb2.DiscoveryResponse | None = None
        self._loop = asyncio.new_event_loop()
        # What the current stream sends next; None ends the stream (UNAVAILABLE).
        self._outbox: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] | None = None
        self._server: grpc.aio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.address = ""

    # -- lifecycle (test thread) ----------------------------------------------------------

    def start(self) -> FakeLds:
        self._thread.start()
        self.address = self._call(self._start())
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._server.stop(grace=None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def send(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self._call(self._put(response))

    def end_stream(self) -> None:
        """The stream in progress ends with UNAVAILABLE (the proxy reconnects)."""
        self._call(self._put(None))

    def next_request(self, timeout: float = 10.0) -> discovery_pb2.DiscoveryRequest:
        return self.requests.get(timeout=timeout)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start(self) -> str:
        self._outbox = asyncio.Queue()
        limit = 128 * 1024 * 1024  # above the proxy's 64 MiB: its limit is what trips
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ]
        )
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return f"127.0.0.1:{port}"

    async def _put(self, response: discovery_pb2.DiscoveryResponse | None) -> None:
        assert self._outbox is not None
        await self._outbox.put(response)

    # -- the servicer (server loop) -------------------------------------------------------

    async def StreamListeners(
        self, request_iterator: AsyncIterator, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        self.streams += 1
        reader = asyncio.ensure_future(self._read(request_iterator))
        try:
            if self.mode == "reset":
                if self.reset_response is not None:
                    yield self.reset_response
                await asyncio.sleep(RESET_AFTER_S)  # the control plane's behaviour under test
                await context.abort(grpc.StatusCode.UNAVAILABLE, "reset by a hostile server")
            if self.mode == "silent":
                await asyncio.Event().wait()  # never answers
            assert self._outbox is not None
            while (sent := await self._outbox.get()) is not None:
                yield sent
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream ended by the test")
        finally:
            reader.cancel()

    async def _read(self, request_iterator: AsyncIterator) -> None:
        async for request in request_iterator:
            self.requests.put(request)


_nonces = itertools.count(1)


def response(
    version: str,
    listeners: list[listener_pb2.Listener],
    nonce: str | None = None,
    type_url: str = LISTENER_TYPE_URL,
) -> discovery_pb2.DiscoveryResponse:
    resources = []
    for message in listeners:
        packed = any_pb2.Any()
        packed.Pack(message)
        resources.append(packed)
    return discovery_pb2.DiscoveryResponse(
        version_info=version,
        type_url=type_url,
        nonce=str(next(_nonces)) if nonce is None else nonce,
        resources=resources,
    )


def as_message(document: dict) -> listener_pb2.Listener:
    return json_format.ParseDict(document, listener_pb2.Listener())


def web(port: int, body: str, name: str = "web") -> listener_pb2.Listener:
    message = as_message(http_listener("web", port, chains=[chain(body)]))
    message.name = name  # set here: a JSON round trip of a 65 MiB name takes seconds
    return message


@pytest.fixture
def fake() -> Iterator[FakeLds]:
    server = FakeLds().start()
    yield server
    server.stop()


def start_proxy(fake: FakeLds, workdir, initial_fetch_timeout: str = "5s") -> ProxyProcess:
    """A proxy on `fake`, with a static listener that must serve whatever LDS does."""
    bootstrap = lds_bootstrap(fake.address)
    bootstrap["dynamic_resources"]["lds_config"]["initial_fetch_timeout"] = initial_fetch_timeout
    static_port = free_port()
    bootstrap["static_resources"]["listeners"] = [http_listener("static", static_port, "static")]
    proxy = ProxyProcess(bootstrap, workdir, log_level="warning")
    proxy.static_port = static_port  # type: ignore[attr-defined]
    return proxy.start()


@pytest.fixture
def proxy_on(fake, tmp_path) -> Iterator[ProxyProcess]:
    proxy = start_proxy(fake, tmp_path)
    yield proxy
    proxy.stop()


def assert_serving(proxy: ProxyProcess) -> None:
    assert proxy.alive(), proxy.log()[-3000:]
    assert get(proxy.static_port).text == "static"  # type: ignore[attr-defined]


def ack_for(fake: FakeLds, sent: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest:
    """The proxy's answer to `sent` (requests before it, e.g. the stream's first, skipped)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        request = fake.next_request()
        if request.response_nonce == sent.nonce:
            return request
    raise AssertionError(f"no answer to the response with nonce {sent.nonce!r} within 10 s")


def test_wrong_type_url_is_ignored_and_a_wrong_resource_type_nacked(fake, proxy_on) -> None:
    first = fake.next_request()
    assert first.type_url == LISTENER_TYPE_URL and not first.response_nonce
    port = free_port()
    # A response for a type the proxy never asked for: ignored, no ACK or NACK (as Envoy).
    fake.send(response("c1", [], type_url=CLUSTER_TYPE_URL))
    # Listener type URL, Cluster inside: the whole response is rejected.
    cluster = any_pb2.Any()
    cluster.Pack(cluster_pb2.Cluster(name="c"))
    mixed = response("bad", [web(port, "x")])
    mixed.resources.append(cluster)
    fake.send(mixed)
    nack = fake.next_request()  # the ignored response got no answer: this is the next one
    assert nack.response_nonce == mixed.nonce
    assert nack.error_detail.message.startswith(
        f"{CLUSTER_TYPE_URL} does not match the message-wide type URL {LISTENER_TYPE_URL}"
    )
    assert nack.version_info == ""
    good = response("v1", [web(port, "v1")])
    fake.send(good)
    ack = ack_for(fake, good)
    assert ack.version_info == "v1" and not ack.HasField("error_detail")
    assert get(port).text == "v1"
    assert_serving(proxy_on)


def test_repeated_and_empty_nonces_are_answered_each(fake, proxy_on) -> None:
    fake.next_request()
    port = free_port()
    for version, nonce in (("v1", "same"), ("v2", "same"), ("v3", ""), ("v4", "same")):
        sent = response(version, [web(port, version)], nonce=nonce)
        fake.send(sent)
        answer = ack_for(fake, sent)
        assert answer.version_info == version and not answer.HasField("error_detail")
        assert get(port).text == version
    assert_serving(proxy_on)


def test_responses_over_4_mib_are_received(fake, proxy_on) -> None:
    fake.next_request()
    port = free_port()
    huge_name = "n" * (5 * 1024 * 1024)
    sent = response("big", [web(port, "big", name=huge_name)])
    assert sent.ByteSize() > 4 * 1024 * 1024
    fake.send(sent)
    answer = ack_for(fake, sent)
    assert answer.version_info == "big" and not answer.HasField("error_detail")
    assert get(port).text == "big"
    assert_serving(proxy_on)


def test_a_stream_reset_every_few_ms_loses_nothing(fake, proxy_on) -> None:
    port = free_port()
    fake.next_request()
    first = response("v1", [web(port, "v1")])
    fake.send(first)
    ack_for(fake, first)
    fake.reset_response = response("v1", [web(port, "v1")])
    fake.mode = "reset"
    streams = fake.streams
    fake.end_stream()

    def still_serving_after_resets() -> bool:
        assert get(port).text == "v1"  # every look is a real request that must be served
        assert_serving(proxy_on)
        return fake.streams >= streams + 4

    wait_for(still_serving_after_resets, timeout=10, what="4 streams reset by the server")
    fake.mode = "script"
    fake.reset_response = None
    final = response("v2", [web(port, "v2")])
    fake.send(final)
    wait_for(lambda: get(port).text == "v2", timeout=10, what="v2 served after the resets")
    assert proxy_on.stat("listener_manager.lds.update_failure") >= 4
    assert_serving(proxy_on)


def test_a_control_plane_that_never_answers(fake, tmp_path) -> None:
    fake.mode = "silent"
    proxy = start_proxy(fake, tmp_path, initial_fetch_timeout="0.5s")
    try:
        fake.next_request()
        assert_serving(proxy)  # static listeners serve while LDS waits
        proxy.wait_ready(timeout=5)  # initial_fetch_timeout ends INITIALIZING
        assert proxy.stat("listener_manager.lds.init_fetch_timeout") == 1
        assert_serving(proxy)
    finally:
        proxy.stop()


def test_a_response_over_the_64_mib_limit_costs_only_the_stream(fake, proxy_on) -> None:
    """Above the proxy's receive limit gRPC fails the stream (RESOURCE_EXHAUSTED): the proxy
    reconnects, keeps what it serves, and takes the next response."""
    fake.next_request()
    port = free_port()
    kept = response("v1", [web(port, "v1")])
    fake.send(kept)
    ack_for(fake, kept)
    too_big = response("huge", [web(free_port(), "huge", name="n" * (65 * 1024 * 1024))])
    fake.send(too_big)
    reconnect = fake.next_request()
    assert reconnect.response_nonce == "" and reconnect.version_info == "v1"
    assert get(port).text == "v1"
    assert_serving(proxy_on)
    after = response("v2", [web(port, "v2")])
    fake.send(after)
    assert ack_for(fake, after).version_info == "v2"
    assert get(port).text == "v2"
