"""DrainManager: every drain in progress, and what a connection should do about it.

A pure core: no event loop, no sockets; time, randomness and the wall clock are injected.
It owns

- the drain records: one per drained listener version (an LDS update or removal), per group
  of filter chains drained by an in-place update, and per server-wide drain (the admin's
  `/drain_listeners`, all listeners or inbound ones only, the parent side of a hot restart,
  and `/healthcheck/fail`); each is one entry of `/drain_status` while it runs, and one
  `drain complete` log line when it ends;
- the deadlines: a listener or chain drain ends when its last connection closes or at
  `--drain-time-s` (DT), when the connections still open are closed; a server-wide drain
  ends at DT (and `/drain_listeners?graceful` then stops the listeners); the health drain
  ends with `/healthcheck/ok`;
- the ramp (`listener/drain.py`'s `Drain`): the decision, before each response, to tell the
  client to go away (`drain_close`), composed of the chain's drain, its listener's, the
  server-wide drains that cover it and the health state; and the moment an idle connection
  is told (`tell_delay`).

The runtime (`listener/runtime.py`) asks for a drain when it executes the listener manager's
`DrainListener` or `UpdateFilterChains`, and the admin for the server-wide ones. Each start
returns `DrainAction`s for the runtime to execute; the runtime reports `DrainEmptied` and
`DeadlineReached` back to `on_event`, which returns the actions that end the drain. Drains,
actions and events name listener versions by id, and the connections a drain covers by a
`DrainScope`: the runtime, which holds the connections, resolves scopes and counts them.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from xds_proxy.listener.actions import NO_CAUSE, DrainCause
from xds_proxy.listener.drain import Drain, Pacer, Slots
from xds_proxy.listener.drain_policy import NO_POLICY, DrainPolicy, ListenerDrainPolicy
from xds_proxy.listener.plan import chain_label

# A drain's identity, its start and deadline -> the slots every worker books in and the start
# of their grid (None: this worker paces alone).
SharedSlots = Callable[[tuple, float, float], tuple[Slots, float] | None]


# As the runtime's own lines: the `drain complete` line is the listener component's.
log = logging.getLogger("xds_proxy.listener")

# -- scopes: which connections a drain covers -------------------------------------------------


@dataclass(frozen=True)
class ListenerScope:
    """Every connection of one listener version."""

    version_id: int


@dataclass(frozen=True)
class ChainScope:
    """The connections of some filter chains of one listener version (indexes into its
    `filter_chains`; the listener manager's `DEFAULT_CHAIN`, -1, for `default_filter_chain`)."""

    version_id: int
    chains: tuple[int, ...]


@dataclass(frozen=True)
class ServerScope:
    """Every listener's connections, or only those of inbound listeners."""

    inbound_only: bool


@dataclass(frozen=True)
class HealthScope:
    """The connections of listeners with `drain_type: DEFAULT` (`/healthcheck/fail`)."""


DrainScope = ListenerScope | ChainScope | ServerScope | HealthScope
HEALTH_SCOPE = HealthScope()


# -- actions for the runtime ------------------------------------------------------------------


@dataclass(frozen=True)
class TellConnections:
    """Push `on_drain()` to every connection in the scope, each at its `tell_delay`."""

    scope: DrainScope
    drain: Drain


@dataclass(frozen=True)
class WatchDrain:
    """Report `DeadlineReached` after `deadline_s` (first closing the scope's connections
    that are still open if `close_at_deadline`), and, if `until_empty`, `DrainEmptied` as
    soon as the scope has no connection left (checked once right away)."""

    drain_id: int
    scope: DrainScope
    deadline_s: float
    until_empty: bool
    close_at_deadline: bool


@dataclass(frozen=True)
class ListenerDrainEnded:
    """Stop watching; the version is gone: report `ListenerDrained` to the listener manager."""

    drain_id: int
    version_id: int


@dataclass(frozen=True)
class ChainDrainEnded:
    """Stop watching; the chains are gone: report `ChainsDrained` to the listener manager."""

    drain_id: int
    version_id: int
    group_id: int


@dataclass(frozen=True)
class ServerDrainEnded:
    """A server-wide drain reached DT; with `stop_listeners`, the listeners it covers stop
    (`/drain_listeners?graceful`)."""

    drain_id: int
    inbound_only: bool
    stop_listeners: bool


DrainAction = TellConnections | WatchDrain | ListenerDrainEnded | ChainDrainEnded | ServerDrainEnded


# -- events from the runtime ------------------------------------------------------------------


@dataclass(frozen=True)
class DrainEmptied:
    """The last connection of a watched drain closed (or it had none)."""

    drain_id: int


@dataclass(frozen=True)
class DeadlineReached:
    """A watched drain's DT passed; `connections` were still open in its scope."""

    drain_id: int
    connections: int


DrainEvent = DrainEmptied | DeadlineReached


# -- records ----------------------------------------------------------------------------------


@dataclass
class DrainRecord:
    """What `/drain_status` and the `drain complete` log line say about one drain."""

    kind: str  # "listener" | "filter_chain" | "server"
    listener: str | None
    version_info: str
    filter_chain: str | None
    drain: Drain
    scope: DrainScope
    wall_offset: float  # the wall clock minus the monotonic clock, for RFC 3339 output
    direction: str = "all"
    ended: DrainAction | None = None  # what the runtime does when the drain ends
    policy: DrainPolicy | None = None  # the values it runs under (None: the health drain)
    cause: DrainCause = NO_CAUSE  # the push that caused it (LDS drains)
    chains: tuple[str, ...] = ()  # an in-place drain's chains: names, else indexes

    def identity(self) -> tuple:
        """What names this drain alike in every process of `--concurrency N` (the values of
        these `report` fields: kind, listener, version_info, filter_chain, trigger,
        direction)."""
        return (
            self.kind,
            self.listener,
            self.version_info,
            self.filter_chain,
            self.drain.trigger,
            self.direction,
        )

    def report(self, now: float, connections: int, outcome: str | None = None) -> dict:
        doc: dict = {
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
            "connections": connections,
        }
        if self.policy is not None:
            doc["policy"] = self.policy.report()
            if self.drain.pacer is not None:
                doc["tells_booked"] = self.drain.pacer.granted
        if self.cause != NO_CAUSE:
            doc["cause"] = self.cause.report()
            if self.chains:
                doc["cause"]["chains"] = list(self.chains)
        if outcome is not None:
            doc["outcome"] = outcome
        return doc


@dataclass(frozen=True)
class AdminDrain:
    """A server-wide drain from `/drain_listeners` (or a hot restart): all listeners or
    inbound ones only."""

    drain: Drain
    inbound_only: bool

    def covers(self, inbound: bool) -> bool:
        return not self.inbound_only or inbound


class DrainManager:
    def __init__(
        self,
        strategy: str,
        drain_time_s: float,
        clock: Callable[[], float],
        rng: random.Random,
        wall_clock: Callable[[], float],
        max_closes_per_second: float = 0.0,
        completion_log_level: int = logging.INFO,
        pace_share: float = 1.0,
        shared_slots: SharedSlots | None = None,
    ) -> None:
        """For a worker process of `--concurrency N`: `completion_log_level` of the `drain
        complete` line (debug there: the main process's line is the one to read), and
        `pace_share` (1/N), this worker's share of every `max_closes_per_second`, so that
        the workers together tell at most that many: `shared_slots(drain key, start,
        deadline)` gives a paced drain the slots all workers book in (and the start of their
        grid), else each paces at its share."""
        self._pace_share = pace_share
        self._shared_slots = shared_slots
        self.strategy = strategy  # "gradual" | "immediate"
        self._completion_log_level = completion_log_level
        self.drain_time_s = drain_time_s
        # The command-line values; a listener's own policy overrides them for its drains.
        self.defaults = DrainPolicy(float(drain_time_s), strategy, float(max_closes_per_second))
        # Listener versions with a policy that also covers server-wide drains, by version id;
        # and the drains derived for them from a server-wide drain.
        self._server_policies: dict[int, ListenerDrainPolicy] = {}
        self._derived: dict[tuple[int, int], Drain] = {}  # (id(server drain), version id)
        self._clock = clock
        self._rng = rng
        self._wall_clock = wall_clock
        self._ids = itertools.count(1)
        self.records: dict[int, DrainRecord] = {}  # by drain id, in start order
        self._listeners: dict[int, Drain] = {}  # by version id
        self._chains: dict[tuple[int, int], Drain] = {}  # by (version id, chain index)
        self.admin_drains: list[AdminDrain] = []  # inbound-only, then possibly all
        self.health_failed = False
        self._health_record: int | None = None

    # -- starting drains ------------------------------------------------------------------

    def drain_listener(
        self,
        version_id: int,
        name: str,
        version_info: str,
        trigger: str,
        policy: ListenerDrainPolicy = NO_POLICY,
        cause: DrainCause = NO_CAUSE,
    ) -> list[DrainAction]:
        """A listener version drains (it was updated or removed, and no longer accepts),
        under its own policy where it has one."""
        resolved = policy.resolve(self.defaults)
        drain = self._new_drain(trigger, resolved)
        self._listeners[version_id] = drain
        scope = ListenerScope(version_id)
        record = DrainRecord(
            "listener",
            name,
            version_info,
            None,
            drain,
            scope,
            self._wall_offset(),
            policy=resolved,
            cause=cause,
        )
        drain_id = self._add(record)
        record.ended = ListenerDrainEnded(drain_id, version_id)
        return [self._watch(drain_id, scope, drain), TellConnections(scope, drain)]

    def drain_chains(
        self,
        version_id: int,
        group_id: int,
        name: str,
        version_info: str,
        chains: tuple[int, ...],
        chain_names: list[str],
        policy: ListenerDrainPolicy = NO_POLICY,
        cause: DrainCause = NO_CAUSE,
    ) -> list[DrainAction]:
        """Filter chains that an in-place update removed or changed drain; the version's other
        chains live on in the version that replaced it."""
        resolved = policy.resolve(self.defaults)
        drain = self._new_drain("in_place_update", resolved)
        for chain in chains:
            self._chains[(version_id, chain)] = drain
        scope = ChainScope(version_id, chains)
        record = DrainRecord(
            "filter_chain",
            name,
            version_info,
            ",".join(chain_names),
            drain,
            scope,
            self._wall_offset(),
            policy=resolved,
            cause=cause,
            chains=tuple(
                chain_label(index, chain_name)
                for index, chain_name in zip(chains, chain_names, strict=False)
            ),
        )
        drain_id = self._add(record)
        record.ended = ChainDrainEnded(drain_id, version_id, group_id)
        return [self._watch(drain_id, scope, drain), TellConnections(scope, drain)]

    def start_admin_drain(
        self, inbound_only: bool, stop_listeners: bool, trigger: str = "drain_listeners"
    ) -> list[DrainAction]:
        """`/drain_listeners` (and the parent side of a hot restart, trigger "hot_restart"):
        every (inbound) listener's connections drain on the configured strategy; at DT the
        drain ends, and with `stop_listeners` the listeners it covers stop. A second drain is
        a no-op (no actions) unless it widens an inbound-only drain to all listeners (as
        Envoy's `draining(direction)` check); the inbound listeners then keep the ramp of the
        drain that started first."""
        if any(inbound_only or not running.inbound_only for running in self.admin_drains):
            return []
        drain = self._new_drain(trigger, self.defaults)
        self.admin_drains.append(AdminDrain(drain, inbound_only))
        scope = ServerScope(inbound_only)
        record = DrainRecord(
            "server",
            None,
            "",
            None,
            drain,
            scope,
            self._wall_offset(),
            "inbound_only" if inbound_only else "all",
            policy=self.defaults,
        )
        drain_id = self._add(record)
        record.ended = ServerDrainEnded(drain_id, inbound_only, stop_listeners)
        return [
            TellConnections(scope, drain),
            WatchDrain(drain_id, scope, self.drain_time_s, False, False),
        ]

    def set_health(self, failed: bool, connections: int) -> None:
        """`/healthcheck/fail` and `/healthcheck/ok`: DEFAULT listeners drain-close every
        response while failed; nothing is pushed to idle connections, and connections already
        told to leave stay told. `connections`: those in `HEALTH_SCOPE` now (for the log line
        when the health drain ends)."""
        if failed == self.health_failed:
            return
        self.health_failed = failed
        if failed:
            drain = Drain("healthcheck_fail", "immediate", self.drain_time_s, self._clock())
            record = DrainRecord("server", None, "", None, drain, HEALTH_SCOPE, self._wall_offset())
            self._health_record = self._add(record)
        elif self._health_record is not None:
            self._finish(self._health_record, "healthcheck ok", connections)
            self._health_record = None

    # -- events from the runtime ------------------------------------------------------------

    def on_event(self, event: DrainEvent) -> list[DrainAction]:
        """A watched drain emptied or reached its deadline: it ends (once)."""
        match event:
            case DrainEmptied(drain_id):
                return self._finish(drain_id, "last connection closed", 0)
            case DeadlineReached(drain_id, connections):
                return self._finish(drain_id, "deadline", connections)
        return []

    # -- what connections ask -----------------------------------------------------------------

    def drain_close(
        self, version_id: int, chain: int, inbound: bool, drains_on_health_failure: bool
    ) -> bool:
        """Should the response being written now on this chain tell the client to go away?"""
        if self.health_failed and drains_on_health_failure:
            return True  # /healthcheck/fail: DEFAULT listeners close on every response
        covering = self.covering(version_id, chain, inbound)
        if not covering:
            return False
        now = self._clock()
        return any(drain.drain_close(now, self._rng) for drain in covering)

    def covering(self, version_id: int, chain: int, inbound: bool) -> list[Drain]:
        """Every drain that covers a chain now: its own, its listener's, the server's."""
        if not (self._chains or self._listeners or self.admin_drains):
            return []
        covering = [
            drain
            for drain in (self._chains.get((version_id, chain)), self._listeners.get(version_id))
            if drain is not None
        ]
        for admin in self.admin_drains:
            if admin.covers(inbound):
                covering.append(self.for_listener(admin.drain, version_id))
        return covering

    # -- per-listener policies of server-wide drains ------------------------------------------

    def set_listener_policy(self, version_id: int, policy: ListenerDrainPolicy) -> None:
        """A started (or policy-updated) version's own policy; only one that also covers
        server-wide drains (`applies_to_server_drain`) is kept."""
        if policy.applies_to_server_drain:
            self._server_policies[version_id] = policy
        else:
            self._server_policies.pop(version_id, None)

    def forget_listener(self, version_id: int) -> None:
        self._server_policies.pop(version_id, None)
        for key in [key for key in self._derived if key[1] == version_id]:
            del self._derived[key]

    def for_listener(self, drain: Drain, version_id: int) -> Drain:
        """The drain a version's connections follow under a server-wide `drain`: the drain
        itself, or one on the version's own policy (same start and trigger)."""
        policy = self._server_policies.get(version_id)
        if policy is None or drain.trigger == "healthcheck_fail":
            return drain
        key = (id(drain), version_id)
        derived = self._derived.get(key)
        if derived is None:
            resolved = policy.resolve(self.defaults, server_drain=True)
            derived = self._derived[key] = _make_drain(
                drain.trigger, resolved, drain.started_at, self._pace_share
            )
        return derived

    def latest_deadline(self, version_ids: list[int]) -> float:
        """The longest drain deadline among the listeners: every running drain's, and a
        server-wide drain started now on these versions."""
        now = self._clock()
        deadlines = [record.drain.deadline for record in self.records.values()]
        deadlines.append(now + self.longest_server_drain_s(version_ids))
        return max(deadlines)

    def longest_server_drain_s(self, version_ids: list[int]) -> float:
        """The longest drain time a server-wide drain of these versions runs under."""
        longest = self.defaults.drain_time_s
        for version_id in version_ids:
            policy = self._server_policies.get(version_id)
            if policy is not None:
                longest = max(longest, policy.resolve(self.defaults, True).drain_time_s)
        return longest

    def tell_delay(self, drain: Drain) -> float:
        """Seconds until a connection is told of `drain` (the idle schedule)."""
        return drain.tell_delay(self._clock(), self._rng)

    # -- /drain_status --------------------------------------------------------------------------

    def report(self, connections: Callable[[DrainScope], int]) -> list[dict]:
        """Every drain in progress, in start order; `connections` counts a scope's."""
        now = self._clock()
        return [record.report(now, connections(record.scope)) for record in self.records.values()]

    def report_counted(
        self, connections: Mapping[int, int], tells: Mapping[int, int]
    ) -> list[dict]:
        """The same, with each drain's connections and paced tells given by drain id
        (counted elsewhere: by the workers of `--concurrency N`)."""
        now = self._clock()
        reports = []
        for drain_id, record in self.records.items():
            doc = record.report(now, connections.get(drain_id, 0))
            if "tells_booked" in doc:
                doc["tells_booked"] = tells.get(drain_id, 0)
            reports.append(doc)
        return reports

    # -- internals -------------------------------------------------------------------------------

    def _new_drain(self, trigger: str, policy: DrainPolicy) -> Drain:
        return _make_drain(trigger, policy, self._clock(), self._pace_share)

    def _add(self, record: DrainRecord) -> int:
        drain_id = next(self._ids)
        self.records[drain_id] = record
        pacer = record.drain.pacer
        if pacer is not None and self._shared_slots is not None:
            shared = self._shared_slots(record.identity(), pacer.start, pacer.deadline)
            if shared is not None:
                pacer.share(shared[0], shared[1], pacer.rate / self._pace_share)
        return drain_id

    def _watch(self, drain_id: int, scope: DrainScope, drain: Drain) -> WatchDrain:
        return WatchDrain(drain_id, scope, drain.drain_time_s, True, True)

    def _finish(self, drain_id: int, outcome: str, connections: int) -> list[DrainAction]:
        record = self.records.pop(drain_id, None)
        if record is None:
            return []
        if log.isEnabledFor(self._completion_log_level):
            report = record.report(self._clock(), connections, outcome)
            log.log(self._completion_log_level, "drain complete: %s", json.dumps(report))
        match record.scope:
            case ListenerScope(version_id):
                self._listeners.pop(version_id, None)
            case ChainScope(version_id, chains):
                for chain in chains:
                    self._chains.pop((version_id, chain), None)
        return [] if record.ended is None else [record.ended]

    def _wall_offset(self) -> float:
        return self._wall_clock() - self._clock()


def _make_drain(trigger: str, policy: DrainPolicy, now: float, pace_share: float) -> Drain:
    pacer = None
    if policy.max_closes_per_second > 0:
        rate = policy.max_closes_per_second * pace_share
        pacer = Pacer(rate, now, now + policy.drain_time_s)
    return Drain(trigger, policy.strategy, policy.drain_time_s, now, pacer)


def _rfc3339(seconds: float) -> str:
    return (
        datetime.fromtimestamp(seconds, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
