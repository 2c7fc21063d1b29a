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
from dataclasses import dataclass

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.bounded_cache import BoundedCache
from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError
from xds_proxy.http.responses import LocalResponse
from xds_proxy.http.router import RouteHandle, RouteTable
from xds_proxy.stats import Counter, Gauge, Stats
from xds_proxy.upstream.forward import ProxyPolicy

HCM_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


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
        "no_route",
        "rq_active",
        "rq_by_class",
        "rq_direct_response",
        "rq_header_timeout",
        "rq_http1_total",
        "rq_http2_total",
        "rq_idle_timeout",
        "rq_redirect",
        "rq_timeout",
        "rq_total",
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


class Codec(enum.Enum):
    AUTO = 0
    HTTP1 = 1
    HTTP2 = 2


@dataclass(frozen=True, slots=True)
class HcmConfig:
    stat_prefix: str
    codec: Codec
    routes: RouteHandle  # `.current`: the table, swappable under live connections
    server_name: str
    max_request_headers_bytes: int
    max_headers_count: int
    idle_timeout_s: float | None
    request_headers_timeout_s: float | None
    request_timeout_s: float | None
    stream_idle_timeout_s: float | None
    drain_timeout_s: float
    delayed_close_timeout_s: float
    accept_http_10: bool
    default_host_for_http_10: str
    stats: HcmStats
    bad_request: LocalResponse
    bad_request_no_body: LocalResponse
    headers_too_large: LocalResponse
    upgrade_required: LocalResponse
    upgrade_forbidden: LocalResponse
    request_header_timeout_reply: LocalResponse
    request_timeout_reply: LocalResponse
    stream_timeout_reply: LocalResponse
    http2_max_concurrent_streams: int
    http2_initial_stream_window: int
    http2_initial_connection_window: int
    proxy_policy: ProxyPolicy


_DEFAULT_IDLE_TIMEOUT_S = 3600.0
_DEFAULT_DRAIN_TIMEOUT_S = 5.0
_DEFAULT_DELAYED_CLOSE_TIMEOUT_S = 1.0
_DEFAULT_MAX_HEADERS_KB = 60
_DEFAULT_STREAM_IDLE_TIMEOUT_S = 300.0
_DEFAULT_MAX_HEADERS_COUNT = 100
_DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS = 2147483647
_DEFAULT_HTTP2_WINDOW = 268435456  # Envoy's default stream and connection windows


_CODECS = {
    hcm_pb2.HttpConnectionManager.AUTO: Codec.AUTO,
    hcm_pb2.HttpConnectionManager.HTTP1: Codec.HTTP1,
    hcm_pb2.HttpConnectionManager.HTTP2: Codec.HTTP2,
}

# Serialized HCM -> (the stats store it was built against, its config). Only successes are
# kept: a failure is reported once, at the path of the chain that has it.
HCM_CONFIGS: BoundedCache[bytes, tuple[Stats, HcmConfig]] = BoundedCache.for_config_bytes()


def build_http_connection_manager(
    hcm: hcm_pb2.HttpConnectionManager, path: str, stats: Stats
) -> HcmConfig:
    """Translate one HCM that passed the PGV rules and the support table (config/), or reuse
    the config of an identical one; raises `ConfigError("PATH: reason")` for what only
    building finds (a duplicate domain, an unreadable body file)."""
    key = hcm.SerializeToString()
    cached = HCM_CONFIGS.get(key)
    if cached is not None and cached[0] is stats:
        return cached[1]
    config = _build(hcm, path, stats)
    HCM_CONFIGS.put(key, (stats, config), len(key))
    return config


