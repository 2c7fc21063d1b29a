"""ListenerManager: the pure state machine of listener versions.

It owns which listener versions exist and in which state (active, draining, stopped by
`/drain_listeners`), the listeners' error states for `/config_dump`, and the
`listener_manager.*` stats. It does no I/O and has no clock of its own. An update returns a
list of actions (plain data naming versions by id) that the runtime (`runtime.py`) executes,
in order, on the event loop; the runtime then closes the listen sockets nobody holds any more
(closes are deferred until a whole response has been applied, so a remove and an add on one
address hand the socket over).

Applying a listener is, listener by listener: check and compile it (the `compile` port: the
filter chains are built without sockets, a `ConfigError` NACKs this listener only), then the
explicit reservation step: a `ReserveSockets` request to the `SocketReservations` port, which
binds (or shares the sockets of the version it replaces) but does not listen; a `BindError`
NACKs this listener only, and the other listeners of the response still apply. Listening
starts when the runtime executes `StartListener`.

Actions (plain data, defined in `actions.py` with the events):

- `StartListener(version_id)`: listen and accept with the compiled version on its reserved
  sockets. A full update of a name starts the new version *before* the old one stops.
- `StopAccepting(version_id)`: close that version's accept loops.
- `DrainListener(version_id, trigger)`: the version's connections drain; the drain manager
  (`drain_manager.py`) runs the drain and the runtime reports `ListenerDrained` at its end.
- `UpdateFilterChains(old_version_id, version_id, group_id, draining_chains)`: in-place
  filter-chain update; the new version takes over accepting on the same sockets and adopts
  the old version's connections; those on the chains listed (indexes into the old config's
  `filter_chains`, `DEFAULT_CHAIN` for `default_filter_chain`) drain, and the runtime reports
  `ChainsDrained(group_id)` at the end.
- `ReleaseSockets(version_id)`: the version no longer needs its sockets (closed at the end of
  the batch unless another version holds them).
- `CloseSockets(version_id)`: `/drain_listeners` stopped the version: close its listen
  sockets now, so that new connects are refused; the version stays listed.
- `HandOverSockets()`: the parent of a hot restart closes its copies of every listen socket.
- `ForgetVersion(version_id)`: a compiled version that will never start (its listener was
  NACKed after compiling).

- `WatchRoutes(version_id, names)`: the version uses these RDS route configurations (the
  route registry subscribes to a name when its first user appears); `UnwatchRoutes(version_id)`:
  it uses them no more (a drained, removed or discarded version; the last user gone, the
  registry unsubscribes). `WatchSecrets` / `UnwatchSecrets`: the same for the SDS secrets of
  its TLS filter chains (the secret store).

- `UpdatePolicy(version_id, version_info, policy)`: a change confined to the listener's
  drain-policy metadata (`metadata.filter_metadata["xds_proxy.drain"]`, `drain_policy.py`)
  is applied to the running version: it takes the new config and policy, nothing drains
  (counted as `listener_modified`). `StartListener`, `DrainListener` and
  `UpdateFilterChains` carry the version's policy, and the drains the push's `DrainCause`
  (version, nonce, changed field paths).

Every apply records one `Outcome` per listener (`plan.py`) as it decides; `plan()` runs the
same diff on a copy of the state (a compile port that keeps nothing, no socket bound, a
throwaway stats store), so `POST /listeners/plan` tells what a push would do, changing
nothing.

Events the runtime reports back (`on_event`): `ListenerDrained(version_id)`,
`ChainsDrained(group_id)`, `StartFailed(version_id)` (listen() or accept failed); and the
route registry's `RoutesReady(name)` and `RoutesFailed(name)` (NACKed, or its
`initial_fetch_timeout` expired), and the secret store's `SecretsReady(name)` and
`SecretsFailed(name)`.

Warming (docs/warming.md): a version whose route configurations or SDS secrets (its
`Dependency`s, read through the `ResourceStates` ports) are not all ready is *warming*; a
secret warms the version exactly as a route configuration does (a failed one lets a new
listener start: its TLS handshakes are refused until the secret arrives, as Envoy's). A new
listener warms bound but not listening (connections are refused) and is ACKed at once; a
changed listener's old version keeps serving meanwhile. When the last one is ready the
manager emits what it emits for an add, a full update or an in-place update (the counters
`listener_modified` and `listener_in_place_updated` move at push time,
`listener_create_success` at warm time, as Envoy's). A NACKed or timed-out route
configuration ends a *new* listener's warming (active with no routes: 404, as Envoy); a
*changed* listener keeps its old version serving and the new one warming until a valid
configuration arrives (where we do better than Envoy, which serves 404). A removed warming
listener is dropped at once; a warming version replaced by a newer one, or by the active
config again, is discarded. A route configuration the registry already holds is used at
once. Before the workers start (the first LDS response) a new warming listener counts as
active in the gauges, as in Envoy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_pb2

from xds_proxy.config.pgv import canonical_ip
from xds_proxy.config.rds import listener_route_names
from xds_proxy.config.secrets import listener_secret_names
from xds_proxy.config_key import config_key
from xds_proxy.errors import ConfigError
from xds_proxy.listener import plan as outcome
from xds_proxy.listener.actions import (
    DEFAULT_CHAIN,
    NO_CAUSE,
    Action,
    ChainsDrained,
    CloseSockets,
    Dependency,
    DependencyKind,
    DrainCause,
    DrainListener,
    DrainTrigger,
    ForgetVersion,
    HandOverSockets,
    ListenerDrained,
    ListenerEvent,
    PipeAddress,
    ReleaseSockets,
    ReserveSockets,
    RoutesFailed,
    RoutesReady,
    RouteState,
    SecretsFailed,
    SecretsReady,
    SocketAddress,
    StartFailed,
    StartListener,
    StopAccepting,
    UnwatchRoutes,
    UnwatchSecrets,
    UpdateFilterChains,
    UpdatePolicy,
    WatchRoutes,
    WatchSecrets,
    fixed_address,
)
from xds_proxy.listener.config_diff import changed_fields
from xds_proxy.listener.drain_policy import (
    NO_POLICY,
    POLICY_KEY,
    ListenerDrainPolicy,
    listener_drain_policy,
    without_policy,
)
from xds_proxy.listener.plan import Outcome
from xds_proxy.stats import Stats

_SAME_BYTES = "identical: the same bytes"


class ResourceStates(Protocol):
    def state(self, name: str) -> RouteState:
        """Where the named resource (a route configuration, a secret) is now."""
        ...


class _AllReady:
    def state(self, name: str) -> RouteState:
        return RouteState.READY


class BindError(Exception):
    """A listen socket could not be had; the message is Envoy's `cannot bind 'ip:port': ...`."""


