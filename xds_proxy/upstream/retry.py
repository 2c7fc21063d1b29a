"""One request's retries, as Envoy's router makes them (source/common/router/retry_state_impl.cc).

`RetryState` is the pure part: it merges the route's `retry_policy` (config/retry.py) with the
request's `x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries` and
`x-envoy-retriable-status-codes` headers (when the caller trusts them: Envoy 1.40 does only
for internal clients, so the exchange passes none today), says whether an attempt's outcome
(response headers, a reset, a per-try timeout) is worth another attempt, takes the cluster's
retry circuit breaker (`max_retries`) while a retry is pending, counts `upstream_rq_retry*`,
draws the fully jittered exponential back-off and remembers the hosts tried (the
`previous_hosts` predicate).
`RequestReplay` keeps the request body for the next attempt, up to the buffer limit (past it
the retries are abandoned: `retry_or_shadow_abandoned`). The exchange (forward.py) does the
I/O: it resets the failed attempt, waits the back-off and starts the next one.

Envoy's rules kept here:
- a response with `x-envoy-ratelimited` is retried only with `envoy-ratelimited`;
- `5xx` is any 5xx status, `gateway-error` 502/503/504, `retriable-4xx` 409,
  `retriable-status-codes` the listed codes; the gRPC conditions read `grpc-status` in the
  response headers (a trailers-only response);
- a reset: never after an overflow; always with `reset`, `5xx` or `gateway-error`; with
  `reset-before-request` when the request never reached the host; with `connect-failure` on a
  connect failure or timeout; with `refused-stream` on REFUSED_STREAM;
- a per-try timeout is a local reset, retried with `5xx`, `gateway-error` or `reset`;
- the retry headers are removed from the request whether or not they are used, and
  `x-envoy-max-retries` counts only when some condition is set;
- back-off: the n-th retry waits a random whole number of milliseconds below
  min(base * 2^(n-1), max), with base 25 ms and max ten times the base by default.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from xds_proxy.config.retry import (
    GRPC_ANY,
    GRPC_CONDITIONS,
    HTTP_CONDITIONS,
    RetryOn,
    RetryPolicy,
    parse_retry_on,
)
from xds_proxy.upstream.host import Host, Resources
from xds_proxy.upstream.stats import ClusterStats
from xds_proxy.upstream.stream import (
    CONNECTION_FAILURE,
    CONNECTION_TIMEOUT,
    OVERFLOW,
    REMOTE_REFUSED_STREAM_RESET,
    Header,
)

RETRY_ON = b"x-envoy-retry-on"
RETRY_GRPC_ON = b"x-envoy-retry-grpc-on"
MAX_RETRIES = b"x-envoy-max-retries"
RETRIABLE_STATUS_CODES = b"x-envoy-retriable-status-codes"
PER_TRY_TIMEOUT_MS = b"x-envoy-upstream-rq-per-try-timeout-ms"
ATTEMPT_COUNT = b"x-envoy-attempt-count"
# Consumed by the router: never sent upstream (Envoy's consume_all_retry_headers).
RETRY_HEADERS = frozenset(
    {
        RETRY_ON,
        RETRY_GRPC_ON,
        MAX_RETRIES,
        RETRIABLE_STATUS_CODES,
        b"x-envoy-retriable-header-names",
        b"x-envoy-hedge-on-per-try-timeout",
        PER_TRY_TIMEOUT_MS,
    }
)
# Envoy's default request buffer limit (a listener's per_connection_buffer_limit_bytes).
DEFAULT_BUFFER_LIMIT = 1 << 20
_GATEWAY_ERRORS = (502, 503, 504)
# The conditions as plain ints: IntFlag arithmetic costs microseconds per request.
_5XX = int(RetryOn.FIVE_XX)
_GATEWAY_ERROR = int(RetryOn.GATEWAY_ERROR)
_RESET_LIKE = int(RetryOn.RESET | RetryOn.FIVE_XX | RetryOn.GATEWAY_ERROR)
_RESET_BEFORE_REQUEST = int(RetryOn.RESET_BEFORE_REQUEST)
_CONNECT_FAILURE = int(RetryOn.CONNECT_FAILURE)
_REFUSED_STREAM = int(RetryOn.REFUSED_STREAM)
_RETRIABLE_4XX = int(RetryOn.RETRIABLE_4XX)
_RETRIABLE_STATUS_CODES = int(RetryOn.RETRIABLE_STATUS_CODES)
_ENVOY_RATE_LIMITED = int(RetryOn.ENVOY_RATE_LIMITED)
_GRPC_ANY = int(GRPC_ANY)
_CONNECT_FAILURES = (CONNECTION_FAILURE, CONNECTION_TIMEOUT)
_GRPC_STATUSES = {
    b"1": int(RetryOn.GRPC_CANCELLED),
    b"4": int(RetryOn.GRPC_DEADLINE_EXCEEDED),
    b"8": int(RetryOn.GRPC_RESOURCE_EXHAUSTED),
    b"13": int(RetryOn.GRPC_INTERNAL),
    b"14": int(RetryOn.GRPC_UNAVAILABLE),
}


def take_retry_headers(headers: list[Header]) -> dict[bytes, bytes]:
    """Remove the retry headers from a request's `headers`; returns them (the first value of
    each name)."""
    found: dict[bytes, bytes] = {}
    for name, _ in headers:
        if name in RETRY_HEADERS:
            break
    else:
        return found
    kept = []
    for name, value in headers:
        if name in RETRY_HEADERS:
            found.setdefault(name, value)
        else:
            kept.append((name, value))
    headers[:] = kept
    return found


class Decision(enum.Enum):
    """What to do with an attempt that failed (Envoy's RetryStatus)."""

    NO = "no"  # not a retriable outcome
    RETRY = "retry"  # wait `backoff_ms()`, then attempt again
    LIMIT_EXCEEDED = "limit_exceeded"  # retriable, but no retries left (URX)
    OVERFLOW = "overflow"  # retriable, but the cluster's max_retries is reached (UO)


@dataclass(frozen=True, slots=True)
class HostExclusion:
    """The `previous_hosts` predicate for the balancer: pick again (up to `reselect` more
    times) while the host is one of `hosts`; the last pick stands."""

    hosts: tuple[Host, ...]
    reselect: int

    def rejects(self, host: Host) -> bool:
        return host in self.hosts


class RetryState:
    """The retries of one request to one cluster (Envoy's RetryStateImpl)."""

    __slots__ = (
        "_armed",
        "_max_retries",
        "_next_interval_ms",
        "_policy",
        "_resources",
        "_rng",
        "_stats",
        "attempts",
        "hosts",
        "remaining",
        "retriable_status_codes",
        "retry_on",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        request_headers: dict[bytes, bytes],
        stats: ClusterStats,
        resources: Resources,
        max_retries: int,
        rng: random.Random,
    ) -> None:
        self._policy = policy
        self._stats = stats
        self._resources = resources
        self._max_retries = max_retries
        self._rng = rng
        self._armed = False  # holding a retry of the circuit breaker (Envoy's callback_)
        self._next_interval_ms = max(1, int(policy.base_interval_s * 1000))
        retry_on = policy.retry_on
        self.remaining = policy.num_retries
        self.retriable_status_codes = policy.retriable_status_codes
        self.attempts = 1  # the attempt under way, from 1 (x-envoy-attempt-count)
        self.hosts: list[Host] = []  # the hosts tried so far, in order
        header = request_headers.get(RETRY_ON)
        if header is not None:
            retry_on |= parse_retry_on(header.decode("latin-1"), HTTP_CONDITIONS)
        grpc_on = request_headers.get(RETRY_GRPC_ON)
        if grpc_on is not None:
            retry_on |= parse_retry_on(grpc_on.decode("latin-1"), GRPC_CONDITIONS)
        self.retry_on = int(retry_on)  # RetryOn bits
        max_retries_header = request_headers.get(MAX_RETRIES)
        if self.retry_on and max_retries_header is not None and max_retries_header.isdigit():
            self.remaining = int(max_retries_header)
        codes = request_headers.get(RETRIABLE_STATUS_CODES)
        if codes is not None:
            extra = tuple(int(c) for c in codes.split(b",") if c.strip().isdigit())
            self.retriable_status_codes = (*self.retriable_status_codes, *extra)

    @classmethod
    def create(
        cls,
        policy: RetryPolicy | None,
        request_headers: dict[bytes, bytes],
        stats: ClusterStats,
        resources: Resources,
        max_retries: int,
        rng: random.Random,
    ) -> RetryState | None:
        """A state when a retry is possible at all: the route retries on something, or the
        request asks for retries (as Envoy's RetryStateImpl::create)."""
        asked = RETRY_ON in request_headers or RETRY_GRPC_ON in request_headers
        if not asked and (policy is None or not policy.retry_on):
            return None
        return cls(policy or RetryPolicy(), request_headers, stats, resources, max_retries, rng)

    # -- which outcomes are retriable -------------------------------------------------------

    def would_retry_headers(self, status: int, headers: list[Header]) -> bool:
        retry_on = self.retry_on
        for name, _ in headers:
            if name == b"x-envoy-ratelimited":
                return bool(retry_on & _ENVOY_RATE_LIMITED)
        if retry_on & _5XX and 500 <= status <= 599:
            return True
        if retry_on & _GATEWAY_ERROR and status in _GATEWAY_ERRORS:
            return True
        if retry_on & _RETRIABLE_4XX and status == 409:
            return True
        if retry_on & _RETRIABLE_STATUS_CODES and status in self.retriable_status_codes:
            return True
        if retry_on & _GRPC_ANY:
            for name, value in headers:
                if name == b"grpc-status":
                    return bool(retry_on & _GRPC_STATUSES.get(value.strip(), 0))
        return False

    def would_retry_reset(self, reason: str) -> bool:
        retry_on = self.retry_on
        if reason == OVERFLOW:
            return False
        if retry_on & _RESET_LIKE:
            return True
        connect_failed = reason in _CONNECT_FAILURES
        if retry_on & _RESET_BEFORE_REQUEST and connect_failed:
            return True  # the request never reached the host
        if retry_on & _REFUSED_STREAM and reason == REMOTE_REFUSED_STREAM_RESET:
            return True
        return bool(retry_on & _CONNECT_FAILURE and connect_failed)

    def would_retry_per_try_timeout(self) -> bool:
        return bool(self.retry_on & _RESET_LIKE)

    # -- deciding ---------------------------------------------------------------------------

    def decide(self, would_retry: bool) -> Decision:
        """Envoy's shouldRetry: counts the outcome and, on RETRY, holds one retry of the
        circuit breaker until the next attempt's outcome is decided (or `release()`)."""
        stats = self._stats
        if self._armed and not would_retry:
            stats.upstream_rq_retry_success.value += 1  # a retry was made and it worked
        self.release()
        if not would_retry:
            return Decision.NO
        if self.remaining <= 0:
            stats.upstream_rq_retry_limit_exceeded.value += 1
            return Decision.LIMIT_EXCEEDED
        self.remaining -= 1
        if self._resources.retries >= self._max_retries:
            stats.upstream_rq_retry_overflow.value += 1
            return Decision.OVERFLOW
        self._armed = True
        self._resources.retries += 1
        return Decision.RETRY

    def backoff_ms(self) -> int:
        """The wait before the retry just decided (Envoy's JitteredExponentialBackOffStrategy:
        uniform below the current interval, which doubles up to the cap)."""
        interval = self._next_interval_ms
        cap = max(1, int(self._policy.max_interval_s * 1000))
        self._next_interval_ms = interval * 2 if interval < cap // 2 else cap
        return min(self._rng.randrange(interval), cap)

    def abandon(self) -> None:
        """No more retries (the body could not be kept): as if the state were gone."""
        self.release()
        self.retry_on = 0

    def release(self) -> None:
        """Give the held retry back to the circuit breaker (the request ended or moved on)."""
        if self._armed:
            self._armed = False
            self._resources.retries -= 1

    # -- the next attempt -------------------------------------------------------------------

    def tried(self, host: Host | None) -> None:
        """The attempt under way went to `host`."""
        if host is not None:
            self.hosts.append(host)

    def next_attempt(self) -> None:
        """The back-off is over and the retry starts: only now is it counted (Envoy 1.40
        counts no retry, nor its back-off, when the route's timeout ends the wait)."""
        self.attempts += 1
        self._stats.upstream_rq_retry.value += 1
        self._stats.upstream_rq_retry_backoff_exponential.value += 1

    def exclusion(self) -> HostExclusion | None:
        """What the balancer should avoid for the next attempt (`previous_hosts`)."""
        if not self._policy.previous_hosts or not self.hosts:
            return None
        return HostExclusion(tuple(self.hosts), self._policy.host_selection_max_attempts)


def per_try_timeout_s(
    policy: RetryPolicy | None, request_headers: dict[bytes, bytes], route_timeout_s: float | None
) -> float | None:
    """One attempt's timeout: the policy's, or `x-envoy-upstream-rq-per-try-timeout-ms`;
    none when it is not below the route's timeout (Envoy's FilterUtility::finalTimeout)."""
    per_try = policy.per_try_timeout_s if policy is not None else None
    header = request_headers.get(PER_TRY_TIMEOUT_MS)
    if header is not None and header.isdigit():
        per_try = int(header) / 1000 or None
    if per_try is not None and route_timeout_s and per_try >= route_timeout_s:
        return None
    return per_try


class RequestReplay:
    """The request body and trailers as sent so far, to send again on a retry; dropped (and
    the retries abandoned) once it would pass `limit` bytes."""

    __slots__ = ("chunks", "ended", "limit", "size", "trailers")

    def __init__(self, limit: int = DEFAULT_BUFFER_LIMIT) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.ended = False
        self.trailers: list[Header] | None = None

    def add(self, data: bytes, end_stream: bool) -> bool:
        """Keep `data`; False when the limit is passed (the caller gives up retrying)."""
        self.size += len(data)
        if self.size > self.limit:
            self.chunks.clear()
            return False
        if data:
            self.chunks.append(data)
        self.ended = self.ended or end_stream
        return True

    def add_trailers(self, trailers: list[Header]) -> None:
        self.trailers = trailers
        self.ended = True
