"""SDS warming and rotation: the same scenario against Envoy 1.40 and against xds-proxy, with the
same control plane (control-plane-stub) and the same TLS clients.

- A TLS listener whose certificate comes from SDS warms (its port refuses connections) until
  the secret arrives (SotW); over Delta the stub says "does not exist", which ends warming: the
  listener is active and refuses handshakes (`downstream_context_secrets_not_ready`).
- The secret: handshakes succeed with that certificate (checked by its serial).
- Rotation: new handshakes get the new certificate; a connection opened before keeps its
  certificate and keeps serving (no `connection: close`); nothing drains (no listener stat
  moves; `ssl_context_update_by_sds` counts the update).
- A secret that does not build (a key that does not match the certificate) is NACKed with
  Envoy's words; the held certificate keeps serving.
- `/config_dump` shows the secret with its private key `[redacted]`; `sds.<name>.*` stats.
- `initial_fetch_timeout`: the listener starts without its certificate and refuses
  handshakes until the secret arrives.
- Upstream: a cluster validating its upstream with a CA bundle from SDS; a rotation drains
  nothing: the pooled upstream connection keeps serving, the next new one uses the new bundle.
"""

from __future__ import annotations

import json
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from control_plane_stub.resources import SECRET_TYPE
from tests.helpers.certs import CertificateAuthority
from tests.helpers.envoy import EnvoyProcess, load_bootstrap, with_xds_address
from tests.helpers.http_client import HttpConnection, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo
from tests.interop.test_stub_eds_sds_interop import (
    DRAIN_ARGS,
    MODES,
    TlsConnection,
    handshake_serial,
    listener,
    request_on,
    sds_listener,
    subscriptions,
    tls_secret,
    trusted_ca_secret,
    upstream_tls_cluster,
)
from tests.interop.test_stub_rds_interop import without_retry_policy

pytestmark = pytest.mark.envoy

IMPLEMENTATIONS = {"envoy": EnvoyProcess, "xds-proxy": ProxyProcess}
LISTENER_STATS = "^listener_manager\\.(listener_|total_)"


def start(kind: str, mode: str, stub: StubProcess, node: str, workdir: Path) -> EnvoyProcess:
    bootstrap = with_xds_address(load_bootstrap(MODES[mode][0]), stub.xds_address, node_id=node)
    bootstrap["dynamic_resources"]["cds_config"] = {"resource_api_version": "V3", "ads": {}}
    if kind == "xds-proxy":
        without_retry_policy(bootstrap)
    proxy = IMPLEMENTATIONS[kind](bootstrap, workdir, extra_args=DRAIN_ARGS).start()
    proxy.wait_ready()
    return proxy


def handshake_refused(port: int, ca_pem: bytes) -> bool:
    """The connection is closed before the handshake (no certificate yet): an EOF, or a reset
    when the ClientHello was already there, with Envoy as with us."""
    try:
        TlsConnection(port, ca_pem).close()
    except (ssl.SSLError, ConnectionError):
        return True
    return False


def listener_stat(proxy: EnvoyProcess, port: int, name: str) -> int | None:
    return proxy.stat(f"listener.127.0.0.1_{port}.{name}")