class SocketReservations(Protocol):
    def reserve(self, request: ReserveSockets) -> None:
        """Carry the reservation out now; raise BindError if an address cannot be had."""
        ...


@dataclass(eq=False)
class ListenerVersion:
    id: int
    name: str
    config: listener_pb2.Listener
    raw: bytes  # the config as serialized: equal bytes, equal config (the fast check)
    version_info: str
    last_updated: float
    static: bool
    addresses: list[SocketAddress]
    draining: bool = False
    stopped: bool = False  # by /drain_listeners: listed, not accepting
    route_names: frozenset[str] = frozenset()  # the RDS route configurations it uses
    secret_names: frozenset[str] = frozenset()  # the SDS secrets its TLS chains use
    waiting: set[Dependency] = field(default_factory=set)  # while warming: what is not ready

    def dependencies(self) -> list[Dependency]:
        return [Dependency(DependencyKind.ROUTES, name) for name in sorted(self.route_names)] + [
            Dependency(DependencyKind.SECRET, name) for name in sorted(self.secret_names)
        ]

    replaces: bool = False  # while warming: an active version of its name serves meanwhile
    in_place: bool = False  # while warming: it takes over by an in-place update
    warming_since: float = 0.0
    # While a new listener warms on an address that a version removed in the same response
    # accepted on: that version's StopAccepting, ReleaseSockets and DrainListener, held back
    # so that the address keeps accepting until this one is warm (or discarded).
    handover: list = field(default_factory=list)
    policy: ListenerDrainPolicy = NO_POLICY  # metadata "xds_proxy.drain" (drain_policy.py)
    cause: DrainCause = NO_CAUSE  # the push that replaces the active version
    # An in-place update: (the active version's id, its chains that drain), found once.
    in_place_chains: tuple[int, tuple[int, ...]] | None = None
    _key: bytes | None = None
    # What a push that sends this very message again records (made once, here: a SotW push
    # of N unchanged listeners records N of them).
    same_message: Outcome = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.same_message = Outcome(self.name, outcome.NO_OP, reason=_SAME_BYTES)

    def key(self) -> bytes:
        """config_key(config), computed once and only when bytes alone cannot tell."""
        if self._key is None:
            self._key = config_key(self.config)
        return self._key

    def same_config(self, other: listener_pb2.Listener, other_raw: bytes) -> bool:
        return self.raw == other_raw or self.key() == config_key(other)


@dataclass(frozen=True)
class DrainingChains:
    group_id: int
    version_id: int  # the old version whose chains drain
    chains: tuple[int, ...]


@dataclass(frozen=True)
class ErrorState:
    name: str
    failed_configuration: listener_pb2.Listener
    last_update_attempt: float
    details: str


@dataclass
class ApplyResult:
    actions: list[Action] = field(default_factory=list)
    nack_message: str | None = None  # None: ACK
    outcomes: list[Outcome] = field(default_factory=list)  # per listener, in decision order


class _NoBinding:
    """The socket port of a plan: nothing is bound (an OS bind error is not predicted)."""

    def reserve(self, request: ReserveSockets) -> None:
        return None


