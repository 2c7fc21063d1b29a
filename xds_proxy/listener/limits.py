"""Connection limits, with Envoy's names and counting rules.

Two limits exist, as in Envoy:

- the global one, the overload manager's resource monitor
  `envoy.resource_monitors.global_downstream_max_connections`
  (`DownstreamConnectionsConfig.max_active_downstream_connections`): every accepted socket of
  a listener without `ignore_global_conn_limit` holds one slot from accept until the socket
  closes; a socket accepted over the limit is closed at once and counted in
  `listener.<address>.downstream_global_cx_overflow` (and the monitor's
  `overload.<name>.failed_updates`). The admin listener never counts (Envoy 1.40 neither
  limits nor counts it).
- the per-filter-chain one, the network filter `envoy.filters.network.connection_limit`
  (`ConnectionLimit`: `stat_prefix`, `max_connections`, `delay`, `runtime_enabled`), placed
  before the terminal filter: each filter instance (one per filter chain per listener version)
  counts its connections; one over the limit is counted in
  `connection_limit.<stat_prefix>.limited_connections`, never reaches the next filter, and is
  closed at once or after `delay`. As in Envoy, a rejected connection counts in
  `active_connections` and holds a slot of the limit until it is closed. One difference: on a
  chain with a TLS transport socket the filter decides once the handshake is done (the chain's
  protocol exists only then); Envoy decides before the handshake.

Envoy 1.40 also gives a global slot back when a socket of an opted-out listener closes,
although that socket never took one (so the limit can be exceeded); here only sockets that
took a slot give one back.

The counting cores (`GlobalConnectionLimit`, `ConnectionLimit`) are pure; the asyncio parts
are the guard that sees a socket's end (`guard_transport`) and the protocol of a rejected
connection (`LimitedConnection`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)
from google.protobuf.message import DecodeError

from xds_proxy.codec.wrapped_transport import ForwardingProtocol, WrappedTransport
from xds_proxy.config.overload import DOWNSTREAM_CONNECTIONS_TYPE, GLOBAL_MONITOR
from xds_proxy.errors import ConfigError
from xds_proxy.listener.context import DrainableConnection, FilterChainContext
from xds_proxy.listener.shared_count import SharedCount, SharedCounts
from xds_proxy.stats import Stats

CONNECTION_LIMIT_TYPE_URL = (
    "type.googleapis.com/" + connection_limit_pb2.ConnectionLimit.DESCRIPTOR.full_name
)
GLOBAL_OVERFLOW_STAT = "downstream_global_cx_overflow"  # under `listener.<address>.`


# -- the global limit (overload manager) --------------------------------------------------------


class GlobalConnectionLimit:
    """The proactive resource `global_downstream_max_connections`: a slot per open socket.
    With worker processes (`shared`), the slots are counted across all of them."""

    __slots__ = ("_failed_updates", "_shared", "active", "max_connections")

    def __init__(
        self, max_connections: int, stats: Stats, shared: SharedCount | None = None
    ) -> None:
        self.max_connections = max_connections
        self.active = 0  # this process's slots
        self._shared = shared
        prefix = f"overload.{GLOBAL_MONITOR}."
        # Envoy counts every refused allocation (and refused release) as a failed update; the
        # pressure gauge of a proactive monitor exists and stays 0.
        self._failed_updates = stats.counter(prefix + "failed_updates")
        stats.gauge(prefix + "pressure")

    def try_allocate(self) -> bool:
        if self._shared is not None:
            allocated = self._shared.try_add(self.max_connections)
        else:
            allocated = self.active < self.max_connections
        if not allocated:
            self._failed_updates.inc()
            return False
        self.active += 1
        return True

    def release(self) -> None:
        if self.active <= 0:
            self._failed_updates.inc()
            return
        self.active -= 1
        if self._shared is not None:
            self._shared.subtract()


def global_limit_from_bootstrap(
    bootstrap: bootstrap_pb2.Bootstrap, stats: Stats, shared: SharedCount | None = None
) -> GlobalConnectionLimit | None:
    """The global limit a (validated) bootstrap configures, or None without the monitor."""
    for index, monitor in enumerate(bootstrap.overload_manager.resource_monitors):
        if monitor.name != GLOBAL_MONITOR:
            continue
        config = downstream_connections_pb2.DownstreamConnectionsConfig()
        try:
            config.ParseFromString(monitor.typed_config.value)
        except DecodeError:
            raise ConfigError(
                f"overload_manager.resource_monitors[{index}].typed_config: cannot decode"
                f" {DOWNSTREAM_CONNECTIONS_TYPE}"
            ) from None
        return GlobalConnectionLimit(config.max_active_downstream_connections, stats, shared)
    return None


class _GuardProtocol(ForwardingProtocol):
    """The raw transport's protocol for a counted connection's whole life: forwards every
    callback to the protocol that the rest of the proxy set, and frees the slot when the
    socket is closed (whatever state the connection was in: listener filters, TLS handshake,
    no matching chain, or served)."""

    __slots__ = ("_limit",)

    def __init__(self, limit: GlobalConnectionLimit) -> None:
        super().__init__()
        self._limit = limit

    def connection_lost(self, exc: Exception | None) -> None:
        self._limit.release()
        super().connection_lost(exc)


class GuardedTransport(WrappedTransport):
    """What the proxy sees of a counted connection: the raw transport, except that setting a
    protocol goes to the guard, which stays the raw transport's protocol."""

    __slots__ = ("_guard",)

    def __init__(self, raw: asyncio.Transport, guard: _GuardProtocol) -> None:
        super().__init__(raw)
        self._guard = guard

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._guard.inner = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._guard.inner  # type: ignore[return-value]


