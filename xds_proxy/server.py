"""Wires the parts together and owns the process lifecycle.

Every part is built once, here, and handed what it needs through its constructor: the
listen-socket pool, the drain manager, the listener compiler and manager, the listener
runtime that executes both managers' actions, the cluster manager, hot restart, and the
admin endpoints (which see the server only through `AdminView` and `AdminCommands`).

Start-up: static listeners bound (a failure exits 1 with nothing left listening), admin up,
CDS then LDS subscriptions started (LDS once CDS has its first response and the clusters it
added have warmed, EDS ones with their first assignment, or at CDS's `initial_fetch_timeout`;
over ADS they share one stream: CDS, then EDS, then LDS, then RDS, as Envoy's init order);
the server is INITIALIZING until the first LDS response (or `initial_fetch_timeout`), then
LIVE.
SIGTERM/SIGINT and `/quitquitquit` shut down without draining, as Envoy does; SIGHUP is
ignored. Ours (docs/draining.md "Controlling drains"): `POST /drain_and_exit`, and SIGTERM
with `--drain-on-sigterm`, drain every listener and exit once no connection is left
(`listener/drain_exit.py` decides when); a second SIGTERM then exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import inspect
import logging
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import uvloop
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_pb2

from xds_proxy.access_log.writer import FILES as ACCESS_LOG_FILES
from xds_proxy.admin.handlers import AdminHandlers
from xds_proxy.admin.server import start_admin_server
from xds_proxy.admin.update_log import LdsUpdateLog
from xds_proxy.admin.view import AdminCommands, AdminView
from xds_proxy.config.rds import rds_spec
from xds_proxy.errors import ConfigError
from xds_proxy.hot_restart import HotRestart, ParentHooks
from xds_proxy.http.router import RouteHandle, RouteTable
from xds_proxy.listener.actions import (
    Dependency,
    DependencyKind,
    RoutesReady,
    SecretsFailed,
    SecretsReady,
    SocketAddress,
)
from xds_proxy.listener.drain import Slots
from xds_proxy.listener.drain_exit import DrainExit
from xds_proxy.listener.drain_manager import HEALTH_SCOPE, DrainManager
from xds_proxy.listener.instance import ListenerServices
from xds_proxy.listener.limits import global_limit_from_bootstrap
from xds_proxy.listener.manager import (
    ApplyResult,
    BindError,
    ListenerEvent,
    ListenerManager,
    RoutesFailed,
)
from xds_proxy.listener.plan import plan_report
from xds_proxy.listener.runtime import ListenerCompiler, ListenerRuntime
from xds_proxy.listener.shared_count import SharedCount, SharedCounts
from xds_proxy.listener.shared_pacing import SharedPacing, drain_key
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.network_filters import build_filter_chain
from xds_proxy.options import Options
from xds_proxy.routes.registry import RouteRegistry
from xds_proxy.secrets.store import SecretStore
from xds_proxy.stats import Stats
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.workers.coordinator import WorkerCoordinator
from xds_proxy.workers.published import Publisher
from xds_proxy.xds.cds import CdsClient
from xds_proxy.xds.client import LdsClient
from xds_proxy.xds.eds import EndpointSubscriptions
from xds_proxy.xds.source import lds_configured, lds_server, source_server
from xds_proxy.xds.transport import XdsStream

log = logging.getLogger("xds_proxy.main")

VERSION = "0.1.0"


class ServerState(enum.IntEnum):
    """Envoy's numbering of `server.state`."""

    LIVE = 0
    DRAINING = 1
    PRE_INITIALIZING = 2
    INITIALIZING = 3


