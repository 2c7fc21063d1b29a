"""A real Envoy 1.40 takes ClusterLoadAssignments (EDS) and Secrets (SDS) from control-plane-stub.

For each way (ADS SotW and Delta; the plain EndpointDiscoveryService / SecretDiscoveryService
with `api_config_source` GRPC and DELTA_GRPC):

- EDS: a `type: EDS` cluster is ACKed and warms (`cluster_manager.warming_clusters 1`, the
  stub shows Envoy subscribed to its `service_name`, a listener routing to it answers 503)
  until the stub pushes its ClusterLoadAssignment; then requests through the listener reach
  the real upstream it names. The assignment moves to another upstream: requests follow,
  with no cluster or listener change. The assignment leaves the stub's set: Envoy keeps
  its hosts.
- SDS: a listener whose DownstreamTlsContext takes its certificate from
  `tls_certificate_sds_secret_configs` is ACKed and warms (its port refuses connections)
  until the stub pushes the Secret; then it serves TLS with that certificate. Rotating the
  secret: new handshakes see the new certificate, the connection opened before keeps its
  certificate and keeps serving, nothing drains (no listener update, nothing draining, no
  `connection: close`). The secret leaves the stub's set: Envoy keeps serving with it.
- Upstream SDS (ADS SotW and Delta): a cluster whose UpstreamTlsContext validates with a CA
  bundle from SDS, pushed together with that secret, serves; rotating the bundle to one that
  no longer trusts the upstream drains nothing: the pooled upstream connection keeps
  serving, and only the next new upstream connection fails its verification.

Nothing is NACKed on the way.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from control_plane_stub.resources import CLUSTER_TYPE, ENDPOINT_TYPE, SECRET_TYPE
from tests.helpers.certs import CertificateAuthority, Issued
from tests.helpers.envoy import EnvoyProcess, load_bootstrap, with_xds_address
from tests.helpers.http_client import HttpConnection, Response, get, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, endpoint

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DOWNSTREAM_TLS = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
DRAIN_ARGS = ["--drain-time-s", "1", "--drain-strategy", "immediate"]
GRPC_SOURCE = {"grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}
# mode -> (the ADS bootstrap that carries LDS and CDS, the config source of EDS or SDS)
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "ads-sotw": ("ads-sotw", {"ads": {}}),
    "ads-delta": ("ads-delta", {"ads": {}}),
    "plain-grpc": (
        "ads-sotw",
        {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3", **GRPC_SOURCE}},
    ),
    "plain-delta": (
        "ads-delta",
        {
            "api_config_source": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                **GRPC_SOURCE,
            }
        },
    ),
}


def config_source(source: dict[str, Any]) -> dict[str, Any]:
    # 0s: no initial_fetch_timeout, the cluster or listener warms until the stub answers.
    return {**source, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}


def start_envoy(mode: str, stub: StubProcess, node: str, workdir: Path) -> EnvoyProcess:
    """Envoy with LDS and CDS over ADS (SotW or Delta, as the mode)."""
    bootstrap = with_xds_address(load_bootstrap(MODES[mode][0]), stub.xds_address, node_id=node)
    bootstrap["dynamic_resources"]["cds_config"] = {"resource_api_version": "V3", "ads": {}}
    envoy = EnvoyProcess(bootstrap, workdir, extra_args=DRAIN_ARGS).start()
    envoy.wait_ready()
    return envoy


def hcm(stat_prefix: str, route: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **route}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        },
    }


def listener(name: str, port: int, route: dict[str, Any], **chain: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm(name, route)], **chain}],
    }


def eds_cluster(name: str, service_name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"service_name": service_name, "eds_config": config_source(source)},
    }


def assignment(service_name: str, *ports: int) -> dict[str, Any]:
    return {
        "cluster_name": service_name,
        "endpoints": [{"lb_endpoints": [endpoint(port) for port in ports]}],
    }


def subscriptions(stub: StubProcess, node: str, type_url: str) -> list[str]:
    """Every name `node` subscribes to for the type, over all its streams."""
    return sorted(name for names in stub.subscriptions(node, type_url) for name in names)


# ---------------------------------------------------------------- EDS


@pytest.mark.parametrize("mode", sorted(MODES))
def test_envoy_warms_an_eds_cluster_and_follows_its_endpoints(mode: str, tmp_path: Path) -> None:
    source = MODES[mode][1]
    delta = mode.endswith("delta")
    node = f"envoy-eds-{mode}"
    port = free_port()
    first, second = Http1Echo("first").start(), Http1Echo("second").start()
    stub = StubProcess(tmp_path / "stub").start()
    envoy = None
    try:
        envoy = start_envoy(mode, stub, node, tmp_path / "envoy")

        # 1. An EDS cluster without its assignment. SotW: the stub's EDS response has no
        #    assignment for C-svc, Envoy keeps C warming and holds its CDS ACK meanwhile.
        #    Delta: the stub says "C-svc does not exist" (removed_resources), which ends C's
        #    warming with no hosts, and Envoy ACKs. Either way a listener routing to C
        #    answers 503.
        pushed = stub.client.set_resources(
            clusters=[eds_cluster("C", "C-svc", source)],
            listeners=[listener("L", port, {"route": {"cluster": "C"}})],
        )
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: subscriptions(stub, node, ENDPOINT_TYPE) == ["C-svc"],
            timeout=5,
            what="EDS [C-svc]",
        )
        if delta:
            stub.client.wait(pushed["clusters"], node=node, timeout=10, section="clusters")
            assert envoy.stat("cluster_manager.warming_clusters") == 0
            assert envoy.stat("cluster.C.membership_total") == 0
        else:
            assert envoy.stat("cluster_manager.warming_clusters") == 1
            assert stub.acked_versions(node, CLUSTER_TYPE) != [pushed["clusters"]]
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        assert get(port).status == 503
        assert first.requests == [] and second.requests == []

        # 2. The assignment: C warms and requests reach the first upstream.
        placed = stub.client.set_resources(endpoints=[assignment("C-svc", first.port)])
        stub.client.wait(placed["endpoints"], node=node, timeout=10, section="endpoints")
        stub.client.wait(pushed["clusters"], node=node, timeout=10, section="clusters")
        wait_for(
            lambda: envoy.stat("cluster_manager.warming_clusters") == 0,
            timeout=5,
            what="C warm",
        )
        response = get(port)
        assert (response.status, response.headers["x-upstream"]) == (200, "first")
        assert envoy.stat("cluster.C.membership_total") == 1
        cluster_stats = envoy.stats("^cluster_manager\\.cluster_(added|modified|removed)$")
        listener_stats = envoy.stats("^listener_manager\\.listener_")

        # 3. The endpoints move: requests follow, the cluster and listener stay as they are.
        moved = stub.client.set_resources(endpoints=[assignment("C-svc", second.port)])
        stub.client.wait(moved["endpoints"], node=node, timeout=10, section="endpoints")
        wait_for(
            lambda: get(port).headers.get("x-upstream") == "second",
            timeout=5,
            what="requests to the second upstream",
        )
        assert all(get(port).headers["x-upstream"] == "second" for _ in range(3))
        assert envoy.stats("^cluster_manager\\.cluster_(added|modified|removed)$") == cluster_stats
        assert envoy.stats("^listener_manager\\.listener_") == listener_stats
        assert envoy.stat("cluster.C.update_success") is not None

        # 4. The assignment leaves the stub's set (Delta: removed_resources; SotW: an EDS
        #    response without it): Envoy keeps the hosts it has.
        removed = stub.client.set_resources(endpoints=[])
        stub.client.wait(removed["endpoints"], node=node, timeout=10, section="endpoints")
        assert get(port).headers.get("x-upstream") == "second"
        assert envoy.stat("cluster.C.membership_total") == 1
        assert stub.nacks() == []
    finally:
        if envoy is not None:
            envoy.stop()
        stub.stop()
        first.stop()
        second.stop()


# ---------------------------------------------------------------- SDS


def tls_secret(name: str, issued: Issued) -> dict[str, Any]:
    return {
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": issued.cert_pem.decode()},
            "private_key": {"inline_string": issued.key_pem.decode()},
        },
    }


def sds_listener(name: str, port: int, secret_name: str, source: dict[str, Any]) -> dict[str, Any]:
    tls = {
        "@type": DOWNSTREAM_TLS,
        "common_tls_context": {
            "tls_certificate_sds_secret_configs": [
                {"name": secret_name, "sds_config": config_source(source)}
            ]
        },
    }
    route = {"direct_response": {"status": 200, "body": {"inline_string": "tls\n"}}}
    transport = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return listener(name, port, route, transport_socket=transport)


class TlsConnection:
    """One TLS connection to 127.0.0.1:port (server name `server.test`): its peer's
    certificate serial and keep-alive HTTP/1.1 GETs."""

    def __init__(self, port: int, ca_pem: bytes):
        context = ssl.create_default_context(cadata=ca_pem.decode())
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="server.test")
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        self.serial = x509.load_der_x509_certificate(der).serial_number
        self._buffer = b""

    def get(self) -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(b"GET / HTTP/1.1\r\nhost: server.test\r\n\r\n")
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(lines[0].split()[1]), headers, body

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by Envoy")
        self._buffer += data

    def close(self) -> None:
        self.sock.close()


def handshake_serial(port: int, ca_pem: bytes) -> int:
    connection = TlsConnection(port, ca_pem)
    try:
        status, _, body = connection.get()
        assert (status, body) == (200, b"tls\n")
        return connection.serial
    finally:
        connection.close()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_envoy_warms_a_listener_on_its_sds_certificate_and_takes_a_rotation(
    mode: str, tmp_path: Path
) -> None:
    source = MODES[mode][1]
    delta = mode.endswith("delta")
    node = f"envoy-sds-{mode}"
    port = free_port()
    ca = CertificateAuthority("sds-test-ca")
    old_cert = ca.issue("server-old", dns_names=["server.test"])
    new_cert = ca.issue("server-new", dns_names=["server.test"])
    stub = StubProcess(tmp_path / "stub").start()
    envoy = None
    try:
        envoy = start_envoy(mode, stub, node, tmp_path / "envoy")

        # 1. A TLS listener whose certificate comes from SDS, not served yet: ACKed. SotW:
        #    it warms (its port refuses connections). Delta: the stub says "cert does not
        #    exist", which ends the warming: the listener is active and its handshakes fail.
        pushed = stub.client.set_resources(listeners=[sds_listener("L", port, "cert", source)])
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: subscriptions(stub, node, SECRET_TYPE) == ["cert"],
            timeout=5,
            what="SDS [cert]",
        )
        if delta:
            wait_for(lambda: not refused(port), timeout=5, what="L active without its cert")
            assert envoy.stat("listener_manager.total_listeners_warming") == 0
            with pytest.raises((ssl.SSLError, ConnectionError)):
                TlsConnection(port, ca.cert_pem)
        else:
            assert envoy.stat("listener_manager.total_listeners_warming") == 1
            assert refused(port)

        # 2. The secret: L warms and serves TLS with that certificate.
        served = stub.client.set_resources(secrets=[tls_secret("cert", old_cert)])
        stub.client.wait(served["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        wait_for(
            lambda: handshake_serial(port, ca.cert_pem) == old_cert.serial,
            timeout=5,
            what="the first certificate",
        )
        assert envoy.stat("listener_manager.total_listeners_active") == 1

        # 3. Rotation: new handshakes get the new certificate; the connection opened before
        #    keeps its certificate and keeps serving; nothing drains.
        kept = TlsConnection(port, ca.cert_pem)
        try:
            assert kept.get()[0] == 200
            listener_stats = envoy.stats("^listener_manager\\.")
            rotated = stub.client.set_resources(secrets=[tls_secret("cert", new_cert)])
            stub.client.wait(rotated["secrets"], node=node, timeout=10, section="secrets")
            wait_for(
                lambda: handshake_serial(port, ca.cert_pem) == new_cert.serial,
                timeout=5,
                what="the new certificate on a new handshake",
            )
            status, headers, _ = kept.get()
            assert (status, headers.get("connection")) == (200, None)
            assert kept.serial == old_cert.serial
            assert envoy.stats("^listener_manager\\.") == listener_stats
            assert envoy.stat("listener_manager.total_listeners_draining") == 0
        finally:
            kept.close()

        # 4. The secret leaves the stub's set: Envoy keeps serving with the one it has.
        removed = stub.client.set_resources(secrets=[])
        stub.client.wait(removed["secrets"], node=node, timeout=10, section="secrets")
        assert handshake_serial(port, ca.cert_pem) == new_cert.serial
        assert stub.nacks() == []
    finally:
        if envoy is not None:
            envoy.stop()
        stub.stop()


UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def trusted_ca_secret(name: str, *authorities: CertificateAuthority) -> dict[str, Any]:
    bundle = "".join(authority.cert_pem.decode() for authority in authorities)
    return {"name": name, "validation_context": {"trusted_ca": {"inline_string": bundle}}}


def upstream_tls_cluster(name: str, port: int, ca_secret: str) -> dict[str, Any]:
    """A STATIC cluster that speaks TLS to 127.0.0.1:port (SNI `up.test`) and validates the
    upstream's certificate with the CA bundle of SDS secret `ca_secret` (over ADS)."""
    tls = {
        "@type": UPSTREAM_TLS,
        "sni": "up.test",
        "common_tls_context": {
            "validation_context_sds_secret_config": {
                "name": ca_secret,
                "sds_config": config_source({"ads": {}}),
            }
        },
    }
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [endpoint(port)]}],
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
    }