def guard_transport(
    transport: asyncio.Transport, limit: GlobalConnectionLimit
) -> asyncio.Transport | None:
    """Take a slot for a just-accepted socket: the transport to use from now on, or None when
    the limit is reached (the caller closes the socket and counts the overflow)."""
    if not limit.try_allocate():
        return None
    guard = _GuardProtocol(limit)
    transport.set_protocol(guard)
    return GuardedTransport(transport, guard)


# -- the connection_limit network filter ----------------------------------------------------------


class ConnectionLimit:
    """One `connection_limit` filter instance: Envoy's counter, compared before each new
    connection. A rejected connection also counts until it closes (as in Envoy). With worker
    processes (`shared`), the instance's count is kept across all of them under `key`."""

    __slots__ = (
        "_active",
        "_key",
        "_limited",
        "_shared",
        "connections",
        "delay_s",
        "max_connections",
    )

    def __init__(
        self,
        stat_prefix: str,
        max_connections: int,
        delay_s: float,
        stats: Stats,
        shared: SharedCounts | None = None,
        key: int = 0,
    ) -> None:
        self.max_connections = max_connections
        self.delay_s = delay_s
        self.connections = 0  # this process's
        prefix = f"connection_limit.{stat_prefix}."
        self._active = stats.gauge(prefix + "active_connections")
        self._limited = stats.counter(prefix + "limited_connections")
        self._shared = shared
        self._key = key

    def admit(self) -> bool:
        """A new connection: True when it may go on to the next filter."""
        self._active.inc()
        allowed = None
        if self._shared is not None:
            allowed = self._shared.admit(self._key, self.max_connections)
        if allowed is None:
            allowed = self.connections < self.max_connections
        if not allowed:
            self._limited.inc()
        self.connections += 1
        return allowed

    def hold(self) -> None:
        """A successor protocol took over a counted connection (its predecessor releases)."""
        self.connections += 1
        self._active.inc()
        if self._shared is not None:
            self._shared.add(self._key, 1)

    def release(self) -> None:
        """A connection (admitted or rejected) closed."""
        self.connections -= 1
        self._active.dec()
        if self._shared is not None:
            self._shared.add(self._key, -1)