class ListenerManager:
    def __init__(
        self,
        stats: Stats,
        sockets: SocketReservations,
        compile: Callable[[int, listener_pb2.Listener], None],
        clock: Callable[[], float],
        routes: ResourceStates | None = None,
        secrets: ResourceStates | None = None,
    ) -> None:
        self._stats = stats
        self._states: dict[DependencyKind, ResourceStates] = {
            DependencyKind.ROUTES: routes if routes is not None else _AllReady(),
            DependencyKind.SECRET: secrets if secrets is not None else _AllReady(),
        }
        self.warming: dict[str, ListenerVersion] = {}  # by name: the version waiting
        self._watching: set[int] = set()  # version ids that WatchRoutes was emitted for
        self._watching_secrets: set[int] = set()  # ... and WatchSecrets
        self._workers_started = False
        self._sockets = sockets
        self._compile = compile
        self._clock = clock
        self._next_id = 1
        self._push = DrainCause("", "")  # the LDS push being applied (version, nonce)
        self._outcomes: list[Outcome] = []
        self.active: dict[str, ListenerVersion] = {}
        self.draining: dict[int, ListenerVersion] = {}  # by version id, oldest first
        self._owners: dict[SocketAddress, ListenerVersion] = {}  # fixed-port addresses in use
        self.draining_chains: list[DrainingChains] = []
        self.errors: dict[str, ErrorState] = {}
        self.overall_errors: list[ErrorState] = []
        self.version_info = ""  # ListenersConfigDump.version_info (system version)
        self.stopped = False  # after /drain_listeners stopped every listener
        self.stopped_inbound = False  # ... or only the inbound ones
        for name in (
            "listener_added",
            "listener_modified",
            "listener_removed",
            "listener_stopped",
            "listener_in_place_updated",
            "listener_create_success",
            "listener_create_failure",
        ):
            stats.counter(f"listener_manager.{name}")
        self._update_gauges()
        stats.gauge("listener_manager.workers_started")

    # -- static listeners ------------------------------------------------------------------

    def add_static(self, listener: listener_pb2.Listener) -> list[Action]:
        """A bootstrap listener; raises ConfigError or BindError (start-up fails, and the
        process exits)."""
        if listener.name in self.active:
            raise ConfigError(f"duplicate listener {listener.name} found")
        version = self._build(listener, "", static=True)
        self._check_duplicate_address(version)
        self._reserve(version, share_from=None)
        actions: list[Action] = []
        self._watch(version, actions)
        self._stats.counter("listener_manager.listener_added").inc()
        version.waiting = self._pending(version, new=True)
        if version.waiting:  # it warms on its RDS routes or secrets; the server waits for it
            self._start_warming(version)
            self._update_gauges()
            return actions
        self._activate(version)
        self._update_gauges()  # as Envoy: a bootstrap listener counts as an active listener
        return [*actions, StartListener(version.id, version.version_info)]

    def workers_started(self) -> None:
        self._workers_started = True
        self._stats.gauge("listener_manager.workers_started").set(1)
        self._update_gauges()

    @property
    def listed_warming(self) -> list[ListenerVersion]:
        """Before the workers start, Envoy lists a new warming listener in `/listeners`."""
        if self._workers_started:
            return []
        return [version for version in self.warming.values() if not version.replaces]

    def route_names_in_use(self) -> set[str]:
        """The RDS names of every version held: active, warming or draining."""
        versions = [*self.active.values(), *self.warming.values(), *self.draining.values()]
        return {name for version in versions for name in version.route_names}

    def initializing_count(self) -> int:
        return sum(1 for version in self.warming.values() if not version.replaces)

    def initializing(self) -> bool:
        """Before the workers start: does a new listener still warm (the server waits)?"""
        return any(not version.replaces for version in self.warming.values())

    # -- LDS, state of the world -----------------------------------------------------------

    def apply_sotw(
        self, version_info: str, listeners: list[listener_pb2.Listener], nonce: str = ""
    ) -> ApplyResult:
        """A state-of-the-world response: every dynamic listener not named in it is removed."""
        names = [listener.name for listener in listeners]  # each read once (a upb string)
        wanted = set(names)
        removed = [n for n, v in self.active.items() if not v.static and n not in wanted]
        removed += [
            n
            for n, v in self.warming.items()
            if not v.static and n not in wanted and n not in self.active
        ]
        return self._apply(version_info, listeners, removed, nonce, names)

    def apply_delta(
        self,
        version_info: str,
        listeners: list[listener_pb2.Listener],
        removed: list[str],
        nonce: str = "",
    ) -> ApplyResult:
        """A delta response: `removed_resources` first (unknown names ignored), then the
        added/updated listeners, through the same path as state of the world."""
        known = [
            n
            for n in removed
            if (n in self.active and not self.active[n].static)
            or (n in self.warming and n not in self.active and not self.warming[n].static)
        ]
        return self._apply(version_info, listeners, list(dict.fromkeys(known)), nonce)

    # -- dry run ---------------------------------------------------------------------------

    def plan(
        self,
        version_info: str,
        listeners: list[listener_pb2.Listener],
        removed: list[str] | None,
        compile: Callable[[int, listener_pb2.Listener], None],
    ) -> ApplyResult:
        """What `apply_sotw` (`removed` None) or `apply_delta` would do, changing nothing: the
        real diff runs on a copy of this manager's state, with `compile` (a check that keeps
        nothing), no socket bound and a throwaway stats store. The result's actions and
        outcomes are those the real apply would give now (the same version ids)."""
        shadow = self._copy(compile)
        if removed is None:
            return shadow.apply_sotw(version_info, listeners)
        return shadow.apply_delta(version_info, listeners, removed)

    def _copy(self, compile: Callable[[int, listener_pb2.Listener], None]) -> ListenerManager:
        shadow = ListenerManager(
            Stats(),
            _NoBinding(),
            compile,
            self._clock,
            self._states[DependencyKind.ROUTES],
            self._states[DependencyKind.SECRET],
        )
        copies: dict[int, ListenerVersion] = {}

        def copied(version: ListenerVersion) -> ListenerVersion:
            if version.id not in copies:
                copies[version.id] = replace(
                    version, waiting=set(version.waiting), handover=list(version.handover)
                )
            return copies[version.id]

        shadow.active = {name: copied(v) for name, v in self.active.items()}
        shadow.warming = {name: copied(v) for name, v in self.warming.items()}
        shadow.draining = {vid: copied(v) for vid, v in self.draining.items()}
        shadow._owners = {address: copied(v) for address, v in self._owners.items()}
        shadow.draining_chains = list(self.draining_chains)
        shadow._watching = set(self._watching)
        shadow._watching_secrets = set(self._watching_secrets)
        shadow._workers_started = self._workers_started
        shadow._next_id = self._next_id
        shadow.version_info = self.version_info
        shadow.stopped = self.stopped
        shadow.stopped_inbound = self.stopped_inbound
        return shadow

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _note(self, name: str, kind: str, **details) -> None:
        self._outcomes.append(Outcome(name, kind, **details))

    def _apply(
        self,
        version_info: str,
        listeners: list[listener_pb2.Listener],
        removed: list[str],
        nonce: str = "",
        names: list[str] | None = None,
    ) -> ApplyResult:
        """`names`: the listeners' names in order, when the caller has read them already."""
        result = ApplyResult()
        self._outcomes = result.outcomes
        self._push = DrainCause(version_info, nonce)
        if self.stopped:
            for listener in listeners:  # after /drain_listeners: ACK and ignore
                self._note(listener.name, outcome.NO_OP, reason="listeners stopped: ignored")
            return result
        self.errors.clear()
        self.overall_errors.clear()
        any_applied = False
        for name in removed:
            self._remove(name, result.actions)
            any_applied = True
        failures: list[tuple[listener_pb2.Listener, str]] = []
        seen: set[str] = set()
        active, warming, outcomes = self.active, self.warming, self._outcomes
        if names is None:
            names = [listener.name for listener in listeners]
        for listener, name in zip(listeners, names, strict=True):
            if name in seen:
                failures.append((listener, f"duplicate listener {name} found"))
                continue
            seen.add(name)
            existing = active.get(name)
            if (
                existing is not None
                and existing.config is listener
                and not self.stopped_inbound
                and name not in warming
            ):
                # The very message it holds (the LDS client reuses an unchanged resource's):
                # `_add_or_update`'s first answer, without the call (most of a SotW push).
                outcomes.append(existing.same_message)
                continue
            try:
                any_applied |= self._add_or_update(listener, version_info, result.actions)
            except (ConfigError, BindError) as error:
                failures.append((listener, str(error)))
            except Exception as error:  # a bug in one listener must not lose the update's
                failures.append((listener, f"internal error: {error!r}"))  # other actions
        if any_applied:
            self.version_info = version_info
        if failures:
            now = self._clock()
            for listener, details in failures:
                state = ErrorState(listener.name, listener, now, details)
                self.errors[listener.name] = state
                self.overall_errors.append(state)
            lines = "".join(f"{listener.name}: {details}\n" for listener, details in failures)
            result.nack_message = f"Error adding/updating listener(s) {lines}"
            for listener, details in failures:
                self._note(listener.name, outcome.REJECTED, nack=f"{listener.name}: {details}")
        self._update_gauges()
        return result

    def _add_or_update(
        self, listener: listener_pb2.Listener, version_info: str, actions: list[Action]
    ) -> bool:
        name = listener.name
        if self.stopped_inbound and _inbound(listener):
            # inbound listeners were stopped by /drain_listeners?inboundonly
            self._note(name, outcome.NO_OP, reason="inbound listeners stopped: ignored")
            return False
        existing = self.active.get(name)
        warming = self.warming.get(name)
        if warming is None and existing is not None and existing.config is listener:
            # The very message it holds (the LDS client reuses an unchanged resource's).
            self._note(name, outcome.NO_OP, reason=_SAME_BYTES)
            return False
        raw = listener.SerializeToString()
        if (existing is not None and existing.static) or (warming is not None and warming.static):
            self._note(name, outcome.NO_OP, reason="static listener: LDS never changes it")
            return False
        if warming is not None:
            if warming.same_config(listener, raw):
                self._note(
                    name,
                    outcome.NO_OP,
                    reason="the warming version again: it keeps warming",
                    waiting=tuple(sorted(str(d) for d in warming.waiting)),
                )
                return False
            if existing is not None and existing.same_config(listener, raw):
                # The active config pushed back: the warming version is discarded, no drain.
                self._discard_warming(name, actions)
                self._stats.counter("listener_manager.listener_modified").inc()
                self._note(
                    name,
                    outcome.NO_OP,
                    reason="the active config again: warming one dropped",
                )
                return True
        elif existing is not None and existing.same_config(listener, raw):
            self._note(name, outcome.NO_OP, reason=_why_equal(existing, raw))
            return False
        if existing is not None and warming is None and _only_policy_differs(existing, listener):
            self._update_policy(existing, listener, raw, version_info, actions)
            return True
        version = self._build(listener, version_info, raw=raw)
        # Replaced by a newer version: discarded, but its UnwatchRoutes goes after the new
        # version's WatchRoutes, so that a route config both use is never let go meanwhile.
        discarded: list[Action] = []
        if warming is not None:
            self._discard_warming(listener.name, actions, after=discarded)
        try:
            self._place(existing, version, actions, replaced_warming=warming is not None)
        except Exception:
            actions.append(ForgetVersion(version.id))  # compiled, but it will never start
            raise
        finally:
            actions.extend(discarded)
        return True

    def _place(
        self,
        existing: ListenerVersion | None,
        version: ListenerVersion,
        actions: list[Action],
        replaced_warming: bool = False,
    ) -> None:
        if existing is None:
            self._check_duplicate_address(version)
            self._reserve(version, share_from=None)
            self._watch(version, actions)
            name = "listener_modified" if replaced_warming else "listener_added"
            self._stats.counter(f"listener_manager.{name}").inc()
            version.waiting = self._pending(version, new=True)
            self._note(
                version.name, outcome.ADDED, waiting=tuple(sorted(str(d) for d in version.waiting))
            )
            if version.waiting:
                self._hold_back_removals(version, actions)
                self._start_warming(version)
                return
            self._activate(version)
            actions.append(StartListener(version.id, version.version_info, version.policy))
            return
        listener = version.config
        if _reuse_port(existing.config) != _reuse_port(listener):
            raise ConfigError(
                f"Listener {listener.name}: reuse port cannot be changed during an update"
            )
        in_place = _in_place_possible(existing.config, listener)
        same_address = _config_addresses(existing.config) == _config_addresses(listener)
        if in_place:
            version.version_info = existing.version_info  # as Envoy: the listener keeps it
        elif not same_address:
            self._check_duplicate_address(version, ignore_name=version.name)
        self._reserve(version, share_from=existing.id if in_place or same_address else None)
        self._watch(version, actions)
        self._stats.counter("listener_manager.listener_modified").inc()
        if in_place:
            self._stats.counter("listener_manager.listener_in_place_updated").inc()
        version.waiting = self._pending(version, new=False)
        version.cause = self._push._replace(changed=changed_fields(existing.config, listener))
        chains = _draining_chains(existing.config, listener) if in_place else ()
        version.in_place_chains = (existing.id, chains) if in_place else None
        self._note(
            version.name,
            outcome.IN_PLACE if in_place else outcome.FULL_UPDATE,
            old_version_id=existing.id,
            old_version_info=existing.version_info,
            chains=chains,
            chain_names=tuple(_chain_name(existing.config, index) for index in chains),
            waiting=tuple(sorted(str(d) for d in version.waiting)),
            cause=version.cause,
            policy=existing.policy,
        )
        if version.waiting:
            version.replaces = True
            version.in_place = in_place
            self._start_warming(version)
            return
        self._take_over(existing, version, in_place, actions)

    def _take_over(
        self,
        existing: ListenerVersion,
        version: ListenerVersion,
        in_place: bool,
        actions: list[Action],
    ) -> None:
        if in_place:
            self._update_in_place(existing, version, actions)
        else:
            self._update_full(existing, version, actions)

    def _update_in_place(
        self, existing: ListenerVersion, version: ListenerVersion, actions: list[Action]
    ) -> None:
        """Only the filter chains changed: same sockets, only changed or removed chains drain."""
        self._set_active(version)
        found = version.in_place_chains
        if found is not None and found[0] == existing.id:
            chains = found[1]
        else:
            chains = _draining_chains(existing.config, version.config)
        group_id = self._new_id()
        if chains:
            self.draining_chains.append(DrainingChains(group_id, existing.id, chains))
        actions.append(
            UpdateFilterChains(
                existing.id,
                version.id,
                version.version_info,
                group_id,
                chains,
                existing.policy,
                version.cause,
            )
        )
        actions.append(ReleaseSockets(existing.id))
        if not chains:
            self._unwatch(existing.id, actions)
        self._stats.counter("listener_manager.listener_create_success").inc()

    def _update_full(
        self, existing: ListenerVersion, version: ListenerVersion, actions: list[Action]
    ) -> None:
        """Any listener-level field changed: the new version takes over the same listen socket
        (or binds the new address), starts, and only then the old version drains."""
        self._activate(version)
        self._start_draining(
            existing, DrainTrigger.LDS_UPDATE, actions, started=version, cause=version.cause
        )

    def _update_policy(
        self,
        existing: ListenerVersion,
        listener: listener_pb2.Listener,
        raw: bytes,
        version_info: str,
        actions: list[Action],
    ) -> None:
        """Only the drain-policy metadata changed: the running version takes the new config
        (config_dump shows it) and policy; nothing drains (Envoy would fully update)."""
        policy = listener_drain_policy(listener)  # ConfigError: NACKed, nothing changes
        self._note(
            listener.name,
            outcome.POLICY_UPDATE,
            old_version_id=existing.id,
            old_version_info=existing.version_info,
            cause=DrainCause(
                version_info, self._push.nonce, changed_fields(existing.config, listener)
            ),
            policy=policy,
        )
        existing.config = listener
        existing.raw = raw
        existing._key = None
        existing.version_info = version_info
        existing.last_updated = self._clock()
        existing.policy = policy
        self._stats.counter("listener_manager.listener_modified").inc()
        actions.append(UpdatePolicy(existing.id, version_info, policy))

    def _remove(self, name: str, actions: list[Action]) -> None:
        if name in self.warming:
            self._discard_warming(name, actions)  # dropped at once, never draining
        if name in self.active:
            old = self._pop_active(name)
            self._note(
                name,
                outcome.REMOVED,
                old_version_id=old.id,
                old_version_info=old.version_info,
                cause=self._push,
                policy=old.policy,
            )
            self._start_draining(old, DrainTrigger.LDS_REMOVE, actions, cause=self._push)
        else:
            self._note(name, outcome.REMOVED, reason="a warming version, dropped: nothing drains")
        self._stats.counter("listener_manager.listener_removed").inc()

    # -- warming ------------------------------------------------------------------------------

    def _pending(self, version: ListenerVersion, new: bool) -> set[Dependency]:
        """The route configurations and secrets the version still waits for: those not held;
        for a new listener a failed one (NACKed, timed out) does not hold it back (it serves
        404, or refuses TLS handshakes)."""
        pending = set()
        for dependency in version.dependencies():
            state = self._states[dependency.kind].state(dependency.name)
            if state is RouteState.READY or (state is RouteState.FAILED and new):
                continue
            pending.add(dependency)
        return pending

    def _hold_back_removals(self, version: ListenerVersion, actions: list[Action]) -> None:
        """No connection is refused at an address that was serving: a version removed in this
        response on one of the new listener's addresses keeps accepting until it is warm."""
        mine = {address for address in version.addresses if fixed_address(address)}
        held = {
            old.id
            for old in self.draining.values()
            if mine.intersection(old.addresses)
            and StopAccepting(old.id) in actions
            and DrainListener(old.id, DrainTrigger.LDS_REMOVE) in actions
        }
        if not held:
            return
        kinds = (StopAccepting, ReleaseSockets, DrainListener)
        version.handover = [a for a in actions if isinstance(a, kinds) and a.version_id in held]
        actions[:] = [a for a in actions if not (isinstance(a, kinds) and a.version_id in held)]

    def _start_warming(self, version: ListenerVersion) -> None:
        version.warming_since = self._clock()
        self.warming[version.name] = version
        if not version.replaces:
            for address in version.addresses:
                if fixed_address(address):
                    self._owners[address] = version

    def _discard_warming(
        self, name: str, actions: list[Action], after: list[Action] | None = None
    ) -> None:
        """Drop a warming version; its own actions go to `after` when given (the end of the
        batch), the held-back removals of its address's previous owner to `actions`."""
        version = self.warming.pop(name)
        if not version.replaces:
            self._forget_addresses(version)
        own = after if after is not None else actions
        self._unwatch(version.id, own)
        own.append(ReleaseSockets(version.id))
        own.append(ForgetVersion(version.id))
        actions.extend(version.handover)

    def _dependency_changed(
        self, dependency: Dependency, ready: bool, actions: list[Action]
    ) -> None:
        for version in list(self.warming.values()):
            if dependency not in version.waiting:
                continue
            if ready or not version.replaces:
                version.waiting.discard(dependency)
            if not version.waiting:
                self._warmed(version, actions)

    def _warmed(self, version: ListenerVersion, actions: list[Action]) -> None:
        del self.warming[version.name]
        existing = self.active.get(version.name)
        if existing is None:
            self._activate(version)
            actions.append(StartListener(version.id, version.version_info, version.policy))
            actions.extend(version.handover)  # the previous owner of the address stops now
            version.handover = []
            return
        self._take_over(existing, version, version.in_place, actions)

    def _watch(self, version: ListenerVersion, actions: list[Action]) -> None:
        if version.route_names:
            self._watching.add(version.id)
            actions.append(WatchRoutes(version.id, tuple(sorted(version.route_names))))
        if version.secret_names:
            self._watching_secrets.add(version.id)
            actions.append(WatchSecrets(version.id, tuple(sorted(version.secret_names))))

    def _unwatch(self, version_id: int, actions: list[Action]) -> None:
        if version_id in self._watching:
            self._watching.discard(version_id)
            actions.append(UnwatchRoutes(version_id))
        if version_id in self._watching_secrets:
            self._watching_secrets.discard(version_id)
            actions.append(UnwatchSecrets(version_id))

    def _start_draining(
        self,
        old: ListenerVersion,
        trigger: DrainTrigger,
        actions: list[Action],
        started: ListenerVersion | None = None,
        cause: DrainCause = NO_CAUSE,
    ) -> None:
        old.draining = True
        self.draining[old.id] = old
        if started is not None:
            actions.append(StartListener(started.id, started.version_info, started.policy))
        actions.append(StopAccepting(old.id))
        actions.append(ReleaseSockets(old.id))
        actions.append(DrainListener(old.id, trigger, old.policy, cause))

    # -- admin ---------------------------------------------------------------------------

    def stop_listeners(self, inbound_only: bool, hand_over: bool = False) -> list[Action]:
        """`/drain_listeners`: active listeners (or inbound ones) stop accepting and their
        listen sockets close (as Envoy: new connects are refused, not queued on a socket
        nobody accepts on); they stay listed, and later LDS updates for them are ACKed and
        ignored. The parent of a hot restart (`hand_over`) stops every listener and then
        closes its copies of all listen sockets, which the child accepts on now."""
        if inbound_only:
            self.stopped_inbound = True
        else:
            self.stopped = True
        actions: list[Action] = []
        for name, warming in list(self.warming.items()):
            if not inbound_only or _inbound(warming.config):
                self._discard_warming(name, actions)  # it never served: it never will now
        for version in self.active.values():
            if version.stopped or (inbound_only and not _inbound(version.config)):
                continue
            version.stopped = True
            actions.append(StopAccepting(version.id))
            if not hand_over:
                actions.append(CloseSockets(version.id))
            self._stats.counter("listener_manager.listener_stopped").inc()
        if hand_over:
            actions.append(HandOverSockets())
        self._update_gauges()
        return actions

    # -- reports from the runtime ------------------------------------------------------------

    def on_event(self, event: ListenerEvent) -> list[Action]:
        actions: list[Action] = []
        match event:
            case ListenerDrained(version_id):
                self.draining.pop(version_id, None)
                self._unwatch(version_id, actions)
            case ChainsDrained(group_id):
                for group in self.draining_chains:
                    if group.group_id == group_id:
                        self._unwatch(group.version_id, actions)
                self.draining_chains = [g for g in self.draining_chains if g.group_id != group_id]
            case StartFailed(version_id):
                for name, version in list(self.active.items()):
                    if version.id == version_id:
                        self._pop_active(name)
                        actions.append(ReleaseSockets(version_id))
                        self._unwatch(version_id, actions)
                self._stats.counter("listener_manager.listener_create_failure").inc()
            case RoutesReady(name):
                self._dependency_changed(Dependency(DependencyKind.ROUTES, name), True, actions)
            case RoutesFailed(name):
                self._dependency_changed(Dependency(DependencyKind.ROUTES, name), False, actions)
            case SecretsReady(name):
                self._dependency_changed(Dependency(DependencyKind.SECRET, name), True, actions)
            case SecretsFailed(name):
                self._dependency_changed(Dependency(DependencyKind.SECRET, name), False, actions)
        self._update_gauges()
        return actions

    # -- internals -------------------------------------------------------------------------

    def _build(
        self,
        listener: listener_pb2.Listener,
        version_info: str,
        static: bool = False,
        raw: bytes | None = None,
    ) -> ListenerVersion:
        addresses = listener_addresses(listener)
        policy = listener_drain_policy(listener)  # ConfigError naming the field: NACK
        version_id = self._new_id()
        self._compile(version_id, listener)
        return ListenerVersion(
            id=version_id,
            name=listener.name,
            config=listener,
            raw=raw if raw is not None else listener.SerializeToString(),
            version_info=version_info,
            last_updated=self._clock(),
            static=static,
            addresses=addresses,
            route_names=listener_route_names(listener),
            policy=policy,
            secret_names=listener_secret_names(listener),
        )

    def _activate(self, version: ListenerVersion) -> None:
        self._set_active(version)
        self._stats.counter("listener_manager.listener_create_success").inc()

    def _set_active(self, version: ListenerVersion) -> None:
        previous = self.active.get(version.name)
        if previous is not None:
            self._forget_addresses(previous)
        self.active[version.name] = version
        for address in version.addresses:
            if fixed_address(address):
                self._owners[address] = version

    def _pop_active(self, name: str) -> ListenerVersion:
        version = self.active.pop(name)
        self._forget_addresses(version)
        return version

    def _forget_addresses(self, version: ListenerVersion) -> None:
        for address in version.addresses:
            if self._owners.get(address) is version:
                del self._owners[address]

    def _reserve(self, version: ListenerVersion, share_from: int | None) -> None:
        try:
            addresses = tuple(version.addresses) if binds(version.config) else ()
            self._sockets.reserve(ReserveSockets(version.id, addresses, share_from, version.name))
        except BindError:
            self._stats.counter("listener_manager.listener_create_failure").inc()
            raise

    def _check_duplicate_address(self, version: ListenerVersion, ignore_name: str = "") -> None:
        """Two active listeners may not share an address (port 0 always binds anew)."""
        for address in version.addresses:
            owner = self._owners.get(address)
            if owner is not None and owner.name != ignore_name:
                shown = ",".join(_format_address(a) for a in version.addresses)
                raise ConfigError(
                    f"error adding listener: '{version.name}' has duplicate address '{shown}' "
                    "as existing listener, to check if the listener has duplicated addresses "
                    "with other listeners or 'enable_reuse_port' is set to 'false' for the "
                    "listener"
                )

    def _update_gauges(self) -> None:
        # Before the workers start, Envoy counts a new warming listener as active.
        starting = 0 if self._workers_started else self.initializing_count()
        self._stats.gauge("listener_manager.total_listeners_warming").set(
            len(self.warming) - starting
        )
        self._stats.gauge("listener_manager.total_listeners_active").set(
            len(self.active) + starting
        )
        self._stats.gauge("listener_manager.total_listeners_draining").set(len(self.draining))
        self._stats.gauge("listener_manager.total_filter_chains_draining").set(
            sum(len(group.chains) for group in self.draining_chains)
        )