def request_on(connection: HttpConnection, *headers: str) -> Response:
    lines = ["GET / HTTP/1.1", "host: example.com", *headers, "", ""]
    connection.sock.sendall("\r\n".join(lines).encode())
    return connection.read_response()


@pytest.mark.parametrize("mode", ["ads-sotw", "ads-delta"])
def test_envoy_upstream_tls_from_sds_keeps_pooled_connections_on_rotation(
    mode: str, tmp_path: Path
) -> None:
    """A cluster's upstream validation context from SDS, pushed together with the cluster
    (Envoy subscribes when the cluster arrives, the stub answers). Rotating it drains
    nothing: the pooled upstream connection is reused; only new upstream connections use
    the new context (a CA that does not trust the upstream fails them)."""
    node = f"envoy-up-sds-{mode}"
    port = free_port()
    trusted, other = CertificateAuthority("up-ca"), CertificateAuthority("other-ca")
    files = trusted.issue("upstream", dns_names=["up.test"]).write(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    upstream = Http1Echo("tls-upstream")
    upstream.ssl_context = context
    upstream.start()
    stub = StubProcess(tmp_path / "stub").start()
    envoy = None
    try:
        envoy = start_envoy(mode, stub, node, tmp_path / "envoy")
        pushed = stub.client.set_resources(
            secrets=[trusted_ca_secret("up-ca", trusted)],
            clusters=[upstream_tls_cluster("U", upstream.port, "up-ca")],
            listeners=[listener("P", port, {"route": {"cluster": "U"}})],
        )
        stub.client.wait(pushed["clusters"], node=node, timeout=10, section="clusters")
        stub.client.wait(pushed["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="P accepting")
        connection = HttpConnection(port)
        try:
            first = request_on(connection)
            assert (first.status, first.headers["x-upstream"]) == (200, "tls-upstream")
            assert upstream.connections == 1
            updates = "cluster.U.client_ssl_socket_factory.ssl_context_update_by_sds"
            before = envoy.stat(updates)

            # Rotation to a CA bundle that no longer trusts the upstream: the pooled
            # connection stays and keeps serving.
            rotated = stub.client.set_resources(secrets=[trusted_ca_secret("up-ca", other)])
            stub.client.wait(rotated["secrets"], node=node, timeout=10, section="secrets")
            wait_for(lambda: envoy.stat(updates) == before + 1, timeout=5, what="TLS update")
            kept = request_on(connection, "x-close: 1")  # the upstream closes after this one
            assert kept.status == 200 and upstream.connections == 1
            assert envoy.stats("^cluster_manager\\.cluster_modified$") == {
                "cluster_manager.cluster_modified": "0"
            }
            # A new upstream connection uses the new context, which refuses the upstream.
            refused_upstream = request_on(connection)
            assert refused_upstream.status == 503
            assert envoy.stat("cluster.U.ssl.fail_verify_error") == 1
            assert envoy.stat("cluster.U.ssl.handshake") == 1
            assert envoy.stat("cluster.U.upstream_cx_total") == 2
            assert upstream.connections == 1
        finally:
            connection.close()
        assert stub.nacks() == []
    finally:
        if envoy is not None:
            envoy.stop()
        stub.stop()
        upstream.stop()
