"""The real `xds-proxy` process routing HTTP/1.1 requests to real upstream servers (HTTP/1.1
and HTTP/2), and tcp_proxy listeners; drains with requests in flight."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import (
    Http1Echo,
    Http2Echo,
    Resetter,
    Stall,
    TcpEcho,
    cluster_dict,
)

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def route(prefix: str, cluster: str, **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def http_listener(port: int, routes: list[dict], **hcm: Any) -> dict[str, Any]:
    return {
        "name": f"http_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": "ingress",
                            "route_config": {
                                "name": "local",
                                # Envoy refuses unknown clusters in an inline route table
                                # unless told not to check (the /missing route needs one).
                                "validate_clusters": False,
                                "virtual_hosts": [
                                    {"name": "all", "domains": ["*"], "routes": routes}
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER_TYPE},
                                }
                            ],
                            **hcm,
                        },
                    }
                ]
            }
        ],
    }


def tcp_listener(port: int, cluster: str, **options: Any) -> dict[str, Any]:
    return {
        "name": f"tcp_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY_TYPE,
                            "stat_prefix": "tcp_in",
                            "cluster": cluster,
                            **options,
                        },
                    }
                ]
            }
        ],
    }


def bootstrap(listeners: list[dict], clusters: list[dict]) -> dict[str, Any]:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


@pytest.fixture(scope="module")
def backends():
    servers = {
        "h1": Http1Echo(),
        "h2": Http2Echo(),
        "reset": Resetter(),
        "tcp": TcpEcho(),
        "stall": Stall(),
    }
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def proxy(backends, tmp_path_factory):
    http_port, tcp_port = free_port(), free_port()
    with Http1Echo() as gone:
        closed_port = gone.port
    routes = [
        route("/h2/", "h2"),
        route("/rewrite/", "h1", prefix_rewrite="/new/", host_rewrite_literal="back.example"),
        route("/slow", "h1", timeout="0.3s"),
        route("/reset", "reset"),
        route("/refused", "closed"),
        route("/missing", "no_such_cluster"),
        route("/stall", "stall"),
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "direct\n"}},
        },
        route("/", "h1"),
    ]
    document = bootstrap(
        [http_listener(http_port, routes), tcp_listener(tcp_port, "tcp")],
        [
            cluster_dict("h1", [backends["h1"].port]),
            cluster_dict("h2", [backends["h2"].port], http2=True),
            cluster_dict("reset", [backends["reset"].port]),
            cluster_dict("closed", [closed_port]),
            cluster_dict("tcp", [backends["tcp"].port]),
            cluster_dict("stall", [backends["stall"].port]),
        ],
    )
    process = ProxyProcess(
        document,
        tmp_path_factory.mktemp("proxy"),
        extra_args=["--drain-time-s", "2", "--drain-strategy", "immediate"],
    )
    process.start()
    try:
        process.wait_ready()
        process.http_port, process.tcp_port = http_port, tcp_port  # type: ignore[attr-defined]
        yield process
    finally:
        process.stop()


def url(proxy, path: str) -> str:
    return f"http://127.0.0.1:{proxy.http_port}{path}"


def test_get_to_http1_upstream(proxy) -> None:
    response = httpx.get(url(proxy, "/hello?x=1"), headers={"x-test": "1"})
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["path"] == "/hello?x=1"
    headers = dict(echoed["headers"])
    assert headers["x-test"] == "1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert len(headers["x-request-id"]) == 36
    assert response.headers["server"] == "envoy"
    assert "x-envoy-upstream-service-time" in response.headers
    assert response.headers["x-upstream"] == "h1"


def test_keep_alive_reuses_both_connections(proxy, backends) -> None:
    before = backends["h1"].connections
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(url(proxy, "/k")).status_code == 200
    assert backends["h1"].connections - before <= 1


def test_post_bodies_fixed_and_chunked(proxy) -> None:
    body = b"a" * 100_000
    response = httpx.post(url(proxy, "/p"), content=body)
    assert response.json()["body"] == body.decode()

    def chunks():
        yield b"one-"
        yield b"two"

    response = httpx.post(url(proxy, "/p"), content=chunks())
    assert response.json()["body"] == "one-two"


def test_large_response_streams(proxy) -> None:
    response = httpx.get(url(proxy, "/big"), headers={"x-body-size": "3000000"})
    assert len(response.content) == 3_000_000
    chunked = httpx.get(url(proxy, "/big"), headers={"x-body-size": "100", "x-chunked": "1"})
    assert chunked.content == b"x" * 100
    assert chunked.headers["transfer-encoding"] == "chunked"


def test_request_body_back_pressure_when_the_upstream_does_not_read(proxy) -> None:
    """The upstream reads nothing: the proxy must stop reading the client's body (bounded
    buffers), so the client's own send blocks long before 256 MiB are out."""
    with socket.create_connection(("127.0.0.1", proxy.http_port)) as sock:
        sock.sendall(b"POST /stall HTTP/1.1\r\nhost: a\r\ncontent-length: 268435456\r\n\r\n")
        sock.settimeout(1.0)
        chunk = b"z" * 65536
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 268435456:
                sent += sock.send(chunk)
    assert sent < 64 * 1024 * 1024


