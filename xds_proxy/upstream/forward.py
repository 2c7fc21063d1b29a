"""Forwarding a request to a cluster: the route's `route` action and one exchange per request.

`ForwardAction` is built once per route from a `RouteAction` (cluster or weighted clusters,
`prefix_rewrite`, the host rewrites (`host_rewrite_literal`, `host_rewrite_header`,
`host_rewrite_path_regex`, and `auto_host_rewrite`, which the cluster applies once it has
chosen the host: `RequestHead.host_from_upstream`), `timeout`, `cluster_not_found_response_code`,
`hash_policy`: the request's hash for the hashing balancers, hash_policy.py).
`Exchange` carries one request from a downstream codec to an upstream stream and the response
back, doing what Envoy's connection manager and router do to the headers on the way
(hop-by-hop removal, `x-forwarded-proto`, `x-forwarded-for`, `x-request-id`,
`x-envoy-expected-rq-timeout-ms`, `x-envoy-original-path`, header mutations,
`x-envoy-upstream-service-time`, `date`, `server`) and answering failures as Envoy does (503
with `upstream connect error or disconnect/reset before headers. reset reason: ...`, 504
`upstream request timeout`). The downstream codec implements `DownstreamSink`, so the same
exchange serves HTTP/1.1 and HTTP/2 downstreams. A route's `retry_policy` (and per-try
timeout) is carried out by `_Attempts`, at the end of this module, on the decisions of
upstream/retry.py (docs/retries.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from google.protobuf.message import Message

from xds_proxy.access_log import AccessLog
from xds_proxy.access_log.record import LogRecord, format_address
from xds_proxy.codec.forwarded_for import is_loopback, last_xff_address, local_address
from xds_proxy.codec.responses import HTTP_DATE
from xds_proxy.config.hash_policy import HashMethod, build_hash_policy
from xds_proxy.config.hcm import ProxyPolicy, ServerHeader
from xds_proxy.config.retry import RetryPolicy, VirtualHostRetry, build_retry_policy
from xds_proxy.config.upgrades import Upgrades, build_upgrades
from xds_proxy.config.values import duration_seconds
from xds_proxy.config.weighted import WeightedClusters
from xds_proxy.errors import ConfigError
from xds_proxy.upstream.client_cert import XFCC, apply_client_cert
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.deadlines import Deadline, Deadlines
from xds_proxy.upstream.hash_policy import address_text, request_hash
from xds_proxy.upstream.host import Host, host_address_text
from xds_proxy.upstream.internal_request import (
    ROUTER_CONSUMED,
    forced_trace_id,
    is_internal,
    trusted_timeouts,
)
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.upstream.outlier import Result
from xds_proxy.upstream.retry import (
    ATTEMPT_COUNT,
    Decision,
    RequestReplay,
    RetryState,
    per_try_timeout_s,
    take_retry_headers,
)
from xds_proxy.upstream.stream import (
    CONNECTION_FAILURE,
    CONNECTION_TERMINATION,
    CONNECTION_TIMEOUT,
    HOP_BY_HOP,
    LOCAL_RESET,
    OVERFLOW,
    PROTOCOL_ERROR,
    REMOTE_REFUSED_STREAM_RESET,
    REMOTE_RESET,
    Header,
    RequestHead,
    ResponseHandler,
    UpstreamStream,
    upgrade_response_headers,
)

DEFAULT_ROUTE_TIMEOUT_S = 15.0
# Resets that happened before the upstream connection was made, for outlier detection.
_LOCAL_ORIGIN = {CONNECTION_FAILURE: Result.CONNECT_FAILED, CONNECTION_TIMEOUT: Result.TIMEOUT}
RESET_BODY_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "
TIMEOUT_BODY = b"upstream request timeout"
NO_HEALTHY_UPSTREAM_BODY = b"no healthy upstream"
_NOT_FOUND_CODES = {0: 503, 1: 404, 2: 500}
_RESPONSE_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)

# What Envoy's connection manager removes from every request it does not trust as internal
# (with the default internal_address_config, every request), besides the hop-by-hop headers;
# an edge request (use_remote_address) loses a few more.
_STRIPPED = (
    HOP_BY_HOP
    | ROUTER_CONSUMED  # the router's own (retries, timeouts, ...): internal_request.py
    | {
        b"x-envoy-internal",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-force-trace",
        b"x-envoy-ip-tags",
        b"x-envoy-original-url",
        XFCC,  # forward_client_cert_details' default, SANITIZE
    }
)
_EDGE_STRIPPED = _STRIPPED | {
    b"x-envoy-decorator-operation",
    b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node",
    b"x-envoy-original-path",
}
# An internal request keeps the x-envoy-* headers (the router consumes its own).
_INTERNAL_STRIPPED = HOP_BY_HOP | ROUTER_CONSUMED | {b"x-envoy-internal", XFCC}
# The same sets for an HCM whose forward_client_cert_details may keep x-forwarded-client-cert.
_KEEPING_XFCC = {
    stripped: stripped - {XFCC} for stripped in (_STRIPPED, _EDGE_STRIPPED, _INTERNAL_STRIPPED)
}
_INTERNAL = (b"x-envoy-internal", b"true")

# An allowed upgrade request keeps `connection` and `upgrade` (Envoy forwards them verbatim).
_UPGRADE_KEPT = frozenset({b"connection", b"upgrade"})

# HeaderValueOption.append_action
_APPEND, _ADD_IF_ABSENT, _OVERWRITE_OR_ADD, _OVERWRITE_IF_EXISTS = 0, 1, 2, 3


# ----------------------------------------------------------------------------- header mutations


@dataclass(frozen=True, slots=True)
class _HeaderAdd:
    name: bytes
    value: bytes
    action: int
    keep_empty: bool


def _header_adds(
    options: Sequence[base_pb2.HeaderValueOption], path: str
) -> tuple[_HeaderAdd, ...]:
    adds = []
    for index, option in enumerate(options):
        option_path = f"{path}[{index}]"
        header = option.header
        name = header.key.lower()
        if name.startswith(":") or name == "host":
            raise ConfigError(
                f"{option_path}.header.key: ':-prefixed' or host headers may not be modified"
            )
        value = header.raw_value if header.raw_value else header.value.encode()
        if b"%" in value.replace(b"%%", b""):
            raise ConfigError(f"{option_path}.header.value: format specifiers not supported")
        value = value.replace(b"%%", b"%")
        action = option.append_action
        if option.HasField("append"):
            if action != _APPEND:
                raise ConfigError(
                    f"{option_path}: Both append and append_action are set and it's not allowed"
                )
            action = _APPEND if option.append.value else _OVERWRITE_OR_ADD
        adds.append(_HeaderAdd(name.encode(), value, action, option.keep_empty_value))
    return tuple(adds)


def _apply(headers: list[Header], removes: frozenset[bytes], adds: tuple[_HeaderAdd, ...]) -> None:
    if removes:
        headers[:] = [(n, v) for n, v in headers if n not in removes]
    for add in adds:
        if not add.value and not add.keep_empty:
            continue
        present = any(n == add.name for n, _ in headers)
        if add.action == _ADD_IF_ABSENT and present:
            continue
        if add.action == _OVERWRITE_IF_EXISTS and not present:
            continue
        if add.action in (_OVERWRITE_OR_ADD, _OVERWRITE_IF_EXISTS) and present:
            headers[:] = [(n, v) for n, v in headers if n != add.name]
        headers.append((add.name, add.value))


class HeaderMutations:
    """`request_headers_to_add/remove` and `response_headers_to_add/remove` of one level
    (route, virtual host or route configuration: the same four field names)."""

    __slots__ = (
        "path",
        "request_adds",
        "request_removes",
        "response_adds",
        "response_removes",
    )

    FIELDS = (
        "request_headers_to_add",
        "request_headers_to_remove",
        "response_headers_to_add",
        "response_headers_to_remove",
    )

    def __init__(self, message: Message, path: str) -> None:
        self.path = path
        # Most levels set one of the four fields or none: an empty one costs no path text.
        adds = message.request_headers_to_add  # type: ignore[attr-defined]
        self.request_adds = _header_adds(adds, f"{path}.request_headers_to_add") if adds else ()
        adds = message.response_headers_to_add  # type: ignore[attr-defined]
        self.response_adds = _header_adds(adds, f"{path}.response_headers_to_add") if adds else ()
        removes = message.request_headers_to_remove  # type: ignore[attr-defined]
        self.request_removes = (
            _removes(removes, f"{path}.request_headers_to_remove") if removes else _NONE
        )
        removes = message.response_headers_to_remove  # type: ignore[attr-defined]
        self.response_removes = (
            _removes(removes, f"{path}.response_headers_to_remove") if removes else _NONE
        )

    @property
    def empty(self) -> bool:
        return not (
            self.request_adds or self.request_removes or self.response_adds or self.response_removes
        )

    @property
    def has_response(self) -> bool:
        return bool(self.response_adds or self.response_removes)

    @property
    def response_field(self) -> str:
        """The path of this level's first response mutation field (for errors)."""
        name = "response_headers_to_add" if self.response_adds else "response_headers_to_remove"
        return f"{self.path}.{name}"

    def apply_request(self, headers: list[Header]) -> None:
        _apply(headers, self.request_removes, self.request_adds)

    def apply_response(self, headers: list[Header]) -> None:
        _apply(headers, self.response_removes, self.response_adds)


