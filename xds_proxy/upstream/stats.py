"""Handles on `cluster.<name>.*`, fetched once per cluster (Envoy's names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from xds_proxy.config.cluster import CircuitBreakers
from xds_proxy.stats import Counter, Stats

_COUNTERS = (
    "upstream_cx_total",
    "upstream_cx_http1_total",
    "upstream_cx_http2_total",
    "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout",
    "upstream_cx_destroy",
    "upstream_cx_destroy_local",
    "upstream_cx_destroy_remote",
    "upstream_cx_idle_timeout",
    "upstream_cx_overflow",
    "upstream_cx_none_healthy",
    "lb_healthy_panic",
    "upstream_cx_max_requests",
    "upstream_cx_protocol_error",
    "upstream_cx_close_notify",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total",
    "upstream_rq_total",
    "upstream_rq_completed",
    "upstream_rq_pending_total",
    "upstream_rq_pending_overflow",
    "upstream_rq_pending_failure_eject",
    "upstream_rq_rx_reset",
    "upstream_rq_tx_reset",
    "upstream_rq_timeout",
    "upstream_rq_cancelled",
    "upstream_rq_per_try_timeout",
    "upstream_rq_retry",
    "upstream_rq_retry_backoff_exponential",
    "upstream_rq_retry_backoff_ratelimited",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_success",
    "retry_or_shadow_abandoned",
    "upstream_flow_control_paused_reading_total",
    "upstream_flow_control_resumed_reading_total",
    "membership_change",
    "update_attempt",
    "update_success",
    "update_failure",
)
_GAUGES = (
    "upstream_cx_active",
    "upstream_rq_active",
    "upstream_rq_pending_active",
    "membership_total",
    "membership_healthy",
    "membership_degraded",
)


class ClusterStats:
    """One attribute per stat, each a Counter or Gauge of the shared store."""

    __slots__ = (*_COUNTERS, *_GAUGES, "_base", "_by_status", "_store")

    def __init__(self, stats: Stats, cluster_name: str) -> None:
        base = f"cluster.{cluster_name}."
        for name in _COUNTERS:
            setattr(self, name, stats.counter(base + name))
        for name in _GAUGES:
            setattr(self, name, stats.gauge(base + name))
        self._store = stats
        self._base = base
        self._by_status: dict[int, tuple[Counter, Counter]] = {}

    def count_response(self, status: int) -> None:
        """`upstream_rq_<code>` and `upstream_rq_<class>xx`, as Envoy counts them."""
        pair = self._by_status.get(status)
        if pair is None:
            pair = self._by_status[status] = (
                self._store.counter(f"{self._base}upstream_rq_{status}"),
                self._store.counter(f"{self._base}upstream_rq_{status // 100}xx"),
            )
        pair[0].value += 1
        pair[1].value += 1

    def count_retried_response(self, status: int) -> None:
        """`retry.upstream_rq_<code>` and `retry.upstream_rq_<class>xx`: a response that was
        retried (not passed on), as Envoy counts it."""
        pair = self._by_status.get(-status)
        if pair is None:
            pair = self._by_status[-status] = (
                self._store.counter(f"{self._base}retry.upstream_rq_{status}"),
                self._store.counter(f"{self._base}retry.upstream_rq_{status // 100}xx"),
            )
        pair[0].value += 1
        pair[1].value += 1


class InUse(Protocol):
    """What a cluster's circuit breakers count (upstream/host.py `Resources`)."""

    connections: int
    pending: int
    requests: int
    retries: int


# Envoy's max_connection_pools default (no limit): what remaining_cx_pools shows.
_UNLIMITED_POOLS = 2**64 - 1


def register_circuit_breaker_gauges(
    stats: Stats,
    cluster_name: str,
    limits: CircuitBreakers,
    resources: InUse,
    pools: Callable[[], int],
) -> None:
    """`cluster.<name>.circuit_breakers.{default,high}.*_open` (1 while that breaker is open)
    and, with `track_remaining`, `...default.remaining_*`, as Envoy shows them. Everything
    here is routed at DEFAULT priority (the high breakers stay closed), and there are no
    pool limits to open `cx_pool_open`. `pools()`: the connection pools in use (one
    per host and protocol)."""
    base = f"cluster.{cluster_name}.circuit_breakers."
    opened = {
        "cx_open": lambda: int(resources.connections >= limits.max_connections),
        "cx_pool_open": lambda: 0,
        "rq_open": lambda: int(resources.requests >= limits.max_requests),
        "rq_pending_open": lambda: int(resources.pending >= limits.max_pending_requests),
        "rq_retry_open": lambda: int(resources.retries >= limits.max_retries),
    }
    for name, read in opened.items():
        stats.derived_gauge(f"{base}default.{name}", read)
        stats.derived_gauge(f"{base}high.{name}", lambda: 0)
    if not limits.track_remaining:
        return
    remaining = {
        "remaining_cx": lambda: max(0, limits.max_connections - resources.connections),
        "remaining_cx_pools": lambda: _UNLIMITED_POOLS - pools(),
        "remaining_pending": lambda: max(0, limits.max_pending_requests - resources.pending),
        "remaining_retries": lambda: max(0, limits.max_retries - resources.retries),
        "remaining_rq": lambda: max(0, limits.max_requests - resources.requests),
    }
    for name, read in remaining.items():
        stats.derived_gauge(f"{base}default.{name}", read)
