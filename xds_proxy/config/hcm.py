"""The HTTP connection manager's settings, translated once from a checked
`HttpConnectionManager`: codec, limits, timeouts, HTTP/1.1 and HTTP/2 options and what shapes
forwarded requests (`ProxyPolicy`). The route table, the pre-rendered local replies and the
stat handles are attached by http/conn_manager.py (`HcmConfig` extends `HcmSettings`)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.config.access_log import AccessLogSpec, build_access_logs
from xds_proxy.config.internal_address import InternalAddresses
from xds_proxy.config.upgrades import build_upgrades
from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError

ROUTER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# Envoy's defaults.
DEFAULT_IDLE_TIMEOUT_S = 3600.0
DEFAULT_DRAIN_TIMEOUT_S = 5.0
DEFAULT_DELAYED_CLOSE_TIMEOUT_S = 1.0
DEFAULT_MAX_HEADERS_KB = 60
DEFAULT_STREAM_IDLE_TIMEOUT_S = 300.0
DEFAULT_MAX_HEADERS_COUNT = 100
DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS = 2147483647
DEFAULT_HTTP2_WINDOW = 268435456  # the stream and the connection windows


class Codec(enum.Enum):
    AUTO = 0
    HTTP1 = 1
    HTTP2 = 2


_CODECS = {
    hcm_pb2.HttpConnectionManager.AUTO: Codec.AUTO,
    hcm_pb2.HttpConnectionManager.HTTP1: Codec.HTTP1,
    hcm_pb2.HttpConnectionManager.HTTP2: Codec.HTTP2,
}


class EscapedSlashes(enum.Enum):
    """`path_with_escaped_slashes_action` (IMPLEMENTATION_SPECIFIC_DEFAULT is KEEP_UNCHANGED,
    as Envoy's runtime default)."""

    KEEP_UNCHANGED = 1
    REJECT_REQUEST = 2
    UNESCAPE_AND_REDIRECT = 3
    UNESCAPE_AND_FORWARD = 4


class Underscores(enum.Enum):
    """`common_http_protocol_options.headers_with_underscores_action`."""

    ALLOW = 0
    REJECT_REQUEST = 1
    DROP_HEADER = 2


class ServerHeader(enum.Enum):
    """`server_header_transformation`: what becomes of the `server` response header."""

    OVERWRITE = 0
    APPEND_IF_ABSENT = 1
    PASS_THROUGH = 2


class ClientCertMode(enum.Enum):
    """`forward_client_cert_details`: what becomes of `x-forwarded-client-cert`."""

    SANITIZE = 0  # removed (also the default: ProxyPolicy.client_cert is None then)
    FORWARD_ONLY = 1  # kept on mTLS connections, removed on others
    APPEND_FORWARD = 2  # this hop's element appended (mTLS), removed on others
    SANITIZE_SET = 3  # replaced by this hop's element (mTLS), removed on others
    ALWAYS_FORWARD_ONLY = 4  # kept


class CertDetail(enum.Enum):
    """`set_current_client_cert_details`, in the order Envoy writes them."""

    CERT = "Cert"
    SUBJECT = "Subject"
    URI = "URI"
    DNS = "DNS"


@dataclass(frozen=True, slots=True)
class ClientCertPolicy:
    mode: ClientCertMode
    details: tuple[CertDetail, ...]


@dataclass(frozen=True, slots=True)
class PathSettings:
    """What is done to a request's path before routing (http/path_normalization.py); an HCM
    that sets none of the three fields has none (`HcmSettings.path_settings` is None)."""

    normalize_path: bool
    merge_slashes: bool
    escaped_slashes: EscapedSlashes


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """The connection manager's settings that shape forwarded requests and responses."""

    server_name: bytes = b"envoy"
    use_remote_address: bool = False
    skip_xff_append: bool = False
    generate_request_id: bool = True
    # The last `xff_num_trusted_hops` x-forwarded-for entries come from trusted proxies.
    xff_num_trusted_hops: int = 0
    preserve_external_request_id: bool = False
    server_header: ServerHeader = ServerHeader.OVERWRITE
    # The router's suppress_envoy_headers: no x-envoy-expected-rq-timeout-ms,
    # x-envoy-original-path / -host, x-envoy-upstream-service-time, x-envoy-overloaded.
    suppress_envoy_headers: bool = False
    # `internal_address_config` (None: no request is internal, Envoy 1.40's default).
    internal_addresses: InternalAddresses | None = None
    # forward_client_cert_details with set_current_client_cert_details (None: SANITIZE
    # without details, the header is removed with the other untrusted ones).
    client_cert: ClientCertPolicy | None = None


@dataclass(frozen=True, slots=True)
class HcmSettings:
    stat_prefix: str
    codec: Codec
    server_name: str  # "" with PASS_THROUGH: local replies have no `server` header
    max_request_headers_bytes: int
    max_headers_count: int
    idle_timeout_s: float | None  # None: disabled
    request_headers_timeout_s: float | None
    request_timeout_s: float | None
    stream_idle_timeout_s: float | None
    drain_timeout_s: float
    delayed_close_timeout_s: float
    accept_http_10: bool
    default_host_for_http_10: str
    http2_max_concurrent_streams: int
    http2_initial_stream_window: int
    http2_initial_connection_window: int
    proxy_policy: ProxyPolicy
    path_settings: PathSettings | None  # None: the path is routed and forwarded as received
    headers_with_underscores: Underscores
    access_logs: tuple[AccessLogSpec, ...]
    # `upgrade_configs`: (lowercase upgrade type, enabled), as a route's (config/upgrades.py).
    upgrades: tuple[tuple[str, bool], ...]


def build_hcm_settings(hcm: hcm_pb2.HttpConnectionManager, path: str) -> HcmSettings:
    """Translate an HCM that passed the PGV rules and the support table; raises ConfigError
    for what Envoy refuses about its HTTP filters (the router missing, or not last)."""
    router = check_http_filters(hcm, path)
    options = hcm.common_http_protocol_options
    idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S
    if options.HasField("idle_timeout"):
        idle_timeout_s = duration_seconds(options.idle_timeout) or None  # 0 disables it
    max_headers_count = DEFAULT_MAX_HEADERS_COUNT
    if options.HasField("max_headers_count"):
        max_headers_count = options.max_headers_count.value
    http1 = hcm.http_protocol_options
    http2 = hcm.http2_protocol_options
    max_kb = DEFAULT_MAX_HEADERS_KB
    if hcm.HasField("max_request_headers_kb"):
        max_kb = hcm.max_request_headers_kb.value
    server_name = rendered_server_name(hcm)
    return HcmSettings(
        stat_prefix=hcm.stat_prefix,
        codec=_CODECS[hcm.codec_type],
        server_name=server_name,
        max_request_headers_bytes=max_kb * 1024,
        max_headers_count=max_headers_count,
        idle_timeout_s=idle_timeout_s,
        request_headers_timeout_s=_optional_duration(hcm, "request_headers_timeout", None),
        request_timeout_s=_optional_duration(hcm, "request_timeout", None),
        stream_idle_timeout_s=_optional_duration(
            hcm, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT_S
        ),
        drain_timeout_s=_optional_duration(hcm, "drain_timeout", DEFAULT_DRAIN_TIMEOUT_S) or 0.0,
        delayed_close_timeout_s=(
            _optional_duration(hcm, "delayed_close_timeout", DEFAULT_DELAYED_CLOSE_TIMEOUT_S) or 0.0
        ),
        accept_http_10=http1.accept_http_10,
        default_host_for_http_10=http1.default_host_for_http_10,
        http2_max_concurrent_streams=_wrapped(
            http2, "max_concurrent_streams", DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
        ),
        http2_initial_stream_window=_wrapped(
            http2, "initial_stream_window_size", DEFAULT_HTTP2_WINDOW
        ),
        http2_initial_connection_window=_wrapped(
            http2, "initial_connection_window_size", DEFAULT_HTTP2_WINDOW
        ),
        proxy_policy=ProxyPolicy(
            server_name=server_name.encode(),
            use_remote_address=hcm.use_remote_address.value,
            skip_xff_append=hcm.skip_xff_append,
            generate_request_id=(
                hcm.generate_request_id.value if hcm.HasField("generate_request_id") else True
            ),
            xff_num_trusted_hops=hcm.xff_num_trusted_hops,
            preserve_external_request_id=hcm.preserve_external_request_id,
            server_header=ServerHeader(hcm.server_header_transformation),
            suppress_envoy_headers=router.suppress_envoy_headers if router else False,
            internal_addresses=_internal_addresses(hcm, f"{path}.internal_address_config"),
            client_cert=_client_cert(hcm),
        ),
        path_settings=_path_settings(hcm),
        headers_with_underscores=Underscores(options.headers_with_underscores_action),
        access_logs=build_access_logs(hcm.access_log, f"{path}.access_log"),
        upgrades=build_upgrades(
            hcm.upgrade_configs, f"{path}.upgrade_configs", hcm_duplicates=True
        ),
    )


def rendered_server_name(hcm: hcm_pb2.HttpConnectionManager) -> str:
    """The `server` header the HCM writes: `server_name` (default "envoy"), or "" (none)
    with PASS_THROUGH."""
    if hcm.server_header_transformation == ServerHeader.PASS_THROUGH.value:
        return ""
    return hcm.server_name or "envoy"


def _path_settings(hcm: hcm_pb2.HttpConnectionManager) -> PathSettings | None:
    escaped = EscapedSlashes(
        hcm.path_with_escaped_slashes_action or EscapedSlashes.KEEP_UNCHANGED.value
    )
    normalize = hcm.normalize_path.value
    if not normalize and not hcm.merge_slashes and escaped is EscapedSlashes.KEEP_UNCHANGED:
        return None
    return PathSettings(normalize, hcm.merge_slashes, escaped)


def _internal_addresses(hcm: hcm_pb2.HttpConnectionManager, path: str) -> InternalAddresses | None:
    if not hcm.HasField("internal_address_config"):
        return None
    config = hcm.internal_address_config
    ranges = []
    for index, cidr in enumerate(config.cidr_ranges):
        length = cidr.prefix_len.value if cidr.HasField("prefix_len") else 0
        try:
            ranges.append(ipaddress.ip_network(f"{cidr.address_prefix}/{length}", strict=False))
        except ValueError as error:
            raise ConfigError(
                f"{path}.cidr_ranges[{index}]: malformed IP range "
                f"{cidr.address_prefix}/{length}: {error}"
            ) from None
    return InternalAddresses(tuple(ranges), config.unix_sockets)


def _client_cert(hcm: hcm_pb2.HttpConnectionManager) -> ClientCertPolicy | None:
    mode = ClientCertMode(hcm.forward_client_cert_details)
    wanted = hcm.set_current_client_cert_details
    details = tuple(
        detail
        for detail, chosen in (
            (CertDetail.CERT, wanted.cert),
            (CertDetail.SUBJECT, wanted.subject.value),
            (CertDetail.URI, wanted.uri),
            (CertDetail.DNS, wanted.dns),
        )
        if chosen
    )
    if mode is ClientCertMode.SANITIZE and not details:
        return None
    return ClientCertPolicy(mode, details)


def _optional_duration(
    hcm: hcm_pb2.HttpConnectionManager, name: str, default: float | None
) -> float | None:
    """A timeout field: unset gives the default, 0 disables it (None)."""
    if not hcm.HasField(name):
        return default
    return duration_seconds(getattr(hcm, name)) or None


def _wrapped(message, name: str, default: int) -> int:
    return getattr(message, name).value if message.HasField(name) else default


def check_http_filters(hcm: hcm_pb2.HttpConnectionManager, path: str) -> router_pb2.Router | None:
    """Only the router is built, and it must be the last filter (as in Envoy); returns the
    router's config (None when it is disabled: refused below)."""
    found: router_pb2.Router | None = None
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
        if not http_filter.disabled:
            found = router
    if not any(
        f.typed_config.type_url == ROUTER_TYPE_URL for f in hcm.http_filters if not f.disabled
    ):
        # Envoy accepts this and then never answers (stream timeout after 5 minutes).
        raise ConfigError(
            f"{path}.http_filters: without envoy.filters.http.router nothing answers: not supported"
        )
    return found