def connection_limit_config(
    message: connection_limit_pb2.ConnectionLimit, path: str
) -> tuple[str, int, float, bool]:
    """(stat_prefix, max_connections, delay in seconds, enabled) of a validated config."""
    if not message.HasField("max_connections"):
        raise ConfigError(f"{path}.max_connections: Field 'max_connections' is missing")
    delay_ms = message.delay.ToMilliseconds() if message.HasField("delay") else 0
    enabled = (
        message.runtime_enabled.default_value.value if message.HasField("runtime_enabled") else True
    )
    return message.stat_prefix, message.max_connections.value, max(delay_ms, 0) / 1000, enabled


ProtocolFactory = Callable[[], asyncio.Protocol]


class ConnectionLimitStage:
    """The filter in a chain being built: it wraps the factory of the filters after it, and
    gives them a context whose `register`/`unregister` keep the filter's count.

    A connection counts from its admission until the protocol serving it unregisters. A
    protocol may hand its connection on to a successor (HTTP/1.1 -> HTTP/2 on `codec_type:
    AUTO`), which registers before the first one unregisters: a registration that follows no
    admission is such a successor and takes over the slot."""

    def __init__(self, limit: ConnectionLimit, ctx: FilterChainContext, enabled: bool) -> None:
        self.limit = limit
        self.ctx = ctx
        self.enabled = enabled  # runtime_enabled false: every connection passes, uncounted
        self._members: set[DrainableConnection] = set()
        self._admitted_pending = False

    def next_context(self) -> FilterChainContext:
        if not self.enabled:
            return self.ctx
        return dataclasses.replace(self.ctx, register=self._register, unregister=self._unregister)

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        if not self.enabled:
            return factory
        limit = self.limit
        ctx = self.ctx

        def admit_or_reject() -> asyncio.Protocol:
            if limit.admit():
                self._admitted_pending = True
                return factory()
            return LimitedConnection(limit, ctx)

        return admit_or_reject

    def _register(self, conn: DrainableConnection) -> None:
        if conn not in self._members:
            self._members.add(conn)
            if self._admitted_pending:
                self._admitted_pending = False
            else:
                self.limit.hold()
        self.ctx.register(conn)

    def _unregister(self, conn: DrainableConnection) -> None:
        if conn in self._members:
            self._members.remove(conn)
            self.limit.release()
            self.ctx.unregister(conn)


def build_connection_limit(
    message: connection_limit_pb2.ConnectionLimit, ctx: FilterChainContext, path: str
) -> ConnectionLimitStage:
    """The stage of one `connection_limit` filter; its stats exist from now on, as Envoy's."""
    stat_prefix, max_connections, delay_s, enabled = connection_limit_config(message, path)
    shared = ctx.shared_counts
    key = _instance_key(ctx.instance_key, path) if shared is not None else 0
    limit = ConnectionLimit(stat_prefix, max_connections, delay_s, ctx.stats, shared, key)
    return ConnectionLimitStage(limit, ctx, enabled)


def _instance_key(listener_key: str, path: str) -> int:
    """One filter instance's key, the same in every worker that compiled the same listener
    version: the version's key and the filter's place in it."""
    digest = hashlib.blake2b(f"{listener_key}/{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


class LimitedConnection(asyncio.Protocol):
    """A connection over a `connection_limit`: nothing it sends goes further; it is closed at
    once, or after `delay` (so a client cannot retry as fast as it likes)."""

    def __init__(self, limit: ConnectionLimit, ctx: FilterChainContext) -> None:
        self._limit = limit
        self._ctx = ctx
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._ctx.register(self)
        if self._limit.delay_s > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._limit.delay_s, self.close_at_deadline)
        else:
            transport.close()

    def data_received(self, data: bytes) -> None:
        pass  # read and dropped, as Envoy's filter stops iteration

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport = None
            self._limit.release()
            self._ctx.unregister(self)

    def on_drain(self) -> None:
        pass  # closes at its delay anyway

    def close_at_deadline(self) -> None:
        if self._transport is not None:
            self._transport.close()
