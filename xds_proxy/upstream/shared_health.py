"""Who decides host health with `--concurrency N`: the main process, as Envoy's main thread.

Envoy runs one active health checker and one outlier detector per cluster on its main thread:
every worker thread reports its requests' results there, the main thread ejects, and its
decisions reach every worker. Here the workers are processes, so:

- `DecidingHealth` (the main process; also the single process of `--concurrency 1`, where
  nobody listens): its clusters run the real `HealthChecker` and `OutlierDetector`. Each
  change of a host's health flags (a check's verdict, an ejection, an un-ejection) marks the
  cluster version, and at the end of that event-loop turn the decided flags of every marked
  version are told to the workers (`tell`, the coordinator's channel). The workers' results
  (`take`) are fed to the version's detector as if its own requests had them, so consecutive
  5xx count across workers. A worker saying a version had traffic switches its checker from
  the `no_traffic_*` intervals, as the cluster's own `upstream_cx_total` would.
- `FollowingHealth` (a worker): its clusters run no check and decide no ejection
  (upstream/health_check.py `FollowedHealthChecker`, upstream/outlier.py `OutcomeReporter`);
  the flags come from the main process (`follow`), and the results go to it in batches
  (`REPORT_INTERVAL_S`), only for clusters with `outlier_detection`.

A cluster version is named alike in every process by `version_key` (its name and a digest of
its config: the main process and the workers build it from the same bytes), so that a
replaced cluster's new version, warming with its first round of checks, does not take the
old version's flags, nor the other way round. Hosts are named by their address as `/clusters`
prints it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xds_proxy.lazy import lazy_import
from xds_proxy.upstream.host import DecidedHealth, Host, decided_health, host_address_text
from xds_proxy.upstream.outlier import (
    OutcomeReporter,
    OutlierDetector,
    Result,
    apply_outcome,
    encode_result,
)
from xds_proxy.upstream.running_loop import running_loop

if TYPE_CHECKING:
    from xds_proxy.upstream import health_check
else:  # only clusters with `health_checks` need it (xds_proxy/lazy.py)
    health_check = lazy_import("xds_proxy.upstream.health_check")

REPORT_INTERVAL_S = 0.01  # a worker's results wait at most this long for the main process
TRAFFIC_CHECK_INTERVAL_S = 0.5  # how often a worker looks for a checked cluster's first traffic

# Results that may eject a host (with a 5xx): reported at the end of the loop turn.
_LOCAL_FAILURES = frozenset(
    encode_result(result) for result in (Result.CONNECT_FAILED, Result.TIMEOUT, Result.RESET)
)

# The results of a worker's requests: version key -> host address -> results in order (HTTP
# statuses; local-origin results as upstream/outlier.py `encode_result` gives them).
Outcomes = dict[str, dict[str, list[int]]]


def version_key(name: str, message: bytes) -> str:
    """One cluster version's name in every process: its name and a digest of its config."""
    return f"{name}/{hashlib.blake2b(message, digest_size=8).hexdigest()}"


class _Decided:
    """What `DecidingHealth` keeps of one cluster version."""

    __slots__ = ("addresses", "builds", "detector", "hosts", "key", "traffic")

    def __init__(self, key: str) -> None:
        self.key = key
        self.builds = 0  # clusters built of it and not retired (the same config pushed again)
        self.detector: OutlierDetector | None = None
        self.hosts: Callable[[], list[Host]] = list
        self.traffic = False  # a worker has opened a connection of this version
        # The hosts by address, for the list object `hosts()` returned last.
        self.addresses: tuple[list[Host], dict[str, Host]] = ([], {})

    def host_at(self, address: str) -> Host | None:
        hosts = self.hosts()
        if self.addresses[0] is not hosts:
            self.addresses = (hosts, {host_address_text(host.address): host for host in hosts})
        return self.addresses[1].get(address)


