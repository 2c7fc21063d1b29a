"""The asyncio side of listeners: accept loops, connection registries, drains in time.

The ListenerManager decides; this module does. It compiles a listener into a
`ListenerInstance` (filter chains built, nothing bound), executes the manager's actions in
order on the event loop, and reports back when a draining listener or chain has no
connections left or its drain window has ended.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2

from xds_proxy.config.support import listener_errors
from xds_proxy.config.tls import DownstreamTls, downstream_tls
from xds_proxy.config_key import config_key
from xds_proxy.errors import ConfigError
from xds_proxy.listener.context import DrainableConnection, FilterChainContext
from xds_proxy.listener.drain import Drain
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
from xds_proxy.listener.manager import (
    DEFAULT_CHAIN,
    Action,
    DrainListener,
    StartListener,
    StopAccepting,
    UpdateFilterChains,
)
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.network_filters import build_filter_chain
from xds_proxy.stats import Stats, listener_stat_prefix

if TYPE_CHECKING:
    from xds_proxy.listener.manager import ListenerManager, ListenerVersion
    from xds_proxy.upstream.manager import ClusterManager

log = logging.getLogger("xds_proxy.listener")


class ChainRuntime:
    """One filter chain of one listener: its protocol factory and its connections."""

    def __init__(
        self,
        listener: ListenerInstance,
        config: listener_components_pb2.FilterChain,
        path: str,
    ) -> None:
        self.listener = listener
        self.config = config
        self.name = config.name
        self.connections: set[DrainableConnection] = set()
        self.drain: Drain | None = None
        self.on_empty: Callable[[], None] | None = None
        self._key: bytes | None = None
        self._told: dict[DrainableConnection, asyncio.TimerHandle | None] = {}
        runtime = listener.runtime
        context = FilterChainContext(
            stats=runtime.stats,
            listener_name=listener.name,
            drain_decision=self,
            register=self._register,
            unregister=self._unregister,
            drain_time_s=runtime.drain_time_s,
            clusters=runtime.clusters,
        )
        self.factory = build_filter_chain(config.filters, context, f"{path}.filters")
        self.tls: DownstreamTls | None = None
        if config.HasField("transport_socket"):
            self.tls = downstream_tls(config.transport_socket, f"{path}.transport_socket")
        self.handshake_timeout_s: float | None = None
        if config.HasField("transport_socket_connect_timeout"):
            self.handshake_timeout_s = (
                config.transport_socket_connect_timeout.ToNanoseconds() / 1e9 or None
            )

    @property
    def key(self) -> bytes:
        """config_key of the chain, computed only when an in-place update compares chains."""
        if self._key is None:
            self._key = config_key(self.config)
        return self._key

    def drains(self) -> list[Drain]:
        """Every drain that covers this chain now: its own, its listener's, the server's."""
        covering = [d for d in (self.drain, self.listener.drain) if d is not None]
        for admin in self.listener.runtime.admin_drains:
            if admin.covers(self.listener):
                covering.append(admin.drain)
        return covering

    def drain_close(self) -> bool:
        runtime = self.listener.runtime
        if runtime.health_failed and self.listener.drains_on_health_failure:
            return True  # /healthcheck/fail: DEFAULT listeners close on every response
        if self.drain is None and self.listener.drain is None and not runtime.admin_drains:
            return False
        now = runtime.clock()
        return any(drain.drain_close(now, runtime.rng) for drain in self.drains())

    def start_drain(self, drain: Drain) -> None:
        self.drain = drain
        self.tell_connections(drain)

    def tell_connections(self, drain: Drain) -> None:
        for conn in list(self.connections):
            self._schedule_told(conn, drain)

    def _schedule_told(self, conn: DrainableConnection, drain: Drain) -> None:
        """Push the drain to a connection on the idle schedule (spec section 4): at once with
        `immediate`; with `gradual`, at its own moment drawn in [now, start + DT/2)."""
        if conn in self._told:
            return
        runtime = self.listener.runtime
        delay = drain.tell_delay(runtime.clock(), runtime.rng)
        if delay <= 0:
            self._told[conn] = None
            conn.on_drain()
        else:
            self._told[conn] = asyncio.get_running_loop().call_later(delay, conn.on_drain)

    def _register(self, conn: DrainableConnection) -> None:
        self.connections.add(conn)
        self.listener.connection_opened()
        drains = self.drains()
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


class _Acceptor(asyncio.Protocol):
    """Lives for one call: takes a slot of the global connection limit (or closes the socket
    at once, `downstream_global_cx_overflow`), runs the listener filters (if any), then
    matches a chain and hands the transport to it (inspectors.py)."""

    __slots__ = ("instance",)

    def __init__(self, instance: ListenerInstance) -> None:
        self.instance = instance

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        instance = self.instance
        limit = instance.runtime.global_limit
        if limit is not None and not instance.config.ignore_global_conn_limit:
            guarded = guard_transport(transport, limit)  # type: ignore[arg-type]
            if guarded is None:
                instance.runtime.stats.counter(instance.stat_prefix + GLOBAL_OVERFLOW_STAT).inc()
                transport.close()
                return
            transport = guarded
        if instance.listener_filters is None:
            instance.dispatch(transport, NOTHING_DETECTED, b"")  # type: ignore[arg-type]
            return
        inspection = Inspection(
            instance.listener_filters,
            instance.runtime.stats,
            instance.stat_prefix,
            instance.dispatch,
        )
        transport.set_protocol(inspection)
        inspection.connection_made(transport)


class ListenerInstance:
    """A compiled listener version: its chains, its accept loops, its drain."""

    def __init__(self, runtime: ListenerRuntime, config: listener_pb2.Listener) -> None:
        self.runtime = runtime
        self.name = config.name
        self.config = config
        self.version_id = 0
        self.version_info = ""
        self.stat_prefix = "listener.unbound."
        self.servers: list[asyncio.Server] = []
        self.drain: Drain | None = None
        self.active_connections = 0
        self.chains = [
            ChainRuntime(self, chain, f"filter_chains[{i}]")
            for i, chain in enumerate(config.filter_chains)
        ]
        self.default_chain = (
            ChainRuntime(self, config.default_filter_chain, "default_filter_chain")
            if config.HasField("default_filter_chain")
            else None
        )
        self.matcher = FilterChainMatcher(config.filter_chains)
        self.listener_filters = listener_filters(config)
        self.drains_on_health_failure = config.drain_type == listener_pb2.Listener.DEFAULT
        self.inbound = config.traffic_direction == base_pb2.INBOUND
        self.buffer_limit_bytes = connection_buffer_limit(config)

    def all_chains(self) -> list[ChainRuntime]:
        return self.chains + ([self.default_chain] if self.default_chain else [])

    def dispatch(
        self, transport: asyncio.Transport, detected: Detected, already_read: bytes
    ) -> None:
        """Match a chain on the addresses and what the listener filters found; hand it the
        connection, or close it (`no_filter_chain_match`)."""
        chain = self.match(transport, detected)
        stats = self.runtime.stats
        if chain is None:
            stats.counter(self.stat_prefix + "no_filter_chain_match").inc()
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
        stats = self.runtime.stats
        stats.counter(self.stat_prefix + "downstream_cx_total").inc()
        stats.gauge(self.stat_prefix + "downstream_cx_active").inc()
        stats.gauge("server.total_connections").inc()

    def connection_closed(self) -> None:
        self.active_connections -= 1
        self.runtime.stats.gauge(self.stat_prefix + "downstream_cx_active").dec()
        self.runtime.stats.gauge("server.total_connections").dec()

    def connection_count(self) -> int:
        return sum(len(chain.connections) for chain in self.all_chains())


class ListenerRuntime:
    def __init__(
        self,
        stats: Stats,
        pool: ListenSocketPool,
        drain_time_s: float,
        drain_strategy: str,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.stats = stats
        self.pool = pool
        self.drain_time_s = drain_time_s
        self.drain_strategy = drain_strategy
        self.clock = clock
        self.rng = rng or random.Random()
        self.manager: ListenerManager | None = None
        self.clusters: ClusterManager | None = None
        self.instances: dict[int, ListenerInstance] = {}
        self.drains: dict[int, DrainRecord] = {}
        self.admin_drains: list[AdminDrain] = []  # inbound-only, then possibly all
        self.health_failed = False
        # The overload manager's global connection limit (listener/limits.py), set by the server.
        self.global_limit: GlobalConnectionLimit | None = None
        self._health_record: DrainRecord | None = None
        self._queue: asyncio.Queue[list[Action]] = asyncio.Queue()
        stats.gauge("server.total_connections")

    # -- the manager's hooks ---------------------------------------------------------------

    def compile(self, config: listener_pb2.Listener) -> ListenerInstance:
        """Validate (proto constraints, then what we support) and build the filter chains;
        nothing is bound yet. A ConfigError here NACKs this listener only."""
        errors = listener_errors(config)
        if errors:
            raise ConfigError(errors[0])
        return ListenerInstance(self, config)

    def submit(self, actions: list[Action]) -> None:
        """Queue one update's actions; they run in order after every earlier update's."""
        self._queue.put_nowait(actions)

    async def run(self) -> None:
        while True:
            actions = await self._queue.get()
            try:
                await self.execute(actions)
            except Exception:
                log.exception("applying listener actions failed")
            finally:
                self._queue.task_done()

    async def applied(self) -> None:
        """Returns once every submitted update has been carried out (sockets accepting)."""
        await self._queue.join()

    async def execute(self, actions: list[Action]) -> None:
        try:
            for action in actions:
                match action:
                    case StartListener(version):
                        await self._start(version)
                    case StopAccepting(version_id):
                        self._stop_accepting(version_id)
                    case DrainListener(version_id, trigger):
                        self._drain_listener(version_id, str(trigger))
                    case UpdateFilterChains(old_id, version, group_id, draining):
                        await self._update_chains(old_id, version, group_id, draining)
        finally:
            self.pool.flush()

    async def close(self) -> None:
        for instance in list(self.instances.values()):
            for server in instance.servers:
                server.close()
        self.pool.close_all()

    # -- actions ---------------------------------------------------------------------------

    async def _start(self, version: ListenerVersion) -> None:
        instance: ListenerInstance = version.compiled
        version_id = version.id
        instance.version_id = version_id
        instance.version_info = version.version_info
        self.instances[version_id] = instance
        bound = self.pool.bound_addresses(version_id)
        if bound:
            instance.stat_prefix = listener_stat_prefix(*bound[0])
            self.stats.counter(instance.stat_prefix + "downstream_cx_total")
            self.stats.gauge(instance.stat_prefix + "downstream_cx_active")
            self.stats.counter(instance.stat_prefix + "no_filter_chain_match")
            self.stats.counter(instance.stat_prefix + GLOBAL_OVERFLOW_STAT)
        loop = asyncio.get_running_loop()
        try:
            for sock in self.pool.sockets_for(version_id):
                server = await loop.create_server(
                    lambda: _Acceptor(instance), sock=sock.dup(), backlog=1024
                )
                instance.servers.append(server)
        except OSError:
            log.exception("listener '%s' could not start accepting", instance.name)
            for server in instance.servers:
                server.close()
            if self.manager is not None:
                self.manager.listener_failed(version_id)

    def _stop_accepting(self, version_id: int) -> None:
        instance = self.instances.get(version_id)
        if instance is None:
            return
        for server in instance.servers:
            server.close()
        instance.servers.clear()

    def _drain_listener(self, version_id: int, trigger: str) -> None:
        instance = self.instances.get(version_id)
        if instance is None:
            return
        instance.drain = Drain(trigger, self.drain_strategy, self.drain_time_s, self.clock())
        chains = instance.all_chains()
        record = DrainRecord(
            "listener",
            instance.name,
            instance.version_info,
            None,
            instance.drain,
            _count(chains),
            self._wall_offset(),
        )
        self._track_drain(record, chains, lambda: self._listener_drained(instance))
        for chain in chains:
            chain.tell_connections(instance.drain)

    async def _update_chains(
        self,
        old_id: int,
        version: ListenerVersion,
        group_id: int,
        draining: tuple[int, ...],
    ) -> None:
        instance: ListenerInstance = version.compiled
        old = self.instances.get(old_id)
        if old is not None:
            # Unchanged chains keep their runtime (and so their connections) in the new version.
            kept = {chain.key: chain for i, chain in enumerate(old.chains) if i not in draining}
            if old.default_chain is not None and DEFAULT_CHAIN not in draining:
                kept.setdefault(old.default_chain.key, old.default_chain)
            for i, chain in enumerate(instance.chains):
                adopted = kept.get(chain.key)
                if adopted is not None:
                    adopted.listener = instance
                    instance.chains[i] = adopted
            if instance.default_chain is not None:
                adopted = kept.get(instance.default_chain.key)
                if adopted is not None:
                    adopted.listener = instance
                    instance.default_chain = adopted
            instance.active_connections = old.active_connections
        await self._start(version)
        if old is None:
            return
        self._stop_accepting(old_id)
        del self.instances[old_id]
        if not draining:
            return
        drain = Drain("in_place_update", self.drain_strategy, self.drain_time_s, self.clock())
        chains = [old.default_chain if i == DEFAULT_CHAIN else old.chains[i] for i in draining]
        chains = [chain for chain in chains if chain is not None]
        record = DrainRecord(
            "filter_chain",
            instance.name,
            instance.version_info,
            ",".join(chain.name for chain in chains),
            drain,
            _count(chains),
            self._wall_offset(),
        )
        self._track_drain(record, chains, lambda: self._chains_drained(group_id))
        for chain in chains:
            chain.start_drain(drain)

    # -- server-wide drains (admin) ---------------------------------------------------------

    def start_admin_drain(
        self,
        inbound_only: bool,
        at_deadline: Callable[[], None],
        trigger: str = "drain_listeners",
    ) -> bool:
        """`/drain_listeners` (and the parent side of a hot restart, trigger "hot_restart"):
        every (inbound) listener's connections drain on the configured strategy; `at_deadline`
        runs after DT. A second drain is a no-op unless it widens an inbound-only drain to
        all listeners (as Envoy's `draining(direction)` check); the inbound listeners then
        keep the ramp of the drain that started first."""
        if any(inbound_only or not running.inbound_only for running in self.admin_drains):
            return False
        drain = Drain(trigger, self.drain_strategy, self.drain_time_s, self.clock())
        admin = AdminDrain(drain, inbound_only)
        self.admin_drains.append(admin)

        record = DrainRecord(
            "server",
            None,
            "",
            None,
            drain,
            lambda: self._connections_where(admin.covers),
            self._wall_offset(),
            "inbound_only" if inbound_only else "all",
        )
        self.drains[id(record)] = record
        for chain in self._chains_where(admin.covers):
            chain.tell_connections(drain)

        def deadline() -> None:
            self._finish_record(record, "deadline")
            at_deadline()

        asyncio.get_running_loop().call_later(self.drain_time_s, deadline)
        return True

    def set_health(self, failed: bool) -> None:
        """`/healthcheck/fail` and `/healthcheck/ok`: DEFAULT listeners drain-close every
        response while failed; connections already told to leave stay told."""
        if failed == self.health_failed:
            return
        self.health_failed = failed
        if failed:
            drain = Drain("healthcheck_fail", "immediate", self.drain_time_s, self.clock())
            record = DrainRecord(
                "server",
                None,
                "",
                None,
                drain,
                lambda: self._connections_where(lambda i: i.drains_on_health_failure),
                self._wall_offset(),
            )
            self._health_record = record
            self.drains[id(record)] = record
        elif self._health_record is not None:
            self._finish_record(self._health_record, "healthcheck ok")

    def _chains_where(self, covers: Callable[[ListenerInstance], bool]) -> list[ChainRuntime]:
        return [
            chain
            for instance in self.instances.values()
            if covers(instance)
            for chain in instance.all_chains()
        ]

    def _connections_where(self, covers: Callable[[ListenerInstance], bool]) -> int:
        return sum(len(chain.connections) for chain in self._chains_where(covers))

    def _finish_record(self, record: DrainRecord, outcome: str) -> None:
        if self.drains.pop(id(record), None) is not None:
            log.info("drain complete: %s", json.dumps(record.report(self.clock(), outcome)))

    def _wall_offset(self) -> float:
        return time.time() - self.clock()

    # -- finishing drains ------------------------------------------------------------------

    def _track_drain(
        self,
        record: DrainRecord,
        chains: list[ChainRuntime],
        finished: Callable[[], None],
    ) -> None:
        """Call `finished` once: when the chains' last connection closes, or at the deadline."""
        loop = asyncio.get_running_loop()
        self.drains[id(record)] = record

        def finish(reason: str) -> None:
            if id(record) not in self.drains:
                return
            timer.cancel()
            for chain in chains:
                chain.on_empty = None
            self._finish_record(record, reason)
            finished()

        def check_empty() -> None:
            if all(not chain.connections for chain in chains):
                finish("last connection closed")

        def deadline() -> None:
            for chain in chains:
                for conn in list(chain.connections):
                    conn.close_at_deadline()
            finish("deadline")

        timer = loop.call_later(self.drain_time_s, deadline)
        for chain in chains:
            chain.on_empty = check_empty
        loop.call_soon(check_empty)

    def drain_report(self) -> list[dict]:
        """Every drain in progress, for `/drain_status`."""
        now = self.clock()
        return [record.report(now) for record in self.drains.values()]

    def _listener_drained(self, instance: ListenerInstance) -> None:
        self.instances.pop(instance.version_id, None)
        if self.manager is not None:
            self.manager.drain_finished(instance.version_id)

    def _chains_drained(self, group_id: int) -> None:
        if self.manager is not None:
            self.manager.chains_drain_finished(group_id)


@dataclass
class DrainRecord:
    """What `/drain_status` and the `drain complete` log line say about one drain."""

    kind: str  # "listener" | "filter_chain" | "server"
    listener: str | None
    version_info: str
    filter_chain: str | None
    drain: Drain
    connections: Callable[[], int]
    wall_offset: float  # time.time() minus the monotonic clock, for RFC 3339 output
    direction: str = "all"

    def report(self, now: float, outcome: str | None = None) -> dict:
        doc = {
            "kind": self.kind,
            "listener": self.listener,
            "version_info": self.version_info,
            "filter_chain": self.filter_chain,
            "trigger": self.drain.trigger,
            "direction": self.direction,
            "strategy": self.drain.strategy,
            "started_at": _rfc3339(self.drain.started_at + self.wall_offset),
            "deadline": _rfc3339(self.drain.deadline + self.wall_offset),
            "elapsed_s": round(now - self.drain.started_at, 3),
            "connections": self.connections(),
        }
        if outcome is not None:
            doc["outcome"] = outcome
        return doc


@dataclass(frozen=True)
class AdminDrain:
    """A server-wide drain from `/drain_listeners`, all listeners or inbound ones only."""

    drain: Drain
    inbound_only: bool

    def covers(self, listener: ListenerInstance) -> bool:
        return not self.inbound_only or listener.inbound


DEFAULT_BUFFER_LIMIT_BYTES = 1024 * 1024  # Envoy's default per_connection_buffer_limit_bytes


def connection_buffer_limit(config: listener_pb2.Listener) -> int:
    """The high watermark of each connection's write buffer: once that much is waiting for the
    client, the protocol stops reading it (and parsing what it sent). Envoy's 0 means "no
    limit"; here it keeps the default, so that no setting lets one client grow us unbounded."""
    if config.HasField("per_connection_buffer_limit_bytes"):
        return config.per_connection_buffer_limit_bytes.value or DEFAULT_BUFFER_LIMIT_BYTES
    return DEFAULT_BUFFER_LIMIT_BYTES


def _count(chains: list[ChainRuntime]) -> Callable[[], int]:
    return lambda: sum(len(chain.connections) for chain in chains)


def _rfc3339(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
