"""HTTP/1.1 upstream pool against real test servers on loopback."""

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
    Http1Echo,
    Resetter,
    cluster_dict,
    cluster_message,
    idle_timeout_scenario,
)
from tests.helpers.waiting import wait_until
from xds_proxy.config.cluster import build_cluster_config
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.stream import RequestHead


@pytest.fixture
def echo():
    with Http1Echo() as server:
        yield server


def make_cluster(*ports: int, stats: Stats | None = None, **extra) -> Cluster:
    message = cluster_message("web", ports, **extra)
    return Cluster(build_cluster_config(message, "cluster"), stats or Stats())


def get(path: bytes = b"/", headers: list | None = None, method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, path, b"example.com", headers or [])


async def test_get_round_trip_and_keep_alive_reuse(echo: Http1Echo) -> None:
    stats = Stats()
    cluster = make_cluster(echo.port, stats=stats)
    for index in range(3):
        collector = Collector()
        cluster.new_stream(get(b"/a?n=%d" % index, [(b"x-test", b"1")]), collector, True)
        await collector.wait()
        assert collector.status == 200
        request = json.loads(collector.body)
        assert request["path"] == f"/a?n={index}"
        assert ["host", "example.com"] in request["headers"]
        assert ["x-test", "1"] in request["headers"]
    assert echo.connections == 1
    assert stats.value("cluster.web.upstream_cx_total") == 1
    assert stats.value("cluster.web.upstream_rq_total") == 3
    assert stats.value("cluster.web.upstream_rq_active") == 0
    assert stats.value("cluster.web.upstream_cx_active") == 1
    cluster.close()


async def test_request_body_fixed_length_and_chunked(echo: Http1Echo) -> None:
    cluster = make_cluster(echo.port)
    fixed = Collector()
    stream = cluster.new_stream(get(b"/post", [(b"content-length", b"10")], b"POST"), fixed, False)
    stream.send_data(b"01234", False)
    stream.send_data(b"56789", True)
    await fixed.wait()
    assert json.loads(fixed.body)["body"] == "0123456789"
    chunked = Collector()
    stream = cluster.new_stream(get(b"/post", [], b"POST"), chunked, False)
    stream.send_data(b"abc", False)
    await asyncio.sleep(0)
    stream.send_data(b"def", True)
    await chunked.wait()
    sent = json.loads(chunked.body)
    assert sent["body"] == "abcdef"
    assert ["transfer-encoding", "chunked"] in sent["headers"]
    cluster.close()


async def test_chunked_response_and_head(echo: Http1Echo) -> None:
    cluster = make_cluster(echo.port)
    collector = Collector()
    cluster.new_stream(
        get(b"/", [(b"x-chunked", b"1"), (b"x-body-size", b"1000")]), collector, True
    )
    await collector.wait()
    assert collector.body == b"x" * 1000
    assert not any(name == b"transfer-encoding" for name, _ in collector.headers)
    head = Collector()
    cluster.new_stream(get(b"/", [(b"x-body-size", b"50")], b"HEAD"), head, True)
    await head.wait()
    assert head.status == 200 and head.body == b""
    assert (b"content-length", b"50") in head.headers
    again = Collector()
    cluster.new_stream(get(b"/"), again, True)
    await again.wait()
    assert again.status == 200
    assert echo.connections == 1  # HEAD left the connection reusable
    cluster.close()


async def test_concurrent_requests_open_connections_up_to_the_limit(echo: Http1Echo) -> None:
    stats = Stats()
    cluster = make_cluster(echo.port, stats=stats, max_connections=2, max_pending=10)
    collectors = [Collector() for _ in range(5)]
    for collector in collectors:
        cluster.new_stream(get(b"/", [(b"x-delay-ms", b"50")]), collector, True)
    await asyncio.gather(*(c.wait() for c in collectors))
    assert all(c.status == 200 for c in collectors)
    assert echo.connections == 2
    assert stats.value("cluster.web.upstream_cx_overflow") >= 1
    assert stats.value("cluster.web.upstream_rq_pending_active") == 0
    cluster.close()


async def test_pending_overflow_resets_with_overflow(echo: Http1Echo) -> None:
    stats = Stats()
    cluster = make_cluster(echo.port, stats=stats, max_connections=1, max_pending=1)
    first, second, third = Collector(), Collector(), Collector()
    cluster.new_stream(get(b"/", [(b"x-delay-ms", b"100")]), first, True)
    # Once the first request holds the only connection, one more may wait; the next overflows.
    await wait_until(lambda: stats.value("cluster.web.upstream_rq_total") == 1, 5)
    for collector in (second, third):
        cluster.new_stream(get(b"/"), collector, True)
    await asyncio.gather(first.wait(), second.wait(), third.wait())
    assert (first.status, second.status) == (200, 200)
    assert third.reset_reason == "overflow"
    assert stats.value("cluster.web.upstream_rq_pending_overflow") == 1
    cluster.close()


async def test_connect_refused_is_remote_connection_failure() -> None:
    stats = Stats()
    with Http1Echo() as closed:
        port = closed.port
    cluster = make_cluster(port, stats=stats)
    collector = Collector()
    cluster.new_stream(get(), collector, True)
    await collector.wait()
    assert collector.reset_reason == "remote connection failure"
    assert stats.value("cluster.web.upstream_cx_connect_fail") == 1
    assert stats.value("cluster.web.upstream_rq_pending_failure_eject") == 1
    assert stats.value("cluster.web.upstream_rq_total") == 0
    assert stats.value("cluster.web.upstream_cx_active") == 0


