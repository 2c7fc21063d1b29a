"""The main process's half of `--concurrency N`, as the server uses it: publish what it
applied and wait for the workers, end its drains by the workers' connections, merge the
workers' state into what admin shows, run admin commands in every worker, carry host
health both ways (the main process's checks and ejections to the workers, the workers'
request results to its outlier detectors: upstream/shared_health.py), and end in the workers
the EDS fetches that ended here without an assignment.

The main process accepts no connection, so its drains see none: each of its drains takes the
connection count of the workers' drains of the same identity (`merge.DRAIN_KEY`), once every
worker has applied the change that started it (it started before the last completed sync or
admin command, `settled_at`), and ends when that count is 0, or at its own deadline.
"""

from __future__ import annotations

import asyncio
import socket
import time

from envoy.config.bootstrap.v3 import bootstrap_pb2

from xds_proxy.listener.actions import SocketAddress, fixed_address
from xds_proxy.listener.drain_manager import DrainManager
from xds_proxy.listener.manager import ListenerManager
from xds_proxy.listener.runtime import ListenerRuntime
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.options import Options
from xds_proxy.stats import Stats
from xds_proxy.upstream.shared_health import DecidingHealth
from xds_proxy.workers.merge import DRAIN_KEY, HostCounts, merge_stats, sum_host_counts
from xds_proxy.workers.published import Publisher
from xds_proxy.workers.supervisor import Workers

DRAIN_CHECK_INTERVAL_S = 0.1  # how often the workers' drains are read while one runs
PUBLISH_INTERVAL_S = 1.0  # changes no response made (a TTL, a timer) reach the workers


