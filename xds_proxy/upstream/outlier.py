"""Outlier detection (passive health checking), as Envoy's detector does it.

The router and tcp_proxy report each request's result for the host that served it. Without
`split_external_local_origin_errors`, local-origin results are folded into HTTP codes (a
connect failure is a 503, a timeout a 504, another reset a 500, a connect success changes
nothing for HTTP and is a 200 for tcp_proxy). A 5xx counts towards `consecutive_5xx`, a
502/503/504 towards `consecutive_gateway_failure`, anything else resets both; with the split,
connect failures and timeouts count towards `consecutive_local_origin_failure` instead.

Reaching a threshold counts `ejections_detected_<type>` and tries to eject: allowed while the
ejected share, this host included, stays within `max_ejection_percent` (or it would be the
first with `always_eject_one_host`), else `ejections_overflow`; enforced with the
`enforcing_<type>` probability. Every `interval` the detector un-ejects hosts whose time is up
(`base_ejection_time` times the host's back-off, at most `max_ejection_time`, plus jitter),
runs the success-rate and failure-percentage checks over the last interval's requests, and
lowers the back-off of hosts that stayed in. Stats under `cluster.<name>.outlier_detection.`.

With `--concurrency N` only the main process decides (as Envoy's main thread does, on every
worker's results): a worker's cluster has an `OutcomeReporter` instead, which hands each
result to the main process (`encode_result`, batched by upstream/shared_health.py) and takes each
host's ejection from the main process's decisions.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections.abc import Callable
from typing import Any

from xds_proxy.config.health_check import OutlierDetectionConfig
from xds_proxy.stats import Stats
from xds_proxy.upstream.host import FAILED_OUTLIER_CHECK, DecidedHealth, Host, host_address_text


class Result(enum.Enum):
    """A local-origin result of one request (an HTTP response reports its status)."""

    CONNECT_FAILED = 0
    TIMEOUT = 1
    RESET = 2  # the connection broke after it was made (an external-origin failure)
    CONNECT_SUCCESS = 3  # HTTP: the connection is up, the response will tell
    CONNECT_SUCCESS_FINAL = 4  # tcp_proxy: a connection is all there is


class Ejection(enum.Enum):
    CONSECUTIVE_5XX = "consecutive_5xx"
    CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
    SUCCESS_RATE = "success_rate"
    LOCAL_ORIGIN_SUCCESS_RATE = "local_origin_success_rate"
    FAILURE_PERCENTAGE = "failure_percentage"
    LOCAL_ORIGIN_FAILURE_PERCENTAGE = "local_origin_failure_percentage"


_STATS = [f"ejections_enforced_{kind.value}" for kind in Ejection] + [
    f"ejections_detected_{kind.value}" for kind in Ejection
]
_STATS += [
    "ejections_enforced_total",
    "ejections_overflow",
    "ejections_total",
    "ejections_consecutive_5xx",
    "ejections_success_rate",
]


class HostMonitor:
    """One host's counters: consecutive failures and this interval's requests."""

    __slots__ = (
        "backoff",
        "consecutive_5xx",
        "consecutive_gateway",
        "consecutive_local",
        "ejected_at",
        "jitter_s",
        "local_window",
        "num_ejections",
        "unejected_at",
        "window",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.consecutive_local = 0
        self.num_ejections = 0
        self.backoff = 0
        self.ejected_at: float | None = None
        self.unejected_at: float | None = None
        self.jitter_s = 0.0
        # [successes, total] of the current interval and the one before it
        self.window = [[0, 0], [0, 0]]
        self.local_window = [[0, 0], [0, 0]]


class OutlierDetector:
    def __init__(
        self,
        cluster_name: str,
        config: OutlierDetectionConfig,
        stats: Stats,
        on_change: Callable[[], None],
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._on_change = on_change
        self._rng = rng
        self._clock = clock
        base = f"cluster.{cluster_name}.outlier_detection."
        self._stats: dict[str, Any] = {name: stats.counter(base + name) for name in _STATS}
        self._active = stats.gauge(base + "ejections_active")
        self._hosts: dict[Host, HostMonitor] = {}
        self._timer: asyncio.TimerHandle | None = None

    # -- hosts and the interval -----------------------------------------------------------------

    def set_hosts(self, hosts: list[Host]) -> None:
        current = set(hosts)
        for host in list(self._hosts):
            if host not in current:
                if host.failed_outlier_check:
                    self._active.value -= 1
                del self._hosts[host]
        for host in hosts:
            self._hosts.setdefault(host, HostMonitor())

    def start(self) -> None:
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self._config.interval_s, self._on_interval
        )

    def _on_interval(self) -> None:
        self.run_interval()
        self._arm()

    def run_interval(self) -> None:
        """One interval's work: un-eject, rotate the request windows, rate checks."""
        now = self._clock()
        changed = False
        for host, monitor in self._hosts.items():
            changed = self._check_uneject(host, monitor, now) or changed
            for window in (monitor.window, monitor.local_window):
                window[1] = window[0]
                window[0] = [0, 0]
        changed = self._rate_ejections(local=False) or changed
        changed = self._rate_ejections(local=True) or changed
        for host, monitor in self._hosts.items():
            if (
                not host.failed_outlier_check
                and monitor.unejected_at is not None
                and now - monitor.unejected_at >= self._config.interval_s
                and monitor.backoff
            ):
                monitor.backoff -= 1
        if changed:
            self._on_change()

    def _check_uneject(self, host: Host, monitor: HostMonitor, now: float) -> bool:
        if not host.failed_outlier_check or monitor.ejected_at is None:
            return False
        config = self._config
        wait = min(config.base_ejection_time_s * monitor.backoff, config.max_ejection_time_s)
        if wait + monitor.jitter_s <= now - monitor.ejected_at:
            self._uneject(host, monitor, now)
            return True
        return False

    def _uneject(self, host: Host, monitor: HostMonitor, now: float) -> None:
        self._active.value -= 1
        host.failed_outlier_check = False
        monitor.consecutive_5xx = monitor.consecutive_gateway = monitor.consecutive_local = 0
        monitor.unejected_at = now

    def health_check_passed(self, host: Host) -> None:
        """An active health check passed: an ejected host comes back (Envoy's default)."""
        monitor = self._hosts.get(host)
        if (
            monitor is not None
            and host.failed_outlier_check
            and not host.failed_active_hc
            and self._config.successful_active_health_check_uneject_host
        ):
            self._uneject(host, monitor, self._clock())
            self._on_change()

    # -- results --------------------------------------------------------------------------------

    def put_http_status(self, host: Host, status: int) -> None:
        monitor = self._hosts.get(host)
        if monitor is None:
            return
        monitor.window[0][1] += 1
        config = self._config
        if 500 <= status < 600:
            if status in (502, 503, 504):
                monitor.consecutive_gateway += 1
                if monitor.consecutive_gateway == config.consecutive_gateway_failure:
                    self._consecutive(host, monitor, Ejection.CONSECUTIVE_GATEWAY_FAILURE)
            else:
                monitor.consecutive_gateway = 0
            monitor.consecutive_5xx += 1
            if monitor.consecutive_5xx == config.consecutive_5xx:
                self._consecutive(host, monitor, Ejection.CONSECUTIVE_5XX)
        else:
            monitor.window[0][0] += 1
            monitor.consecutive_5xx = monitor.consecutive_gateway = 0

    def put_result(self, host: Host, result: Result) -> None:
        monitor = self._hosts.get(host)
        if monitor is None:
            return
        if not self._config.split_external_local_origin_errors:
            status = {
                Result.CONNECT_FAILED: 503,
                Result.TIMEOUT: 504,
                Result.RESET: 500,
                Result.CONNECT_SUCCESS_FINAL: 200,
            }.get(result)
            if status is not None:
                self.put_http_status(host, status)
            return
        if result in (Result.CONNECT_FAILED, Result.TIMEOUT):
            monitor.local_window[0][1] += 1
            monitor.consecutive_local += 1
            if monitor.consecutive_local == self._config.consecutive_local_origin_failure:
                self._consecutive(host, monitor, Ejection.CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
        elif result is Result.RESET:
            self.put_http_status(host, 503)
        else:
            if result is Result.CONNECT_SUCCESS_FINAL:
                self.put_http_status(host, 200)
            monitor.local_window[0][0] += 1
            monitor.local_window[0][1] += 1
            monitor.consecutive_local = 0

    # -- ejection -------------------------------------------------------------------------------

    def _consecutive(self, host: Host, monitor: HostMonitor, kind: Ejection) -> None:
        if host.failed_outlier_check:
            return
        self._stats[f"ejections_detected_{kind.value}"].value += 1
        if self._eject(host, monitor, kind):
            self._on_change()
        if kind is Ejection.CONSECUTIVE_5XX:
            self._stats["ejections_consecutive_5xx"].value += 1
            monitor.consecutive_5xx = 0
        elif kind is Ejection.CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutive_gateway = 0
        else:
            monitor.consecutive_local = 0

    def _enforcing(self, kind: Ejection) -> int:
        config = self._config
        return {
            Ejection.CONSECUTIVE_5XX: config.enforcing_consecutive_5xx,
            Ejection.CONSECUTIVE_GATEWAY_FAILURE: config.enforcing_consecutive_gateway_failure,
            Ejection.CONSECUTIVE_LOCAL_ORIGIN_FAILURE: (
                config.enforcing_consecutive_local_origin_failure
            ),
            Ejection.SUCCESS_RATE: config.enforcing_success_rate,
            Ejection.LOCAL_ORIGIN_SUCCESS_RATE: config.enforcing_local_origin_success_rate,
            Ejection.FAILURE_PERCENTAGE: config.enforcing_failure_percentage,
            Ejection.LOCAL_ORIGIN_FAILURE_PERCENTAGE: (
                config.enforcing_failure_percentage_local_origin
            ),
        }[kind]

    def _eject(self, host: Host, monitor: HostMonitor, kind: Ejection) -> bool:
        config = self._config
        active = self._active.value
        allowed = 100.0 * (active + 1) / len(self._hosts) <= min(100, config.max_ejection_percent)
        if config.always_eject_one_host and active == 0:
            allowed = True
        if not allowed:
            self._stats["ejections_overflow"].value += 1
            return False
        if kind in (Ejection.CONSECUTIVE_5XX, Ejection.SUCCESS_RATE):
            self._stats["ejections_total"].value += 1
        if self._rng.randrange(100) >= self._enforcing(kind):
            return False
        self._active.value += 1
        self._stats["ejections_enforced_total"].value += 1
        self._stats[f"ejections_enforced_{kind.value}"].value += 1
        host.failed_outlier_check = True
        monitor.num_ejections += 1
        monitor.ejected_at = self._clock()
        jitter_ms = int(config.max_ejection_time_jitter_s * 1000)
        monitor.jitter_s = self._rng.randrange(jitter_ms + 1) / 1000 if jitter_ms else 0.0
        if monitor.backoff * config.base_ejection_time_s < (
            config.max_ejection_time_s + config.base_ejection_time_s
        ):
            monitor.backoff += 1
        return True

    def _rate_ejections(self, local: bool) -> bool:
        """The success-rate and failure-percentage checks over the last interval."""
        config = self._config
        if (
            len(self._hosts) < config.success_rate_minimum_hosts
            and len(self._hosts) < config.failure_percentage_minimum_hosts
        ):
            return False
        rates: list[tuple[Host, HostMonitor, float, int]] = []
        for host, monitor in self._hosts.items():
            if host.failed_outlier_check:
                continue
            successes, total = (monitor.local_window if local else monitor.window)[1]
            if total:
                rates.append((host, monitor, successes * 100.0 / total, total))
        changed = False
        by_volume = [r for r in rates if r[3] >= config.success_rate_request_volume]
        if by_volume and len(by_volume) >= config.success_rate_minimum_hosts:
            mean = sum(r[2] for r in by_volume) / len(by_volume)
            stdev = math.sqrt(sum((r[2] - mean) ** 2 for r in by_volume) / len(by_volume))
            threshold = mean - config.success_rate_stdev_factor / 1000.0 * stdev
            kind = Ejection.LOCAL_ORIGIN_SUCCESS_RATE if local else Ejection.SUCCESS_RATE
            for host, monitor, rate, _ in by_volume:
                if rate < threshold:
                    self._stats["ejections_success_rate"].value += 1
                    self._stats[f"ejections_detected_{kind.value}"].value += 1
                    changed = self._eject(host, monitor, kind) or changed
        for_percentage = [r for r in rates if r[3] >= config.failure_percentage_request_volume]
        if for_percentage and len(for_percentage) >= config.failure_percentage_minimum_hosts:
            kind = (
                Ejection.LOCAL_ORIGIN_FAILURE_PERCENTAGE if local else Ejection.FAILURE_PERCENTAGE
            )
            for host, monitor, rate, _ in for_percentage:
                if 100.0 - rate >= config.failure_percentage_threshold:
                    self._stats[f"ejections_detected_{kind.value}"].value += 1
                    changed = self._eject(host, monitor, kind) or changed
        return changed


# -- `--concurrency N`: a worker's results, decided in the main process -------------------------

_RESULTS = tuple(Result)


def encode_result(result: Result) -> int:
    """A local-origin result as one int beside HTTP statuses (which are positive)."""
    return -1 - result.value


def apply_outcome(detector: OutlierDetector, host: Host, code: int) -> None:
    """One result a worker reported (an HTTP status, or `encode_result`'s)."""
    if code >= 0:
        detector.put_http_status(host, code)
    else:
        detector.put_result(host, _RESULTS[-1 - code])


class OutcomeReporter:
    """A worker's stand-in for a cluster's `OutlierDetector` (`--concurrency N`): it decides
    nothing; each result goes to `record(address, code)` for the main process's detector,
    and each host's `failed_outlier_check` is the main process's (`follow`)."""

    def __init__(
        self,
        on_change: Callable[[], None],
        record: Callable[[str, int], None],
        decided: Callable[[], DecidedHealth],
    ) -> None:
        self._on_change = on_change
        self._record = record
        self._decided = decided
        self._hosts: dict[str, Host] = {}  # by address, as the main process names them
        self._addresses: dict[Host, str] = {}

    def set_hosts(self, hosts: list[Host]) -> None:
        self._addresses = {host: host_address_text(host.address) for host in hosts}
        self._hosts = {address: host for host, address in self._addresses.items()}
        decided = self._decided()
        for address, host in self._hosts.items():
            bits = decided.get(address)
            if bits is not None:
                host.failed_outlier_check = bool(bits & FAILED_OUTLIER_CHECK)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def health_check_passed(self, host: Host) -> None:
        pass  # the main process's detector hears it from its own checker

    def put_http_status(self, host: Host, status: int) -> None:
        address = self._addresses.get(host)
        self._record(address or host_address_text(host.address), status)

    def put_result(self, host: Host, result: Result) -> None:
        address = self._addresses.get(host)
        self._record(address or host_address_text(host.address), encode_result(result))

    def follow(self, decided: DecidedHealth) -> None:
        """The main process decided (some of) this version's hosts' ejections."""
        changed = False
        for address, bits in decided.items():
            host = self._hosts.get(address)
            if host is not None:
                ejected = bool(bits & FAILED_OUTLIER_CHECK)
                if host.failed_outlier_check is not ejected:
                    host.failed_outlier_check = ejected
                    changed = True
        if changed:
            self._on_change()