# -- pure helpers on Listener messages ------------------------------------------------------


def _format_address(address: SocketAddress) -> str:
    if isinstance(address, PipeAddress):
        return address.path
    ip, port = address
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _socket_address(address: address_pb2.Address, name: str) -> SocketAddress:
    if address.HasField("pipe"):
        pipe = address.pipe
        if pipe.path.startswith("@") and pipe.mode != 0:
            raise ConfigError("Cannot set mode for Abstract AF_UNIX sockets")
        return PipeAddress(pipe.path, pipe.mode)
    if not address.HasField("socket_address"):
        raise ConfigError(f"error adding listener named '{name}': only socket_address is supported")
    socket_address = address.socket_address
    if socket_address.protocol != address_pb2.SocketAddress.TCP:
        raise ConfigError(f"error adding listener named '{name}': UDP listeners are not supported")
    ip = canonical_ip(socket_address.address)
    if ip is None:
        raise ConfigError(f"malformed IP address: {socket_address.address}")
    return (ip, socket_address.port_value)


def binds(listener: listener_pb2.Listener) -> bool:
    """False for `bind_to_port: false`: no socket; reached only through use_original_dst."""
    return not listener.HasField("bind_to_port") or listener.bind_to_port.value


def listener_addresses(listener: listener_pb2.Listener) -> list[SocketAddress]:
    """The listener's address and additional addresses, in canonical form."""
    if not listener.HasField("address"):
        raise ConfigError(f"error adding listener named '{listener.name}': address is necessary")
    addresses = [_socket_address(listener.address, listener.name)]
    for extra in listener.additional_addresses:
        addresses.append(_socket_address(extra.address, listener.name))
    return addresses