class WorkerCoordinator:
    def __init__(
        self,
        options: Options,
        bootstrap: bootstrap_pb2.Bootstrap,
        publisher: Publisher,
        manager: ListenerManager,
        runtime: ListenerRuntime,
        drains: DrainManager,
        pool: ListenSocketPool,
        stats: Stats,
        admin_stats: Stats,
    ) -> None:
        self.workers = Workers(
            options.concurrency,
            options,
            bootstrap,
            stats,
            self.find_socket,
            self._started,
            self._worker_event,
        )
        # This process decides host health; the workers follow (upstream/shared_health.py).
        health = publisher.clusters.health
        assert isinstance(health, DecidingHealth)
        self._health = health
        self._publisher = publisher
        self._manager = manager
        self._runtime = runtime
        self._drains = drains
        self._pool = pool
        self._stats = stats
        self._admin_stats = admin_stats  # what admin shows: ours merged with the workers'
        # Monotonic: every change made here before this time has been applied by every
        # worker (a sync or an admin command they answered).
        self._settled_at = 0.0
        self._calls: list[asyncio.Task] = []  # admin commands the workers are running
        self._serving: list[dict[str, dict[str, int]]] = []  # per worker, per listener
        self.host_counts: HostCounts = {}  # the workers' per-host stats, added up (`/clusters`)
        # Route configurations and secrets that failed here (NACK, initial fetch timeout) and
        # have no copy yet: the workers' versions waiting for them go on as ours did.
        self._failed: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task] = []
        self._ended_fetches: list[str] = []  # as last told to the workers

    async def start(self) -> None:
        self._health.tell = self.workers.tell  # a worker started later gets `_started`'s
        await self.workers.start()
        self.workers.publish(self._publisher.snapshot())
        self._tasks = [
            asyncio.create_task(self._publish_regularly(), name="workers-publish"),
            asyncio.create_task(self._end_drains(), name="workers-drains"),
        ]

    async def stop(self) -> None:
        self._health.tell = None
        for task in self._tasks:
            task.cancel()
        await self.workers.stop()

    # -- configuration ------------------------------------------------------------------------

    async def sync(self) -> None:
        """What this process holds now, applied by every worker (or at the timeout)."""
        self._tell_ended_fetches()
        started = time.monotonic()
        await self.workers.sync(self._publisher.snapshot())
        self._settled(started)

    def find_socket(self, listener: str, address: SocketAddress) -> socket.socket | None:
        """A worker asks for a listener's socket: the one held on that address, or for a
        port-0 listener the one its newest version was given."""
        if fixed_address(address):
            return self._pool.held_socket(address)
        for version in (self._manager.warming.get(listener), self._manager.active.get(listener)):
            if version is None:
                continue
            for configured, sock in zip(
                version.addresses, self._pool.sockets_for(version.id), strict=False
            ):
                if configured == address:
                    return sock
        return None

    def _tell_ended_fetches(self) -> None:
        """EDS fetches that ended here without an assignment end in every worker too (the
        workers' own initial fetch timers could not end them at the same time, or at all)."""
        ended = self._publisher.ended_fetches()
        if ended != self._ended_fetches:
            self._ended_fetches = ended
            self.workers.tell({"eds_fetch_over": ended})

    async def _publish_regularly(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            self._tell_ended_fetches()  # an initial fetch timeout is no response
            started = time.monotonic()
            if self.workers.publish(self._publisher.snapshot()):
                await self.workers.wait_answered()
                self._settled(started)

    def _settled(self, started: float) -> None:
        self._settled_at = max(self._settled_at, started)

    def dependency_failed(self, kind: str, name: str) -> None:
        """A route configuration or secret failed here: in every worker too (the workers
        run no initial fetch timers of their own, so they follow ours)."""
        self._failed.add((kind, name))
        self.call("dependency_failed", kind, name)

    def dependency_ready(self, name: str) -> None:
        self._failed = {failed for failed in self._failed if failed[1] != name}

    def _started(self, index: int) -> None:
        """A worker (re)started: it learns every host's health as decided here, and what
        failed here before it started."""
        self.workers.tell_one(index, self._health.snapshot())
        self.workers.tell_one(index, {"eds_fetch_over": self._ended_fetches})
        for kind, name in sorted(self._failed):
            self.workers.call_one(index, "dependency_failed", kind, name)

    def _worker_event(self, index: int, message: dict) -> None:
        """A worker's request results and first traffic, for the clusters here to decide."""
        self._health.take(message)

    # -- drains ---------------------------------------------------------------------------------

    async def _end_drains(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_CHECK_INTERVAL_S)
            settled = self._settled_at
            if any(record.drain.started_at < settled for record in self._drains.records.values()):
                self._count_drains(await self.workers.drain_reports(), settled)

    def _count_drains(self, reports: list[list[dict]], settled: float) -> None:
        """Each drain of ours that every worker had applied before `reports` were asked for
        gets the workers' connections and paced tells under it."""
        left: dict[tuple, int] = {}
        tells: dict[tuple, int] = {}
        for report in reports:
            for entry in report:
                key = tuple(entry[field] for field in DRAIN_KEY)
                left[key] = left.get(key, 0) + entry["connections"]
                tells[key] = tells.get(key, 0) + entry.get("tells_booked", 0)
        known = {
            drain_id: record.identity()
            for drain_id, record in self._drains.records.items()
            if record.drain.started_at < settled
        }
        self._runtime.workers_report(
            {drain_id: left.get(key, 0) for drain_id, key in known.items()},
            {drain_id: tells.get(key, 0) for drain_id, key in known.items()},
        )

    # -- admin ------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Before an admin request: the workers' stats, drains and connections, merged with
        ours."""
        settled = self._settled_at  # what the answers reflect at least
        states = await self.workers.states()
        merged = merge_stats(self._stats.snapshot(), [state["stats"] for state in states])
        self._admin_stats.take(Stats.load(merged))
        self._count_drains([state["drains"] for state in states], settled)
        self._serving = [state["serving"] for state in states]
        self.host_counts = sum_host_counts([state["hosts"] for state in states])

    def serving(self, version_id: int, key: str) -> int:
        """The workers' connections (as read before this admin request) of a serving version:
        all of them (`"all"`) or one chain's (its index)."""
        for name, version in self._manager.active.items():
            if version.id == version_id:
                return sum(serving.get(name, {}).get(key, 0) for serving in self._serving)
        return 0

    def call(self, name: str, *args: object) -> None:
        """Run an admin command in every worker too (`finish_calls` waits for it)."""
        self._calls.append(asyncio.create_task(self._call(name, *args)))

    async def finish_calls(self) -> None:
        calls, self._calls = self._calls, []
        await asyncio.gather(*calls)

    async def _call(self, name: str, *args: object) -> None:
        started = time.monotonic()
        await self.workers.call(name, *args)
        self._settled(started)
