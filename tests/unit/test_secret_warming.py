"""Warming on SDS secrets in the pure listener manager (clock injected): a version whose TLS
chains use secrets not held yet warms; the secret store's events end it, as route events do;
a version waiting for routes and secrets starts when both are ready."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from tests.unit.listener_fixtures import FakeSocketPool
from tests.unit.test_listener_warming import Routes, rds_listener
from xds_proxy.config.secrets import listener_secret_names
from xds_proxy.listener.actions import (
    Dependency,
    DependencyKind,
    DrainListener,
    ForgetVersion,
    ListenerDrained,
    ReleaseSockets,
    RoutesReady,
    RouteState,
    SecretsFailed,
    SecretsReady,
    StartListener,
    UnwatchRoutes,
    UnwatchSecrets,
    WatchRoutes,
    WatchSecrets,
)
from xds_proxy.listener.manager import ListenerManager
from xds_proxy.stats import Stats


def tls_listener(
    name: str,
    port: int,
    cert: str,
    ca: str | None = None,
    listener: listener_pb2.Listener | None = None,
    static: bool = False,
) -> listener_pb2.Listener:
    """A listener (by default an empty one) whose first chain takes its certificate (and
    client CA) from SDS over ADS (a static secret: no sds_config)."""
    result = listener_pb2.Listener()
    if listener is not None:
        result.CopyFrom(listener)
    result.name = name
    result.address.socket_address.address = "127.0.0.1"
    result.address.socket_address.port_value = port
    context = tls_pb2.DownstreamTlsContext()
    common = context.common_tls_context
    certificate = common.tls_certificate_sds_secret_configs.add(name=cert)
    if not static:
        certificate.sds_config.ads.SetInParent()
    if ca is not None:
        common.combined_validation_context.default_validation_context.SetInParent()
        validation = common.combined_validation_context.validation_context_sds_secret_config
        validation.name = ca
        validation.sds_config.ads.SetInParent()
    chain = result.filter_chains[0] if result.filter_chains else result.filter_chains.add()
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.Pack(context)
    return result


def make(clock: list[float]) -> tuple[ListenerManager, Stats, Routes, Routes]:
    stats, routes, secrets = Stats(), Routes(), Routes()
    manager = ListenerManager(
        stats, FakeSocketPool(), lambda i, c: None, lambda: clock[0], routes, secrets
    )
    manager.workers_started()
    return manager, stats, routes, secrets


def gauge(stats: Stats, name: str) -> int:
    return stats.value(f"listener_manager.{name}")


def test_the_secret_names_of_a_listener() -> None:
    listener = tls_listener("L", 8001, "cert", ca="clients")
    assert listener_secret_names(listener) == {"cert", "clients"}
    assert listener_secret_names(tls_listener("L", 8001, "cert", static=True)) == frozenset()


def test_a_new_listener_warms_until_its_secrets_arrive() -> None:
    clock = [5.0]
    manager, stats, _, secrets = make(clock)
    result = manager.apply_sotw("v1", [tls_listener("L", 8001, "cert", ca="clients")])
    assert result.nack_message is None
    version = manager.warming["L"]
    assert result.actions == [WatchSecrets(version.id, ("cert", "clients"))]
    assert version.waiting == {
        Dependency(DependencyKind.SECRET, "cert"),
        Dependency(DependencyKind.SECRET, "clients"),
    }
    assert sorted(str(waited) for waited in version.waiting) == [
        "secret:cert",
        "secret:clients",
    ]
    assert version.warming_since == 5.0
    secrets.states["cert"] = RouteState.READY
    assert manager.on_event(SecretsReady("cert")) == []
    clock[0] = 7.0
    secrets.states["clients"] = RouteState.READY
    assert manager.on_event(SecretsReady("clients")) == [StartListener(version.id, "v1")]
    assert manager.active["L"] is version
    assert gauge(stats, "total_listeners_warming") == 0
    assert gauge(stats, "listener_create_success") == 1


def test_a_secret_already_held_warms_nothing() -> None:
    manager, _, _, secrets = make([0.0])
    secrets.states["cert"] = RouteState.READY
    result = manager.apply_sotw("v1", [tls_listener("L", 8001, "cert")])
    version = manager.active["L"]
    assert result.actions == [WatchSecrets(version.id, ("cert",)), StartListener(version.id, "v1")]


def test_a_failed_secret_starts_a_new_listener_that_refuses_handshakes() -> None:
    """As Envoy: a timed-out (or NACKed, or absent over Delta) secret ends the warming of a
    new listener; its TLS contexts have no certificate and refuse handshakes."""
    manager, _, _, secrets = make([0.0])
    manager.apply_sotw("v1", [tls_listener("L", 8001, "cert")])
    secrets.states["cert"] = RouteState.FAILED
    actions = manager.on_event(SecretsFailed("cert"))
    assert [type(action) for action in actions] == [StartListener]


def test_a_changed_listener_keeps_its_old_version_until_the_new_secret_arrives() -> None:
    manager, _, _, secrets = make([0.0])
    secrets.states["cert"] = RouteState.READY
    manager.apply_sotw("v1", [tls_listener("L", 8001, "cert")])
    old = manager.active["L"]
    result = manager.apply_sotw("v2", [tls_listener("L", 8002, "cert-2")])
    new = manager.warming["L"]
    assert result.actions == [WatchSecrets(new.id, ("cert-2",))]
    secrets.states["cert-2"] = RouteState.FAILED
    assert manager.on_event(SecretsFailed("cert-2")) == []  # better than Envoy: keeps warming
    assert manager.active["L"] is old
    secrets.states["cert-2"] = RouteState.READY
    actions = manager.on_event(SecretsReady("cert-2"))
    assert StartListener(new.id, "v2") in actions
    assert DrainListener(old.id, "lds_update") in actions
    # its secret is let go only when the old version's drain ends
    assert manager.on_event(ListenerDrained(old.id)) == [UnwatchSecrets(old.id)]


def test_routes_and_secrets_both_hold_a_version_back() -> None:
    manager, _, routes, secrets = make([0.0])
    listener = tls_listener("L", 8001, "cert", listener=rds_listener("L", 8001, "R"))
    result = manager.apply_sotw("v1", [listener])
    version = manager.warming["L"]
    assert result.actions == [
        WatchRoutes(version.id, ("R",)),
        WatchSecrets(version.id, ("cert",)),
    ]
    routes.states["R"] = RouteState.READY
    assert manager.on_event(RoutesReady("R")) == []
    assert version.waiting == {Dependency(DependencyKind.SECRET, "cert")}
    secrets.states["cert"] = RouteState.READY
    assert manager.on_event(SecretsReady("cert")) == [StartListener(version.id, "v1")]


def test_a_removed_warming_listener_lets_go_of_its_secrets() -> None:
    manager, _, _, _ = make([0.0])
    listener = tls_listener("L", 8001, "cert", listener=rds_listener("L", 8001, "R"))
    manager.apply_sotw("v1", [listener])
    version = manager.warming["L"]
    assert manager.apply_sotw("v2", []).actions == [
        UnwatchRoutes(version.id),
        UnwatchSecrets(version.id),
        ReleaseSockets(version.id),
        ForgetVersion(version.id),
    ]


def test_a_static_listener_with_an_sds_secret_warms_the_server() -> None:
    manager = ListenerManager(
        Stats(), FakeSocketPool(), lambda i, c: None, lambda: 0.0, Routes(), Routes()
    )
    actions = manager.add_static(tls_listener("S", 8001, "cert"))
    version = manager.warming["S"]
    assert actions == [WatchSecrets(version.id, ("cert",))]
    assert manager.initializing()
