"""A cluster's active `health_checks` and its `outlier_detection`, translated once
(`HealthCheckConfig`, `OutlierDetectionConfig`, frozen); the runtime's
`upstream/health_check.py` and `upstream/outlier.py` run them.

Envoy's defaults and rules: `timeout`, `interval` and both thresholds are required (PGV);
`no_traffic_interval` is 60 s and `no_traffic_healthy_interval` defaults to it;
`unhealthy_interval` defaults to `interval`, `unhealthy_edge_interval` to `unhealthy_interval`
and `healthy_edge_interval` to `interval`; `reuse_connection` is on by default. An HTTP check
expects 200 unless `expected_statuses` says otherwise; its `host` defaults to the cluster's
name. A TCP check sends its `send` payload and expects every `receive` payload, in order,
somewhere in what comes back; with neither, connecting is the check.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from envoy.config.core.v3 import health_check_pb2
from google.protobuf.message import Message

from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError

DEFAULT_NO_TRAFFIC_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class HttpCheck:
    host: str
    path: str
    expected: tuple[tuple[int, int], ...]  # [start, end) ranges
    retriable: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class TcpCheck:
    send: bytes
    receive: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    timeout_s: float
    interval_s: float
    initial_jitter_s: float
    interval_jitter_s: float
    interval_jitter_percent: int
    unhealthy_threshold: int
    healthy_threshold: int
    no_traffic_interval_s: float
    no_traffic_healthy_interval_s: float
    unhealthy_interval_s: float
    unhealthy_edge_interval_s: float
    healthy_edge_interval_s: float
    reuse_connection: bool
    check: HttpCheck | TcpCheck


def build_health_checks(
    cluster_name: str, health_checks: list[health_check_pb2.HealthCheck], path: str
) -> tuple[HealthCheckConfig, ...]:
    """Every `health_checks` entry of a cluster that passed the gate; raises ConfigError for
    what Envoy refuses when it creates the checker (a bad status range, a bad hex payload)."""
    if len(health_checks) > 1:
        raise ConfigError(f"{path}.health_checks: Multiple health checks not supported")
    return tuple(
        _build(cluster_name, check, f"{path}.health_checks[{index}]")
        for index, check in enumerate(health_checks)
    )


def _seconds(message: health_check_pb2.HealthCheck, name: str, default: float) -> float:
    return duration_seconds(getattr(message, name)) if message.HasField(name) else default


def _build(cluster_name: str, hc: health_check_pb2.HealthCheck, path: str) -> HealthCheckConfig:
    interval = duration_seconds(hc.interval)
    no_traffic = _seconds(hc, "no_traffic_interval", DEFAULT_NO_TRAFFIC_INTERVAL_S)
    unhealthy = _seconds(hc, "unhealthy_interval", interval)
    check: HttpCheck | TcpCheck
    if hc.HasField("http_health_check"):
        http = hc.http_health_check
        check = HttpCheck(
            host=http.host or cluster_name,
            path=http.path,
            expected=_ranges(http.expected_statuses, f"{path}.http_health_check", "expected")
            or ((200, 201),),
            retriable=_ranges(http.retriable_statuses, f"{path}.http_health_check", "retriable"),
        )
    else:
        tcp = hc.tcp_health_check
        check = TcpCheck(
            send=_payload(tcp.send, f"{path}.tcp_health_check.send")
            if tcp.HasField("send")
            else b"",
            receive=tuple(
                _payload(item, f"{path}.tcp_health_check.receive[{index}]")
                for index, item in enumerate(tcp.receive)
            ),
        )
    return HealthCheckConfig(
        timeout_s=duration_seconds(hc.timeout),
        interval_s=interval,
        initial_jitter_s=_seconds(hc, "initial_jitter", 0.0),
        interval_jitter_s=_seconds(hc, "interval_jitter", 0.0),
        interval_jitter_percent=hc.interval_jitter_percent,
        unhealthy_threshold=hc.unhealthy_threshold.value,
        healthy_threshold=hc.healthy_threshold.value,
        no_traffic_interval_s=no_traffic,
        no_traffic_healthy_interval_s=_seconds(hc, "no_traffic_healthy_interval", no_traffic),
        unhealthy_interval_s=unhealthy,
        unhealthy_edge_interval_s=_seconds(hc, "unhealthy_edge_interval", unhealthy),
        healthy_edge_interval_s=_seconds(hc, "healthy_edge_interval", interval),
        reuse_connection=hc.reuse_connection.value if hc.HasField("reuse_connection") else True,
        check=check,
    )


def _ranges(ranges, path: str, kind: str) -> tuple[tuple[int, int], ...]:
    """Status ranges [start, end) with Envoy's checks and texts."""
    found = []
    for index, status_range in enumerate(ranges):
        start, end = status_range.start, status_range.end
        where = f"{path}.{kind}_statuses[{index}]"
        if start >= end:
            raise ConfigError(
                f"{where}: Invalid http {kind} status range: expecting start < end, but found"
                f" start={start} and end={end}"
            )
        if start < 100:
            raise ConfigError(
                f"{where}: Invalid http {kind} status range: expecting start >= 100, but found"
                f" start={start}"
            )
        if end > 600:
            raise ConfigError(
                f"{where}: Invalid http {kind} status range: expecting end <= 600, but found"
                f" end={end}"
            )
        found.append((start, end))
    return tuple(found)


def _payload(payload: health_check_pb2.HealthCheck.Payload, path: str) -> bytes:
    if payload.WhichOneof("payload") == "binary":
        return payload.binary
    try:
        return binascii.unhexlify(payload.text)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}.text: invalid hex string '{payload.text}'") from None


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    """A cluster's `outlier_detection`, with Envoy's defaults for every unset field."""

    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_time_s: float = 300.0
    max_ejection_time_jitter_s: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    split_external_local_origin_errors: bool = False
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    successful_active_health_check_uneject_host: bool = True


_OUTLIER_WRAPPED = (
    "max_ejection_percent",
    "always_eject_one_host",
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "failure_percentage_threshold",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure",
    "enforcing_success_rate",
    "enforcing_local_origin_success_rate",
    "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin",
    "successful_active_health_check_uneject_host",
)


def build_outlier_detection(message: Message, path: str) -> OutlierDetectionConfig:
    """An `OutlierDetection` that passed the gate; raises ConfigError as Envoy does for a
    `max_ejection_time` below `base_ejection_time`."""
    defaults = OutlierDetectionConfig()
    values: dict[str, object] = {
        name: getattr(message, name).value for name in _OUTLIER_WRAPPED if message.HasField(name)
    }
    for name in ("interval", "base_ejection_time", "max_ejection_time_jitter"):
        if message.HasField(name):
            values[f"{name}_s"] = duration_seconds(getattr(message, name))
    base = values.get("base_ejection_time_s", defaults.base_ejection_time_s)
    if message.HasField("max_ejection_time"):
        values["max_ejection_time_s"] = duration_seconds(message.max_ejection_time)
    else:
        values["max_ejection_time_s"] = max(defaults.max_ejection_time_s, base)  # type: ignore[type-var]
    if values["max_ejection_time_s"] < base:  # type: ignore[operator]
        raise ConfigError(
            f"{path}: outlier detector's max_ejection_time cannot be smaller than"
            " base_ejection_time"
        )
    values["split_external_local_origin_errors"] = message.split_external_local_origin_errors
    return OutlierDetectionConfig(**values)  # type: ignore[arg-type]
