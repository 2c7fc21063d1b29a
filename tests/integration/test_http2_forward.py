"""HTTP/2 downstream streams routed to real upstream servers (HTTP/1.1 and HTTP/2) through the
real `xds-proxy` process, and a 2 s upstream response that completes during a drain."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.h2_client import H2Client
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, Http2Echo, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route

MAX_STREAM_ID = 2**31 - 1


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Any]]:
    servers = {"h1": Http1Echo(), "h2": Http2Echo()}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def proxy(backends, tmp_path) -> Iterator[tuple[ProxyProcess, int]]:
    port = free_port()
    listener = http_listener(
        port,
        [route("/h2/", "h2"), route("/", "h1")],
        drain_timeout="1s",
        delayed_close_timeout="0.3s",
    )
    clusters = [
        cluster_dict("h1", [backends["h1"].port]),
        cluster_dict("h2", [backends["h2"].port], http2=True),
    ]
    process = ProxyProcess(
        bootstrap([listener], clusters),
        tmp_path,
        extra_args=["--drain-time-s", "4", "--drain-strategy", "immediate"],
    )
    process.start()
    try:
        process.wait_ready()
        yield process, port
    finally:
        process.stop()


def test_get_to_http1_upstream(proxy) -> None:
    _, port = proxy
    with H2Client(port) as client:
        response = client.response(client.request("/a?b=1", authority="svc.example"))
        assert response.status == 200
        echo = json.loads(response.body)
        assert (echo["method"], echo["path"]) == ("GET", "/a?b=1")
        assert response.header("x-upstream") == "h1"
        assert response.header("server") == "envoy"
        assert response.header("date")
        assert response.header("x-envoy-upstream-service-time") is not None


def test_post_body_and_trailers_to_http2_upstream(proxy) -> None:
    _, port = proxy
    with H2Client(port) as client:
        stream = client.request("/h2/up", method="POST", end_stream=False)
        client.send_data(stream, b"a" * 100_000)
        client.send_data(stream, b"b" * 100, end_stream=True)
        response = client.response(stream)
        assert response.status == 200
        echo = json.loads(response.body)
        assert echo["method"] == "POST"
        assert len(echo["body"]) == 100_100


def test_large_response_body_streams_back(proxy) -> None:
    _, port = proxy
    with H2Client(port) as client:
        streams = [client.request(headers=[("x-body-size", "300000")]) for _ in range(3)]
        for stream in streams:
            response = client.response(stream)
            assert response.status == 200
            assert response.body == b"x" * 300_000


def test_head_and_204_have_no_body(proxy) -> None:
    _, port = proxy
    with H2Client(port) as client:
        head = client.response(client.request(method="HEAD"))
        assert head.status == 200 and head.body == b""
        empty = client.response(client.request(headers=[("x-status", "204")]))
        assert empty.status == 204 and empty.header("content-length") is None


def test_slow_upstream_stream_completes_during_drain(proxy) -> None:
    """A 2 s upstream response on a draining connection: the GOAWAY pair goes out while it
    runs (the final one after drain_timeout = 1 s names it), the stream completes, then the
    connection closes."""
    process, port = proxy
    with H2Client(port) as client:
        started = time.monotonic()
        stream = client.request(headers=[("x-delay-ms", "2000")])
        assert process.post("/drain_listeners?graceful&skip_exit")[0] == 200
        first, final = client.wait_goaways(2, timeout=3)
        assert first.frame.last_stream_id == MAX_STREAM_ID
        assert final.frame.last_stream_id == stream
        response = client.response(stream, timeout=4)
        assert response.status == 200
        answered = next(r.at for r in client.frames if r.kind == "HEADERS")
        assert answered - started >= 2.0
        assert final.at < answered  # the final GOAWAY came while the stream was in flight
        closed = client.wait_closed(timeout=3)
        assert closed - answered < 0.3 + 0.3
