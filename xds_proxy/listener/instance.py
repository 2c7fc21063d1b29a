"""A compiled listener version: its filter chains, its accept loop, its connections.

`ListenerInstance` is what the runtime starts for one listener version: the chains built from
the config (no socket bound), the listener filters, the chain matcher, and the asyncio
servers once it accepts. Each `ChainRuntime` holds its protocol factory and the connections
it serves, and answers their drain questions by asking the drain manager with the ids that
name it there (its version's id and its chain index). `Acceptor` takes each accepted socket
through the global connection limit and the listener filters to a chain.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from xds_proxy.access_log import build_access_log
from xds_proxy.access_log.connection import log_connection, no_filter_chain
from xds_proxy.config.access_log import build_access_logs
from xds_proxy.config.tls import NO_SECRETS, DownstreamTls, TlsSecrets, downstream_tls
from xds_proxy.config_key import config_key
from xds_proxy.listener.context import DrainableConnection, FilterChainContext
from xds_proxy.listener.drain import Drain
from xds_proxy.listener.drain_manager import DrainManager
from xds_proxy.listener.filter_chain import ConnectionInfo, FilterChainMatcher
from xds_proxy.listener.inspectors import (
    NOTHING_DETECTED,
    Detected,
    Inspection,
    hand_over,
    listener_filters,
)
from xds_proxy.listener.limits import (
    GLOBAL_OVERFLOW_STAT,
    GlobalConnectionLimit,
    guard_transport,
)
from xds_proxy.listener.manager import DEFAULT_CHAIN
from xds_proxy.listener.original_dst import (
    ListenersByAddress,
    RedirectedTransport,
    original_destination,
)
from xds_proxy.listener.shared_count import SharedCounts
from xds_proxy.stats import Counter, Gauge, Stats
from xds_proxy.upstream.manager import ClusterManager

UNBOUND = "listener.unbound."
# Envoy's `listener.<address>.server_ssl_socket_factory.*` of a TLS chain with SDS secrets.
SSL_FACTORY = "server_ssl_socket_factory."
SSL_FACTORY_STATS = (
    "downstream_context_secrets_not_ready",
    "ssl_context_update_by_sds",
    "upstream_context_secrets_not_ready",
)

# A filter chain's network filters -> the protocol factory of its connections; raises
# ConfigError (`network_filters.build_filter_chain`). The third argument prefixes error paths.
ChainBuilder = Callable[
    [Sequence[listener_components_pb2.Filter], FilterChainContext, str],
    Callable[[], asyncio.Protocol],
]


@dataclass(frozen=True)
class ListenerServices:
    """What a compiled listener uses to build its chains and while it serves."""

    stats: Stats
    drains: DrainManager  # drain decisions and the idle schedule
    build_chain: ChainBuilder
    clusters: ClusterManager | None  # what routes and tcp_proxy forward to (None: no upstreams)
    global_limit: GlobalConnectionLimit | None  # the overload manager's connection limit
    routes: Callable[..., Any] | None = None  # the route registry's `handle` (None: no RDS)
    secrets: TlsSecrets = NO_SECRETS  # the secret store (static and SDS secrets)
    # Accepting listener versions by address, for use_original_dst (the runtime keeps it).
    by_address: ListenersByAddress = field(default_factory=ListenersByAddress)
    # This process's worker: Envoy's `listener.<address>.worker_<N>.*` (0 with one process).
    worker_index: int = 0
    shared_counts: SharedCounts | None = None  # counts kept across worker processes


class ChainRuntime:
    """One filter chain of one listener: its protocol factory and its connections.

    `index` names the chain in the drain manager: its index in the `filter_chains` of the
    version that holds it now (`DEFAULT_CHAIN` for `default_filter_chain`); a chain kept by
    an in-place update moves to the new version, with its new index."""

    def __init__(
        self,
        listener: ListenerInstance,
        config: listener_components_pb2.FilterChain,
        path: str,
        index: int,
    ) -> None:
        self.listener = listener
        self.index = index
        self.config = config
        self.name = config.name
        self.connections: set[DrainableConnection] = set()
        self.on_empty: functools.partial[None] | None = None
        self._key: bytes | None = None
        self._told: dict[DrainableConnection, asyncio.TimerHandle | None] = {}
        services = listener.services
        context = FilterChainContext(
            stats=services.stats,
            listener_name=listener.name,
            drain_decision=self,
            register=self._register,
            unregister=self._unregister,
            handed_over=self.listener.connection_handed_over,
            drain_time_s=services.drains.drain_time_s,
            clusters=services.clusters,
            routes=services.routes,
            shared_counts=services.shared_counts,
            instance_key=listener.instance_key(path) if services.shared_counts else "",
        )
        self.factory = services.build_chain(config.filters, context, f"{path}.filters")
        self.tls: DownstreamTls | None = None
        self._sds_updates = 0  # TLS context rebuilds by SDS before the listener had its stats
        if config.HasField("transport_socket"):
            self.tls = downstream_tls(
                config.transport_socket, f"{path}.transport_socket", services.secrets
            )
            if self.tls.sds_names:
                self.tls.on_update = self._sds_updated
        self.handshake_timeout_s: float | None = None
        if config.HasField("transport_socket_connect_timeout"):
            self.handshake_timeout_s = (
                config.transport_socket_connect_timeout.ToNanoseconds() / 1e9 or None
            )

    def _sds_updated(self) -> None:
        """A secret changed and the next handshake uses the rebuilt context."""
        self._sds_updates += 1
        if self.listener.bound:
            self.listener.services.stats.counter(
                self.listener.stat_prefix + SSL_FACTORY + "ssl_context_update_by_sds"
            ).inc()

    def listener_bound(self) -> None:
        """The listener has its stats prefix: Envoy's SSL socket factory stats appear."""
        if self.tls is None or not self.tls.sds_names:
            return
        stats, prefix = self.listener.services.stats, self.listener.stat_prefix + SSL_FACTORY
        for name in SSL_FACTORY_STATS:
            stats.counter(prefix + name)
        stats.counter(prefix + "ssl_context_update_by_sds").inc(self._sds_updates)
        self._sds_updates = 0

    @property
    def key(self) -> bytes:
        """config_key of the chain, computed only when an in-place update compares chains."""
        if self._key is None:
            self._key = config_key(self.config)
        return self._key

    def drain_close(self) -> bool:
        listener = self.listener
        return listener.services.drains.drain_close(
            listener.version_id, self.index, listener.inbound, listener.drains_on_health_failure
        )

    def tell_connections(self, drain: Drain) -> None:
        for conn in list(self.connections):
            self._schedule_told(conn, drain)

    def _schedule_told(self, conn: DrainableConnection, drain: Drain) -> None:
        """Push the drain to a connection on the idle schedule: at once with `immediate`;
        with `gradual`, at its own moment drawn in [now, start + DT/2)."""
        if conn in self._told:
            return
        delay = self.listener.services.drains.tell_delay(drain)
        if delay <= 0:
            self._told[conn] = None
            conn.on_drain()
        else:
            self._told[conn] = asyncio.get_running_loop().call_later(delay, conn.on_drain)

    def _register(self, conn: DrainableConnection) -> None:
        self.connections.add(conn)
        listener = self.listener
        listener.connection_opened()
        drains = listener.services.drains.covering(
            listener.version_id, self.index, listener.inbound
        )
        if drains:
            self._schedule_told(conn, min(drains, key=lambda d: d.started_at))

    def _unregister(self, conn: DrainableConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
            timer = self._told.pop(conn, None)
            if timer is not None:
                timer.cancel()
            self.listener.connection_closed()
            if not self.connections and self.on_empty is not None:
                self.on_empty()


# What chain matching sees of a pipe connection's ends (only chains that match on neither
# IPs nor ports take it; its source is local, as Envoy counts a pipe).
_PIPE_ENDS = ("0.0.0.0", 0)


class Acceptor(asyncio.Protocol):
    """Lives for one call: takes a slot of the global connection limit (or closes the socket
    at once, `downstream_global_cx_overflow`), runs the listener filters (if any), then
    matches a chain and hands the transport to it (inspectors.py)."""

    __slots__ = ("instance",)

    def __init__(self, instance: ListenerInstance) -> None:
        self.instance = instance

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        instance = self.instance
        if instance.config.use_original_dst:
            original = original_destination(transport)
            target = instance.services.by_address.find(*original) if original else None
            if target is not None and target is not instance:
                # Redirected here: served by the listener of its original destination.
                instance = target
                transport = RedirectedTransport(transport, original)  # type: ignore[arg-type]
        limit = instance.services.global_limit
        if limit is not None and not instance.config.ignore_global_conn_limit:
            guarded = guard_transport(transport, limit)  # type: ignore[arg-type]
            if guarded is None:
                instance.services.stats.counter(instance.stat_prefix + GLOBAL_OVERFLOW_STAT).inc()
                transport.close()
                return
            transport = guarded
        if instance.access_log is not None:  # the listener's own access_log
            transport = log_connection(transport, instance.access_log)  # type: ignore[arg-type]
        if instance.listener_filters is None:
            instance.dispatch(transport, NOTHING_DETECTED, b"")  # type: ignore[arg-type]
            return
        inspection = Inspection(
            instance.listener_filters,
            instance.services.stats,
            instance.stat_prefix,
            instance.dispatch,
        )
        transport.set_protocol(inspection)
        inspection.connection_made(transport)


class ListenerInstance:
    """A compiled listener version: its chains and its accept loops."""

    def __init__(
        self, services: ListenerServices, config: listener_pb2.Listener, version_id: int
    ) -> None:
        self.services = services
        self.name = config.name
        self.config = config
        self.version_id = version_id
        self.version_info = ""  # set when it starts
        self._config_digest: str | None = None  # `instance_key`'s, computed once
        self._stat_prefix = UNBOUND
        # `<prefix>worker_<N>.downstream_cx_{total,active}`, looked up once the prefix is known
        # (until then these count nowhere: a version accepts only after it is set).
        self._worker_cx_total = Counter(UNBOUND + "worker_cx_total")
        self._worker_cx_active = Gauge(UNBOUND + "worker_cx_active")
        self.servers: list[asyncio.Server] = []
        self.active_connections = 0
        self.chains = [
            ChainRuntime(self, chain, f"filter_chains[{i}]", i)
            for i, chain in enumerate(config.filter_chains)
        ]
        self.default_chain = (
            ChainRuntime(self, config.default_filter_chain, "default_filter_chain", DEFAULT_CHAIN)
            if config.HasField("default_filter_chain")
            else None
        )
        self.matcher = FilterChainMatcher(config.filter_chains)
        self.listener_filters = listener_filters(config)
        self.drains_on_health_failure = config.drain_type == listener_pb2.Listener.DEFAULT
        self.inbound = config.traffic_direction == base_pb2.INBOUND
        self.buffer_limit_bytes = connection_buffer_limit(config)
        self.access_log = build_access_log(
            build_access_logs(config.access_log, "access_log"), "access_log"
        )

    def all_chains(self) -> list[ChainRuntime]:
        return self.chains + ([self.default_chain] if self.default_chain else [])

    def instance_key(self, chain_path: str) -> str:
        """What names one of this version's chains alike in every worker process that
        compiled the same listener (its name, a hash of its config, the chain's place)."""
        if self._config_digest is None:
            config = self.config.SerializeToString(deterministic=True)
            self._config_digest = hashlib.blake2b(config, digest_size=8).hexdigest()
        return f"{self.name}/{self._config_digest}/{chain_path}"

    @property
    def stat_prefix(self) -> str:
        return self._stat_prefix

    @stat_prefix.setter
    def stat_prefix(self, prefix: str) -> None:
        """Set by the runtime when the version starts on its bound address."""
        self._stat_prefix = prefix
        worker = f"{prefix}worker_{self.services.worker_index}."
        self._worker_cx_total = self.services.stats.counter(worker + "downstream_cx_total")
        self._worker_cx_active = self.services.stats.gauge(worker + "downstream_cx_active")
        for chain in self.all_chains():
            chain.listener_bound()

    @property
    def bound(self) -> bool:
        return self._stat_prefix != UNBOUND

    def dispatch(
        self, transport: asyncio.Transport, detected: Detected, already_read: bytes
    ) -> None:
        """Match a chain on the addresses and what the listener filters found; hand it the
        connection, or close it (`no_filter_chain_match`)."""
        chain = self.match(transport, detected)
        stats = self.services.stats
        if chain is None:
            stats.counter(self.stat_prefix + "no_filter_chain_match").inc()
            if self.access_log is not None:
                no_filter_chain(transport)
            transport.close()
            return
        limit = self.buffer_limit_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        hand_over(
            transport,
            already_read,
            chain.factory,
            chain.tls,
            stats,
            self.stat_prefix,
            chain.handshake_timeout_s,
        )

    def match(
        self, transport: asyncio.BaseTransport, detected: Detected = NOTHING_DETECTED
    ) -> ChainRuntime | None:
        local = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        if not self.chains:
            return self.default_chain
        if isinstance(local, str):  # a pipe: no IP or port to match on; a local source
            local = peer = _PIPE_ENDS
        try:
            info = ConnectionInfo(
                destination_ip=ipaddress.ip_address(local[0]),
                destination_port=local[1],
                source_ip=ipaddress.ip_address(peer[0]),
                source_port=peer[1],
                server_name=detected.server_name,
                transport_protocol=detected.transport_protocol,
                application_protocols=detected.application_protocols,
            )
        except (TypeError, ValueError, IndexError):
            return self.default_chain
        index = self.matcher.match(info)
        return self.default_chain if index is None else self.chains[index]

    def connection_opened(self) -> None:
        self.active_connections += 1
        stats = self.services.stats
        stats.counter(self.stat_prefix + "downstream_cx_total").inc()
        stats.gauge(self.stat_prefix + "downstream_cx_active").inc()
        stats.gauge("server.total_connections").inc()
        self._worker_cx_total.value += 1
        self._worker_cx_active.value += 1

    def connection_handed_over(self) -> None:
        """One socket, two registrations (a protocol and its successor): counted once."""
        self.services.stats.counter(self.stat_prefix + "downstream_cx_total").value -= 1
        self._worker_cx_total.value -= 1

    def connection_closed(self) -> None:
        self.active_connections -= 1
        self.services.stats.gauge(self.stat_prefix + "downstream_cx_active").dec()
        self.services.stats.gauge("server.total_connections").dec()
        self._worker_cx_active.value -= 1

    def connection_count(self) -> int:
        return sum(len(chain.connections) for chain in self.all_chains())


DEFAULT_BUFFER_LIMIT_BYTES = 1024 * 1024  # Envoy's default per_connection_buffer_limit_bytes


def connection_buffer_limit(config: listener_pb2.Listener) -> int:
    """The high watermark of each connection's write buffer: once that much is waiting for the
    client, the protocol stops reading it (and parsing what it sent). Envoy's 0 means "no
    limit"; here it keeps the default, so that no setting lets one client grow us unbounded."""
    if config.HasField("per_connection_buffer_limit_bytes"):
        return config.per_connection_buffer_limit_bytes.value or DEFAULT_BUFFER_LIMIT_BYTES
    return DEFAULT_BUFFER_LIMIT_BYTES