class DecidingHealth:
    """The clusters of this process decide their hosts' health; the workers (if any) are told."""

    def __init__(self) -> None:
        # The workers' channel (`workers/coordinator.py`); None: no workers, nothing to tell.
        self.tell: Callable[[dict[str, Any]], None] | None = None
        self._versions: dict[str, _Decided] = {}
        self._marked: set[str] = set()
        self._gone: set[str] = set()
        self._telling: asyncio.Handle | None = None

    def role(self, key: str) -> _DecidingRole:
        """What a new cluster version builds its checker and detector with."""
        version = self._versions.setdefault(key, _Decided(key))
        version.builds += 1
        return _DecidingRole(self, version)

    def built(self, key: str, hosts: Callable[[], list[Host]]) -> None:
        """The cluster version `key` exists now; `hosts()` gives its current hosts."""
        version = self._versions.get(key)
        if version is not None:
            version.hosts = hosts

    def retired(self, key: str) -> None:
        """The version is gone here (replaced, removed): the workers forget its flags."""
        version = self._versions.get(key)
        if version is None:
            return
        version.builds -= 1
        if version.builds > 0:
            return
        del self._versions[key]
        if self.tell is not None:
            self._gone.add(key)
            self._marked.discard(key)
            self._tell_soon()

    def changed(self, key: str) -> None:
        """A host of the version changed health: the workers hear it this loop turn."""
        if self.tell is not None and key in self._versions:
            self._marked.add(key)
            self._tell_soon()

    @property
    def pending(self) -> bool:
        """Decisions not told to the workers yet (they are, at the end of this loop turn)."""
        return self._telling is not None

    def _tell_soon(self) -> None:
        if self._telling is None:
            self._telling = running_loop().call_soon(self._tell)

    def _tell(self) -> None:
        self._telling = None
        marked, self._marked = self._marked, set()
        gone, self._gone = self._gone, set()
        if self.tell is None:
            return
        message: dict[str, Any] = {"health": {key: self.decided(key) for key in sorted(marked)}}
        if gone:
            message["gone"] = sorted(gone)
        self.tell(message)

    def decided(self, key: str) -> dict[str, int]:
        version = self._versions.get(key)
        if version is None:
            return {}
        return {host_address_text(host.address): decided_health(host) for host in version.hosts()}

    def snapshot(self) -> dict[str, Any]:
        """Every version's flags (for a worker that starts)."""
        return {"health": {key: self.decided(key) for key in sorted(self._versions)}}

    def take(self, report: dict[str, Any]) -> None:
        """A worker's report: its requests' results, and the versions it sent traffic to."""
        for key in report.get("traffic", ()):
            version = self._versions.get(key)
            if version is not None:
                version.traffic = True
        outcomes: Outcomes = report.get("outcomes", {})
        for key, hosts in outcomes.items():
            version = self._versions.get(key)
            if version is None or version.detector is None:
                continue  # a version no longer here (or the worker's is newer)
            detector = version.detector
            for address, codes in hosts.items():
                host = version.host_at(address)
                if host is not None:
                    for code in codes:
                        apply_outcome(detector, host, code)
        if self._telling is not None:  # an ejection: the workers hear it now, not a turn later
            self._telling.cancel()
            self._tell()


class _DecidingRole:
    """One cluster version's checker and detector, the real ones, with their changes told."""

    def __init__(self, owner: DecidingHealth, version: _Decided) -> None:
        self._owner = owner
        self._version = version

    def _told(self, on_change: Callable[[], None]) -> Callable[[], None]:
        owner, key = self._owner, self._version.key

        def changed() -> None:
            on_change()
            owner.changed(key)

        return changed

    def checker(
        self,
        cluster_name: str,
        config: Any,
        stats: Any,
        tls: Any,
        had_traffic: Callable[[], bool],
        on_change: Callable[[], None],
        rng: random.Random,
        on_healthy_check: Callable[[Host], None],
    ) -> health_check.HealthChecker:
        version = self._version
        return health_check.HealthChecker(
            cluster_name,
            config,
            stats,
            tls,
            had_traffic=lambda: had_traffic() or version.traffic,
            on_change=self._told(on_change),
            rng=rng,
            on_healthy_check=on_healthy_check,
        )

    def detector(
        self,
        cluster_name: str,
        config: Any,
        stats: Any,
        on_change: Callable[[], None],
        rng: random.Random,
    ) -> OutlierDetector:
        detector = OutlierDetector(cluster_name, config, stats, self._told(on_change), rng)
        self._version.detector = detector
        return detector


class _Followed:
    """What `FollowingHealth` keeps of one cluster version."""

    __slots__ = ("checkers", "decided", "reporters", "unseen_traffic")

    def __init__(self) -> None:
        self.decided: DecidedHealth = {}
        self.checkers: list[health_check.FollowedHealthChecker] = []
        self.reporters: list[OutcomeReporter] = []
        # The version's `had_traffic` while the main process has not heard of any.
        self.unseen_traffic: Callable[[], bool] | None = None


