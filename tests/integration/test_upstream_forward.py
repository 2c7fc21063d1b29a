"""Exchange (one forwarded request) against real upstream servers, with a recording sink in
place of the downstream codec."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format

from tests.helpers.loops import event_loop_policy  # noqa: F401 - runs each test on both loops
from tests.helpers.upstreams import Http1Echo, Http2Echo, Resetter, cluster_message, grpc_frame
from xds_proxy.codec.forwarded_for import local_address
from xds_proxy.config.hcm import ProxyPolicy
from xds_proxy.stats import Stats
from xds_proxy.upstream.forward import (
    DownstreamRequest,
    Exchange,
    ForwardAction,
    HeaderMutations,
)
from xds_proxy.upstream.manager import ClusterManager


class RecordingSink:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.trailers: list | None = None
        self.local: tuple[int, bytes, list] | None = None
        self.was_reset = False
        self.ended = asyncio.get_running_loop().create_future()

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    async def wait(self) -> None:
        await asyncio.wait_for(asyncio.shield(self.ended), 5)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def send_response_headers(self, status: int, headers: list, end_stream: bool) -> None:
        self.status, self.headers = status, headers
        if end_stream:
            self._end()

    def send_response_data(self, data: bytes, end_stream: bool) -> None:
        self.body += data
        if end_stream:
            self._end()

    def send_whole_response(self, status: int, headers: list, body: bytes) -> None:
        self.send_response_headers(status, headers, False)
        self.send_response_data(body, True)

    def send_response_trailers(self, trailers: list) -> None:
        self.trailers = trailers
        self._end()

    def send_local_reply(self, status: int, body: bytes, headers: list) -> None:
        self.local = (status, body, headers)
        self._end()

    def reset_downstream(self) -> None:
        self.was_reset = True
        self._end()

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


def forward(document: dict, kind: str = "prefix", value: str = "/") -> ForwardAction:
    message = json_format.ParseDict(document, route_components_pb2.RouteAction())
    return ForwardAction(message, "route", kind, value)


def request(url: bytes = b"/", headers: list | None = None, method: bytes = b"GET"):
    return DownstreamRequest(method, url, b"front.example", headers or [], "127.0.0.9")


@pytest.fixture
def manager():
    clusters = ClusterManager(Stats())
    yield clusters
    clusters.close()


async def run(
    action: ForwardAction,
    manager: ClusterManager,
    downstream: DownstreamRequest,
    body: bytes | None = None,
    policy: ProxyPolicy | None = None,
    mutations: tuple = (),
) -> RecordingSink:
    sink = RecordingSink()
    exchange = Exchange(action, sink)
    exchange.start(downstream, body is None, manager, policy or ProxyPolicy(), mutations)
    if body is not None:
        exchange.request_data(body, True)
    await sink.wait()
    return sink


async def test_request_headers_as_envoy_sends_them(manager: ClusterManager) -> None:
    with Http1Echo() as echo:
        manager.add_or_update(cluster_message("web", [echo.port]))
        headers = [
            (b"user-agent", b"t"),
            (b"connection", b"keep-alive"),
            (b"te", b"gzip"),
            (b"x-forwarded-for", b"1.2.3.4"),
        ]
        sink = await run(forward({"cluster": "web"}), manager, request(b"/a?b=1", headers))
        assert sink.status == 200
        sent = json.loads(sink.body)
        names = [name for name, _ in sent["headers"]]
        assert sent["path"] == "/a?b=1"
        assert names[:3] == ["host", "user-agent", "x-forwarded-for"]
        assert ["host", "front.example"] in sent["headers"]
        assert ["x-forwarded-for", "1.2.3.4"] in sent["headers"]  # no append by default
        assert ["x-forwarded-proto", "http"] in sent["headers"]
        assert ["x-envoy-expected-rq-timeout-ms", "15000"] in sent["headers"]
        assert "connection" not in names and "te" not in names
        request_id = dict(sent["headers"])["x-request-id"]
        assert len(request_id) == 36
        assert sink.header(b"x-envoy-upstream-service-time") is not None
        assert sink.header(b"x-upstream") == b"h1"


async def test_rewrites_mutations_and_xff_append(manager: ClusterManager) -> None:
    with Http1Echo() as echo:
        manager.add_or_update(cluster_message("web", [echo.port]))
        action = forward(
            {"cluster": "web", "prefix_rewrite": "/v2/", "host_rewrite_literal": "back.example"},
            "prefix",
            "/api/",
        )
        route_level = HeaderMutations(
            json_format.ParseDict(
                {
                    "request_headers_to_add": [{"header": {"key": "x-route", "value": "r"}}],
                    "response_headers_to_add": [{"header": {"key": "x-resp", "value": "1"}}],
                    "response_headers_to_remove": ["x-upstream"],
                },
                route_components_pb2.Route(),
            ),
            "route",
        )
        # An edge request (use_remote_address) keeps its id only with
        # preserve_external_request_id; a loopback peer is appended as the host's address.
        policy = ProxyPolicy(use_remote_address=True, preserve_external_request_id=True)
        sink = await run(
            action,
            manager,
            request(b"/api/x?q", [(b"x-forwarded-for", b"1.2.3.4"), (b"x-request-id", b"abc")]),
            policy=policy,
            mutations=(route_level,),
        )
        sent = json.loads(sink.body)
        headers = dict(sent["headers"])
        assert sent["path"] == "/v2/x?q"
        assert headers["host"] == "back.example"
        assert headers["x-envoy-original-path"] == "/api/x?q"
        assert headers["x-envoy-original-host"] == "front.example"
        assert headers["x-forwarded-for"] == f"1.2.3.4,{local_address()}"
        assert headers["x-envoy-external-address"] == "127.0.0.9"
        assert headers["x-request-id"] == "abc"
        assert headers["x-route"] == "r"
        assert sink.header(b"x-resp") == b"1"
        assert sink.header(b"x-upstream") is None


async def test_body_is_streamed_upstream(manager: ClusterManager) -> None:
    with Http1Echo() as echo:
        manager.add_or_update(cluster_message("web", [echo.port]))
        sink = RecordingSink()
        exchange = Exchange(forward({"cluster": "web"}), sink)
        exchange.start(request(b"/", [], b"POST"), False, manager, ProxyPolicy())
        exchange.request_data(b"part1-", False)
        exchange.request_data(b"part2", True)
        await sink.wait()
        assert json.loads(sink.body)["body"] == "part1-part2"


async def test_unknown_cluster_and_no_healthy_upstream(manager: ClusterManager) -> None:
    sink = await run(forward({"cluster": "nope"}), manager, request())
    assert sink.local == (503, b"", [])
    sink = await run(
        forward({"cluster": "nope", "cluster_not_found_response_code": "NOT_FOUND"}),
        manager,
        request(),
    )
    assert sink.local == (404, b"", [])


@pytest.mark.parametrize("rst", [False, True])
async def test_reset_before_headers_is_503_with_envoys_body(
    manager: ClusterManager, rst: bool
) -> None:
    with Resetter(rst=rst) as resetter:
        manager.add_or_update(cluster_message("bad", [resetter.port]))
        sink = await run(forward({"cluster": "bad"}), manager, request())
        assert sink.local is not None
        status, body, _ = sink.local
        assert status == 503
        assert body == (
            b"upstream connect error or disconnect/reset before headers. "
            b"reset reason: connection termination"
        )
        assert manager.stats.value("cluster.bad.upstream_rq_503") == 1


async def test_connect_failure_body(manager: ClusterManager) -> None:
    with Http1Echo() as gone:
        port = gone.port
    manager.add_or_update(cluster_message("down", [port]))
    sink = await run(forward({"cluster": "down"}), manager, request())
    assert sink.local is not None
    assert sink.local[1].endswith(b"reset reason: remote connection failure")


async def test_route_timeout_is_504_and_counts(manager: ClusterManager) -> None:
    with Http1Echo() as echo:
        manager.add_or_update(cluster_message("slow", [echo.port]))
        sink = await run(
            forward({"cluster": "slow", "timeout": "0.2s"}),
            manager,
            request(b"/", [(b"x-delay-ms", b"3000")]),
        )
        assert sink.local == (504, b"upstream request timeout", [])
        assert manager.stats.value("cluster.slow.upstream_rq_timeout") == 1
        assert manager.stats.value("cluster.slow.upstream_rq_504") == 1


async def test_grpc_to_http2_upstream_passes_trailers(manager: ClusterManager) -> None:
    with Http2Echo() as echo:
        manager.add_or_update(cluster_message("grpc", [echo.port], http2=True))
        message = grpc_frame(b"ping")
        sink = await run(
            forward({"cluster": "grpc"}),
            manager,
            request(
                b"/svc/Method",
                [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
                b"POST",
            ),
            body=message,
        )
        assert sink.status == 200
        assert bytes(sink.body) == message
        assert sink.trailers is not None and (b"grpc-status", b"0") in sink.trailers


async def test_overflow_reply_carries_x_envoy_overloaded(manager: ClusterManager) -> None:
    with Http1Echo() as echo:
        manager.add_or_update(cluster_message("tiny", [echo.port], max_requests=1, max_pending=1))
        first = RecordingSink()
        Exchange(forward({"cluster": "tiny"}), first).start(
            request(b"/", [(b"x-delay-ms", b"200")]), True, manager, ProxyPolicy()
        )
        second = await run(forward({"cluster": "tiny"}), manager, request())
        assert second.local is not None
        assert second.local[0] == 503
        assert second.local[1].endswith(b"reset reason: overflow")
        assert (b"x-envoy-overloaded", b"true") in second.local[2]
        await first.wait()
        assert first.status == 200
