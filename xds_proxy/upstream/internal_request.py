"""Whether the connection manager trusts a request as internal (`internal_address_config`),
and what the router then reads from it: the `x-envoy-upstream-rq-timeout-ms` and
`x-envoy-upstream-rq-per-try-timeout-ms` timeouts (Envoy's `FilterUtility::finalTimeout`).

Envoy 1.40 decides it once per request, after `x-forwarded-for` is read: the trusted client
address must be the only one (without `use_remote_address`: a single valid `x-forwarded-for`
entry and no trusted hops; with it: no `x-forwarded-for` at all, the peer) and be internal.
Without `internal_address_config` no request is internal."""

from __future__ import annotations

from collections.abc import Sequence

from xds_proxy.codec.forwarded_for import single_xff_address
from xds_proxy.config.hcm import ProxyPolicy
from xds_proxy.upstream.stream import Header

# What the router reads and removes from an internal request (an external one has lost them
# in the connection manager already).
ROUTER_CONSUMED = frozenset(
    {
        b"x-envoy-retry-on",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-max-retries",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retriable-header-names",
        b"x-envoy-hedge-on-per-try-timeout",
    }
)


def is_internal(headers: Sequence[Header], remote_ip: str, policy: ProxyPolicy) -> bool:
    addresses = policy.internal_addresses
    if addresses is None:
        return False
    forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
    if policy.use_remote_address:
        if forwarded:
            return False
        trusted: str | None = remote_ip
    else:
        if len(forwarded) != 1 or policy.xff_num_trusted_hops:
            return False
        trusted = single_xff_address(forwarded[0])
    return bool(trusted) and addresses.contains(trusted)  # type: ignore[arg-type]


def trusted_timeouts(
    headers: Sequence[Header], route_timeout_s: float | None
) -> tuple[float | None, float | None]:
    """An internal request's (timeout, expected timeout) in seconds, None for none: the
    route's timeout unless `x-envoy-upstream-rq-timeout-ms` sets one (0: none); the expected
    timeout (`x-envoy-expected-rq-timeout-ms`) is `x-envoy-upstream-rq-per-try-timeout-ms`
    when it is shorter than the timeout, unless `x-envoy-hedge-on-per-try-timeout: true`."""
    timeout_ms = int(route_timeout_s * 1000) if route_timeout_s else 0
    per_try_ms = 0
    hedging = False
    for name, value in headers:
        if name == b"x-envoy-hedge-on-per-try-timeout":
            hedging = value == b"true"
        if name == b"x-envoy-upstream-rq-timeout-ms":
            parsed = _milliseconds(value)
            if parsed is not None:
                timeout_ms = parsed
        elif name == b"x-envoy-upstream-rq-per-try-timeout-ms":
            parsed = _milliseconds(value)
            if parsed is not None:
                per_try_ms = parsed
    if timeout_ms and per_try_ms >= timeout_ms:
        per_try_ms = 0
    expected_ms = timeout_ms if hedging else per_try_ms or timeout_ms
    return (timeout_ms / 1000 or None), (expected_ms / 1000 or None)


def _milliseconds(value: bytes) -> int | None:
    text = value.strip()
    return int(text) if text.isdigit() and len(text) < 20 else None


def forced_trace_id(headers: Sequence[Header]) -> bytes | None:
    """The `x-request-id` Envoy copies into the response of a request that kept
    `x-envoy-force-trace` (only an internal one does), or None."""
    forced = False
    request_id = None
    for name, value in headers:
        if name == b"x-envoy-force-trace":
            forced = True
        elif name == b"x-request-id":
            request_id = value
    return request_id if forced else None