@pytest.mark.parametrize("rst", [False, True])
async def test_backend_that_closes_is_connection_termination(rst: bool) -> None:
    with Resetter(rst=rst) as resetter:
        stats = Stats()
        cluster = make_cluster(resetter.port, stats=stats)
        collector = Collector()
        cluster.new_stream(get(), collector, True)
        await collector.wait()
        assert collector.reset_reason == "connection termination"
        assert stats.value("cluster.web.upstream_rq_total") == 1
        assert stats.value("cluster.web.upstream_cx_destroy_remote") == 1
        cluster.close()


async def test_caller_reset_closes_the_connection(echo: Http1Echo) -> None:
    stats = Stats()
    cluster = make_cluster(echo.port, stats=stats)
    collector = Collector()
    stream = cluster.new_stream(get(b"/", [(b"x-delay-ms", b"2000")]), collector, True)
    await wait_until(lambda: stats.value("cluster.web.upstream_rq_total") == 1, 5)
    stream.reset()
    await wait_until(lambda: stats.value("cluster.web.upstream_cx_active") == 0, 5)
    assert collector.reset_reason is None and collector.status is None
    assert stats.value("cluster.web.upstream_rq_active") == 0
    after = Collector()
    cluster.new_stream(get(), after, True)
    await after.wait()
    assert after.status == 200
    cluster.close()


async def test_round_robin_spreads_over_hosts() -> None:
    with Http1Echo("a") as a, Http1Echo("b") as b:
        cluster = make_cluster(a.port, b.port)
        seen = []
        for _ in range(6):
            collector = Collector()
            cluster.new_stream(get(), collector, True)
            await collector.wait()
            seen.append(json.loads(collector.body)["server"])
        assert seen.count("a") == 3 and seen.count("b") == 3
        assert seen[0] != seen[1]
        cluster.close()


async def test_response_back_pressure_pauses_upstream_reads(echo: Http1Echo) -> None:
    stats = Stats()
    cluster = make_cluster(echo.port, stats=stats)
    collector = Collector()
    stream = cluster.new_stream(get(b"/", [(b"x-body-size", b"4000000")]), collector, True)
    collector.on_headers = lambda: stream.pause_response()
    await wait_until(lambda: collector.status == 200, 5)
    await wait_until(lambda: cluster.stats.upstream_rq_total.value == 1, 5)
    stalled = len(collector.body)
    assert stalled < 4_000_000
    stream.resume_response()
    await collector.wait()
    assert len(collector.body) == 4_000_000
    assert stats.value("cluster.web.upstream_flow_control_paused_reading_total") >= 1
    cluster.close()


@pytest.mark.parametrize("kind", ["STRICT_DNS", "LOGICAL_DNS"])
async def test_dns_cluster_resolves_and_serves(echo: Http1Echo, kind: str) -> None:
    stats = Stats()
    message = cluster_message(
        "dns", [echo.port], host="localhost", type=kind, dns_lookup_family="V4_ONLY"
    )
    cluster = Cluster(build_cluster_config(message, "cluster"), stats)
    assert cluster.new_stream(get(), Collector(), True) is None  # nothing resolved yet
    assert stats.value("cluster.dns.upstream_cx_none_healthy") == 1
    cluster.start()
    assert cluster.resolved is not None
    await asyncio.wait_for(cluster.resolved.wait(), 5)
    assert [host.address for host in cluster.hosts] == [("127.0.0.1", echo.port)]
    assert stats.value("cluster.dns.membership_total") == 1
    collector = Collector()
    cluster.new_stream(get(), collector, True)
    await collector.wait()
    assert collector.status == 200
    cluster.close()


async def test_retired_cluster_finishes_in_flight_requests(echo: Http1Echo) -> None:
    stats = Stats()
    cluster = make_cluster(echo.port, stats=stats)
    warm = Collector()
    cluster.new_stream(get(), warm, True)
    await warm.wait()
    slow = Collector()
    cluster.new_stream(get(b"/", [(b"x-delay-ms", b"200")]), slow, True)
    await wait_until(lambda: stats.value("cluster.web.upstream_rq_active") == 1, 5)
    cluster.retire()
    await slow.wait()
    assert slow.status == 200
    await wait_until(lambda: stats.value("cluster.web.upstream_cx_active") == 0, 5)


async def test_tls_upstream_with_trusted_ca(tmp_path) -> None:
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backend.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    echo = Http1Echo("tls")
    echo.ssl_context = server_context
    with echo:
        transport_socket = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"inline_string": cert_pem.decode()}}
                },
                "sni": "backend.test",
            },
        }
        cluster = make_cluster(echo.port, transport_socket=transport_socket)
        collector = Collector()
        cluster.new_stream(get(), collector, True)
        await collector.wait()
        assert collector.status == 200
        assert json.loads(collector.body)["server"] == "tls"
        cluster.close()


async def test_idle_timeout_closes_only_a_connection_idle_that_long(echo: Http1Echo) -> None:
    """As the HTTP/2 pool's: a connection used more often than the idle timeout stays, and
    closes one idle timeout after its last response."""
    stats = Stats()
    message = cluster_dict("web", [echo.port])
    message["typed_extension_protocol_options"] = {
        PROTOCOL_OPTIONS_KEY: {
            "@type": "type.googleapis.com/" + PROTOCOL_OPTIONS_KEY,
            "explicit_http_config": {"http_protocol_options": {}},
            "common_http_protocol_options": {"idle_timeout": "0.4s"},
        }
    }
    config = build_cluster_config(json_format.ParseDict(message, cluster_pb2.Cluster()), "c")
    cluster = Cluster(config, stats)
    await idle_timeout_scenario(cluster, stats, "web", get(), echo)
    cluster.close()