_NONE: frozenset[bytes] = frozenset()


def _removes(names: Sequence[str], path: str) -> frozenset[bytes]:
    for index, name in enumerate(names):
        if name.startswith(":") or name.lower() == "host":
            raise ConfigError(f"{path}[{index}]: ':-prefixed' or host headers may not be removed")
    return frozenset(name.lower().encode() for name in names)


# ----------------------------------------------------------------------------- the route action


class ForwardAction:
    """A route's `route` action, ready for per-request use."""

    __slots__ = (
        "attempt_count_downstream",
        "attempt_count_upstream",
        "auto_host_rewrite",
        "clusters",
        "hash_policy",
        "host_rewrite",
        "host_rewrite_header",
        "host_rewrite_regex",
        "mutations",
        "not_found_status",
        "path_rewrite",
        "prefix",
        "prefix_rewrite",
        "retry_policy",
        "rewrites_host",
        "route_name",
        "single_cluster",
        "timeout_s",
        "upgrades",
    )

    def __init__(
        self,
        action: route_components_pb2.RouteAction,
        path: str,
        match_kind: str,
        match_value: str,
    ) -> None:
        if action.WhichOneof("cluster_specifier") == "weighted_clusters":
            self.clusters = _weighted(action.weighted_clusters, f"{path}.weighted_clusters")
        else:
            self.clusters = WeightedClusters.single(action.cluster)
        self.not_found_status = _NOT_FOUND_CODES[action.cluster_not_found_response_code]
        self.prefix_rewrite: bytes | None = None
        self.prefix = b""
        self.path_rewrite = False
        if action.prefix_rewrite:
            if match_kind not in ("prefix", "path"):
                raise ConfigError(
                    f"{path}.prefix_rewrite: Cannot use prefix_rewrite with {match_kind} match"
                )
            self.prefix_rewrite = action.prefix_rewrite.encode()
            self.prefix = match_value.encode()
        self.host_rewrite = action.host_rewrite_literal.encode() or None
        self.host_rewrite_header = action.host_rewrite_header.lower().encode() or None
        self.host_rewrite_regex = _path_to_host(action, f"{path}.host_rewrite_path_regex")
        self.auto_host_rewrite = action.auto_host_rewrite.value
        # (Read per request: whether `rewritten_host` and `pick_cluster` have work to do.)
        self.rewrites_host = (
            self.host_rewrite is not None
            or self.host_rewrite_header is not None
            or self.host_rewrite_regex is not None
        )
        entries = self.clusters.entries
        self.single_cluster: str | None = entries[0][0] if len(entries) == 1 else None
        self.timeout_s: float | None = DEFAULT_ROUTE_TIMEOUT_S
        if action.HasField("timeout"):
            self.timeout_s = duration_seconds(action.timeout) or None
        _no_stream_duration(action, f"{path}.max_stream_duration")
        self.hash_policy: tuple[HashMethod, ...] = build_hash_policy(
            action.hash_policy, f"{path}.hash_policy"
        )
        # `upgrade_configs`, overriding the HCM's per upgrade type (config/upgrades.py).
        self.upgrades: Upgrades = build_upgrades(action.upgrade_configs, f"{path}.upgrade_configs")
        self.mutations: tuple[HeaderMutations, ...] = ()
        self.route_name = ""  # the route's name (access logs' ROUTE_NAME)
        self.retry_policy: RetryPolicy | None = None
        if action.HasField("retry_policy"):
            self.retry_policy = build_retry_policy(action.retry_policy, f"{path}.retry_policy")
        self.attempt_count_upstream = self.attempt_count_downstream = False

    def use_virtual_host(self, settings: VirtualHostRetry) -> None:
        """The virtual host's retry settings: its retry_policy unless the route has one."""
        if self.retry_policy is None:
            self.retry_policy = settings.policy
        self.attempt_count_upstream = settings.attempt_count_upstream
        self.attempt_count_downstream = settings.attempt_count_downstream

    def rewritten_host(self, request: DownstreamRequest) -> bytes | None:
        """The upstream Host by `host_rewrite_literal`, `host_rewrite_header` (when the
        request has that header, non-empty) or `host_rewrite_path_regex` (on the path without
        its query); None: unchanged (`auto_host_rewrite` is applied by the cluster)."""
        if self.host_rewrite is not None:
            return self.host_rewrite
        if self.host_rewrite_header is not None:
            for name, value in request.headers:
                if name == self.host_rewrite_header:
                    return value or None
            return None
        if self.host_rewrite_regex is not None:
            pattern, substitution = self.host_rewrite_regex
            path = request.url.split(b"?", 1)[0].decode("latin-1")
            return pattern.sub(substitution, path).encode("latin-1")
        return None

    def pick_cluster(self, rng: random.Random) -> str:
        return self.clusters.pick(rng)

    def rewrite_path(self, url: bytes) -> bytes | None:
        """The upstream path after `prefix_rewrite`, or None when unchanged. Envoy replaces
        the matched prefix (case as configured) and keeps the query string."""
        if self.prefix_rewrite is None:
            return None
        return self.prefix_rewrite + url[len(self.prefix) :]


