"""HTTP/2 upstream pool against a real h2 server on loopback, GOAWAY handling included."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from tests.helpers.loops import event_loop_policy  # noqa: F401 - runs each test on both loops
from tests.helpers.upstreams import (
    PROTOCOL_OPTIONS_KEY,
    Collector,
    Http2Echo,
    cluster_dict,
    cluster_message,
    grpc_frame,
    idle_timeout_scenario,
)
from tests.helpers.waiting import wait_until
from xds_proxy.config.cluster import build_cluster_config
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.stream import RequestHead


@pytest.fixture
def h2echo():
    with Http2Echo() as server:
        yield server


def make_cluster(*ports: int, stats: Stats | None = None, **extra) -> Cluster:
    message = cluster_message("grpc", ports, http2=True, **extra)
    return Cluster(build_cluster_config(message, "cluster"), stats or Stats())


def request(path: bytes = b"/", headers: list | None = None, method: bytes = b"GET"):
    return RequestHead(method, path, b"svc.local", headers or [])


async def test_requests_share_one_connection(h2echo: Http2Echo) -> None:
    stats = Stats()
    cluster = make_cluster(h2echo.port, stats=stats)
    collectors = [Collector() for _ in range(10)]
    for index, collector in enumerate(collectors):
        cluster.new_stream(
            request(b"/n/%d" % index, [(b"x-delay-ms", b"30"), (b"te", b"trailers")]),
            collector,
            True,
        )
    await asyncio.gather(*(c.wait() for c in collectors))
    for index, collector in enumerate(collectors):
        assert collector.status == 200
        echoed = json.loads(collector.body)
        assert echoed["path"] == f"/n/{index}"
        assert [":authority", "svc.local"] in echoed["headers"]
        assert ["te", "trailers"] in echoed["headers"]
    assert h2echo.connections == 1
    assert stats.value("cluster.grpc.upstream_cx_http2_total") == 1
    assert stats.value("cluster.grpc.upstream_rq_total") == 10
    assert stats.value("cluster.grpc.upstream_rq_active") == 0
    cluster.close()


async def test_grpc_round_trip_with_trailers(h2echo: Http2Echo) -> None:
    cluster = make_cluster(h2echo.port)
    collector = Collector()
    head = request(
        b"/echo.Echo/Say",
        [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
        b"POST",
    )
    stream = cluster.new_stream(head, collector, False)
    message = grpc_frame(b"hello grpc")
    stream.send_data(message, True)
    await collector.wait()
    assert collector.status == 200
    assert bytes(collector.body) == message
    assert collector.trailers is not None
    assert (b"grpc-status", b"0") in collector.trailers
    cluster.close()


async def test_large_request_body_respects_flow_control(h2echo: Http2Echo) -> None:
    cluster = make_cluster(h2echo.port)
    collector = Collector()
    stream = cluster.new_stream(request(b"/upload", [], b"POST"), collector, False)
    body = b"y" * 300_000  # above h2's default 65535-byte initial window
    for offset in range(0, len(body), 50_000):
        stream.send_data(body[offset : offset + 50_000], False)
    stream.send_data(b"", True)
    await collector.wait()
    assert collector.status == 200
    assert len(json.loads(collector.body)["body"]) == len(body)
    cluster.close()


async def test_goaway_lets_inflight_streams_finish_and_moves_new_ones(h2echo: Http2Echo) -> None:
    stats = Stats()
    cluster = make_cluster(h2echo.port, stats=stats)
    slow = [Collector() for _ in range(3)]
    for collector in slow:
        cluster.new_stream(request(b"/slow", [(b"x-delay-ms", b"400")]), collector, True)
    await wait_until(lambda: h2echo.pending_streams() == 3)
    last_ids = await asyncio.to_thread(h2echo.goaway)
    assert last_ids == [5]
    await wait_until(lambda: stats.value("cluster.grpc.upstream_cx_close_notify") == 1)
    after = Collector()
    cluster.new_stream(request(b"/after"), after, True)
    await asyncio.gather(after.wait(), *(c.wait() for c in slow))
    assert [c.status for c in slow] == [200, 200, 200]
    assert all(c.reset_reason is None for c in slow)
    assert after.status == 200
    assert h2echo.connections == 2
    # The old connection closes once its last stream ended.
    await wait_until(lambda: stats.value("cluster.grpc.upstream_cx_active") == 1)
    cluster.close()


async def test_connection_failure_fails_pending_streams() -> None:
    with Http2Echo() as closed:
        port = closed.port
    stats = Stats()
    cluster = make_cluster(port, stats=stats)
    collectors = [Collector() for _ in range(2)]
    for collector in collectors:
        cluster.new_stream(request(), collector, True)
    await asyncio.gather(*(c.wait() for c in collectors))
    assert [c.reset_reason for c in collectors] == ["remote connection failure"] * 2
    assert stats.value("cluster.grpc.upstream_cx_connect_fail") == 1


async def test_caller_reset_cancels_only_that_stream(h2echo: Http2Echo) -> None:
    stats = Stats()
    cluster = make_cluster(h2echo.port, stats=stats)
    cancelled, kept = Collector(), Collector()
    stream = cluster.new_stream(request(b"/", [(b"x-delay-ms", b"300")]), cancelled, True)
    cluster.new_stream(request(b"/", [(b"x-delay-ms", b"100")]), kept, True)
    await wait_until(lambda: h2echo.pending_streams() == 2)
    stream.reset()
    await kept.wait()
    assert kept.status == 200
    assert cancelled.status is None and cancelled.reset_reason is None
    assert stats.value("cluster.grpc.upstream_rq_tx_reset") == 1
    assert h2echo.connections == 1
    cluster.close()


async def test_upstream_going_away_entirely_fails_inflight_with_termination(
    h2echo: Http2Echo,
) -> None:
    cluster = make_cluster(h2echo.port)
    collector = Collector()
    cluster.new_stream(request(b"/", [(b"x-delay-ms", b"5000")]), collector, True)
    await wait_until(lambda: h2echo.pending_streams() == 1)
    await asyncio.to_thread(h2echo.stop)
    await collector.wait()
    assert collector.reset_reason == "connection termination"
    cluster.close()


async def test_idle_timeout_closes_only_a_connection_idle_that_long(h2echo: Http2Echo) -> None:
    """The idle timer is armed once and re-armed when it fires early: a connection used more
    often than the idle timeout stays, and closes one idle timeout after its last stream."""
    stats = Stats()
    message = cluster_dict("grpc", [h2echo.port], http2=True)
    options = message["typed_extension_protocol_options"][PROTOCOL_OPTIONS_KEY]
    options["common_http_protocol_options"] = {"idle_timeout": "0.4s"}
    config = build_cluster_config(json_format.ParseDict(message, cluster_pb2.Cluster()), "c")
    cluster = Cluster(config, stats)
    await idle_timeout_scenario(cluster, stats, "grpc", request(), h2echo)
    cluster.close()