def test_response_back_pressure_when_the_client_does_not_read(proxy) -> None:
    """A client that reads nothing of a 64 MiB response: the proxy stops reading the
    upstream instead of buffering it all."""
    with socket.create_connection(("127.0.0.1", proxy.http_port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /huge HTTP/1.1\r\nhost: a\r\nx-body-size: 67108864\r\n\r\n")
        wait_for(
            lambda: proxy.stat("cluster.h1.upstream_flow_control_paused_reading_total") >= 1,
            timeout=10,
            what="the proxy pausing its upstream reads",
        )


def test_rewrites(proxy) -> None:
    echoed = httpx.get(url(proxy, "/rewrite/a?b")).json()
    headers = dict(echoed["headers"])
    assert echoed["path"] == "/new/a?b"
    assert headers["host"] == "back.example"
    assert headers["x-envoy-original-path"] == "/rewrite/a?b"


def test_http2_upstream_from_http1_downstream(proxy) -> None:
    response = httpx.get(url(proxy, "/h2/x"))
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["server"] == "h2"
    assert [":path", "/h2/x"] in echoed["headers"]


def test_http2_upstream_goaway_with_requests_in_flight(proxy, backends) -> None:
    """The upstream says GOAWAY while two slow requests are in flight on its connection: both
    complete, and a request after it goes to a new connection."""
    h2 = backends["h2"]
    assert httpx.get(url(proxy, "/h2/warm")).status_code == 200  # the connection exists
    statuses: list[int] = []

    def slow(index: int) -> None:
        response = httpx.get(url(proxy, f"/h2/slow/{index}"), headers={"x-delay-ms": "500"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=slow, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: h2.pending_streams() == 2, timeout=5, what="two streams at the upstream")
    connections_before = h2.connections
    assert len(h2.goaway()) >= 1
    wait_for(lambda: proxy.stat("cluster.h2.upstream_cx_close_notify") >= 1, timeout=5)
    after = httpx.get(url(proxy, "/h2/after"))
    for thread in threads:
        thread.join(10)
    assert statuses == [200, 200]
    assert after.status_code == 200
    assert h2.connections == connections_before + 1


def test_failures_answered_like_envoy(proxy) -> None:
    reset = httpx.get(url(proxy, "/reset"))
    assert reset.status_code == 503
    assert reset.text == (
        "upstream connect error or disconnect/reset before headers. "
        "reset reason: connection termination"
    )
    refused = httpx.get(url(proxy, "/refused"))
    assert refused.status_code == 503
    assert refused.text.endswith("reset reason: remote connection failure")
    missing = httpx.get(url(proxy, "/missing"))
    assert (missing.status_code, missing.text) == (503, "")
    slow = httpx.get(url(proxy, "/slow"), headers={"x-delay-ms": "3000"})
    assert (slow.status_code, slow.text) == (504, "upstream request timeout")
    assert proxy.stat("cluster.h1.upstream_rq_timeout") == 1
    assert proxy.stat("cluster.closed.upstream_cx_connect_fail") >= 1


def test_pipelined_requests_answered_in_order(proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.http_port)) as sock:
        sock.sendall(
            b"GET /first HTTP/1.1\r\nhost: a\r\nx-delay-ms: 200\r\n\r\n"
            b"GET /second HTTP/1.1\r\nhost: a\r\n\r\n"
        )
        received = b""
        sock.settimeout(5)
        while received.count(b'"server": "h1"') < 2:
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
    assert received.index(b"/first") < received.index(b"/second")


def test_pipelined_direct_response_waits_for_the_forwarded_one(proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.http_port)) as sock:
        sock.sendall(
            b"GET /slow-first HTTP/1.1\r\nhost: a\r\nx-delay-ms: 200\r\n\r\n"
            b"GET /direct HTTP/1.1\r\nhost: a\r\n\r\n"
            b"POST /last HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
            b"content-length: 3\r\n\r\nxyz"
        )
        received = b""
        sock.settimeout(5)
        while b'"body": "xyz"' not in received:
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
    first = received.index(b"/slow-first")
    assert first < received.index(b"direct\n") < received.index(b"/last")
    assert received.count(b"HTTP/1.1 100 Continue\r\n") == 1


def test_unknown_cluster_in_a_validated_route_table_is_refused(tmp_path) -> None:
    listener = http_listener(free_port(), [route("/", "nowhere")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"].pop(
        "validate_clusters"
    )
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(bootstrap([listener], [])))
    result = subprocess.run(
        [sys.executable, "-m", "xds_proxy", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "filters[0].typed_config.route_config: route: unknown cluster 'nowhere'"
    )


def test_client_going_away_cancels_the_upstream_request(proxy) -> None:
    before = proxy.stat("cluster.h1.upstream_rq_tx_reset") or 0
    with socket.create_connection(("127.0.0.1", proxy.http_port)) as sock:
        sock.sendall(b"GET /abandoned HTTP/1.1\r\nhost: a\r\nx-delay-ms: 3000\r\n\r\n")
        wait_for(lambda: proxy.stat("cluster.h1.upstream_rq_active") == 1, timeout=5)
    wait_for(
        lambda: proxy.stat("cluster.h1.upstream_rq_tx_reset") == before + 1,
        timeout=5,
        what="the upstream request reset",
    )
    assert proxy.stat("cluster.h1.upstream_rq_active") == 0


def test_tcp_proxy_round_trip_with_half_close(proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.tcp_port)) as sock:
        sock.settimeout(5)
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(100):
            rest += chunk
        assert rest == b"after-eof:5"
    assert proxy.stat("tcp.tcp_in.downstream_cx_total") >= 1


def test_slow_response_in_flight_completes_during_drain(proxy, backends) -> None:
    """A drain (here /drain_listeners?graceful) lets a slow upstream response finish; the
    response tells the client to close."""
    results: dict[str, Any] = {}

    def slow_request() -> None:
        with socket.create_connection(("127.0.0.1", proxy.http_port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /inflight HTTP/1.1\r\nhost: a\r\nx-delay-ms: 800\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            results["response"] = received

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: proxy.stat("cluster.h1.upstream_rq_active") == 1, timeout=5)
    status, _ = proxy.post("/drain_listeners?graceful&skip_exit")
    assert status == 200
    thread.join(10)
    response = results["response"]
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in response
    assert b'"path": "/inflight"' in response


def test_tcp_proxy_lds_removal_closes_both_sides_with_fin_at_the_deadline(tmp_path) -> None:
    """A tcp_proxy listener pushed over LDS, then removed: the connection keeps working
    during the drain (nothing in-band for TCP), and at the deadline both sides get a FIN:
    the client reads EOF (a reset would raise) and the upstream sees EOF."""
    with TcpEcho() as echo:
        stub = StubProcess(tmp_path, xds=f"127.0.0.1:{free_port()}").start()
        try:
            document = lds_bootstrap(stub.xds_address)
            document["static_resources"]["clusters"].append(cluster_dict("tcp", [echo.port]))
            process = ProxyProcess(
                document,
                tmp_path,
                extra_args=["--drain-time-s", "1", "--drain-strategy", "immediate"],
            )
            process.start()
            try:
                process.wait_ready()
                port = free_port()
                stub.client.wait(
                    stub.client.set_resources(listeners=[tcp_listener(port, "tcp")])["listeners"],
                    timeout=10,
                )
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.settimeout(5)
                    sock.sendall(b"abc")
                    assert sock.recv(3) == b"abc"
                    removed = stub.client.set_resources(listeners=[])["listeners"]
                    stub.client.wait(removed, timeout=10)
                    sock.sendall(b"still")
                    assert sock.recv(5) == b"still"
                    assert sock.recv(100) == b""  # FIN at the drain deadline
                wait_for(lambda: echo.eofs == 1, timeout=5, what="the upstream's EOF")
            finally:
                process.stop()
        finally:
            stub.stop()