def _path_to_host(
    action: route_components_pb2.RouteAction, path: str
) -> tuple[re.Pattern[str], str] | None:
    """`host_rewrite_path_regex`: the pattern and its substitution (RE2's `\\N` groups)."""
    if not action.HasField("host_rewrite_path_regex"):
        return None
    rewrite = action.host_rewrite_path_regex
    try:
        pattern = re.compile(rewrite.pattern.regex)
    except re.error as error:
        raise ConfigError(
            f"{path}.pattern.regex: invalid regex '{rewrite.pattern.regex}': {error}"
        ) from None
    substitution = re.sub(r"\\(\d)", r"\\g<\1>", rewrite.substitution)
    return pattern, substitution


def _no_stream_duration(action: route_components_pb2.RouteAction, path: str) -> None:
    """`max_stream_duration.max_stream_duration`: only 0s (no limit) is accepted; a stream's
    duration is not limited yet."""
    durations = action.max_stream_duration
    if durations.HasField("max_stream_duration") and duration_seconds(
        durations.max_stream_duration
    ):
        raise ConfigError(
            f"{path}.max_stream_duration: not supported yet (a stream's duration is not "
            "limited: only 0s is accepted)"
        )


def _weighted(weighted: route_components_pb2.WeightedCluster, path: str) -> WeightedClusters:
    found = []
    for index, entry in enumerate(weighted.clusters):
        entry_path = f"{path}.clusters[{index}]"
        if not entry.name:
            raise ConfigError(f"{entry_path}.name: value length must be at least 1 characters")
        found.append((entry.name, entry.weight.value if entry.HasField("weight") else 0))
    total = sum(weight for _, weight in found)
    if weighted.HasField("total_weight") and weighted.total_weight.value != total:
        raise ConfigError(
            f"{path}.total_weight: Sum of weights in the weighted_cluster must equal "
            f"total_weight, got {total} and {weighted.total_weight.value}"
        )
    if total == 0:
        raise ConfigError(f"{path}: Sum of weights in the weighted_cluster must be greater than 0")
    return WeightedClusters.of(found)


# ----------------------------------------------------------------------------- per request


@dataclass(slots=True)
class DownstreamRequest:
    method: bytes
    url: bytes  # path and query as received
    host: bytes
    headers: list[Header]  # lowercase names, as received, `host` excluded
    remote_ip: str = ""
    scheme: bytes = b"http"
    http2: bool = False  # came in over HTTP/2 (`use_downstream_protocol_config`)
    # The connection's socket addresses (a hash policy's generated cookie is made of them).
    peer: tuple | None = None
    local: tuple | None = None
    # An allowed HTTP/1.1 upgrade (http/http1_upgrade.py): `connection` and `upgrade` go on.
    upgrade: bool = False
    # The connection manager trusts the request as internal (internal_address_config): its
    # x-envoy-* headers (retry-on, max-retries, upstream-rq-timeout-ms, ...) are honoured.
    # Decided by Exchange.start before anything reads the headers.
    internal: bool = False
    # The TLS connection's ssl.SSLObject (x-forwarded-client-cert), None on plain TCP.
    ssl: Any = None


class DownstreamSink(Protocol):
    """What an exchange needs from the downstream codec for one request."""

    def send_response_headers(self, status: int, headers: list[Header], end_stream: bool) -> None:
        """Headers as they go on the wire, minus framing (`content-length` is passed through
        when the upstream sent one; the codec chunks otherwise)."""
        ...

    def send_response_data(self, data: bytes, end_stream: bool) -> None: ...

    def send_whole_response(self, status: int, headers: list[Header], body: bytes) -> None:
        """`send_response_headers` (not ending the stream), then `send_response_data` of
        `body`, ending it."""
        ...

    def send_response_trailers(self, trailers: list[Header]) -> None: ...

    # Set by the exchange when the upstream's `server` header is kept (its place, its value):
    # the codec then adds none.
    server_sent: bool

    def send_local_reply(self, status: int, body: bytes, headers: list[Header]) -> None:
        """An Envoy-formatted local reply (content-type text/plain when there is a body)."""
        ...

    def reset_downstream(self) -> None:
        """The response cannot complete (the upstream failed after its headers)."""
        ...

    def pause_request_body(self) -> None: ...

    def resume_request_body(self) -> None: ...


_rng = random.Random()
# (An enum member read from its class goes through EnumType.__getattr__ on Python 3.11.)
_OVERWRITE = ServerHeader.OVERWRITE
# Route timeouts, one loop timer per duration (deadlines.py).
_ROUTE_TIMEOUTS = Deadlines()


class _RandomHex:
    """The OS's random bytes, fetched 4 KiB at a time (one system call per 256 request ids,
    as Envoy's random generator buffers them too) and written in hex at once."""

    __slots__ = ("_hex", "_position")

    _SIZE = 4096  # random bytes per draw
    _TAKE = 32  # hex digits per request id (16 random bytes)

    def __init__(self) -> None:
        self._hex = b""
        self._position = 2 * self._SIZE

    def take32(self) -> bytes:
        """32 random hex digits (16 random bytes)."""
        position = self._position
        if position >= 2 * self._SIZE or len(self._hex) != 2 * self._SIZE:
            self._hex = os.urandom(self._SIZE).hex().encode()
            position = 0
        self._position = position + self._TAKE
        return self._hex[position : position + self._TAKE]