@pytest.mark.parametrize("mode", ["ads-sotw", "ads-delta", "plain-grpc", "plain-delta"])
@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_sds_listener_warms_then_rotates_without_draining(
    kind: str, mode: str, tmp_path: Path
) -> None:
    source = MODES[mode][1]
    delta = mode.endswith("delta")
    node = f"{kind}-sds-{mode}"
    port = free_port()
    ca = CertificateAuthority("sds-interop-ca")
    old_cert = ca.issue("server-old", dns_names=["server.test"])
    new_cert = ca.issue("server-new", dns_names=["server.test"])
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    try:
        proxy = start(kind, mode, stub, node, tmp_path / kind)

        # 1. No secret yet. SotW: warming, refused. Delta: "does not exist" ends warming.
        pushed = stub.client.set_resources(listeners=[sds_listener("L", port, "cert", source)])
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: subscriptions(stub, node, SECRET_TYPE) == ["cert"],
            timeout=5,
            what="SDS [cert]",
        )
        if delta:
            wait_for(lambda: not refused(port), timeout=5, what="L active without its cert")
            assert proxy.stat("listener_manager.total_listeners_warming") == 0
            assert handshake_refused(port, ca.cert_pem)
            not_ready = "server_ssl_socket_factory.downstream_context_secrets_not_ready"
            # every connection counts (the probe that saw the port open too), as Envoy's
            wait_for(lambda: (listener_stat(proxy, port, not_ready) or 0) >= 2, 5, what=not_ready)
        else:
            assert proxy.stat("listener_manager.total_listeners_warming") == 1
            assert refused(port)
            dump = json.loads(proxy.get("/config_dump?resource=dynamic_warming_secrets")[1])
            assert [(c["name"], c["version_info"]) for c in dump["configs"]] == [
                ("cert", "uninitialized")
            ]
        assert proxy.stat("sds.cert.update_attempt") == (2 if delta else 1)

        # 2. The secret: L serves TLS with that certificate.
        served = stub.client.set_resources(secrets=[tls_secret("cert", old_cert)])
        stub.client.wait(served["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        wait_for(
            lambda: handshake_serial(port, ca.cert_pem) == old_cert.serial,
            timeout=5,
            what="the first certificate",
        )
        assert proxy.stat("listener_manager.total_listeners_active") == 1
        assert proxy.stat("sds.cert.update_success") == (2 if delta else 1)
        updates = "server_ssl_socket_factory.ssl_context_update_by_sds"
        assert listener_stat(proxy, port, updates) == 1

        # 3. Rotation: new handshakes get the new certificate; the open connection keeps
        #    its own and keeps serving; nothing drains.
        kept = TlsConnection(port, ca.cert_pem)
        try:
            assert kept.get()[0] == 200
            before = proxy.stats(LISTENER_STATS)
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
            assert proxy.stats(LISTENER_STATS) == before
            assert proxy.stat("listener_manager.total_listeners_draining") == 0
            assert listener_stat(proxy, port, updates) == 2
        finally:
            kept.close()

        # 4. A secret whose key does not match its certificate: NACKed, the held one serves.
        bad = tls_secret("cert", old_cert)
        bad["tls_certificate"]["private_key"]["inline_string"] = new_cert.key_pem.decode()
        stub.client.set_resources(secrets=[bad])
        wait_for(lambda: stub.nacks(), timeout=10, what="the NACK of a bad secret")
        assert stub.nacks()[0]["message"].startswith(
            "Failed to load private key from <inline>, Cause: "
        )
        assert "KEY_VALUES_MISMATCH" in stub.nacks()[0]["message"]
        assert proxy.stat("sds.cert.update_rejected") == 1
        assert handshake_serial(port, ca.cert_pem) == new_cert.serial

        # 5. /config_dump: the active secret, its private key redacted.
        dump = json.loads(proxy.get("/config_dump?resource=dynamic_active_secrets")[1])
        (active,) = dump["configs"]
        assert active["name"] == "cert"
        tls_certificate = active["secret"]["tls_certificate"]
        assert tls_certificate["private_key"] == {"inline_string": "[redacted]"}
        if kind == "xds-proxy":  # Envoy shows the rejected copy here; we show the one held
            if not delta:  # (Delta: the resource's own version)
                assert active["version_info"] == rotated["secrets"]
            assert tls_certificate["certificate_chain"]["inline_string"] == (
                new_cert.cert_pem.decode()
            )
    finally:
        if proxy is not None:
            proxy.stop()
        stub.stop()


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_sds_initial_fetch_timeout_starts_the_listener_without_its_certificate(
    kind: str, tmp_path: Path
) -> None:
    node = f"{kind}-sds-timeout"
    port = free_port()
    ca = CertificateAuthority("sds-timeout-ca")
    cert = ca.issue("server", dns_names=["server.test"])
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    try:
        proxy = start(kind, "ads-sotw", stub, node, tmp_path / kind)
        config = sds_listener("L", port, "cert", {"ads": {}})
        tls = config["filter_chains"][0]["transport_socket"]["typed_config"]
        sds = tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]
        sds["sds_config"]["initial_fetch_timeout"] = "1s"
        pushed = stub.client.set_resources(listeners=[config])
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        assert proxy.stat("listener_manager.total_listeners_warming") == 1
        wait_for(
            lambda: proxy.stat("sds.cert.init_fetch_timeout") == 1,
            timeout=5,
            what="the initial fetch timeout",
        )
        wait_for(lambda: not refused(port), timeout=5, what="L active without its cert")
        assert proxy.stat("listener_manager.total_listeners_warming") == 0
        assert proxy.stat("sds.cert.update_attempt") == 2
        assert handshake_refused(port, ca.cert_pem)
        not_ready = "server_ssl_socket_factory.downstream_context_secrets_not_ready"
        assert (listener_stat(proxy, port, not_ready) or 0) >= 2  # the probe's and ours

        served = stub.client.set_resources(secrets=[tls_secret("cert", cert)])
        stub.client.wait(served["secrets"], node=node, timeout=10, section="secrets")
        wait_for(
            lambda: not handshake_refused(port, ca.cert_pem),
            timeout=5,
            what="handshakes once the secret arrives",
        )
        assert handshake_serial(port, ca.cert_pem) == cert.serial
        assert proxy.stats(LISTENER_STATS)["listener_manager.listener_modified"] == "0"
    finally:
        if proxy is not None:
            proxy.stop()
        stub.stop()


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_upstream_tls_from_sds_keeps_pooled_connections_on_rotation(
    kind: str, tmp_path: Path
) -> None:
    node = f"{kind}-up-sds"
    port = free_port()
    trusted, other = CertificateAuthority("up-ca"), CertificateAuthority("other-ca")
    files = trusted.issue("upstream", dns_names=["up.test"]).write(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    upstream = Http1Echo("tls-upstream")
    upstream.ssl_context = context
    upstream.start()
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    try:
        proxy = start(kind, "ads-sotw", stub, node, tmp_path / kind)
        pushed: dict[str, Any] = stub.client.set_resources(
            secrets=[trusted_ca_secret("up-ca", trusted)],
            clusters=[upstream_tls_cluster("U", upstream.port, "up-ca")],
            listeners=[listener("P", port, {"route": {"cluster": "U"}})],
        )
        stub.client.wait(pushed["clusters"], node=node, timeout=10, section="clusters")
        stub.client.wait(pushed["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="P accepting")
        updates = "cluster.U.client_ssl_socket_factory.ssl_context_update_by_sds"
        wait_for(lambda: proxy.stat(updates) == 1, timeout=5, what="the CA bundle in use")
        connection = HttpConnection(port)
        try:
            first = request_on(connection)
            assert (first.status, first.headers["x-upstream"]) == (200, "tls-upstream")
            assert upstream.connections == 1

            rotated = stub.client.set_resources(secrets=[trusted_ca_secret("up-ca", other)])
            stub.client.wait(rotated["secrets"], node=node, timeout=10, section="secrets")
            wait_for(lambda: proxy.stat(updates) == 2, timeout=5, what="TLS update")
            kept = request_on(connection, "x-close: 1")  # the upstream closes after this one
            assert kept.status == 200 and upstream.connections == 1
            assert proxy.stat("cluster_manager.cluster_modified") == 0
            # A new upstream connection uses the new bundle, which refuses the upstream.
            assert request_on(connection).status == 503
            assert proxy.stat("cluster.U.upstream_cx_total") == 2
            assert upstream.connections == 1
        finally:
            connection.close()
        assert stub.nacks() == []
    finally:
        if proxy is not None:
            proxy.stop()
        stub.stop()
        upstream.stop()


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_a_cluster_warms_until_its_upstream_tls_secret_arrives(kind: str, tmp_path: Path) -> None:
    """A new cluster whose CA bundle comes from SDS warms (`warming_clusters` 1, requests to
    it get 503) until the secret arrives; then it serves, over TLS verified with that CA."""
    node = f"{kind}-up-sds-warm"
    port = free_port()
    trusted = CertificateAuthority("warm-ca")
    files = trusted.issue("upstream", dns_names=["up.test"]).write(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files["cert"], files["key"])
    upstream = Http1Echo("tls-upstream")
    upstream.ssl_context = context
    upstream.start()
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    try:
        proxy = start(kind, "ads-sotw", stub, node, tmp_path / kind)
        pushed = stub.client.set_resources(
            clusters=[upstream_tls_cluster("U", upstream.port, "up-ca")],
            listeners=[listener("P", port, {"route": {"cluster": "U"}})],
        )
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(
            lambda: subscriptions(stub, node, SECRET_TYPE) == ["up-ca"],
            timeout=5,
            what="SDS [up-ca]",
        )
        assert proxy.stat("cluster_manager.warming_clusters") == 1
        wait_for(lambda: not refused(port), timeout=5, what="P accepting")
        connection = HttpConnection(port)
        try:
            assert request_on(connection).status == 503
        finally:
            connection.close()
        assert upstream.connections == 0

        served = stub.client.set_resources(secrets=[trusted_ca_secret("up-ca", trusted)])
        stub.client.wait(served["secrets"], node=node, timeout=10, section="secrets")
        wait_for(
            lambda: proxy.stat("cluster_manager.warming_clusters") == 0,
            timeout=5,
            what="U warm",
        )
        connection = HttpConnection(port)
        try:
            response = request_on(connection)
            assert (response.status, response.headers["x-upstream"]) == (200, "tls-upstream")
        finally:
            connection.close()
        assert proxy.stat("sds.up-ca.update_success") == 1
        assert stub.nacks() == []
    finally:
        if proxy is not None:
            proxy.stop()
        stub.stop()
        upstream.stop()


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_rotations_under_load_fail_no_handshake_and_no_request(kind: str, tmp_path: Path) -> None:
    """New TLS connections, one after another, while the certificate rotates five times (the
    next rotation once five handshakes saw the last one): every handshake and request
    succeeds, each with one of the pushed certificates."""
    node = f"{kind}-sds-load"
    port = free_port()
    ca = CertificateAuthority("sds-load-ca")
    certificates = [ca.issue(f"server-{i}", dns_names=["server.test"]) for i in range(6)]
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []

    def client() -> None:
        while not stop.is_set():
            try:
                seen.append(handshake_serial(port, ca.cert_pem))
            except Exception as error:  # every failure is a finding
                failures.append(repr(error))

    try:
        proxy = start(kind, "ads-sotw", stub, node, tmp_path / kind)
        pushed = stub.client.set_resources(
            listeners=[sds_listener("L", port, "cert", {"ads": {}})],
            secrets=[tls_secret("cert", certificates[0])],
        )
        stub.client.wait(pushed["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        thread = threading.Thread(target=client)
        thread.start()
        try:
            for certificate in certificates[1:]:
                rotated = stub.client.set_resources(secrets=[tls_secret("cert", certificate)])
                stub.client.wait(rotated["secrets"], node=node, timeout=10, section="secrets")
                wait_for(
                    lambda c=certificate: seen.count(c.serial) >= 5,
                    timeout=10,
                    what="five handshakes with the rotated certificate",
                )
        finally:
            stop.set()
            thread.join()
        assert failures == []
        assert set(seen) <= {certificate.serial for certificate in certificates}
        assert seen[-1] == certificates[-1].serial
        assert len(seen) >= 25
        assert proxy.stat("listener_manager.total_listeners_draining") == 0
    finally:
        stop.set()
        if proxy is not None:
            proxy.stop()
        stub.stop()


@pytest.mark.parametrize("kind", sorted(IMPLEMENTATIONS))
def test_a_changed_listener_whose_new_secret_times_out(kind: str, tmp_path: Path) -> None:
    """Envoy 1.40 makes the new version active without its certificate (handshakes fail);
    xds-proxy does better: the old version keeps serving its certificate and the new one
    keeps warming until its secret arrives (docs/secrets.md)."""
    node = f"{kind}-sds-changed"
    port = free_port()
    ca = CertificateAuthority("sds-changed-ca")
    first, second = (ca.issue(n, dns_names=["server.test"]) for n in ("first", "second"))
    stub = StubProcess(tmp_path / "stub").start()
    proxy = None
    try:
        proxy = start(kind, "ads-sotw", stub, node, tmp_path / kind)
        pushed = stub.client.set_resources(
            listeners=[sds_listener("L", port, "first", {"ads": {}})],
            secrets=[tls_secret("first", first)],
        )
        stub.client.wait(pushed["secrets"], node=node, timeout=10, section="secrets")
        wait_for(lambda: not refused(port), timeout=5, what="L accepting")
        changed = sds_listener("L", port, "second", {"ads": {}})
        tls = changed["filter_chains"][0]["transport_socket"]["typed_config"]
        sds = tls["common_tls_context"]["tls_certificate_sds_secret_configs"][0]
        sds["sds_config"]["initial_fetch_timeout"] = "1s"
        changed["per_connection_buffer_limit_bytes"] = 32768  # a full update
        pushed = stub.client.set_resources(
            listeners=[changed], secrets=[tls_secret("first", first)]
        )
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        assert proxy.stat("listener_manager.total_listeners_warming") == 1
        wait_for(
            lambda: proxy.stat("sds.second.init_fetch_timeout") == 1,
            timeout=5,
            what="the initial fetch timeout",
        )
        if kind == "envoy":
            wait_for(
                lambda: proxy.stat("listener_manager.total_listeners_warming") == 0,
                timeout=5,
                what="the new version active",
            )
            assert handshake_refused(port, ca.cert_pem)
        else:
            assert proxy.stat("listener_manager.total_listeners_warming") == 1
            assert handshake_serial(port, ca.cert_pem) == first.serial
        served = stub.client.set_resources(
            secrets=[tls_secret("first", first), tls_secret("second", second)]
        )
        stub.client.wait(served["secrets"], node=node, timeout=10, section="secrets")
        wait_for(
            lambda: handshake_serial(port, ca.cert_pem) == second.serial,
            timeout=5,
            what="the second certificate",
        )
        assert proxy.stat("listener_manager.total_listeners_warming") == 0
    finally:
        if proxy is not None:
            proxy.stop()
        stub.stop()
