"""A route's or virtual host's `retry_policy` as frozen settings (the route's wins, as Envoy).

Envoy's rules (source/common/router/retry_policy_impl.cc, retry_state_impl.cc):
`retry_on` is a comma-separated list of HTTP and gRPC conditions, spaces around the tokens
trimmed; unknown tokens are ignored (Envoy logs a warning). `num_retries` defaults to 1. The
back-off base is 25 ms unless `retry_back_off.base_interval` says otherwise, and its cap ten
times the base unless `max_interval` is set (which may not be below the base).
`host_selection_retry_max_attempts` is how many times the balancer may pick again when the
`previous_hosts` predicate rejects a host (unset: once; Envoy's docs say so, and a count of
Envoy 1.40's picks agrees).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2

from xds_proxy import extensions
from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError

DEFAULT_BASE_INTERVAL_S = 0.025


class RetryOn(enum.IntFlag):
    """The conditions of `retry_on` / `x-envoy-retry-on` / `x-envoy-retry-grpc-on`."""

    NONE = 0
    FIVE_XX = enum.auto()
    GATEWAY_ERROR = enum.auto()
    CONNECT_FAILURE = enum.auto()
    ENVOY_RATE_LIMITED = enum.auto()
    RETRIABLE_4XX = enum.auto()
    REFUSED_STREAM = enum.auto()
    RETRIABLE_STATUS_CODES = enum.auto()
    RETRIABLE_HEADERS = enum.auto()
    RESET = enum.auto()
    RESET_BEFORE_REQUEST = enum.auto()
    HTTP3_POST_CONNECT_FAILURE = enum.auto()  # never matches: there are no HTTP/3 upstreams
    GRPC_CANCELLED = enum.auto()
    GRPC_DEADLINE_EXCEEDED = enum.auto()
    GRPC_RESOURCE_EXHAUSTED = enum.auto()
    GRPC_UNAVAILABLE = enum.auto()
    GRPC_INTERNAL = enum.auto()


HTTP_CONDITIONS: dict[str, RetryOn] = {
    "5xx": RetryOn.FIVE_XX,
    "gateway-error": RetryOn.GATEWAY_ERROR,
    "connect-failure": RetryOn.CONNECT_FAILURE,
    "envoy-ratelimited": RetryOn.ENVOY_RATE_LIMITED,
    "retriable-4xx": RetryOn.RETRIABLE_4XX,
    "refused-stream": RetryOn.REFUSED_STREAM,
    "retriable-status-codes": RetryOn.RETRIABLE_STATUS_CODES,
    "retriable-headers": RetryOn.RETRIABLE_HEADERS,
    "reset": RetryOn.RESET,
    "reset-before-request": RetryOn.RESET_BEFORE_REQUEST,
    "http3-post-connect-failure": RetryOn.HTTP3_POST_CONNECT_FAILURE,
}
GRPC_CONDITIONS: dict[str, RetryOn] = {
    "cancelled": RetryOn.GRPC_CANCELLED,
    "deadline-exceeded": RetryOn.GRPC_DEADLINE_EXCEEDED,
    "resource-exhausted": RetryOn.GRPC_RESOURCE_EXHAUSTED,
    "unavailable": RetryOn.GRPC_UNAVAILABLE,
    "internal": RetryOn.GRPC_INTERNAL,
}
GRPC_ANY = (
    RetryOn.GRPC_CANCELLED
    | RetryOn.GRPC_DEADLINE_EXCEEDED
    | RetryOn.GRPC_RESOURCE_EXHAUSTED
    | RetryOn.GRPC_UNAVAILABLE
    | RetryOn.GRPC_INTERNAL
)


def parse_retry_on(text: str, *tables: dict[str, RetryOn]) -> RetryOn:
    """The conditions named in `text` (comma-separated; unknown tokens ignored, as Envoy)."""
    found = RetryOn.NONE
    for token in text.split(","):
        token = token.strip()
        for table in tables:
            found |= table.get(token, RetryOn.NONE)
    return found


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What one route retries, and how (per-request state: upstream/retry.py)."""

    retry_on: RetryOn = RetryOn.NONE
    num_retries: int = 1
    per_try_timeout_s: float | None = None
    base_interval_s: float = DEFAULT_BASE_INTERVAL_S
    max_interval_s: float = DEFAULT_BASE_INTERVAL_S * 10
    retriable_status_codes: tuple[int, ...] = ()
    previous_hosts: bool = False  # the previous_hosts retry host predicate
    host_selection_max_attempts: int = 1


def build_retry_policy(message: route_components_pb2.RetryPolicy, path: str) -> RetryPolicy:
    """A (table-checked) RetryPolicy; ConfigError names the field Envoy refuses."""
    retry_on = parse_retry_on(message.retry_on, HTTP_CONDITIONS, GRPC_CONDITIONS)
    num_retries = message.num_retries.value if message.HasField("num_retries") else 1
    per_try = None
    if message.HasField("per_try_timeout"):
        per_try = duration_seconds(message.per_try_timeout) or None
    base, cap = DEFAULT_BASE_INTERVAL_S, None
    if message.HasField("retry_back_off"):
        back_off = message.retry_back_off
        base = duration_seconds(back_off.base_interval)
        if back_off.HasField("max_interval"):
            cap = duration_seconds(back_off.max_interval)
            if cap < base:
                raise ConfigError(
                    f"{path}.retry_back_off.max_interval: retry_policy.max_interval must greater"
                    " than or equal to the base_interval"
                )
    return RetryPolicy(
        retry_on=retry_on,
        num_retries=num_retries,
        per_try_timeout_s=per_try,
        base_interval_s=base,
        max_interval_s=cap if cap is not None else base * 10,
        retriable_status_codes=tuple(message.retriable_status_codes),
        previous_hosts=_previous_hosts(message.retry_host_predicate),
        # Unset (0) picks again once, as Envoy 1.40 does.
        host_selection_max_attempts=message.host_selection_retry_max_attempts or 1,
    )


def _previous_hosts(
    predicates: Iterable[route_components_pb2.RetryPolicy.RetryHostPredicate],
) -> bool:
    """Whether the (table-checked: previous_hosts only) predicates ask to skip tried hosts."""
    return any(
        extensions.type_name(predicate.typed_config.type_url) == extensions.PREVIOUS_HOSTS
        for predicate in predicates
    )


@dataclass(frozen=True, slots=True)
class VirtualHostRetry:
    """What a virtual host gives its routes: a retry policy for those without one, and
    whether the attempt count goes upstream and downstream (`x-envoy-attempt-count`)."""

    policy: RetryPolicy | None = None
    attempt_count_upstream: bool = False
    attempt_count_downstream: bool = False


def build_virtual_host_retry(
    vhost: route_components_pb2.VirtualHost, path: str
) -> VirtualHostRetry:
    policy = None
    if vhost.HasField("retry_policy"):
        policy = build_retry_policy(vhost.retry_policy, f"{path}.retry_policy")
    return VirtualHostRetry(
        policy, vhost.include_request_attempt_count, vhost.include_attempt_count_in_response
    )