def _build(hcm: hcm_pb2.HttpConnectionManager, path: str, stats: Stats) -> HcmConfig:
    codec = _CODECS[hcm.codec_type]
    _check_http_filters(hcm, path)

    options = hcm.common_http_protocol_options
    idle_timeout_s: float | None = _DEFAULT_IDLE_TIMEOUT_S
    if options.HasField("idle_timeout"):
        idle_timeout_s = duration_seconds(options.idle_timeout) or None  # 0 disables it
    max_headers_count = _DEFAULT_MAX_HEADERS_COUNT
    if options.HasField("max_headers_count"):
        max_headers_count = options.max_headers_count.value

    http1 = hcm.http_protocol_options
    http2 = hcm.http2_protocol_options
    http2_windows = [_DEFAULT_HTTP2_WINDOW, _DEFAULT_HTTP2_WINDOW]
    for index, name in enumerate(("initial_stream_window_size", "initial_connection_window_size")):
        if http2.HasField(name):
            http2_windows[index] = getattr(http2, name).value
    max_concurrent_streams = _DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
    if http2.HasField("max_concurrent_streams"):
        max_concurrent_streams = http2.max_concurrent_streams.value

    max_kb = _DEFAULT_MAX_HEADERS_KB
    if hcm.HasField("max_request_headers_kb"):
        max_kb = hcm.max_request_headers_kb.value
    server_name = hcm.server_name or "envoy"
    routes = RouteTable(
        hcm.route_config, f"{path}.route_config", server_name, hcm.strip_any_host_port
    )
    return HcmConfig(
        stat_prefix=hcm.stat_prefix,
        codec=codec,
        routes=RouteHandle(routes),
        server_name=server_name,
        max_request_headers_bytes=max_kb * 1024,
        max_headers_count=max_headers_count,
        idle_timeout_s=idle_timeout_s,
        request_headers_timeout_s=_optional_duration(hcm, "request_headers_timeout", None),
        request_timeout_s=_optional_duration(hcm, "request_timeout", None),
        stream_idle_timeout_s=_optional_duration(
            hcm, "stream_idle_timeout", _DEFAULT_STREAM_IDLE_TIMEOUT_S
        ),
        drain_timeout_s=(
            duration_seconds(hcm.drain_timeout)
            if hcm.HasField("drain_timeout")
            else _DEFAULT_DRAIN_TIMEOUT_S
        ),
        delayed_close_timeout_s=(
            duration_seconds(hcm.delayed_close_timeout)
            if hcm.HasField("delayed_close_timeout")
            else _DEFAULT_DELAYED_CLOSE_TIMEOUT_S
        ),
        accept_http_10=http1.accept_http_10,
        default_host_for_http_10=http1.default_host_for_http_10,
        stats=HcmStats(stats, hcm.stat_prefix),
        bad_request=LocalResponse(400, b"Bad Request", server_name),
        bad_request_no_body=LocalResponse(400, b"", server_name),
        headers_too_large=LocalResponse(431, b"Request Header Fields Too Large", server_name),
        upgrade_required=LocalResponse(426, b"Upgrade Required", server_name),
        upgrade_forbidden=LocalResponse(403, b"", server_name),
        request_header_timeout_reply=LocalResponse(408, b"request header timeout", server_name),
        request_timeout_reply=LocalResponse(408, b"request timeout", server_name),
        stream_timeout_reply=LocalResponse(408, b"stream timeout", server_name),
        http2_max_concurrent_streams=max_concurrent_streams,
        http2_initial_stream_window=http2_windows[0],
        http2_initial_connection_window=http2_windows[1],
        proxy_policy=ProxyPolicy(
            server_name=server_name.encode(),
            use_remote_address=hcm.use_remote_address.value,
            skip_xff_append=hcm.skip_xff_append,
            generate_request_id=(
                hcm.generate_request_id.value if hcm.HasField("generate_request_id") else True
            ),
        ),
    )


def _optional_duration(
    hcm: hcm_pb2.HttpConnectionManager, name: str, default: float | None
) -> float | None:
    """A timeout field: unset gives the default, 0 disables it."""
    if not hcm.HasField(name):
        return default
    return duration_seconds(getattr(hcm, name)) or None


def _check_http_filters(hcm: hcm_pb2.HttpConnectionManager, path: str) -> None:
    """Only the router is supported, and it must be the last filter (as in Envoy)."""
    for index, http_filter in enumerate(hcm.http_filters):
        filter_path = f"{path}.http_filters[{index}]"
        type_url = http_filter.typed_config.type_url if http_filter.HasField("typed_config") else ""
        if type_url != ROUTER_TYPE_URL:
            if http_filter.is_optional:
                continue
            raise ConfigError(
                f"{filter_path}: Didn't find a registered implementation for "
                f"'{http_filter.name}' with type URL: '{type_url.split('/')[-1]}'"
            )
        router = router_pb2.Router()
        if not http_filter.typed_config.Unpack(router):
            raise ConfigError(f"{filter_path}.typed_config: cannot decode Router")
        if index != len(hcm.http_filters) - 1:
            raise ConfigError(
                f"{filter_path}: Error: terminal filter named {http_filter.name} of type "
                "envoy.filters.http.router must be the last filter in a http filter chain."
            )
    if not any(
        f.typed_config.type_url == ROUTER_TYPE_URL for f in hcm.http_filters if not f.disabled
    ):
        # Envoy accepts this and then never answers (stream timeout after 5 minutes).
        raise ConfigError(
            f"{path}.http_filters: without envoy.filters.http.router nothing answers: not supported"
        )


class DrainState(enum.IntEnum):
    """Where a connection is in its own drain (spec/draining.md section 4)."""

    NOT_DRAINING = 0
    DRAINING = 1  # the next response carries `connection: close`
    CLOSING = 2  # our side is closed (FIN sent or pending), waiting for the client's FIN
