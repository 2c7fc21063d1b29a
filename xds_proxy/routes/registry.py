"""The route registry: one RDS subscription per route configuration name.

Who uses what: an HCM with `rds` gets its `RouteHandle` here when its filter chain is built
(`handle`); the listener manager's `WatchRoutes(version_id, names)` / `UnwatchRoutes` actions,
executed by the runtime, count the users of each name. The first user subscribes, the last one
gone unsubscribes (an old version's name only after its drain, because the manager emits
`UnwatchRoutes` then). `flush()`, at the end of every batch of actions, sends the new name
lists (xds/subscriptions.py): over ADS one client on the shared stream (names newest first,
as Envoy), with a plain `api_config_source` one stream per name.

A RouteConfiguration is checked as an inline `route_config` is (PGV + the support table, then
the same builder, `RouteTable`); with `validate_clusters: true` every cluster it names must
exist (`route: unknown cluster 'x'`). A response is processed newest subscription first; the
first error stops it and NACKs the whole response, and every subscription of that stream
counts `update_rejected` (Envoy 1.40, docs/warming.md). A valid copy swaps the table of every
handle of that name: the next request on every live connection uses it, with no drain. A SotW
response that does not carry a name leaves that name as it was.

It reports to the listener manager (through `on_event`): `RoutesReady(name)` when a name gets
its first valid copy, `RoutesFailed(name)` when a response is NACKed or `initial_fetch_timeout`
(Envoy's default 15 s) expires before any copy was held.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.route.v3 import rds_pb2_grpc

from xds_proxy.config.rds import RdsSpec, rds_spec
from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError
from xds_proxy.http.router import RegexError, RouteHandle, RouteTable
from xds_proxy.listener.followed_failures import FollowedFailures
from xds_proxy.listener.manager import ListenerEvent, RoutesFailed, RoutesReady, RouteState
from xds_proxy.stats import Stats
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.xds.named import NamedClient, ResourceType
from xds_proxy.xds.source import source_server
from xds_proxy.xds.subscriptions import NamedSubscriptions, Subscription, UpdateStats
from xds_proxy.xds.transport import XdsStream

log = logging.getLogger("xds_proxy.rds")

_EMPTY = route_pb2.RouteConfiguration()

ROUTES = ResourceType(
    "rds",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    route_pb2.RouteConfiguration,
    rds_pb2_grpc.RouteDiscoveryServiceStub,
    "StreamRoutes",
    "DeltaRoutes",
)


class RdsStats(UpdateStats):
    """`http.<stat_prefix>.rds.<name>.*`, as Envoy 1.40 lists them."""

    def __init__(self, stats: Stats, prefix: str) -> None:
        super().__init__(stats, prefix)
        self.config_reload = self.counter("config_reload")
        self.config_reload_time_ms = self.gauge("config_reload_time_ms")
        self.update_empty = self.counter("update_empty")


@dataclass
class RouteEntry:
    """One subscribed route configuration name."""

    subscription: Subscription
    stats: RdsStats
    state: RouteState = RouteState.PENDING
    config: route_pb2.RouteConfiguration | None = None
    version_info: str = ""
    last_updated: float | None = None  # wall clock of the last change

    @property
    def name(self) -> str:
        return self.subscription.name


class RouteRegistry:
    def __init__(
        self,
        stats: Stats,
        bootstrap: bootstrap_pb2.Bootstrap,
        clusters: ClusterManager | None,
        on_event: Callable[[ListenerEvent], None],
        applied: Callable[[], Awaitable[None]] | None = None,
        ads_stream: Callable[[], XdsStream | None] = lambda: None,
        wall_clock: Callable[[], float] = time.time,
        ads_coming: Callable[[], bool] = lambda: False,
        names_in_use: Callable[[], set[str]] = set,
        follow_main: bool = False,
    ) -> None:
        """`ads_stream()`: the server's one ADS stream, once it exists; while `ads_coming()`
        says the server is about to open it (CDS and LDS go first), RDS over ADS waits to
        join it instead of opening a stream of its own. `names_in_use()`: the route names of
        every listener version the manager holds; the handles of a name nobody subscribes to
        and no version uses are forgotten (a control plane that invents names does not grow
        us)."""
        self._stats = stats
        self._bootstrap = bootstrap
        self._clusters = clusters
        self._on_event = on_event
        self._names_in_use = names_in_use
        self._released: set[str] = set()  # unsubscribed since the last flush
        self._wall_clock = wall_clock
        self.subscriptions = NamedSubscriptions(
            ROUTES,
            bootstrap,
            stats,
            self,
            on_timeout=self._timed_out,
            on_released=self._unsubscribed,
            on_not_modified=self._not_modified,
            applied=applied,
            ads_stream=ads_stream,
            ads_coming=ads_coming,
            wall_clock=wall_clock,
            timers=not follow_main,
        )
        self.entries: dict[str, RouteEntry] = {}  # subscribed names, oldest first
        # A worker's names fail when the main process's do (`--concurrency N`).
        self.followed = FollowedFailures(
            self.entries, lambda name: self._emit([RoutesFailed(name)])
        )
        self._specs: dict[str, tuple[RdsSpec, str]] = {}  # name -> (first spec, stat_prefix)
        self._handles: dict[str, dict[tuple[str, bool], RouteHandle]] = {}

    # -- the HCM builder's port -----------------------------------------------------------------

    def handle(
        self, rds: hcm_pb2.Rds, stat_prefix: str, server: str, strip_port: bool, path: str
    ) -> RouteHandle:
        """The handle an HCM serves from (empty until the name's first valid copy: 404)."""
        spec = rds_spec(rds, path)
        source_server(self._bootstrap, spec.source, f"{path}.config_source")  # usable?
        self._specs.setdefault(spec.route_config_name, (spec, stat_prefix))
        handles = self._handles.setdefault(spec.route_config_name, {})
        key = (server, strip_port)
        held = handles.get(key)
        if held is None:
            entry = self.entries.get(spec.route_config_name)
            config = entry.config if entry is not None and entry.config is not None else _EMPTY
            held = handles[key] = RouteHandle(RouteTable(config, "", server, strip_port))
        return held

    # -- the listener manager's read port -------------------------------------------------------

    def state(self, name: str) -> RouteState:
        return self.followed.state(name)

    # -- actions, executed by the runtime -------------------------------------------------------

    def watch(self, version_id: int, names: tuple[str, ...]) -> None:
        for name in names:
            spec, stat_prefix = self._spec(name)
            subscription, created = self.subscriptions.add_user(version_id, name, spec.source)
            if created:
                entry = RouteEntry(
                    subscription, RdsStats(self._stats, f"http.{stat_prefix}.rds.{name}.")
                )
                entry.stats.update_attempt.inc()  # Envoy counts the subscription's start
                self.entries[name] = entry
                self.followed.watched(name, entry)

    def unwatch(self, version_id: int) -> None:
        """The last user gone, the name is let go at the flush (a version that takes it over
        in the same batch keeps it, with its routes)."""
        self.subscriptions.remove_user(version_id)

    def flush(self) -> None:
        """Send the name lists that changed since the last flush; forget the handles of
        names released and used by no listener version."""
        self.subscriptions.flush()
        if self._released:
            in_use = self._names_in_use()
            for name in self._released:
                if name not in self.entries and name not in in_use:
                    self._handles.pop(name, None)
                    self._specs.pop(name, None)
            self._released.clear()

    def resume(self) -> None:
        """The server's ADS stream is open (or will not be): send what waited for it."""
        self.subscriptions.resume()

    def close(self) -> None:
        self.subscriptions.close()

    # -- from the RDS clients -------------------------------------------------------------------

    def apply_named(
        self,
        client: NamedClient,
        version_info: str,
        configs: list[tuple[route_pb2.RouteConfiguration, str]],
        removed: list[str],
    ) -> str | None:
        received = {config.name: (config, version) for config, version in configs}
        mine = [self.entries[s.name] for s in self.subscriptions.of_client(client)]
        events: list[ListenerEvent] = []
        now_ms = int(self._wall_clock() * 1000)
        try:
            for entry in reversed(mine):  # newest subscription first, as Envoy
                if entry.name in received:
                    config, version = received[entry.name]
                    tables = self._build(entry.name, config)
                    self._install(entry, config, version, tables, events)
                    entry.stats.success(version, now_ms)
                elif entry.name in removed:
                    # Delta's "does not exist": an update all the same (Envoy 1.40 counts a
                    # success and stops the initial fetch timer), and it keeps waiting.
                    entry.stats.success(version_info, now_ms)
                    self.subscriptions.answered(entry.subscription)
        except ConfigError as error:
            text = error.re2_text if isinstance(error, RegexError) else str(error).lstrip(".")
            for entry in mine:
                entry.stats.rejected()
                if entry.state is RouteState.PENDING:
                    entry.state = RouteState.FAILED
                    self.subscriptions.answered(entry.subscription)
                    events.append(RoutesFailed(entry.name))
            self._emit(events)
            return text
        self._emit(events)
        return None

    def stream_lost(self, client: NamedClient) -> None:
        for subscription in self.subscriptions.of_client(client):
            stats = self.entries[subscription.name].stats
            stats.failed()

    # -- what admin reads -----------------------------------------------------------------------

    def dynamic_route_configs(self) -> list[RouteEntry]:
        """The route configurations held, in subscription order."""
        return [entry for entry in self.entries.values() if entry.config is not None]

    def held(self) -> list[tuple[str, str, route_pb2.RouteConfiguration, float]]:
        """(name, version_info, config, last_updated) of every route configuration held."""
        return [
            (entry.name, entry.version_info, entry.config, entry.last_updated or 0.0)
            for entry in self.entries.values()
            if entry.config is not None
        ]

    def timeout_at(self, names: set[str] | frozenset[str]) -> float | None:
        deadlines = [
            self.entries[name].subscription.timeout_at
            for name in names
            if name in self.entries and self.entries[name].subscription.timeout_at is not None
        ]
        return min(deadlines) if deadlines else None  # type: ignore[type-var]

    # -- internals ------------------------------------------------------------------------------

    def _spec(self, name: str) -> tuple[RdsSpec, str]:
        """The first HCM's spec of `name` (a name no HCM gave: over ADS, stats under rds.)."""
        return self._specs.get(name) or (
            rds_spec(hcm_pb2.Rds(route_config_name=name, config_source={"ads": {}}), "rds"),
            "rds",
        )

    def _unsubscribed(self, subscription: Subscription) -> None:
        name = subscription.name
        del self.entries[name]
        for (server, strip_port), handle in self._handles.get(name, {}).items():
            handle.current = RouteTable(_EMPTY, "", server, strip_port)
        self._released.add(name)

    def _not_modified(self, subscription: Subscription) -> None:
        """REST: a 304 counts an attempt of the name (a failed fetch counts as a lost
        stream: the name keeps waiting, as in Envoy 1.40)."""
        self.entries[subscription.name].stats.update_attempt.inc()

    def _timed_out(self, subscription: Subscription) -> None:
        entry = self.entries[subscription.name]
        if entry.state is not RouteState.PENDING:
            return
        entry.stats.timed_out()
        entry.state = RouteState.FAILED
        self._emit([RoutesFailed(entry.name)])

    def _build(self, name: str, config: route_pb2.RouteConfiguration) -> dict:
        """The tables of every handle of `name`; raises ConfigError (the NACK text)."""
        require_valid(config, "")
        keys = list(self._handles.get(name, {})) or [("envoy", False)]
        tables = {key: RouteTable(config, "", key[0], key[1]) for key in keys}
        table = next(iter(tables.values()))
        validate = config.validate_clusters.value if config.HasField("validate_clusters") else False
        if validate and self._clusters is not None:
            for cluster in sorted(table.cluster_names):
                if not self._clusters.known(cluster):
                    raise ConfigError(f"route: unknown cluster '{cluster}'")
        return tables

    def _install(
        self,
        entry: RouteEntry,
        config: route_pb2.RouteConfiguration,
        version: str,
        tables: dict,
        events: list[ListenerEvent],
    ) -> None:
        changed = entry.config is None or entry.config.SerializeToString(
            deterministic=True
        ) != config.SerializeToString(deterministic=True)
        handles = self._handles.get(entry.name, {})
        for key, table in tables.items():
            if key in handles:
                handles[key].current = table
        if changed:
            entry.config = config
            entry.version_info = version
            entry.last_updated = self._wall_clock()
            entry.stats.config_reload.inc()
            entry.stats.config_reload_time_ms.set(int(entry.last_updated * 1000))  # as Envoy
        if entry.state is not RouteState.READY:
            entry.state = RouteState.READY
            self.subscriptions.answered(entry.subscription)
            events.append(RoutesReady(entry.name))

    def _emit(self, events: list[ListenerEvent]) -> None:
        for event in events:
            self._on_event(event)
