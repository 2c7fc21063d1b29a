"""The router's `suppress_envoy_headers`, through a real Envoy 1.40 and through xds-proxy:
the same responses and the same requests at the upstream, with no router-made x-envoy-*
header on either (x-envoy-expected-rq-timeout-ms, x-envoy-original-path and -host,
x-envoy-upstream-service-time, x-envoy-overloaded). tests/interop/test_routing_interop.py
checks the same requests with the headers on."""

from __future__ import annotations

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, Http2Echo, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route
from tests.interop.test_routing_interop import REQUESTS, comparable, exchange

pytestmark = pytest.mark.envoy

NAMES = ["get", "post_length", "rewrite", "h2_upstream", "timeout", "refused", "overflow", "head"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    h1, h2 = Http1Echo(), Http2Echo()
    h1.start()
    h2.start()
    with Http1Echo() as gone:
        closed_port = gone.port
    routes = [
        route("/h2/", "h2"),
        route("/rewrite/", "h1", prefix_rewrite="/new/", host_rewrite_literal="back.example"),
        route("/slow", "h1", timeout="0.3s"),
        route("/refused", "closed"),
        route("/overflow", "tiny"),
        route("/", "h1"),
    ]
    clusters = [
        cluster_dict("h1", [h1.port]),
        cluster_dict("h2", [h2.port], http2=True),
        cluster_dict("closed", [closed_port]),
        cluster_dict("tiny", [h1.port], max_pending=0),
    ]
    started = {}
    try:
        for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess)):
            port = free_port()
            listener = http_listener(port, routes)
            router = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
            router["typed_config"]["suppress_envoy_headers"] = True
            process = process_class(
                bootstrap([listener], clusters), tmp_path_factory.mktemp(kind), log_level="warning"
            )
            process.start()
            process.wait_ready()
            started[kind] = (process, port)
        yield started
    finally:
        for process, _ in started.values():
            process.stop()
        h1.stop()
        h2.stop()


@pytest.mark.parametrize("name", NAMES)
def test_same_response_as_envoy_without_envoy_headers(servers, name: str) -> None:
    request = REQUESTS[name]
    theirs = comparable(exchange(servers["envoy"][1], request))
    raw = exchange(servers["ours"][1], request)
    mine = comparable(raw)
    assert mine == theirs
    assert b"x-envoy-" not in raw.lower()  # neither in our response nor in the echoed request