_random_hex = _RandomHex()
os.register_at_fork(after_in_child=_random_hex.__init__)  # a child draws its own

# A version 4 UUID's variant digit: 10 in its two high bits, its two low bits random.
_VARIANT = {digit: b"89ab"[int(chr(digit), 16) & 3] for digit in b"0123456789abcdef"}


def _request_id() -> bytes:
    """A random (version 4) UUID, as Envoy generates for `x-request-id`; uuid.uuid4() costs
    several times more. (The version digit replaces a random one; the variant digit keeps
    the two low bits of its random one.)"""
    text = _random_hex.take32()
    return b"%s-%s-4%s-%c%s-%s" % (
        text[:8],
        text[8:12],
        text[13:16],
        _VARIANT[text[16]],
        text[17:20],
        text[20:],
    )


class Exchange(ResponseHandler):
    """One request forwarded upstream. The codec calls `start()`, then `request_data()` /
    `request_trailers()`, `downstream_reset()` if the client went away, and
    `pause_response()` / `resume_response()` for its own write back-pressure."""

    __slots__ = (
        "_access_log",
        "_action",
        "_cluster",
        "_done",
        "_echoed_id",
        "_headers_sent",
        "_host",
        "_mutations",
        "_record",
        "_request_ended",
        "_retries",
        "_server_header",
        "_server_name",
        "_set_cookie",
        "_sink",
        "_started_at",
        "_stream",
        "_suppress",
        "_timeout_s",
        "_timer",
        "_upgrade",
    )

    def __init__(self, action: ForwardAction, sink: DownstreamSink) -> None:
        self._action = action
        self._sink = sink
        self._stream: UpstreamStream | None = None
        self._host: Host | None = None  # the host of `_stream` (if it reached a pool)
        self._cluster = None
        self._timer: Deadline | None = None  # the route timeout, armed once the request ended
        self._headers_sent = False
        self._request_ended = False
        self._done = False
        self._started_at = 0.0
        self._mutations: Sequence[HeaderMutations] = ()
        self._record: LogRecord | None = None
        self._access_log: AccessLog | None = None
        self._suppress = False  # the router's suppress_envoy_headers
        self._set_cookie: bytes | None = None  # a hash policy's generated cookie
        self._server_header = _OVERWRITE
        self._server_name = b"envoy"
        # An upgrade request: its body never ends, so no x-envoy-upstream-service-time (Envoy
        # sends it only once the request is complete).
        self._upgrade = False
        self._retries: _Attempts | None = None  # per-try timeout, retries (upstream/retry.py)
        self._timeout_s = action.timeout_s
        self._echoed_id: bytes | None = None  # x-request-id for the response (force-trace)

    def log_to(self, record: LogRecord, access_log: AccessLog) -> None:
        """Fill `record` in as the exchange goes and log it when the exchange ends."""
        self._record = record
        self._access_log = access_log
        record.route_name = self._action.route_name

    # -- from the downstream codec ----------------------------------------------------------

    def start(
        self,
        request: DownstreamRequest,
        end_stream: bool,
        clusters: ClusterManager | None,
        policy: ProxyPolicy,
        mutations: Sequence[HeaderMutations] = (),
    ) -> None:
        action = self._action
        self._suppress = policy.suppress_envoy_headers
        self._server_header = policy.server_header
        self._server_name = policy.server_name
        self._upgrade = request.upgrade
        name = action.single_cluster or action.pick_cluster(_rng)
        cluster = clusters.get(name) if clusters is not None else None
        record = self._record
        if record is not None and end_stream:  # (the codec set its server: took_request)
            record.request_end = time.monotonic()
        if cluster is None:
            if record is not None:
                record.flags, record.details = "NC", "cluster_not_found"
            self._local_reply(action.not_found_status, b"")
            return
        self._cluster = cluster
        if policy.internal_addresses is not None:
            request.internal = is_internal(request.headers, request.remote_ip, policy)
        head = self._request_head(request, policy, mutations)
        self._started_at = time.monotonic()
        if record is not None:
            record.upstream_cluster = name
            record.path = head.path
            record.authority = head.authority
            record.request_headers = head.headers
        hash_key = None
        if action.hash_policy:
            hash_key, self._set_cookie = request_hash(
                action.hash_policy,
                request.method,
                request.url,
                request.host,
                request.headers,
                request.remote_ip,
                address_text(request.peer) + address_text(request.local),
            )
        self._retries = _Attempts.start(self, action, head, cluster, end_stream)
        stream = cluster.new_stream(head, self, end_stream, request.http2, hash_key)
        if stream is None:
            self._no_healthy_upstream()
            return
        self._use_stream(stream)
        if record is not None:
            record.authority = head.authority  # after `auto_host_rewrite`
        if self._retries is not None:
            self._retries.keep(request.http2, hash_key)
        if end_stream:
            self._request_complete()

    def request_data(self, data: bytes, end_stream: bool) -> None:
        if self._retries is not None and not self._done:
            self._retries.request_data(data, end_stream)
        if self._stream is not None and not self._done:
            self._stream.send_data(data, end_stream)
        if end_stream:
            self._request_complete()

    def request_trailers(self, trailers: list[Header]) -> None:
        if self._retries is not None:
            self._retries.request_trailers(trailers)
        if self._stream is not None and not self._done:
            self._stream.send_trailers(trailers)
        self._request_complete()

    def downstream_reset(self, disconnected: bool = True) -> None:
        """The client went away (`disconnected`), or reset its stream (HTTP/2 RST_STREAM,
        which Envoy logs with no flag): cancel the upstream stream."""
        if self._done:
            return
        if self._record is not None and disconnected:
            self._record.add_flag("DC")
            self._record.details = "downstream_remote_disconnect"
        stream = self._stream
        self._finish()
        if stream is not None:
            stream.reset()

    def pause_response(self) -> None:
        if self._stream is not None:
            self._stream.pause_response()

    def resume_response(self) -> None:
        if self._stream is not None:
            self._stream.resume_response()

    @property
    def done(self) -> bool:
        return self._done

    # -- ResponseHandler --------------------------------------------------------------------

    def on_response_headers(self, status: int, headers: list[Header], end_stream: bool) -> None:
        if self._done:
            return
        if self._retries is not None and self._retries.retry_response(status, headers, end_stream):
            return
        out = self._response_head(status, headers)
        if end_stream:
            self._finish()
        self._sink.send_response_headers(status, out, end_stream)

    def on_whole_response(self, status: int, headers: list[Header], body: bytes) -> bool:
        # Not with a retry policy (the response may be retried) nor for an upgrade.
        if self._done or self._retries is not None or self._upgrade or self._stream is None:
            return False
        out = self._response_head(status, headers)
        if self._record is not None:
            self._record.bytes_sent += len(body)
        self._finish()
        self._sink.send_whole_response(status, out, body)
        return True

    def _response_head(self, status: int, headers: list[Header]) -> list[Header]:
        """The response's headers for the downstream codec, with what goes with them counted
        and logged."""
        cluster = self._cluster
        if cluster is not None:
            cluster.stats.count_response(status)
            host = self._host if self._stream is not None else None
            if host is not None:
                if status >= 500:
                    host.stats.rq_error += 1
                else:
                    host.stats.rq_success += 1
                cluster.report_status(host, status)
        now = time.monotonic()
        elapsed_ms = int((now - self._started_at) * 1000)
        kept = False  # the upstream's `server` header goes down (server_header_transformation)
        if not self._upgrade:
            out, kept = self._response_headers(headers)
            if kept:
                self._sink.server_sent = True
        else:
            out = upgrade_response_headers(status, headers)
        if not self._suppress and not self._upgrade:
            out.append((b"x-envoy-upstream-service-time", b"%d" % elapsed_ms))
        if self._set_cookie is not None:
            out.append((b"set-cookie", self._set_cookie))
        if self._action.attempt_count_downstream:
            out.append((ATTEMPT_COUNT, b"%d" % self._attempt_count()))
        for mutations in self._mutations:
            mutations.apply_response(out)
        if self._echoed_id is not None:
            kept = self._echo_request_id(out, kept)
        self._headers_sent = True
        record = self._record
        if record is not None:
            record.status = status
            record.first_upstream_rx = now
            record.details = "via_upstream"
            response_headers = [(b":status", b"%d" % status), *out]
            if not any(name == b"date" for name, _ in out):
                response_headers.append((b"date", HTTP_DATE.now()))
            if record.server and not kept:
                response_headers.append((b"server", record.server))
            record.response_headers = response_headers
            self._log_upstream_local()
        return out

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        if self._done or self._stream is None:  # None: the end of a response just retried
            return
        if self._record is not None:
            self._record.bytes_sent += len(data)
        if end_stream:
            self._finish()
        self._sink.send_response_data(data, end_stream)

    def on_response_trailers(self, trailers: list[Header]) -> None:
        if self._done or self._stream is None:
            return
        if self._record is not None:
            self._record.trailers = trailers
        self._finish()
        self._sink.send_response_trailers(trailers)

    def on_reset(self, reason: str) -> None:
        if self._done:
            return
        retries = self._retries
        if retries is not None and not self._headers_sent and retries.retry_reset(reason):
            return
        record = self._record
        if self._headers_sent:
            if record is not None:
                record.add_flag(_RESET_FLAGS.get(reason, "UR"))  # as Envoy's, by reason
                record.details = f"upstream_reset_after_response_started{{{_detail(reason)}}}"
            self._finish()
            self._sink.reset_downstream()
            return
        if record is not None:
            record.flags = _RESET_FLAGS.get(reason, "UR")
            host = getattr(self._stream, "host", None)
            failure = host.last_connect_error if reason == CONNECTION_FAILURE and host else None
            detail = _detail(reason) if failure is None else f"{_detail(reason)}|{failure}"
            record.details = f"upstream_reset_before_response_started{{{detail}}}"
            record.upstream_failure = failure
            if retries is not None:
                retries.flag_outcome(record)
        overloaded = reason == OVERFLOW and not self._suppress
        extra = [(b"x-envoy-overloaded", b"true")] if overloaded else []
        status = 502 if reason == PROTOCOL_ERROR else 503  # Envoy's UPE is a bad gateway
        if self._cluster is not None:
            self._cluster.stats.count_response(status)
            self._count_host("rq_error")
            self._report_outlier(_LOCAL_ORIGIN.get(reason, Result.RESET))
        self._local_reply(status, RESET_BODY_PREFIX + reason.encode(), extra)

    def pause_request_body(self) -> None:
        self._sink.pause_request_body()

    def resume_request_body(self) -> None:
        self._sink.resume_request_body()

    # -- internals --------------------------------------------------------------------------

    def _request_head(
        self,
        request: DownstreamRequest,
        policy: ProxyPolicy,
        mutations: Sequence[HeaderMutations],
    ) -> RequestHead:
        action = self._action
        internal = request.internal
        if policy.use_remote_address:
            headers = self._edge_headers(request, policy)
        else:
            headers = []
            has_proto = has_request_id = False
            xff_index = -1
            stripped = _INTERNAL_STRIPPED if internal else _STRIPPED
            if policy.client_cert is not None:
                stripped = _KEEPING_XFCC[stripped]
            for name, value in request.headers:
                if name in stripped and not (request.upgrade and name in _UPGRADE_KEPT):
                    continue
                if name == b"te" and value.lower() != b"trailers":
                    continue
                if name == b"x-forwarded-proto":
                    has_proto = True
                elif name == b"x-request-id":
                    has_request_id = True
                elif name == b"x-forwarded-for":
                    if xff_index >= 0:  # Envoy's header map joins repeated x-forwarded-for
                        headers[xff_index] = (name, headers[xff_index][1] + b"," + value)
                        continue
                    xff_index = len(headers)
                headers.append((name, value))
            if not has_proto:
                headers.append((b"x-forwarded-proto", request.scheme))
            if internal:
                headers.append(_INTERNAL)
            if not has_request_id and policy.generate_request_id:
                headers.append((b"x-request-id", _request_id()))
        if policy.client_cert is not None:
            apply_client_cert(headers, request.ssl, policy.client_cert)
        suppress = policy.suppress_envoy_headers
        if internal:
            self._echoed_id = forced_trace_id(headers)
            self._timeout_s, expected_s = trusted_timeouts(request.headers, self._timeout_s)
            if expected_s and not suppress:
                _set_header(headers, b"x-envoy-expected-rq-timeout-ms", expected_s)
        elif self._timeout_s and not suppress:
            headers.append((b"x-envoy-expected-rq-timeout-ms", b"%d" % int(self._timeout_s * 1000)))
        # Most specific first, as Envoy: route, then virtual host, then route configuration.
        self._mutations = mutations
        for level in mutations:
            level.apply_request(headers)
        authority = request.host
        rewritten = action.rewritten_host(request) if action.rewrites_host else None
        if rewritten is not None:
            if not suppress:
                headers.append((b"x-envoy-original-host", request.host))
            authority = rewritten
        path = request.url
        new_path = action.rewrite_path(path) if action.prefix_rewrite is not None else None
        if new_path is not None:
            if not suppress:
                headers.append((b"x-envoy-original-path", path))
            path = new_path
        head = RequestHead(
            request.method, path, authority, headers, request.scheme, upgrade=request.upgrade
        )
        if action.auto_host_rewrite:
            head.host_from_upstream = True
            head.keep_original_host = not suppress
        return head

    def _edge_headers(self, request: DownstreamRequest, policy: ProxyPolicy) -> list[Header]:
        """An edge request's headers (use_remote_address): x-forwarded-for extended with the
        peer (the host's address for a loopback peer), x-forwarded-proto trusted only from
        trusted hops, x-envoy-external-address set to the trusted client address, and a new
        x-request-id unless preserve_external_request_id keeps the client's. Headers that
        exist are changed where they are; new ones are added in Envoy's order. An internal
        request (no x-forwarded-for, an internal peer) is no edge request: x-envoy-internal
        instead of x-envoy-external-address, its x-envoy-* headers and x-request-id kept."""
        headers: list[Header] = []
        xff_index = proto_index = external_index = id_index = -1
        internal = request.internal
        stripped = _INTERNAL_STRIPPED if internal else _EDGE_STRIPPED
        if policy.client_cert is not None:
            stripped = _KEEPING_XFCC[stripped]
        for name, value in request.headers:
            if name in stripped and not (request.upgrade and name in _UPGRADE_KEPT):
                continue
            if name == b"te" and value.lower() != b"trailers":
                continue
            if name == b"x-forwarded-for":
                if xff_index >= 0:
                    headers[xff_index] = (name, headers[xff_index][1] + b"," + value)
                    continue
                xff_index = len(headers)
            elif name == b"x-forwarded-proto":
                proto_index = len(headers)
            elif name == b"x-envoy-external-address":
                external_index = len(headers)
            elif name == b"x-request-id":
                id_index = len(headers)
            headers.append((name, value))
        hops = policy.xff_num_trusted_hops
        trusted = None
        if hops and xff_index >= 0:
            trusted = last_xff_address(headers[xff_index][1], hops - 1)
        if trusted is None:
            trusted = request.remote_ip
        appended = not policy.skip_xff_append and bool(request.remote_ip)
        if appended:
            peer = request.remote_ip
            ip = (local_address() if is_loopback(peer) else peer).encode()
            if xff_index >= 0:
                headers[xff_index] = (b"x-forwarded-for", headers[xff_index][1] + b"," + ip)
            else:
                headers.append((b"x-forwarded-for", ip))
        if proto_index < 0:
            headers.append((b"x-forwarded-proto", request.scheme))
        elif not hops:
            headers[proto_index] = (b"x-forwarded-proto", request.scheme)
        if internal:
            headers.append(_INTERNAL)
        elif trusted:
            external = (b"x-envoy-external-address", trusted.encode())
            if external_index >= 0:
                headers[external_index] = external
            else:
                headers.append(external)
        if policy.generate_request_id:
            if id_index < 0:
                headers.append((b"x-request-id", _request_id()))
            elif not policy.preserve_external_request_id and not internal:
                headers[id_index] = (b"x-request-id", _request_id())
        record = self._record
        if record is not None and hops and appended:
            record.xff_skip += 1  # the entry appended here comes after the trusted ones
        return headers

    def _response_headers(self, headers: list[Header]) -> tuple[list[Header], bool]:
        """The upstream's response headers without hop-by-hop ones, and whether its `server`
        header stays (where it is: with our server name unless server_header_transformation
        keeps the upstream's value; then the codec adds none)."""
        out: list[Header] = []
        kept = False
        overwrite = self._server_header is _OVERWRITE
        for name, value in headers:
            if name in _RESPONSE_HOP_BY_HOP:
                continue
            if name == b"server":
                if kept:
                    continue
                kept = True
                if overwrite:
                    value = self._server_name
            out.append((name, value))
        return out, kept

    def _echo_request_id(self, out: list[Header], kept: bool) -> bool:
        """`x-request-id` after `date` and `server` (written here, then), as Envoy answers
        an internal request with `x-envoy-force-trace`; returns whether `server` is in."""
        if not any(name == b"date" for name, _ in out):
            out.append((b"date", HTTP_DATE.now()))
        if self._server_name and not kept:
            out.append((b"server", self._server_name))
        self._sink.server_sent = True
        out.append((b"x-request-id", self._echoed_id))  # type: ignore[arg-type]
        return True

    def _request_complete(self) -> None:
        if self._request_ended:
            return
        self._request_ended = True
        timeout = self._timeout_s
        if timeout and not self._done:
            self._timer = _ROUTE_TIMEOUTS.arm(timeout, self._on_timeout)
        if self._retries is not None and not self._done:
            self._retries.request_complete()

    def _on_timeout(self) -> None:
        self._timer = None
        if self._done:
            return
        # No stream: a retry's back-off; Envoy then counts no upstream timeout and no 504.
        in_flight = self._cluster is not None and self._stream is not None
        if in_flight:
            self._cluster.stats.upstream_rq_timeout.inc()  # type: ignore[union-attr]
            self._count_host("rq_timeout")
            self._report_outlier(Result.TIMEOUT)
        if self._stream is not None:
            self._stream.reset()
        record = self._record
        if record is not None:
            record.add_flag("UT")
            record.details = "response_timeout"
        if self._headers_sent:
            self._finish()
            self._sink.reset_downstream()
            return
        if in_flight:
            self._cluster.stats.count_response(504)  # type: ignore[union-attr]
        self._local_reply(504, TIMEOUT_BODY)

    def _count_host(self, stat: str) -> None:
        """A per-host outcome (`/clusters`), when the stream reached a host's pool."""
        host = self._host if self._stream is not None else None
        if host is not None:
            setattr(host.stats, stat, getattr(host.stats, stat) + 1)

    def _report_outlier(self, outcome: int | Result) -> None:
        """A status or a local-origin result for the host's outlier detection."""
        host = self._host if self._stream is not None else None
        if host is not None and self._cluster is not None:
            if isinstance(outcome, Result):
                self._cluster.report_result(host, outcome)
            else:
                self._cluster.report_status(host, outcome)

    def _log_upstream_local(self) -> None:
        local_address = getattr(self._stream, "local_address", None)
        record = self._record
        if local_address is not None and record is not None:
            local = local_address()
            record.upstream_local = format_address(local)
            if record.upstream_local is not None or local == "":  # "": a pipe's unnamed end
                record.upstream_remote = record.upstream_host

    def _local_reply(self, status: int, body: bytes, headers: list[Header] | None = None) -> None:
        if self._action.attempt_count_downstream and self._cluster is not None:
            headers = [*(headers or []), (ATTEMPT_COUNT, b"%d" % self._attempt_count())]
        record = self._record
        if record is not None:
            record.status = status
            record.response_headers = _local_headers(status, body, headers, record.server)
            record.bytes_sent = len(body)
        self._finish()
        self._sink.send_local_reply(status, body, headers or [])

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._retries is not None:
            self._retries.end()
        record = self._record
        if record is not None:
            if record.upstream_local is None:
                self._log_upstream_local()  # a connection that never answered (DC, UC)
            self._record = None
            record.end = time.monotonic()
            self._access_log.log(record)  # type: ignore[union-attr]
        # The stream refers to this exchange as its handler: without the way back, both go
        # as soon as they are dropped (no garbage cycle per request for the collector).
        self._stream = None

    # -- attempts (the retry machinery is _Attempts, below) ------------------------------------

    def _use_stream(self, stream: UpstreamStream) -> None:
        """`stream` carries the attempt under way."""
        self._stream = stream
        self._host = host = getattr(stream, "host", None)
        if self._retries is not None:
            self._retries.tried(host)
        record = self._record
        if record is not None:
            record.attempt_count = self._attempt_count()
        if record is not None and host is not None:
            record.upstream_host = host_address_text(host.address)

    def _no_healthy_upstream(self) -> None:
        if self._record is not None:
            self._record.flags, self._record.details = "UH", "no_healthy_upstream"
            self._record.attempt_count = self._attempt_count()  # counted by Envoy too
        self._local_reply(503, NO_HEALTHY_UPSTREAM_BODY)

    def _attempt_count(self) -> int:
        state = self._retries.state if self._retries is not None else None
        return state.attempts if state is not None else 1


