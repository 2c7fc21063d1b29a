"""Active health checking of a cluster's hosts, as Envoy's checker does it.

One session per host, started when the host appears and stopped when it goes. A new host is
`failed_active_hc` and `pending_active_hc` until its first check: a first success makes it
healthy at once, whatever `healthy_threshold` says. After that a host turns healthy after
`healthy_threshold` successes in a row, and unhealthy after `unhealthy_threshold` network
failures (refused, reset, timed out) or retriable statuses in a row, or at once on a status
that is neither expected nor retriable. The next check waits `interval`, or the
`no_traffic_*` intervals while the cluster has never opened an upstream connection, or the
edge and unhealthy intervals around changes, plus jitter - Envoy's choice of interval.

Stats under `cluster.<name>.health_check.`: `attempt`, `success`, `failure`,
`network_failure`, `passive_failure`, `verify_cluster` (counters), `healthy`, `degraded`
(gauges). The owner (the cluster) is told after every check that changed a host's health.

With `--concurrency N` only the main process checks (as Envoy's main thread): a worker's
cluster has a `FollowedHealthChecker` instead, which runs no check and takes each host's
flags from the main process's decisions (upstream/manager.py).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
from collections.abc import Callable

import httptools

from xds_proxy.config.health_check import HealthCheckConfig, HttpCheck, TcpCheck
from xds_proxy.config.tls import UpstreamTls
from xds_proxy.stats import Stats
from xds_proxy.upstream.connect import connect_to
from xds_proxy.upstream.host import (
    ACTIVE_HC_TIMEOUT,
    FAILED_ACTIVE_HC,
    PENDING_ACTIVE_HC,
    PIPE_PORT,
    DecidedHealth,
    Host,
    host_address_text,
)

log = logging.getLogger("xds_proxy.upstream")

_COUNTERS = ("attempt", "success", "failure", "network_failure", "passive_failure")
_COUNTERS_ALL = (*_COUNTERS, "verify_cluster")


class Outcome(enum.Enum):
    SUCCESS = 0
    FAILED = 1  # a status neither expected nor retriable: unhealthy at once
    RETRIABLE = 2
    NETWORK = 3
    TIMEOUT = 4


class _Transition(enum.Enum):
    UNCHANGED = 0
    CHANGED = 1
    PENDING = 2


class HealthChecker:
    """Runs one cluster's health check against each of its hosts."""

    def __init__(
        self,
        cluster_name: str,
        config: HealthCheckConfig,
        stats: Stats,
        tls: UpstreamTls | None,
        had_traffic: Callable[[], bool],
        on_change: Callable[[], None],
        rng: random.Random,
        on_healthy_check: Callable[[Host], None] = lambda host: None,
    ) -> None:
        self._config = config
        self._tls = tls
        self._had_traffic = had_traffic
        self._on_change = on_change
        self._on_healthy_check = on_healthy_check
        self._rng = rng
        base = f"cluster.{cluster_name}.health_check."
        self._counters = {name: stats.counter(base + name) for name in _COUNTERS_ALL}
        self._healthy = stats.gauge(base + "healthy")
        stats.gauge(base + "degraded")
        self._sessions: dict[Host, asyncio.Task] = {}
        self._first_round: dict[Host, asyncio.Event] = {}

    # -- hosts -------------------------------------------------------------------------------

    def add_hosts(self, hosts: list[Host]) -> None:
        loop = asyncio.get_running_loop()
        for host in hosts:
            if host in self._sessions:
                continue
            if not host.failed_active_hc:
                self._healthy.value += 1
            self._first_round[host] = asyncio.Event()
            self._sessions[host] = loop.create_task(self._session(host), name=f"hc:{host}")

    def remove_hosts(self, hosts: list[Host]) -> None:
        for host in hosts:
            task = self._sessions.pop(host, None)
            if task is None:
                continue
            task.cancel()
            if not host.failed_active_hc:
                self._healthy.value -= 1
            self._first_round.pop(host).set()

    async def first_round(self) -> None:
        """Every host known now has had its first check (or was removed)."""
        for event in list(self._first_round.values()):
            await event.wait()

    def stop(self) -> None:
        self.remove_hosts(list(self._sessions))

    # -- one host ------------------------------------------------------------------------------

    async def _session(self, host: Host) -> None:
        config = self._config
        if config.initial_jitter_s:
            await asyncio.sleep(self._rng.uniform(0, config.initial_jitter_s))
        first = True
        healthy_in_a_row = unhealthy_in_a_row = 0
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                self._counters["attempt"].value += 1
                outcome, connection = await self._check(host, connection)
                if outcome is Outcome.SUCCESS:
                    unhealthy_in_a_row = 0
                    healthy_in_a_row += 1
                    transition = self._succeeded(host, first, healthy_in_a_row)
                    if transition is _Transition.CHANGED:
                        healthy_in_a_row = 0
                else:
                    healthy_in_a_row = 0
                    unhealthy_in_a_row += 1
                    transition = self._failed(host, outcome, unhealthy_in_a_row)
                    if transition is _Transition.CHANGED:
                        unhealthy_in_a_row = 0
                if host.pending_active_hc:  # the first result: the cluster re-reads health
                    host.pending_active_hc = False
                    transition = _Transition.CHANGED
                if first:
                    first = False
                    self._first_round[host].set()
                if transition is _Transition.CHANGED:
                    self._on_change()
                if outcome is Outcome.SUCCESS:
                    self._on_healthy_check(host)
                await asyncio.sleep(self._interval(not host.failed_active_hc, transition))
        finally:
            if connection is not None:
                connection[1].close()

    def _succeeded(self, host: Host, first: bool, in_a_row: int) -> _Transition:
        self._counters["success"].value += 1
        if not host.failed_active_hc:
            return _Transition.UNCHANGED
        if first or in_a_row >= self._config.healthy_threshold:
            host.failed_active_hc = False
            host.active_hc_timeout = False
            self._healthy.value += 1
            return _Transition.CHANGED
        return _Transition.PENDING

    def _failed(self, host: Host, outcome: Outcome, in_a_row: int) -> _Transition:
        self._counters["failure"].value += 1
        network = outcome in (Outcome.NETWORK, Outcome.TIMEOUT)
        if network:
            self._counters["network_failure"].value += 1
        transition = _Transition.UNCHANGED
        if not host.failed_active_hc:
            immediate = outcome is Outcome.FAILED
            if immediate or in_a_row >= self._config.unhealthy_threshold:
                host.failed_active_hc = True
                self._healthy.value -= 1
                transition = _Transition.CHANGED
            else:
                transition = _Transition.PENDING
        host.active_hc_timeout = outcome is Outcome.TIMEOUT and host.failed_active_hc
        return transition

    def _interval(self, healthy: bool, transition: _Transition) -> float:
        config = self._config
        if self._had_traffic():
            if not healthy:
                base = (
                    config.unhealthy_edge_interval_s
                    if transition is _Transition.PENDING
                    else config.unhealthy_interval_s
                )
            else:
                base = (
                    config.healthy_edge_interval_s
                    if transition is _Transition.PENDING
                    else config.interval_s
                )
        elif healthy and transition is not _Transition.PENDING:
            base = config.no_traffic_healthy_interval_s
        else:
            base = config.no_traffic_interval_s
        jitter = 0.0
        if config.interval_jitter_percent:
            jitter += self._rng.uniform(0, base * config.interval_jitter_percent / 100)
        if config.interval_jitter_s:
            jitter += self._rng.uniform(0, config.interval_jitter_s)
        return max(base + jitter, 0.001)

    # -- the check itself ----------------------------------------------------------------------

    async def _check(
        self,
        host: Host,
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[Outcome, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
        """(outcome, the connection to reuse next time or None)."""
        try:
            async with asyncio.timeout(self._config.timeout_s):
                if connection is None:
                    connection = await self._connect(host)
                check = self._config.check
                if isinstance(check, HttpCheck):
                    outcome, keep = await _http_check(check, *connection)
                else:
                    outcome, keep = await _tcp_check(check, *connection)
        except TimeoutError:
            _close(connection)
            return Outcome.TIMEOUT, None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            _close(connection)
            return Outcome.NETWORK, None
        if not (keep and self._config.reuse_connection):
            _close(connection)
            connection = None
        return outcome, connection

    async def _connect(self, host: Host) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ip, port = host.address  # (ip, port), or a pipe's (path, PIPE_PORT)
        if host.health_check_port and port != PIPE_PORT:
            port = host.health_check_port  # the endpoint's health_check_config.port_value
        if self._tls is not None and self._tls.context is None:  # an SDS secret has not arrived
            raise ConnectionError("TLS secrets not ready")
        reader = asyncio.StreamReader()
        transport, protocol = await connect_to(
            lambda: asyncio.StreamReaderProtocol(reader),
            (ip, port),
            self._tls.context if self._tls is not None else None,
            self._tls.server_hostname if self._tls is not None else None,
        )
        writer = asyncio.StreamWriter(
            transport,  # type: ignore[arg-type]
            protocol,  # type: ignore[arg-type]
            reader,
            asyncio.get_running_loop(),
        )
        return reader, writer


class FollowedHealthChecker:
    """A worker's stand-in for a cluster's `HealthChecker` (`--concurrency N`): no check runs
    here; each host's active-check flags are the main process's (`follow`). The first round
    ends when the main process has checked each of our hosts once, or has ended its own first
    round (a DNS cluster may resolve a host here that the main process has not), so the
    cluster warms as the main process's does."""

    def __init__(self, on_change: Callable[[], None], decided: Callable[[], DecidedHealth]) -> None:
        """`decided()`: the main process's latest flags of this cluster version's hosts."""
        self._on_change = on_change
        self._decided = decided
        self._hosts: dict[str, Host] = {}  # by address, as the main process names them
        self._news = asyncio.Event()  # set when the main process's flags came, to look again

    def add_hosts(self, hosts: list[Host]) -> None:
        """The hosts take the flags the main process decided for them (if it has)."""
        decided = self._decided()
        changed = False
        for host in hosts:
            address = host_address_text(host.address)
            if self._hosts.get(address) is host:
                continue
            self._hosts[address] = host
            bits = decided.get(address)
            if bits is not None:
                changed = self._take(host, bits) or changed
        if changed:
            self._on_change()

    def remove_hosts(self, hosts: list[Host]) -> None:
        for host in hosts:
            address = host_address_text(host.address)
            if self._hosts.get(address) is host:
                del self._hosts[address]
        self._news.set()

    async def first_round(self) -> None:
        while not self._first_round_over():
            self._news.clear()
            await self._news.wait()

    def _first_round_over(self) -> bool:
        if not any(host.pending_active_hc for host in self._hosts.values()):
            return True
        decided = self._decided()
        return bool(decided) and not any(bits & PENDING_ACTIVE_HC for bits in decided.values())

    def stop(self) -> None:
        self.remove_hosts(list(self._hosts.values()))

    def follow(self, decided: DecidedHealth) -> None:
        """The main process decided (some of) this version's hosts' flags."""
        changed = False
        for address, bits in decided.items():
            host = self._hosts.get(address)
            if host is not None:
                changed = self._take(host, bits) or changed
        self._news.set()
        if changed:
            self._on_change()

    @staticmethod
    def _take(host: Host, bits: int) -> bool:
        before = (host.failed_active_hc, host.pending_active_hc, host.active_hc_timeout)
        host.failed_active_hc = bool(bits & FAILED_ACTIVE_HC)
        host.pending_active_hc = bool(bits & PENDING_ACTIVE_HC)
        host.active_hc_timeout = bool(bits & ACTIVE_HC_TIMEOUT)
        return before != (host.failed_active_hc, host.pending_active_hc, host.active_hc_timeout)


def _close(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if connection is not None:
        connection[1].close()


class _Response:
    """Collects what httptools parses of one HTTP/1.1 response."""

    def __init__(self) -> None:
        self.complete = False
        self.close = False

    def on_message_complete(self) -> None:
        self.complete = True


async def _http_check(
    check: HttpCheck, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[Outcome, bool]:
    """GET the path as Envoy's HTTP/1.1 checker does; (outcome, connection reusable)."""
    writer.write(
        b"GET %s HTTP/1.1\r\nhost: %s\r\nuser-agent: Envoy/HC\r\n\r\n"
        % (check.path.encode("latin-1"), check.host.encode("latin-1"))
    )
    response = _Response()
    parser = httptools.HttpResponseParser(response)
    while not response.complete:
        data = await reader.read(65536)
        if not data:
            parser.feed_data(b"")  # a body that ends at close completes here
            if not response.complete:
                raise ConnectionError("the upstream closed before its response ended")
            break
        parser.feed_data(data)
    status = parser.get_status_code()
    keep = parser.should_keep_alive()
    if any(start <= status < end for start, end in check.expected):
        return Outcome.SUCCESS, keep
    if any(start <= status < end for start, end in check.retriable):
        return Outcome.RETRIABLE, keep
    return Outcome.FAILED, keep


async def _tcp_check(
    check: TcpCheck, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[Outcome, bool]:
    """Send the payload and find every expected payload, in order, in what comes back."""
    if check.send:
        writer.write(check.send)
        await writer.drain()
    if not check.receive:
        return Outcome.SUCCESS, False  # connecting was the check
    received = b""
    while not _contains_in_order(received, check.receive):
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the upstream closed before the expected bytes came")
        received += data
    return Outcome.SUCCESS, True


def _contains_in_order(data: bytes, parts: tuple[bytes, ...]) -> bool:
    position = 0
    for part in parts:
        found = data.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True