@dataclass
class Server:
    options: Options
    bootstrap: bootstrap_pb2.Bootstrap
    stats: Stats = field(default_factory=Stats)
    state: ServerState = ServerState.PRE_INITIALIZING
    started_at: float = field(default_factory=time.time)
    healthy: bool = True
    # A worker process of `--concurrency N` (xds_proxy/workers/): its index, and where its
    # listen sockets come from (the main process).
    is_worker: bool = False
    worker_index: int = 0
    workers_in_all: int = 1  # a worker's `--concurrency`
    socket_opener: Callable[[SocketAddress, str], socket.socket] | None = None
    shared_connections: SharedCount | None = None  # the global connection limit's count
    shared_pacing: SharedPacing | None = None  # the paced drains' slots
    shared_counts: SharedCounts | None = None  # the connection_limit filters' counts

    def __post_init__(self) -> None:
        self.pool = ListenSocketPool(self.socket_opener)
        # The main process of `--concurrency N` accepts nothing: its workers do.
        self.workers: WorkerCoordinator | None = None
        self.admin_stats = self.stats  # what the admin endpoints show (merged with workers')
        self._workers_ready = False  # every worker has applied the first configuration
        self.drains = DrainManager(
            self.options.drain_strategy,
            self.options.drain_time_s,
            clock=time.monotonic,
            rng=random.Random(),
            wall_clock=time.time,
            max_closes_per_second=self.options.drain_max_closes_per_second,
            completion_log_level=logging.DEBUG if self.is_worker else logging.INFO,
            pace_share=1 / self.workers_in_all,
            shared_slots=self._shared_slots if self.shared_pacing is not None else None,
        )
        self._ads_stream: XdsStream | None = None  # CDS, EDS, LDS and RDS over one ADS stream
        # EDS over ADS joins the stream CDS opened (its first names come from a CDS response).
        self.endpoints = EndpointSubscriptions(
            self.stats, self.bootstrap, applied=self._applied, ads_stream=lambda: self._ads_stream
        )
        self.clusters = ClusterManager(self.stats, endpoints=self.endpoints)
        self.routes = RouteRegistry(
            self.stats,
            self.bootstrap,
            self.clusters,
            self._route_event,
            applied=self._applied,
            ads_stream=lambda: self._ads_stream,
            ads_coming=lambda: self._xds_starting,
            names_in_use=lambda: self.manager.route_names_in_use(),
            follow_main=self.is_worker,
        )
        self.secrets = SecretStore(  # static secrets and SDS (xds_proxy/secrets/)
            self.stats,
            self.bootstrap,
            self._route_event,
            applied=self._applied,
            ads_stream=lambda: self._ads_stream,
            ads_coming=lambda: self._xds_starting,
            follow_main=self.is_worker,
        )
        self._xds_starting = True  # until LDS (after CDS) has joined the ADS stream
        self._waiting_for_warming = False  # the first LDS response's listeners still warm
        services = ListenerServices(
            self.stats,
            self.drains,
            build_filter_chain,
            self.clusters,
            global_limit_from_bootstrap(self.bootstrap, self.stats, self.shared_connections),
            self.routes.handle,
            self.secrets,
            worker_index=self.worker_index,
            shared_counts=self.shared_counts,
        )
        # A plan compiles against a throwaway stats store and subscribes to no route config.
        self.compiler = ListenerCompiler(
            services, replace(services, stats=Stats(), routes=self._route_handle_for_plan)
        )
        self.manager = ListenerManager(
            self.stats, self.pool, self.compiler.compile, time.time, self.routes, self.secrets
        )
        self.runtime = ListenerRuntime(
            self.stats,
            self.pool,
            self.compiler,
            self.manager,
            self.drains,
            self.routes,
            self.secrets,
            accept=self.options.concurrency <= 1,
        )
        self.shutdown_requested = asyncio.Event()
        self.lds_client = None
        self.cds_client = None
        self.lds_updates = LdsUpdateLog()  # the admin page's recent LDS updates
        self.admin_address: tuple[str, int] | None = None
        self._tasks: list[asyncio.Task] = []
        self._set_state(ServerState.PRE_INITIALIZING)
        self.stats.gauge("server.live").set(1)
        self.stats.gauge("server.hot_restart_epoch").set(self.options.restart_epoch)
        self.stats.gauge("server.parent_connections").set(0)
        self.stats.gauge("server.concurrency").set(self.options.concurrency)
        self.hot_restart = HotRestart(  # hot restart (xds_proxy/hot_restart.py)
            self.options.base_id,
            self.options.restart_epoch,
            self.options.disable_hot_restart,
            self.options.parent_shutdown_time_s,
            self.stats,
            self.pool,
            self.started_at,
        )
        self._admin_server: asyncio.Server | None = None
        self._drain_exit: DrainExit | None = None  # set by /drain_and_exit (or SIGTERM)

    def _set_state(self, state: ServerState) -> None:
        self.state = state
        self.stats.gauge("server.state").set(int(state))

    def uptime(self) -> int:
        return int(time.time() - self.started_at)

    # -- start-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.hot_restart.start(  # before binding: a child takes its parent's sockets
            ParentHooks(
                listen_sockets=self.pool.listen_sockets,
                drain=self.drain_for_hot_restart,
                terminate=self.request_shutdown,
                shutdown_admin=self.shutdown_admin,
                connections=self._total_connections,
                started_at_all_epochs=lambda: self.hot_restart.started_at_all_epochs,
            )
        )
        self.secrets.add_static(self.bootstrap)  # ConfigError names the secret's field
        self.clusters.secrets = self.secrets
        self.clusters.add_static(self.bootstrap)  # ConfigError names the cluster's field
        self.clusters.start()
        actions = []
        for index, listener in enumerate(self.bootstrap.static_resources.listeners):
            try:
                actions += self.manager.add_static(listener)
            except (ConfigError, BindError) as error:
                self.pool.close_all()
                raise ConfigError(f"static_resources.listeners[{index}]: {error}") from None
        await self.runtime.execute(actions)
        self._tasks.append(asyncio.create_task(self.runtime.run(), name="listener-runtime"))
        if self.options.concurrency > 1:
            await self._start_workers()
        await self._start_admin()
        self._start_cds()  # then LDS, once CDS has initialised (as Envoy)

    # -- worker processes (`--concurrency N`, xds_proxy/workers/) -----------------------------

    async def _start_workers(self) -> None:
        self.admin_stats = Stats()
        publisher = Publisher(
            self.manager, self.clusters, self.routes, self.endpoints, self.secrets
        )
        self.workers = WorkerCoordinator(
            self.options,
            self.bootstrap,
            publisher,
            self.manager,
            self.runtime,
            self.drains,
            self.pool,
            self.stats,
            self.admin_stats,
        )
        await self.workers.start()

    async def _applied(self) -> None:
        """An xDS response is applied here; with workers, also in every worker (the ACK or
        NACK waits for both, so that an ACK still means serving)."""
        await self.runtime.applied()
        if self.workers is not None:
            await self.workers.sync()

    def _shared_slots(
        self, identity: tuple, start: float, deadline: float
    ) -> tuple[Slots, float] | None:
        assert self.shared_pacing is not None
        return self.shared_pacing.slots(drain_key(*identity), start, deadline)

    def worker_commands(self) -> dict[str, Callable[..., object]]:
        """What the main process may ask a worker to do (the admin commands it fans out)."""
        return {
            "set_health": self.set_health,
            "drain_listeners": self.drain_listeners,
            "start_exit_drain": self._start_exit_drain,
            "drain_for_hot_restart": self.drain_for_hot_restart,
            "dependency_failed": self._dependency_failed,
        }

    def _dependency_failed(self, kind: str, name: str) -> None:
        """A worker: the main process's route configuration or secret `name` failed."""
        owner = self.routes if kind == DependencyKind.ROUTES.value else self.secrets
        owner.followed.fail(name)

    def _fan_out(self, name: str, *args: object) -> None:
        """Run an admin command in every worker too; the admin answer waits for it."""
        if self.workers is not None:
            self.workers.call(name, *args)

    async def _total_connections(self) -> int:
        if self.workers is None:
            return self.stats.gauge("server.total_connections").value
        return await self.workers.workers.connections()

    def admin_view(self) -> AdminView:
        """What the admin endpoints read."""
        return AdminView(
            version=VERSION,
            options=self.options,
            bootstrap=self.bootstrap,
            started_at=self.started_at,
            hot_restart_version=self.hot_restart.version,
            stats=self.admin_stats,
            clusters=self.clusters,
            listeners=self.manager,
            state=lambda: self.state.name,
            uptime=self.uptime,
            uptime_all_epochs=self.uptime_all_epochs,
            bound_addresses=self.pool.bound_addresses,
            cds_version_info=lambda: self.cds_client.system_version_info if self.cds_client else "",
            drain_report=self.runtime.drain_report,
            lds_updates=self.lds_updates.entries,
            route_configs=self.routes.held,
            secrets=self.secrets.config_dump,
            warming_report=self.warming_report,
            plan_listeners=self.plan_listeners,
            worker_host_counts=lambda: self.workers.host_counts if self.workers else {},
        )

    def warming_report(self) -> list[dict]:
        """`/drain_status` `warming`: each warming listener, what it waits for, until when."""
        report = []
        for version in self.manager.warming.values():
            entry: dict = {
                "listener": version.name,
                "version_info": version.version_info,
                "waiting_for": [str(waited) for waited in sorted(version.waiting)],
                "since": _iso(version.warming_since),
                "timeout_at": None,
            }
            deadlines = [
                self.routes.timeout_at(_named(version.waiting, DependencyKind.ROUTES)),
                self.secrets.timeout_at(_named(version.waiting, DependencyKind.SECRET)),
            ]
            deadline = min((d for d in deadlines if d is not None), default=None)
            if deadline is not None:  # a changed listener keeps warming after it
                entry["timeout_at"] = _iso(deadline)
            serving = self.manager.active.get(version.name)
            if serving is not None:
                entry["serving_version"] = serving.version_info
            report.append(entry)
        return report

    def admin_commands(self) -> AdminCommands:
        return AdminCommands(
            quit=self.request_shutdown,
            set_health=self.set_health,
            drain_listeners=self.drain_listeners,
            drain_and_exit=self.drain_and_exit,
        )

    async def _start_admin(self) -> None:
        if not self.bootstrap.HasField("admin"):
            return
        address = self.bootstrap.admin.address.socket_address
        handlers = AdminHandlers(self.admin_view(), self.admin_commands())
        handle = handlers.handle
        if self.workers is not None:
            workers = self.workers

            async def handle(*request):  # type: ignore[no-redef]
                await workers.refresh()  # the workers' stats and drains, merged with ours
                answer = handlers.handle(*request)
                answer = await answer if inspect.isawaitable(answer) else answer
                await workers.finish_calls()  # a command is done when every worker did it
                return answer

        try:
            server = await start_admin_server(
                address.address, address.port_value, handle, handlers.body_paths
            )
        except OSError as error:
            raise ConfigError(
                f"admin.address: cannot bind '{address.address}:{address.port_value}': "
                f"{error.strerror}"
            ) from None
        host, port = server.sockets[0].getsockname()[:2]
        self.admin_address = (host, port)
        self._admin_server = server  # closed for a hot-restart child: shutdown_admin()
        log.info("admin address: %s:%d", host, port)
        if self.options.admin_address_path:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            with open(self.options.admin_address_path, "w") as out:
                out.write(shown)

    def _start_cds(self) -> None:
        if not CdsClient.configured(self.bootstrap):
            self.clusters.flush_watches()  # static EDS clusters
            self._start_lds()
            return
        if lds_configured(self.bootstrap):
            lds_server(self.bootstrap)  # a bad LDS source fails start-up now, not after CDS
        self._set_state(ServerState.INITIALIZING)
        self.cds_client = CdsClient(
            self.bootstrap, self.stats, self.clusters, self._start_lds, applied=self._applied
        )
        if self.cds_client.server.aggregated:  # LDS joins this stream later, as Envoy's mux
            self._ads_stream = XdsStream(self.cds_client.server)
            self._ads_stream.add(self.cds_client)
            self._tasks.append(asyncio.create_task(self._ads_stream.run(), name="ads-stream"))
            self.clusters.flush_watches()  # static EDS clusters: after CDS on the stream
            return
        self._tasks.append(asyncio.create_task(self.cds_client.run(), name="cds-client"))
        self.clusters.flush_watches()

    def _start_lds(self) -> None:
        """CDS is initialised; LDS starts once the bootstrap's EDS clusters are warm too
        (Envoy's init: static clusters, then CDS, then LDS)."""
        if self.clusters.static_warming():
            self._tasks.append(
                asyncio.create_task(self._start_lds_when_static_warm(), name="lds-after-eds")
            )
            return
        self._start_lds_now()

    async def _start_lds_when_static_warm(self) -> None:
        await self.clusters.wait_static_warm()
        self._start_lds_now()

    def _start_lds_now(self) -> None:
        try:
            self._start_lds_client()
        finally:
            self._xds_starting = False
            self.routes.resume()  # RDS over ADS joins the stream after CDS and LDS
            self.secrets.resume()

    def _start_lds_client(self) -> None:
        if not LdsClient.configured(self.bootstrap):
            self._initialized()
            return
        self._set_state(ServerState.INITIALIZING)
        self.lds_client = LdsClient(
            self.bootstrap,
            self.stats,
            self.apply_listeners,
            self._initialized,
            apply_delta=self.apply_delta,
            applied=self._applied,
        )
        if self.lds_client.server.aggregated:
            if self._ads_stream is None:
                self._ads_stream = XdsStream(self.lds_client.server)
                self._tasks.append(asyncio.create_task(self._ads_stream.run(), name="ads-stream"))
            self._ads_stream.add(self.lds_client)  # after CDS, on the same stream
            return
        self._tasks.append(asyncio.create_task(self.lds_client.run(), name="lds-client"))

    def _lds_nonce(self) -> str:
        return self.lds_client.applying_nonce if self.lds_client is not None else ""

    def apply_listeners(self, version_info: str, listeners: list) -> str | None:
        """The LDS client's callback: apply one SotW response; None means ACK."""
        result = self.manager.apply_sotw(version_info, listeners, self._lds_nonce())
        self.lds_updates.record("sotw", version_info, result.nack_message, len(listeners))
        return self._submit(version_info, result)

    def apply_delta(self, version_info: str, listeners: list, removed: list[str]) -> str | None:
        """The LDS client's Delta (and TTL expiry) callback: removed first, then added."""
        result = self.manager.apply_delta(version_info, listeners, removed, self._lds_nonce())
        kind = "ttl" if version_info == "" and not listeners else "delta"
        self.lds_updates.record(
            kind, version_info, result.nack_message, len(listeners), len(removed)
        )
        return self._submit(version_info, result)

    # -- dry run (POST /listeners/plan) ------------------------------------------------------

    def plan_listeners(self, version_info: str, listeners: list, removed: list[str] | None) -> dict:
        """What the push would do now, changing nothing (docs/admin.md)."""
        result = self.manager.plan(version_info, listeners, removed, self.compiler.check)
        return plan_report(
            version_info, removed is not None, result.outcomes, result.nack_message, self
        )

    def listener(self, version_id: int) -> int:
        """`PlanCounts`: a running version's connections now."""
        if self.workers is not None:
            return self.workers.serving(version_id, "all")
        return self.runtime.listener_connections(version_id)

    def chain(self, version_id: int, index: int) -> int:
        """`PlanCounts`: one chain's connections now."""
        if self.workers is not None:
            return self.workers.serving(version_id, str(index))
        return self.runtime.chain_connections(version_id, index)

    def _route_handle_for_plan(
        self, rds, stat_prefix: str, server: str, strip_port: bool, path: str
    ) -> RouteHandle:
        """The route registry's checks of an HCM's `rds`, without subscribing to anything."""
        spec = rds_spec(rds, path)
        source_server(self.bootstrap, spec.source, f"{path}.config_source")
        return RouteHandle(RouteTable(route_pb2.RouteConfiguration(), "", server, strip_port))

    def _submit(self, version_info: str, result: ApplyResult) -> str | None:
        self.runtime.submit(result.actions)
        repeated = self.lds_client is not None and self.lds_client.repeated_rejection
        if result.nack_message and not repeated:  # REST: a rejected body sent again logs once
            log.warning("lds: NACK version '%s': %s", version_info, result.nack_message.strip())
        return result.nack_message

    def _route_event(self, event: ListenerEvent) -> None:
        """The route registry or the secret store: a route configuration or a secret is
        ready, or failed (NACK, timeout)."""
        self.runtime.submit(self.manager.on_event(event))
        if isinstance(event, RoutesReady | SecretsReady) and self.workers is not None:
            self.workers.dependency_ready(event.name)
        if isinstance(event, RoutesFailed | SecretsFailed):
            kind = (
                DependencyKind.ROUTES if isinstance(event, RoutesFailed) else DependencyKind.SECRET
            )
            if self.workers is not None:  # the workers' versions go on as ours do
                self.workers.dependency_failed(kind.value, event.name)
            what = "route configuration" if kind is DependencyKind.ROUTES else "secret"
            for version in self.manager.warming.values():
                if version.replaces and Dependency(kind, event.name) in version.waiting:
                    serving = self.manager.active.get(version.name)
                    log.warning(
                        "listener '%s': version '%s' keeps warming: %s '%s' "
                        "was rejected or timed out; version '%s' keeps serving",
                        version.name,
                        version.version_info,
                        what,
                        event.name,
                        serving.version_info if serving is not None else "",
                    )
        if self._waiting_for_warming and not self.manager.initializing():
            self._waiting_for_warming = False
            self._initialized()

    def _initialized(self) -> None:
        if self.manager.initializing():
            # As Envoy: the listeners of the first LDS response warm before the server is LIVE.
            self._waiting_for_warming = True
            return
        if self.state in (ServerState.PRE_INITIALIZING, ServerState.INITIALIZING):
            if self.workers is not None and not self._workers_ready:
                # LIVE once the workers serve what is applied here (as Envoy starts its
                # workers at the end of initialisation).
                self._tasks.append(asyncio.create_task(self._initialized_with_workers()))
                return
            self._set_state(ServerState.LIVE if self.healthy else ServerState.DRAINING)
            self.manager.workers_started()
            log.info("all dependencies initialized. starting workers")
            self.hot_restart.initialized(self.runtime.applied)

    async def _initialized_with_workers(self) -> None:
        assert self.workers is not None
        self._set_state(ServerState.INITIALIZING)
        await self.workers.workers.wait_ready()
        self._workers_ready = True
        self._initialized()

    # -- admin-triggered drains and health --------------------------------------------------

    def set_health(self, failed: bool) -> None:
        """`/healthcheck/fail` (DRAINING, `server.live` 0) and `/healthcheck/ok`."""
        self.healthy = not failed
        self.stats.gauge("server.live").set(0 if failed else 1)
        if self.state in (ServerState.LIVE, ServerState.DRAINING):
            self._set_state(ServerState.DRAINING if failed else ServerState.LIVE)
        self.drains.set_health(failed, self.runtime.connections(HEALTH_SCOPE))
        self._fan_out("set_health", failed)

    def drain_listeners(self, graceful: bool, inbound_only: bool, skip_exit: bool) -> None:
        """`/drain_listeners`: every (inbound) listener's connections drain over DT; the
        listeners stop accepting at DT (graceful), at once (plain), or never (skip_exit).
        The process never exits."""
        stop_at_deadline = graceful and not skip_exit
        self.runtime.submit(self.drains.start_admin_drain(inbound_only, stop_at_deadline))
        if not graceful and not skip_exit:
            self.runtime.submit(self.manager.stop_listeners(inbound_only))
        self._fan_out("drain_listeners", graceful, inbound_only, skip_exit)

    def drain_and_exit(self) -> str:
        """`POST /drain_and_exit` and SIGTERM with `--drain-on-sigterm`: every listener
        drains (graceful, on each listener's ramp), the server reports DRAINING, and the
        process exits 0 once no downstream connection is left (`listener/drain_exit.py`)."""
        if self._drain_exit is not None:
            return "already draining\n"
        now = time.monotonic()
        self._start_exit_drain()
        self._fan_out("start_exit_drain")
        versions = [version.id for version in self.manager.active.values()]
        self._drain_exit = DrainExit(
            now, self.options.min_drain_time_s, self.drains.latest_deadline(versions)
        )
        self._set_state(ServerState.DRAINING)
        log.info(
            "drain and exit: draining %d connections, exit when none is left (at the latest "
            "in %.1f s)",
            self.stats.gauge("server.total_connections").value,
            max(self._drain_exit.deadline, now + self.options.min_drain_time_s) - now,
        )
        self._tasks.append(asyncio.create_task(self._exit_when_drained(), name="drain-and-exit"))
        return "OK\n"

    def _start_exit_drain(self) -> None:
        self.runtime.submit(
            self.drains.start_admin_drain(False, stop_listeners=False, trigger="drain_and_exit")
        )

    async def _exit_when_drained(self) -> None:
        assert self._drain_exit is not None
        while True:
            now = time.monotonic()
            connections = await self._total_connections()
            why = self._drain_exit.decide(now, connections)
            if why is not None:
                break
            await asyncio.sleep(self._drain_exit.next_check_s(now, 0.05))
        left = [d for d in self.runtime.drain_report() if d["connections"]]
        log.info(
            "drain and exit: exiting (%s) after %.3f s, %d connections left%s",
            why,
            now - self._drain_exit.started_at,
            connections,
            "".join(f"; {d['listener'] or d['kind']}: {d['connections']}" for d in left),
        )
        self.request_shutdown()

    def on_sigterm(self) -> None:
        """SIGTERM: exit at once (as Envoy), or with `--drain-on-sigterm` drain first (a
        second SIGTERM exits at once)."""
        if self.options.drain_on_sigterm and self._drain_exit is None:
            self.drain_and_exit()
        else:
            self.request_shutdown()

    # -- hot restart (xds_proxy/hot_restart.py) ---------------------------------------------

    def shutdown_admin(self) -> None:
        """A hot-restart child starts: it binds the admin address next (as in Envoy)."""
        if self._admin_server is not None:
            log.info("shutting down admin due to child startup")
            self._admin_server.close()
            self._admin_server = None

    def uptime_all_epochs(self) -> int:
        """`/server_info` `uptime_all_epochs`: since the first epoch started."""
        return int(time.time() - self.hot_restart.started_at_all_epochs)

    def drain_for_hot_restart(self) -> None:
        """The parent of a hot restart: every listener stops accepting at once (the child
        accepts on the same kernel sockets), then our copies of the sockets close; and every
        listener's connections drain over DT, whatever their drain type."""
        self.runtime.submit(self.manager.stop_listeners(inbound_only=False, hand_over=True))
        self.runtime.submit(
            self.drains.start_admin_drain(False, stop_listeners=False, trigger="hot_restart")
        )
        self._fan_out("drain_for_hot_restart")

    # -- shutdown ---------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        self.shutdown_requested.set()

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.routes.close()
        self.secrets.close()
        self.endpoints.close()
        await self.runtime.close()
        self.clusters.close()
        await self.hot_restart.close()
        ACCESS_LOG_FILES.close()  # every buffered access-log line is written before exit


def _named(waiting: set[Dependency], kind: DependencyKind) -> set[str]:
    return {waited.name for waited in waiting if waited.kind is kind}


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


async def serve(options: Options, bootstrap: bootstrap_pb2.Bootstrap) -> int:
    ACCESS_LOG_FILES.flush_interval_s = options.file_flush_interval_msec / 1000
    server = Server(options, bootstrap)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.on_sigterm)
    loop.add_signal_handler(signal.SIGINT, server.request_shutdown)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    try:
        await server.start()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        await server.stop()
        return 1
    # What start-up made (modules, classes, descriptors, the bootstrap) lives as long as the
    # process: out of every later full collection, which a push of many listeners triggers.
    gc.freeze()
    log.info("starting main dispatch loop")
    await server.shutdown_requested.wait()
    log.info("shutting down")
    await server.stop()
    return 0


def run(options: Options, bootstrap: bootstrap_pb2.Bootstrap) -> int:
    return uvloop.run(serve(options, bootstrap))