def _set_header(headers: list[Header], name: bytes, seconds: float) -> None:
    """`name: <milliseconds>` in the place of the header of that name, else at the end."""
    value = b"%d" % int(seconds * 1000)
    for index, (present, _) in enumerate(headers):
        if present == name:
            headers[index] = (name, value)
            return
    headers.append((name, value))


# Response flags of a reset before the response started (Envoy's short names).
_RESET_FLAGS = {
    CONNECTION_FAILURE: "UF",
    CONNECTION_TIMEOUT: "UF",
    CONNECTION_TERMINATION: "UC",
    OVERFLOW: "UO",
    PROTOCOL_ERROR: "UPE",
    REMOTE_RESET: "UR",
    REMOTE_REFUSED_STREAM_RESET: "UR",
    LOCAL_RESET: "LR",
}


def _detail(reason: str) -> str:
    """A reset reason as RESPONSE_CODE_DETAILS spells it (`remote_connection_failure`)."""
    return reason.replace(" ", "_")


def _local_headers(
    status: int, body: bytes, extra: list[Header] | None, server: bytes
) -> list[Header]:
    """An exchange's local reply's headers as Envoy's header map has them."""
    headers: list[Header] = [(b":status", b"%d" % status)]
    if body:
        headers.append((b"content-length", b"%d" % len(body)))
        headers.append((b"content-type", b"text/plain"))
    if extra:
        headers.extend(extra)
    headers.append((b"date", HTTP_DATE.now()))
    if server:
        headers.append((b"server", server))
    return headers


