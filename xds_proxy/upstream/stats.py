"""Handles on `cluster.<name>.*`, fetched once per cluster (Envoy's names)."""

from __future__ import annotations

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