class FollowingHealth:
    """A worker's clusters take their hosts' health from the main process (`follow`) and
    send it their requests' results (`send`)."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self._send = send
        self._versions: dict[str, _Followed] = {}
        self._outcomes: Outcomes = {}
        self._timer: asyncio.TimerHandle | None = None  # the next report of what waits
        self._turn_reported = False  # a failure went at once this loop turn
        self._traffic_timer: asyncio.TimerHandle | None = None

    def role(self, key: str) -> _FollowingRole:
        return _FollowingRole(self, key, self._versions.setdefault(key, _Followed()))

    def built(self, key: str, hosts: Callable[[], list[Host]]) -> None:
        pass  # the main process names the hosts

    def retired(self, key: str) -> None:
        pass  # forgotten when the main process says the version is gone

    def follow(self, message: dict[str, Any]) -> None:
        """The main process's decisions: each listed version's flags, and the versions gone."""
        for key in message.get("gone", ()):
            self._versions.pop(key, None)
            self._outcomes.pop(key, None)
        decided: dict[str, dict[str, int]] = message.get("health", {})
        for key, flags in decided.items():
            version = self._versions.setdefault(key, _Followed())
            version.decided = flags
            for checker in version.checkers:
                checker.follow(flags)
            for reporter in version.reporters:
                reporter.follow(flags)

    def record(self, key: str, address: str, code: int) -> None:
        """One result of a request to a host of the version. A failure (a 5xx, a local-origin
        failure), which may eject, goes at once with what waits, the first of a loop turn
        (before the response it belongs to is written downstream), the next ones at the end
        of the turn; the others within REPORT_INTERVAL_S: at most two messages a loop turn,
        and about 1/REPORT_INTERVAL_S a second while all is well."""
        outcomes = self._outcomes
        if self._timer is None:
            self._timer = running_loop().call_later(REPORT_INTERVAL_S, self._on_timer)
        hosts = outcomes.get(key)
        if hosts is None:
            hosts = outcomes[key] = {}
        codes = hosts.get(address)
        if codes is None:
            hosts[address] = [code]
        else:
            codes.append(code)
        if (code >= 500 or code in _LOCAL_FAILURES) and not self._turn_reported:
            self._turn_reported = True
            running_loop().call_soon(self._end_of_turn)
            self._report()

    @property
    def pending(self) -> bool:
        """Results not sent to the main process yet (they are within REPORT_INTERVAL_S)."""
        return bool(self._outcomes)

    def _end_of_turn(self) -> None:
        self._turn_reported = False
        self._report()

    def _on_timer(self) -> None:
        self._timer = None
        self._report()

    def _report(self) -> None:
        outcomes, self._outcomes = self._outcomes, {}
        if outcomes:
            self._send({"outcomes": outcomes})

    def watch_traffic(self, version: _Followed, had_traffic: Callable[[], bool]) -> None:
        version.unseen_traffic = had_traffic
        if self._traffic_timer is None:
            self._traffic_timer = running_loop().call_later(
                TRAFFIC_CHECK_INTERVAL_S, self._check_traffic
            )

    def _check_traffic(self) -> None:
        self._traffic_timer = None
        seen: list[str] = []
        waiting = False
        for key, version in self._versions.items():
            had_traffic = version.unseen_traffic
            if had_traffic is None:
                continue
            if had_traffic():
                version.unseen_traffic = None
                seen.append(key)
            else:
                waiting = True
        if seen:
            self._send({"traffic": seen})
        if waiting:
            self._traffic_timer = running_loop().call_later(
                TRAFFIC_CHECK_INTERVAL_S, self._check_traffic
            )

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._traffic_timer is not None:
            self._traffic_timer.cancel()
            self._traffic_timer = None


class _FollowingRole:
    """One cluster version's stand-ins: no check, no decision, the main process's flags."""

    def __init__(self, owner: FollowingHealth, key: str, version: _Followed) -> None:
        self._owner = owner
        self._key = key
        self._version = version

    def _decided(self) -> DecidedHealth:
        return self._version.decided

    def checker(
        self,
        cluster_name: str,
        config: Any,
        stats: Any,
        tls: Any,
        had_traffic: Callable[[], bool],
        on_change: Callable[[], None],
        rng: random.Random,
        on_healthy_check: Callable[[Host], None],
    ) -> health_check.FollowedHealthChecker:
        checker = health_check.FollowedHealthChecker(on_change, self._decided)
        self._version.checkers.append(checker)
        self._owner.watch_traffic(self._version, had_traffic)
        return checker

    def detector(
        self,
        cluster_name: str,
        config: Any,
        stats: Any,
        on_change: Callable[[], None],
        rng: random.Random,
    ) -> OutcomeReporter:
        owner, key = self._owner, self._key

        def record(address: str, code: int) -> None:
            owner.record(key, address, code)

        reporter = OutcomeReporter(on_change, record, self._decided)
        self._version.reporters.append(reporter)
        return reporter
