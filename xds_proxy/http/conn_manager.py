"""The HTTP connection manager's configuration, stats and per-connection drain state.

`build_http_connection_manager` turns an `HttpConnectionManager` message into an `HcmConfig`
once per filter chain version; every connection of that chain shares it (route table,
pre-rendered local replies, stat handles), so the per-request path does no config work.
Chains with byte-identical HCMs (a listener with 10,000 chains that differ only in their
match) share one `HcmConfig` too, within one listener and across updates: it holds nothing
per chain or per connection (drain state and connections live in the chain's runtime).
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, fields

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.access_log import AccessLog, build_access_log
from xds_proxy.bounded_cache import BoundedCache
from xds_proxy.codec.responses import LocalResponse
from xds_proxy.config.hcm import (
    HcmSettings,
    Underscores,
    build_hcm_settings,
    rendered_server_name,
)
from xds_proxy.errors import ConfigError
from xds_proxy.http.path_normalization import PathRules
from xds_proxy.http.router import RouteHandle, RouteTable
from xds_proxy.stats import Counter, Gauge, Stats

HCM_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)


class HcmStats:
    """Handles on `http.<stat_prefix>.*`, fetched once per filter chain."""

    __slots__ = (
        "cx_active",
        "cx_delayed_close_timeout",
        "cx_destroy",
        "cx_drain_close",
        "cx_http1_active",
        "cx_http1_total",
        "cx_http2_active",
        "cx_http2_total",
        "cx_idle_timeout",
        "cx_protocol_error",
        "cx_total",
        "cx_upgrades_active",
        "cx_upgrades_total",
        "h2_underscores_dropped",
        "h2_underscores_rejected",
        "no_route",
        "rq_active",
        "rq_by_class",
        "rq_direct_response",
        "rq_failed_path_normalization",
        "rq_header_timeout",
        "rq_http1_total",
        "rq_http2_total",
        "rq_idle_timeout",
        "rq_redirect",
        "rq_redirected_with_normalized_path",
        "rq_timeout",
        "rq_total",
        "rq_ws_on_non_ws_route",
        "underscores_dropped",
        "underscores_rejected",
    )

    def __init__(self, stats: Stats, stat_prefix: str) -> None:
        base = f"http.{stat_prefix}."

        def counter(name: str) -> Counter:
            return stats.counter(base + name)

        def gauge(name: str) -> Gauge:
            return stats.gauge(base + name)

        self.cx_total = counter("downstream_cx_total")
        self.cx_active = gauge("downstream_cx_active")
        self.cx_http1_total = counter("downstream_cx_http1_total")
        self.cx_http1_active = gauge("downstream_cx_http1_active")
        self.cx_http2_total = counter("downstream_cx_http2_total")
        self.cx_http2_active = gauge("downstream_cx_http2_active")
        self.cx_destroy = counter("downstream_cx_destroy")
        self.cx_drain_close = counter("downstream_cx_drain_close")
        self.cx_delayed_close_timeout = counter("downstream_cx_delayed_close_timeout")
        self.cx_idle_timeout = counter("downstream_cx_idle_timeout")
        self.cx_protocol_error = counter("downstream_cx_protocol_error")
        self.rq_total = counter("downstream_rq_total")
        self.rq_http1_total = counter("downstream_rq_http1_total")
        self.rq_http2_total = counter("downstream_rq_http2_total")
        self.rq_active = gauge("downstream_rq_active")
        # Index by status // 100; 0 and 6+ never happen for valid statuses.
        by_class = [counter(f"downstream_rq_{n}xx") for n in range(1, 6)]
        self.rq_by_class = (by_class[0], *by_class, by_class[4], by_class[4], by_class[4])
        self.rq_header_timeout = counter("downstream_rq_header_timeout")
        self.rq_timeout = counter("downstream_rq_timeout")
        self.rq_idle_timeout = counter("downstream_rq_idle_timeout")
        self.rq_direct_response = counter("rq_direct_response")
        self.rq_redirect = counter("rq_redirect")
        self.no_route = counter("no_route")
        self.rq_failed_path_normalization = counter("downstream_rq_failed_path_normalization")
        self.rq_redirected_with_normalized_path = counter(
            "downstream_rq_redirected_with_normalized_path"
        )
        # HTTP/1.1 upgrades (http/http1_upgrade.py)
        self.cx_upgrades_total = counter("downstream_cx_upgrades_total")
        self.cx_upgrades_active = gauge("downstream_cx_upgrades_active")
        self.rq_ws_on_non_ws_route = counter("downstream_rq_ws_on_non_ws_route")
        # The HTTP/1.1 codec's (root scope, as Envoy's); made only when headers with
        # underscores are dropped or refused.
        self.underscores_dropped: Counter | None = None
        self.underscores_rejected: Counter | None = None
        self.h2_underscores_dropped: Counter | None = None
        self.h2_underscores_rejected: Counter | None = None

    def count_underscores(self, stats: Stats) -> None:
        self.underscores_dropped = stats.counter("http1.dropped_headers_with_underscores")
        self.underscores_rejected = stats.counter(
            "http1.requests_rejected_with_underscores_in_headers"
        )
        self.h2_underscores_dropped = stats.counter("http2.dropped_headers_with_underscores")
        self.h2_underscores_rejected = stats.counter(
            "http2.requests_rejected_with_underscores_in_headers"
        )


def close_after_delayed_close_timeout(transport: asyncio.Transport | None, stats: HcmStats) -> None:
    """`delayed_close_timeout` expired before the client closed: count it, then close (abort
    if our answer is still unsent, as Envoy does)."""
    if transport is None:
        return
    stats.cx_delayed_close_timeout.value += 1
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


@dataclass(frozen=True, slots=True)
class HcmConfig(HcmSettings):
    """An HCM's settings (config/hcm.py) with what serving needs besides: the route table,
    the stat handles and the pre-rendered local replies."""

    routes: RouteHandle  # `.current`: the table, swappable under live connections
    stats: HcmStats
    bad_request: LocalResponse
    bad_request_no_body: LocalResponse
    headers_too_large: LocalResponse
    upgrade_required: LocalResponse
    upgrade_forbidden: LocalResponse
    request_header_timeout_reply: LocalResponse
    request_timeout_reply: LocalResponse
    stream_timeout_reply: LocalResponse
    access_log: AccessLog | None  # None: no access_log configured
    # What is done to the path before routing (None: nothing; http/path_normalization.py)
    # and its 400.
    path_rules: PathRules | None
    path_rejected: LocalResponse
    # headers_with_underscores_action unless ALLOW (None), and its 400.
    underscores: Underscores | None
    underscore_rejected: LocalResponse
    # Neither of the two: HTTP/2 may answer known requests without h2 (and log them).
    plain_requests: bool


# (rds, stat_prefix, server name, strip_any_host_port, path) -> the handle an HCM with `rds`
# serves from: the route registry's (xds_proxy/routes/registry.py); raises ConfigError.
RouteProvider = Callable[[hcm_pb2.Rds, str, str, bool, str], RouteHandle]


# Serialized HCM -> (the stats store it was built against, its config). Only successes are
# kept: a failure is reported once, at the path of the chain that has it.
HCM_CONFIGS: BoundedCache[bytes, tuple[Stats, HcmConfig]] = BoundedCache.for_config_bytes()


def build_http_connection_manager(
    hcm: hcm_pb2.HttpConnectionManager,
    path: str,
    stats: Stats,
    routes: RouteProvider | None = None,
) -> HcmConfig:
    """Translate one HCM that passed the PGV rules and the support table (config/), or reuse
    the config of an identical one; raises `ConfigError("PATH: reason")` for what only
    building finds (a duplicate domain, an unreadable body file)."""
    key = hcm.SerializeToString()
    cached = HCM_CONFIGS.get(key)
    if cached is not None and cached[0] is stats and _same_routes(hcm, cached[1], path, routes):
        return cached[1]
    config = _build(hcm, path, stats, routes)
    HCM_CONFIGS.put(key, (stats, config), len(key))
    return config


def _same_routes(
    hcm: hcm_pb2.HttpConnectionManager,
    cached: HcmConfig,
    path: str,
    routes: RouteProvider | None,
) -> bool:
    """An HCM with `rds` reuses a cached config only if it serves from the handle the route
    registry gives now (it forgets the handles of names nobody uses)."""
    if not hcm.HasField("rds") or routes is None:
        return True
    server = rendered_server_name(hcm)
    handle = routes(hcm.rds, hcm.stat_prefix, server, hcm.strip_any_host_port, path)
    return handle is cached.routes


def _build(
    hcm: hcm_pb2.HttpConnectionManager, path: str, stats: Stats, routes: RouteProvider | None
) -> HcmConfig:
    settings = build_hcm_settings(hcm, path)
    server = settings.server_name
    if hcm.HasField("rds"):
        if routes is None:
            raise ConfigError(f"{path}.rds: not supported here (no RDS)")
        handle = routes(hcm.rds, settings.stat_prefix, server, hcm.strip_any_host_port, path)
    else:
        handle = RouteHandle(
            RouteTable(hcm.route_config, f"{path}.route_config", server, hcm.strip_any_host_port)
        )
    hcm_stats = HcmStats(stats, settings.stat_prefix)
    underscores = settings.headers_with_underscores
    if underscores is not Underscores.ALLOW:
        hcm_stats.count_underscores(stats)
    path_settings = settings.path_settings
    return HcmConfig(
        **{field.name: getattr(settings, field.name) for field in fields(HcmSettings)},
        routes=handle,
        stats=hcm_stats,
        **_local_replies(server),
        access_log=build_access_log(settings.access_logs, f"{path}.access_log"),
        path_rules=PathRules(path_settings) if path_settings is not None else None,
        underscores=underscores if underscores is not Underscores.ALLOW else None,
        plain_requests=path_settings is None and underscores is Underscores.ALLOW,
    )


@functools.lru_cache(maxsize=64)
def _local_replies(server: str) -> dict[str, LocalResponse]:
    """The HCM's own replies, which depend on its server name only (immutable, so HCMs with
    the same name share them)."""
    return {
        "bad_request": LocalResponse(400, b"Bad Request", server),
        "bad_request_no_body": LocalResponse(400, b"", server),
        "headers_too_large": LocalResponse(431, b"Request Header Fields Too Large", server),
        "upgrade_required": LocalResponse(426, b"Upgrade Required", server),
        "upgrade_forbidden": LocalResponse(403, b"", server),
        "request_header_timeout_reply": LocalResponse(408, b"request header timeout", server),
        "request_timeout_reply": LocalResponse(408, b"request timeout", server),
        "stream_timeout_reply": LocalResponse(408, b"stream timeout", server),
        "path_rejected": LocalResponse(400, b"", server),
        "underscore_rejected": LocalResponse(400, b"Bad Request", server),
    }


class DrainState(enum.IntEnum):
    """Where a connection is in its own drain (docs/draining.md)."""

    NOT_DRAINING = 0
    DRAINING = 1  # the next response carries `connection: close`
    CLOSING = 2  # our side is closed (FIN sent or pending), waiting for the client's FIN