class _Attempts:
    """An exchange's attempts after the first: the per-try timeout and, with a RetryState,
    the retries. A retriable outcome (upstream/retry.py decides) resets the attempt, waits
    the back-off and starts the next one on a host picked again (minus the `previous_hosts`),
    replaying the request body kept so far; the route's timeout keeps running over all of
    them. None of it happens once the response has started downstream."""

    __slots__ = (
        "_backoff",
        "_exchange",
        "_hash_key",
        "_head",
        "_http2",
        "_outcome_flag",
        "_per_try",
        "_per_try_timer",
        "_replay",
        "_request_ended",
        "state",
    )

    def __init__(
        self,
        exchange: Exchange,
        head: RequestHead,
        state: RetryState | None,
        per_try_s: float | None,
        end_stream: bool,
    ) -> None:
        self._exchange = exchange
        self._head = head
        self.state = state
        self._per_try = per_try_s
        self._replay = RequestReplay() if state is not None else None
        if self._replay is not None and end_stream:
            self._replay.ended = True
        self._request_ended = end_stream
        self._per_try_timer: asyncio.TimerHandle | None = None
        self._backoff: asyncio.TimerHandle | None = None
        self._outcome_flag: str | None = None  # URX or UO when the retries gave up
        self._http2 = False
        self._hash_key: int | None = None

    @staticmethod
    def start(
        exchange: Exchange,
        action: ForwardAction,
        head: RequestHead,
        cluster: Cluster,
        end_stream: bool,
    ) -> _Attempts | None:
        """Consume the request's retry headers (never forwarded, as Envoy) and set up the
        attempts; None when there is neither a retry nor a per-try timeout to make. Envoy
        1.40 obeys the retry headers of an internal request (`internal_address_config`);
        ours are not handed to the retry state yet (their timeouts are, by
        internal_request.trusted_timeouts)."""
        take_retry_headers(head.headers)
        taken: dict[bytes, bytes] = {}
        policy = action.retry_policy
        if action.attempt_count_upstream:
            head.headers.append((ATTEMPT_COUNT, b"1"))
        if policy is None and not taken:
            return None  # (no retry, no per-try timeout: the common case, decided at once)
        state = RetryState.create(
            policy,
            taken,
            cluster.stats,
            cluster.resources,
            cluster.config.circuit_breakers.max_retries,
            _rng,
        )
        per_try = per_try_timeout_s(policy, taken, action.timeout_s)
        if state is None and per_try is None:
            return None
        if per_try is not None:  # what the upstream may expect is now one try's timeout
            expected = b"x-envoy-expected-rq-timeout-ms"
            headers = head.headers
            for index, (name, _) in enumerate(headers):
                if name == expected:
                    headers[index] = (expected, b"%d" % int(per_try * 1000))
        return _Attempts(exchange, head, state, per_try, end_stream)

    def keep(self, http2: bool, hash_key: int | None) -> None:
        """How the first attempt picked its stream, for the next ones."""
        self._http2 = http2
        self._hash_key = hash_key

    def tried(self, host: Host | None) -> None:
        if self.state is not None:
            self.state.tried(host)

    # -- the request as it comes --------------------------------------------------------------

    def request_data(self, data: bytes, end_stream: bool) -> None:
        replay = self._replay
        if replay is not None and not replay.add(data, end_stream):
            self._abandon()

    def request_trailers(self, trailers: list[Header]) -> None:
        if self._replay is not None:
            self._replay.add_trailers(trailers)

    def request_complete(self) -> None:
        self._request_ended = True
        self._arm_per_try()

    def _abandon(self) -> None:
        """The body passed the buffer limit: no retry can replay it (Envoy's
        retry_or_shadow_abandoned); a retry waiting for its back-off fails with 507."""
        exchange = self._exchange
        self._replay = None
        if exchange._cluster is not None:
            exchange._cluster.stats.retry_or_shadow_abandoned.value += 1
        if self.state is not None:
            self.state.abandon()
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
            if exchange._record is not None:
                exchange._record.details = "request_payload_exceeded_retry_buffer_limit"
            exchange._local_reply(507, b"exceeded request buffer limit while retrying upstream")

    # -- outcomes of an attempt ---------------------------------------------------------------

    def retry_response(self, status: int, headers: list[Header], end_stream: bool) -> bool:
        """The attempt's response headers: True when they are dropped for a retry."""
        state = self.state
        if state is None:
            return False
        decision = state.decide(state.would_retry_headers(status, headers))
        if decision is not Decision.RETRY:
            self._gave_up(decision)
            if self._exchange._record is not None:
                self.flag_outcome(self._exchange._record)
            self._replay = None  # the response goes downstream: nothing will be sent again
            return False
        exchange = self._exchange
        if exchange._cluster is not None:
            exchange._cluster.stats.count_retried_response(status)
        exchange._count_host("rq_error")
        exchange._report_outlier(status)
        # A complete exchange is left to end by itself (its connection stays usable), as
        # Envoy resets only an attempt still under way.
        self._retry(reset=not (end_stream and self._request_ended))
        return True

    def retry_reset(self, reason: str) -> bool:
        """The attempt failed before its response: True when a retry follows."""
        state = self.state
        if state is None:
            return False
        decision = state.decide(state.would_retry_reset(reason))
        if decision is not Decision.RETRY:
            self._gave_up(decision)
            return False
        exchange = self._exchange
        exchange._count_host("rq_error")
        exchange._report_outlier(_LOCAL_ORIGIN.get(reason, Result.RESET))
        self._retry(reset=False)
        return True

    def flag_outcome(self, record: LogRecord) -> None:
        """URX / UO before the flag of the failure itself: Envoy sets them first."""
        flag = self._outcome_flag
        if flag is not None:
            record.flags = f"{flag},{record.flags}" if record.flags else flag

    def _gave_up(self, decision: Decision) -> None:
        if decision is Decision.LIMIT_EXCEEDED:
            self._outcome_flag = "URX"
        elif decision is Decision.OVERFLOW:
            self._outcome_flag = "UO"

    def _arm_per_try(self) -> None:
        if (
            self._per_try is not None
            and self._request_ended
            and self._per_try_timer is None
            and self._exchange._stream is not None
        ):
            loop = asyncio.get_running_loop()
            self._per_try_timer = loop.call_later(self._per_try, self._on_per_try_timeout)

    def _on_per_try_timeout(self) -> None:
        """Envoy ignores a per-try timeout once the response has started downstream."""
        self._per_try_timer = None
        exchange = self._exchange
        if exchange._done or exchange._headers_sent or exchange._cluster is None:
            return
        cluster = exchange._cluster
        cluster.stats.upstream_rq_per_try_timeout.value += 1
        exchange._count_host("rq_timeout")
        exchange._report_outlier(Result.TIMEOUT)
        state = self.state
        if state is not None:
            decision = state.decide(state.would_retry_per_try_timeout())
            if decision is Decision.RETRY:
                self._retry(reset=True)
                return
            self._gave_up(decision)
        stream, exchange._stream = exchange._stream, None
        if stream is not None:
            stream.reset()
        record = exchange._record
        if record is not None:
            record.add_flag("UT")
            self.flag_outcome(record)  # before UT
            record.details = "upstream_per_try_timeout"
        cluster.stats.count_response(504)
        exchange._local_reply(504, TIMEOUT_BODY)

    # -- the next attempt ---------------------------------------------------------------------

    def _retry(self, reset: bool) -> None:
        """Drop the attempt (reset it unless it reset itself) and start the back-off."""
        exchange = self._exchange
        if self._per_try_timer is not None:
            self._per_try_timer.cancel()
            self._per_try_timer = None
        stream, exchange._stream = exchange._stream, None
        if reset and stream is not None:
            stream.reset()
        exchange._sink.resume_request_body()
        delay_ms = self.state.backoff_ms()  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        self._backoff = loop.call_later(delay_ms / 1000, self._next_attempt)

    def _next_attempt(self) -> None:
        self._backoff = None
        exchange = self._exchange
        state = self.state
        cluster = exchange._cluster
        if exchange._done or state is None or cluster is None:
            return
        state.next_attempt()
        head = self._head
        headers = list(head.headers)
        if exchange._action.attempt_count_upstream:
            headers = [(n, v) for n, v in headers if n != ATTEMPT_COUNT]
            headers.append((ATTEMPT_COUNT, b"%d" % state.attempts))
        self._expect_what_is_left(headers)
        head = RequestHead(head.method, head.path, head.authority, headers, head.scheme)
        replay = self._replay
        chunks = replay.chunks if replay is not None else []
        trailers = replay.trailers if replay is not None else None
        ended = replay.ended if replay is not None else self._request_ended
        end_now = ended and not chunks and trailers is None
        stream = cluster.new_stream(
            head, exchange, end_now, self._http2, self._hash_key, state.exclusion()
        )
        if stream is None:
            exchange._no_healthy_upstream()
            return
        exchange._use_stream(stream)
        last = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            stream.send_data(chunk, ended and trailers is None and index == last)
        if trailers is not None:
            stream.send_trailers(trailers)
        self._arm_per_try()

    def _expect_what_is_left(self, headers: list[Header]) -> None:
        """A retry's `x-envoy-expected-rq-timeout-ms`: the per-try timeout or what is left of
        the route's, whichever is less (at least 1 ms), as Envoy's setTimeoutHeaders."""
        expected = b"x-envoy-expected-rq-timeout-ms"
        route_ms = int((self._exchange._action.timeout_s or 0) * 1000)
        per_try_ms = int((self._per_try or 0) * 1000)
        value = per_try_ms or route_ms
        if route_ms:
            elapsed_ms = int((time.monotonic() - self._exchange._started_at) * 1000)
            value = min(value, route_ms - elapsed_ms) if elapsed_ms < route_ms else 1
        for index, (name, _) in enumerate(headers):
            if name == expected:
                headers[index] = (expected, b"%d" % value)

    def end(self) -> None:
        """The exchange is over: timers off, the held retry back to the circuit breaker."""
        for timer in (self._per_try_timer, self._backoff):
            if timer is not None:
                timer.cancel()
        self._per_try_timer = self._backoff = None
        if self.state is not None:
            self.state.release()
