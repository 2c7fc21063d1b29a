"""The asyncio side of listeners: accept loops, connections, and drains carried out in time.

The listener manager (`manager.py`) decides which listener versions exist and the drain manager
(`drain_manager.py`) which drains run and what a connection is told; this module does.
`ListenerCompiler` builds a listener version into a `ListenerInstance` (`instance.py`: filter
chains built, nothing bound) when the listener manager asks. `ListenerRuntime` executes both
managers' actions in order on the event loop: it listens and accepts, stops accepting, hands
filter chains and their connections over on an in-place update, pushes drains to connections,
arms the drain deadlines and watches for the last connection to close. It reports what happened
back as events: `DrainEmptied` and `DeadlineReached` to the drain manager; `ListenerDrained`,
`ChainsDrained` and `StartFailed` to the listener manager; and executes what they answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Protocol

from envoy.config.listener.v3 import listener_pb2

from xds_proxy.config.support import listener_errors
from xds_proxy.errors import ConfigError
from xds_proxy.listener.actions import PipeAddress
from xds_proxy.listener.drain_manager import (
    ChainDrainEnded,
    ChainScope,
    DeadlineReached,
    DrainAction,
    DrainEmptied,
    DrainEvent,
    DrainManager,
    DrainScope,
    HealthScope,
    ListenerDrainEnded,
    ListenerScope,
    ServerDrainEnded,
    ServerScope,
    TellConnections,
    WatchDrain,
)
from xds_proxy.listener.instance import (
    Acceptor,
    ChainRuntime,
    ListenerInstance,
    ListenerServices,
)
from xds_proxy.listener.limits import GLOBAL_OVERFLOW_STAT
from xds_proxy.listener.manager import (
    DEFAULT_CHAIN,
    Action,
    ChainsDrained,
    CloseSockets,
    DrainListener,
    ForgetVersion,
    HandOverSockets,
    ListenerDrained,
    ListenerEvent,
    ListenerManager,
    ReleaseSockets,
    StartFailed,
    StartListener,
    StopAccepting,
    UnwatchRoutes,
    UnwatchSecrets,
    UpdateFilterChains,
    UpdatePolicy,
    WatchRoutes,
    WatchSecrets,
    binds,
    listener_addresses,
)
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.stats import Stats, listener_stat_prefix

log = logging.getLogger("xds_proxy.listener")


class RouteWatches(Protocol):
    """The route registry (xds_proxy/routes/registry.py) and the secret store
    (xds_proxy/secrets/store.py) as the runtime drives them."""

    def watch(self, version_id: int, names: tuple[str, ...]) -> None: ...

    def unwatch(self, version_id: int) -> None: ...

    def flush(self) -> None:
        """Send the subscription changes of the batch just carried out."""
        ...


class ListenerCompiler:
    """The listener manager's `compile` port: validates a listener (proto constraints, then
    what we support) and builds its filter chains, nothing bound, and keeps the result by
    version id until the runtime starts that version (or is told to forget it)."""

    def __init__(
        self, services: ListenerServices, check_services: ListenerServices | None = None
    ) -> None:
        self.services = services
        self.check_services = check_services
        self._compiled: dict[int, ListenerInstance] = {}

    def compile(self, version_id: int, config: listener_pb2.Listener) -> None:
        """A ConfigError here NACKs this listener only."""
        errors = listener_errors(config)
        if errors:
            raise ConfigError(errors[0])
        self._compiled[version_id] = ListenerInstance(self.services, config, version_id)

    def check(self, version_id: int, config: listener_pb2.Listener) -> None:
        """The compile port of a plan (`ListenerManager.plan`): the same checks and build,
        against `check_services` (a throwaway stats store, route handles that subscribe to
        nothing), and nothing kept."""
        errors = listener_errors(config)
        if errors:
            raise ConfigError(errors[0])
        ListenerInstance(self.check_services or self.services, config, version_id)

    def take(self, version_id: int) -> ListenerInstance | None:
        return self._compiled.pop(version_id, None)


@dataclass
class _Watch:
    """A drain the runtime times: its deadline timer and, for a listener or chains drain,
    the chains whose last connection ends it."""

    scope: DrainScope
    chains: list[ChainRuntime]
    timer: asyncio.TimerHandle
    until_empty: bool
    close_at_deadline: bool


class ListenerRuntime:
    def __init__(
        self,
        stats: Stats,
        pool: ListenSocketPool,
        compiler: ListenerCompiler,
        manager: ListenerManager,
        drains: DrainManager,
        routes: RouteWatches | None = None,
        secrets: RouteWatches | None = None,
        accept: bool = True,
    ) -> None:
        """`accept` False: the sockets listen but this process accepts nothing (the main
        process of `--concurrency N`, whose workers accept on the same sockets)."""
        self.stats = stats
        self.accept = accept
        # By drain id (see `workers_report`): the workers' connections and paced tells.
        self._worker_connections: dict[int, int] = {}
        self._worker_tells: dict[int, int] = {}
        self.routes = routes
        self.secrets = secrets
        self.pool = pool
        self.compiler = compiler
        self.manager = manager
        self.drains = drains
        self.instances: dict[int, ListenerInstance] = {}  # started versions, by id
        # Old versions of in-place updates whose removed chains still drain, by version id.
        self.retired: dict[int, ListenerInstance] = {}
        self.watches: dict[int, _Watch] = {}  # by drain id
        self._queue: asyncio.Queue[list[Action]] = asyncio.Queue()
        stats.gauge("server.total_connections")

    def submit(self, actions: list[Action] | list[DrainAction]) -> None:
        """Queue one batch of actions; they run in order after every earlier batch's."""
        self._queue.put_nowait(list(actions))

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
        """Returns once every submitted batch has been carried out (sockets accepting)."""
        await self._queue.join()

    async def execute(self, actions: list[Action] | list[DrainAction]) -> None:
        """Carry out one batch in order; then close the sockets no version holds any more."""
        try:
            for action in actions:
                match action:
                    case StartListener(version_id, version_info, policy):
                        instance = self.compiler.take(version_id)
                        if instance is not None:
                            self.drains.set_listener_policy(version_id, policy)
                            await self._start(instance, version_info)
                    case UpdateFilterChains():
                        await self._update_chains(action)
                    case _:
                        self._perform(action)
        finally:
            self.pool.flush()
            self._flush_routes()

    async def close(self) -> None:
        for instance in list(self.instances.values()):
            for server in instance.servers:
                server.close()
        self.pool.close_all()

    # -- what admin and the drain manager read ------------------------------------------------

    def connections(self, scope: DrainScope) -> int:
        return sum(len(chain.connections) for chain in self._chains_in(scope))

    def listener_connections(self, version_id: int) -> int:
        """Connections of a started version now (`POST /listeners/plan`)."""
        return self.connections(ListenerScope(version_id))

    def chain_connections(self, version_id: int, index: int) -> int:
        """Connections of one filter chain of a started version now (`DEFAULT_CHAIN`: its
        default chain)."""
        instance = self.instances.get(version_id)
        if instance is None:
            return 0
        if index == DEFAULT_CHAIN:
            chain = instance.default_chain
        else:
            chain = instance.chains[index] if 0 <= index < len(instance.chains) else None
        return 0 if chain is None else len(chain.connections)

    def serving_connections(self, versions: dict[str, int]) -> dict[str, dict[str, int]]:
        """For the main process of `--concurrency N`: the connections of each serving
        version (by listener name), in all (`"all"`) and per chain index (`DEFAULT_CHAIN`:
        the default chain)."""
        counts: dict[str, dict[str, int]] = {}
        for name, version_id in versions.items():
            instance = self.instances.get(version_id)
            if instance is None:
                continue
            found = {"all": self.listener_connections(version_id)}
            for index in [*range(len(instance.chains)), DEFAULT_CHAIN]:
                found[str(index)] = self.chain_connections(version_id, index)
            counts[name] = found
        return counts

    def drain_report(self) -> list[dict]:
        """Every drain in progress, for `/drain_status`."""
        if not self.accept:  # the workers hold the connections
            return self.drains.report_counted(self._worker_connections, self._worker_tells)
        return self.drains.report(self.connections)

    # -- actions that take no time ------------------------------------------------------------

    def _perform(self, action: Action | DrainAction) -> None:
        match action:
            case StopAccepting(version_id):
                self._stop_accepting(version_id)
            case DrainListener(version_id, trigger, policy, cause):
                instance = self.instances.get(version_id)
                if instance is not None:
                    self._perform_all(
                        self.drains.drain_listener(
                            version_id,
                            instance.name,
                            instance.version_info,
                            str(trigger),
                            policy,
                            cause,
                        )
                    )
            case UpdatePolicy(version_id, version_info, policy):
                instance = self.instances.get(version_id)
                if instance is not None:
                    instance.version_info = version_info
                    self.drains.set_listener_policy(version_id, policy)
            case ReleaseSockets(version_id):
                self.pool.release(version_id)
            case CloseSockets(version_id):
                self.pool.close_sockets(version_id)
            case HandOverSockets():
                self.pool.close_after_hand_over()
            case ForgetVersion(version_id):
                self.compiler.take(version_id)
            case WatchRoutes(version_id, names):
                if self.routes is not None:
                    self.routes.watch(version_id, names)
            case UnwatchRoutes(version_id):
                if self.routes is not None:
                    self.routes.unwatch(version_id)
            case WatchSecrets(version_id, names):
                if self.secrets is not None:
                    self.secrets.watch(version_id, names)
            case UnwatchSecrets(version_id):
                if self.secrets is not None:
                    self.secrets.unwatch(version_id)
            case TellConnections(scope, drain):
                for chain in self._chains_in(scope):
                    chain.tell_connections(
                        self.drains.for_listener(drain, chain.listener.version_id)
                    )
            case WatchDrain():
                self._watch(action)
            case ListenerDrainEnded(drain_id, version_id):
                self._end_watch(drain_id)
                self.instances.pop(version_id, None)
                self.drains.forget_listener(version_id)
                self._report(ListenerDrained(version_id))
            case ChainDrainEnded(drain_id, version_id, group_id):
                self._end_watch(drain_id)
                self.retired.pop(version_id, None)
                self._report(ChainsDrained(group_id))
            case ServerDrainEnded(drain_id, inbound_only, stop_listeners):
                self._end_watch(drain_id)
                if stop_listeners:
                    self._perform_all(self.manager.stop_listeners(inbound_only))
            case _:
                raise TypeError(f"not an action that takes no time: {action!r}")

    def _perform_all(self, actions: list[Action] | list[DrainAction]) -> None:
        for action in actions:
            self._perform(action)

    def _report(self, event: ListenerEvent) -> None:
        self._perform_all(self.manager.on_event(event))

    def _report_drain(self, event: DrainEvent) -> None:
        self._perform_all(self.drains.on_event(event))
        self.pool.flush()
        self._flush_routes()

    def _flush_routes(self) -> None:
        """Send the RDS and SDS subscription changes of the batch."""
        if self.routes is not None:
            self.routes.flush()
        if self.secrets is not None:
            self.secrets.flush()

    # -- listener versions ---------------------------------------------------------------------

    async def _start(self, instance: ListenerInstance, version_info: str) -> None:
        version_id = instance.version_id
        instance.version_info = version_info
        self.instances[version_id] = instance
        bound = self.pool.bound_addresses(version_id)
        configured = listener_addresses(instance.config)
        if not bound and not binds(instance.config):
            bound = configured  # reached only through a use_original_dst listener
        if instance.config.stat_prefix:
            instance.stat_prefix = f"listener.{instance.config.stat_prefix}."
        elif bound:
            first = bound[0]
            instance.stat_prefix = (
                f"listener.{first.path}."  # Envoy names a pipe listener's scope by its path
                if isinstance(first, PipeAddress)
                else listener_stat_prefix(*first)
            )
        if bound or instance.config.stat_prefix:
            self.stats.counter(instance.stat_prefix + "downstream_cx_total")
            self.stats.gauge(instance.stat_prefix + "downstream_cx_active")
            self.stats.counter(instance.stat_prefix + "no_filter_chain_match")
            self.stats.counter(instance.stat_prefix + GLOBAL_OVERFLOW_STAT)
        loop = asyncio.get_running_loop()
        try:
            self.pool.listen(version_id)
            for sock in self.pool.sockets_for(version_id) if self.accept else ():
                server = await loop.create_server(
                    lambda: Acceptor(instance), sock=sock.dup(), backlog=1024
                )
                instance.servers.append(server)
            instance.services.by_address.add(version_id, configured, instance)
        except OSError:
            log.exception("listener '%s' could not start accepting", instance.name)
            for server in instance.servers:
                server.close()
            del self.instances[version_id]
            self.drains.forget_listener(version_id)
            self._report(StartFailed(version_id))

    def _stop_accepting(self, version_id: int) -> None:
        instance = self.instances.get(version_id)
        if instance is None:
            return
        instance.services.by_address.remove(version_id)
        for server in instance.servers:
            server.close()
        instance.servers.clear()

    async def _update_chains(self, update: UpdateFilterChains) -> None:
        old_id, version_id, draining = (
            update.old_version_id,
            update.version_id,
            update.draining_chains,
        )
        instance = self.compiler.take(version_id)
        if instance is None:
            return
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
                    adopted.index = i
                    instance.chains[i] = adopted
            if instance.default_chain is not None:
                adopted = kept.get(instance.default_chain.key)
                if adopted is not None:
                    adopted.listener = instance
                    adopted.index = DEFAULT_CHAIN
                    instance.default_chain = adopted
            instance.active_connections = old.active_connections
        self.drains.set_listener_policy(version_id, update.policy)
        await self._start(instance, update.version_info)
        if old is None:
            return
        self._stop_accepting(old_id)
        del self.instances[old_id]
        self.drains.forget_listener(old_id)
        if not draining:
            return
        self.retired[old_id] = old
        chains = self._chains_in(ChainScope(old_id, draining))
        self._perform_all(
            self.drains.drain_chains(
                old_id,
                update.group_id,
                instance.name,
                instance.version_info,
                draining,
                [chain.name for chain in chains],
                update.policy,
                update.cause,
            )
        )

    # -- drains in time ------------------------------------------------------------------------

    def _chains_in(self, scope: DrainScope) -> list[ChainRuntime]:
        match scope:
            case ListenerScope(version_id):
                instance = self.instances.get(version_id)
                return [] if instance is None else instance.all_chains()
            case ChainScope(version_id, indexes):
                old = self.retired.get(version_id)
                if old is None:
                    return []
                found = [
                    old.default_chain if i == DEFAULT_CHAIN else old.chains[i] for i in indexes
                ]
                return [chain for chain in found if chain is not None]
            case ServerScope(inbound_only):
                return [
                    chain
                    for instance in self.instances.values()
                    if not inbound_only or instance.inbound
                    for chain in instance.all_chains()
                ]
            case HealthScope():
                return [
                    chain
                    for instance in self.instances.values()
                    if instance.drains_on_health_failure
                    for chain in instance.all_chains()
                ]
        return []

    def _watch(self, watch: WatchDrain) -> None:
        """Report `DeadlineReached` at the deadline and, for a drain that ends with its last
        connection, `DrainEmptied` once its chains are empty."""
        loop = asyncio.get_running_loop()
        drain_id = watch.drain_id
        chains = self._chains_in(watch.scope) if watch.until_empty else []
        timer = loop.call_later(watch.deadline_s, self._deadline, drain_id)
        self.watches[drain_id] = _Watch(
            watch.scope, chains, timer, watch.until_empty, watch.close_at_deadline
        )
        if watch.until_empty and self.accept:
            for chain in chains:
                chain.on_empty = functools.partial(self._check_empty, drain_id)
            loop.call_soon(self._check_empty, drain_id)

    def workers_report(self, connections: dict[int, int], tells: dict[int, int]) -> None:
        """The main process of `--concurrency N` (its own accept loop holds no connection):
        the workers' connections under each drain (by id). A drain that ends with its last
        connection and has none left ends as if emptied here; the counts are what
        `/drain_status` and a deadline report."""
        self._worker_connections = connections
        self._worker_tells = tells
        for drain_id, count in connections.items():
            watch = self.watches.get(drain_id)
            if count == 0 and watch is not None and watch.until_empty:
                self._report_drain(DrainEmptied(drain_id))

    def _check_empty(self, drain_id: int) -> None:
        watch = self.watches.get(drain_id)
        if watch is not None and all(not chain.connections for chain in watch.chains):
            self._report_drain(DrainEmptied(drain_id))

    def _deadline(self, drain_id: int) -> None:
        watch = self.watches.get(drain_id)
        if watch is None:
            return
        if watch.close_at_deadline:
            for chain in watch.chains:
                for conn in list(chain.connections):
                    conn.close_at_deadline()
        if not self.accept:
            connections = self._worker_connections.get(drain_id, 0)
        elif watch.until_empty:
            connections = sum(len(chain.connections) for chain in watch.chains)
        else:
            connections = self.connections(watch.scope)
        self._report_drain(DeadlineReached(drain_id, connections))

    def _end_watch(self, drain_id: int) -> None:
        watch = self.watches.pop(drain_id, None)
        if watch is None:
            return
        watch.timer.cancel()
        for chain in watch.chains:
            chain.on_empty = None