def _config_addresses(listener: listener_pb2.Listener) -> list[bytes]:
    return [listener.address.SerializeToString(deterministic=True)] + [
        extra.SerializeToString(deterministic=True) for extra in listener.additional_addresses
    ]


def _inbound(listener: listener_pb2.Listener) -> bool:
    return listener.traffic_direction == base_pb2.INBOUND


def _reuse_port(listener: listener_pb2.Listener) -> bool:
    # Envoy's default for enable_reuse_port is true (on Linux).
    return listener.enable_reuse_port.value if listener.HasField("enable_reuse_port") else True


def _without_chains(listener: listener_pb2.Listener) -> bytes:
    copy = listener_pb2.Listener()
    copy.CopyFrom(listener)
    copy.ClearField("filter_chains")
    copy.ClearField("default_filter_chain")
    copy.ClearField("filter_chain_matcher")
    return config_key(copy)


def _why_equal(existing: ListenerVersion, raw: bytes) -> str:
    if existing.raw == raw:
        return "identical: the same bytes"
    return "identical: equal after unpacking every Any"


def _only_policy_differs(existing: ListenerVersion, new: listener_pb2.Listener) -> bool:
    """A change confined to the drain-policy metadata key (applied without a drain)."""
    old_policy = existing.config.metadata.filter_metadata
    new_policy = new.metadata.filter_metadata
    if POLICY_KEY not in old_policy and POLICY_KEY not in new_policy:
        return False
    return config_key(without_policy(existing.config)) == config_key(without_policy(new))


def _chain_name(listener: listener_pb2.Listener, index: int) -> str:
    chain = (
        listener.default_filter_chain if index == DEFAULT_CHAIN else listener.filter_chains[index]
    )
    return chain.name


def _in_place_possible(old: listener_pb2.Listener, new: listener_pb2.Listener) -> bool:
    """Envoy's rule: at least one filter chain, and nothing but the chains changed."""
    return len(new.filter_chains) > 0 and _without_chains(old) == _without_chains(new)


def _draining_chains(old: listener_pb2.Listener, new: listener_pb2.Listener) -> tuple[int, ...]:
    """Chains of `old` with no equal chain in `new` (adding or reordering drains nothing)."""
    kept = {config_key(chain) for chain in new.filter_chains}
    draining = [i for i, chain in enumerate(old.filter_chains) if config_key(chain) not in kept]
    if old.HasField("default_filter_chain") and (
        not new.HasField("default_filter_chain")
        or config_key(old.default_filter_chain) != config_key(new.default_filter_chain)
    ):
        draining.append(DEFAULT_CHAIN)
    return tuple(draining)
