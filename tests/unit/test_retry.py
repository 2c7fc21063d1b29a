"""The retry policy builder (config/retry.py) and one request's retry state
(upstream/retry.py), with an injected random source."""

from __future__ import annotations

import random

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format

from tests.helpers.upstreams import cluster_message
from xds_proxy.config.cluster import CircuitBreakers, build_cluster_config
from xds_proxy.config.retry import (
    GRPC_CONDITIONS,
    HTTP_CONDITIONS,
    RetryOn,
    RetryPolicy,
    build_retry_policy,
    build_virtual_host_retry,
    parse_retry_on,
)
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.host import Host, Resources
from xds_proxy.upstream.retry import (
    Decision,
    HostExclusion,
    RequestReplay,
    RetryState,
    per_try_timeout_s,
    take_retry_headers,
)
from xds_proxy.upstream.stats import ClusterStats, register_circuit_breaker_gauges
from xds_proxy.upstream.stream import (
    CONNECTION_FAILURE,
    CONNECTION_TIMEOUT,
    LOCAL_RESET,
    OVERFLOW,
    REMOTE_REFUSED_STREAM_RESET,
    REMOTE_RESET,
)

PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)


def policy(document: dict) -> RetryPolicy:
    message = json_format.ParseDict(document, route_components_pb2.RetryPolicy())
    return build_retry_policy(message, "route.retry_policy")


class Fixture:
    def __init__(self, max_retries: int = 3) -> None:
        self.store = Stats()
        self.stats = ClusterStats(self.store, "c")
        self.resources = Resources()
        self.max_retries = max_retries
        self.rng = random.Random(7)

    def state(
        self, document: dict | None = None, headers: dict[bytes, bytes] | None = None
    ) -> RetryState | None:
        built = policy(document) if document is not None else None
        return RetryState.create(
            built, headers or {}, self.stats, self.resources, self.max_retries, self.rng
        )

    def count(self, name: str) -> int:
        return getattr(self.stats, name).value


# -- the builder ---------------------------------------------------------------------------------


def test_defaults_are_envoys() -> None:
    built = policy({"retry_on": "5xx"})
    assert built.num_retries == 1
    assert built.base_interval_s == pytest.approx(0.025)
    assert built.max_interval_s == pytest.approx(0.25)
    assert built.per_try_timeout_s is None
    assert not built.previous_hosts
    assert built.host_selection_max_attempts == 1  # unset: pick again once


def test_istio_policy() -> None:
    built = policy(
        {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,"
            "retriable-status-codes",
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": PREVIOUS_HOSTS},
                }
            ],
            "host_selection_retry_max_attempts": 5,
            "retriable_status_codes": [503],
        }
    )
    assert built.retry_on == (
        RetryOn.CONNECT_FAILURE
        | RetryOn.REFUSED_STREAM
        | RetryOn.GRPC_UNAVAILABLE
        | RetryOn.GRPC_CANCELLED
        | RetryOn.RETRIABLE_STATUS_CODES
    )
    assert (built.num_retries, built.host_selection_max_attempts) == (2, 5)
    assert built.previous_hosts
    assert built.retriable_status_codes == (503,)


def test_unknown_tokens_and_spaces() -> None:
    assert policy({"retry_on": " 5xx , bogus,reset"}).retry_on == RetryOn.FIVE_XX | RetryOn.RESET
    assert parse_retry_on("cancelled", HTTP_CONDITIONS) == RetryOn.NONE
    assert parse_retry_on("cancelled", GRPC_CONDITIONS) == RetryOn.GRPC_CANCELLED


def test_back_off() -> None:
    built = policy({"retry_back_off": {"base_interval": "0.1s"}})
    assert (built.base_interval_s, built.max_interval_s) == (0.1, pytest.approx(1.0))
    built = policy({"retry_back_off": {"base_interval": "0.1s", "max_interval": "0.3s"}})
    assert built.max_interval_s == pytest.approx(0.3)
    with pytest.raises(ConfigError, match=r"^route\.retry_policy\.retry_back_off\.max_interval: "):
        policy({"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}})


def test_virtual_host_settings() -> None:
    vhost = json_format.ParseDict(
        {
            "name": "v",
            "domains": ["*"],
            "retry_policy": {"retry_on": "5xx", "num_retries": 4},
            "include_request_attempt_count": True,
        },
        route_components_pb2.VirtualHost(),
    )
    settings = build_virtual_host_retry(vhost, "vh")
    assert settings.policy is not None and settings.policy.num_retries == 4
    assert settings.attempt_count_upstream and not settings.attempt_count_downstream


# -- which outcomes are retriable ------------------------------------------------------------


def test_no_state_without_a_condition() -> None:
    fixture = Fixture()
    assert fixture.state(None) is None
    assert fixture.state({"num_retries": 3}) is None
    assert fixture.state(None, {b"x-envoy-retry-on": b"5xx"}) is not None


@pytest.mark.parametrize(
    ("retry_on", "status", "headers", "expected"),
    [
        ("5xx", 500, [], True),
        ("5xx", 599, [], True),
        ("5xx", 409, [], False),
        ("gateway-error", 502, [], True),
        ("gateway-error", 500, [], False),
        ("retriable-4xx", 409, [], True),
        ("retriable-4xx", 404, [], False),
        ("retriable-status-codes", 418, [], True),
        ("retriable-status-codes", 503, [], False),
        ("unavailable", 200, [(b"grpc-status", b"14")], True),
        ("unavailable", 200, [(b"grpc-status", b"13")], False),
        ("internal", 200, [(b"grpc-status", b"13")], True),
        ("deadline-exceeded,resource-exhausted", 200, [(b"grpc-status", b"8")], True),
        ("cancelled", 200, [(b"grpc-status", b"1")], True),
        ("5xx", 503, [(b"x-envoy-ratelimited", b"true")], False),
        ("envoy-ratelimited", 429, [(b"x-envoy-ratelimited", b"true")], True),
    ],
)
def test_would_retry_headers(retry_on: str, status: int, headers: list, expected: bool) -> None:
    state = Fixture().state({"retry_on": retry_on, "retriable_status_codes": [418]})
    assert state is not None
    assert state.would_retry_headers(status, headers) is expected


@pytest.mark.parametrize(
    ("retry_on", "reason", "expected"),
    [
        ("5xx", REMOTE_RESET, True),
        ("gateway-error", CONNECTION_FAILURE, True),
        ("reset", REMOTE_RESET, True),
        ("reset", OVERFLOW, False),
        ("connect-failure", CONNECTION_FAILURE, True),
        ("connect-failure", CONNECTION_TIMEOUT, True),
        ("connect-failure", REMOTE_RESET, False),
        ("refused-stream", REMOTE_REFUSED_STREAM_RESET, True),
        ("refused-stream", REMOTE_RESET, False),
        ("reset-before-request", CONNECTION_FAILURE, True),
        ("reset-before-request", REMOTE_RESET, False),
        ("retriable-status-codes", LOCAL_RESET, False),
    ],
)
def test_would_retry_reset(retry_on: str, reason: str, expected: bool) -> None:
    state = Fixture().state({"retry_on": retry_on})
    assert state is not None
    assert state.would_retry_reset(reason) is expected


def test_per_try_timeout_retries_only_on_reset_like_conditions() -> None:
    fixture = Fixture()
    assert fixture.state({"retry_on": "5xx"}).would_retry_per_try_timeout()  # type: ignore[union-attr]
    assert not fixture.state({"retry_on": "connect-failure"}).would_retry_per_try_timeout()  # type: ignore[union-attr]


# -- deciding --------------------------------------------------------------------------------


def test_retries_then_success() -> None:
    fixture = Fixture()
    state = fixture.state({"retry_on": "5xx", "num_retries": 2})
    assert state is not None
    assert state.decide(True) is Decision.RETRY
    assert fixture.resources.retries == 1  # held while the retry is pending
    assert fixture.count("upstream_rq_retry") == 0  # counted once the back-off is over
    state.next_attempt()
    assert state.decide(True) is Decision.RETRY
    assert fixture.resources.retries == 1
    state.next_attempt()
    assert state.decide(False) is Decision.NO
    assert fixture.resources.retries == 0
    assert fixture.count("upstream_rq_retry") == 2
    assert fixture.count("upstream_rq_retry_backoff_exponential") == 2
    assert fixture.count("upstream_rq_retry_success") == 1
    assert state.attempts == 3


def test_limit_exceeded() -> None:
    fixture = Fixture()
    state = fixture.state({"retry_on": "5xx"})
    assert state is not None
    assert state.decide(True) is Decision.RETRY
    assert state.decide(True) is Decision.LIMIT_EXCEEDED
    assert fixture.count("upstream_rq_retry_limit_exceeded") == 1
    assert fixture.count("upstream_rq_retry_success") == 0
    assert fixture.resources.retries == 0


def test_no_success_without_a_retry() -> None:
    fixture = Fixture()
    state = fixture.state({"retry_on": "5xx"})
    assert state is not None
    assert state.decide(False) is Decision.NO
    assert fixture.count("upstream_rq_retry_success") == 0


def test_overflow_uses_up_a_retry() -> None:
    fixture = Fixture(max_retries=1)
    first = fixture.state({"retry_on": "5xx", "num_retries": 2})
    second = fixture.state({"retry_on": "5xx", "num_retries": 2})
    assert first is not None and second is not None
    assert first.decide(True) is Decision.RETRY
    assert second.decide(True) is Decision.OVERFLOW
    assert second.remaining == 1
    assert fixture.count("upstream_rq_retry_overflow") == 1
    first.release()
    assert second.decide(True) is Decision.RETRY


def test_circuit_breaker_gauges_read_the_retries() -> None:
    fixture = Fixture(max_retries=1)
    limits = CircuitBreakers(max_retries=1, track_remaining=True)
    register_circuit_breaker_gauges(fixture.store, "c", limits, fixture.resources, lambda: 0)
    state = fixture.state({"retry_on": "5xx"})
    assert state is not None

    def read() -> tuple:
        base = "cluster.c.circuit_breakers.default."
        return (
            fixture.store.value(base + "rq_retry_open"),
            fixture.store.value(base + "remaining_retries"),
        )

    assert read() == (0, 1)
    state.decide(True)
    assert read() == (1, 0)
    state.release()
    assert read() == (0, 1)


def test_backoff_is_fully_jittered_and_capped() -> None:
    fixture = Fixture()
    state = fixture.state(
        {"retry_on": "5xx", "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.04s"}}
    )
    assert state is not None
    waits = [state.backoff_ms() for _ in range(6)]
    bounds = [10, 20, 40, 40, 40, 40]
    assert all(0 <= wait < bound for wait, bound in zip(waits, bounds, strict=True))
    draws = [Fixture().state({"retry_on": "5xx"}).backoff_ms() for _ in range(200)]  # type: ignore[union-attr]
    assert max(draws) < 25 and min(draws) >= 0


def test_previous_hosts_exclusion() -> None:
    fixture = Fixture()
    state = fixture.state(
        {
            "retry_on": "5xx",
            "retry_host_predicate": [
                {"name": "previous", "typed_config": {"@type": PREVIOUS_HOSTS}}
            ],
            "host_selection_retry_max_attempts": 3,
        }
    )
    assert state is not None
    assert state.exclusion() is None  # nothing tried yet
    a, b = Host(("127.0.0.1", 1)), Host(("127.0.0.1", 2))
    state.tried(a)
    exclusion = state.exclusion()
    assert exclusion is not None and exclusion.reselect == 3
    assert exclusion.rejects(a) and not exclusion.rejects(b)
    plain = fixture.state({"retry_on": "5xx"})
    assert plain is not None
    plain.tried(a)
    assert plain.exclusion() is None


def test_request_headers_merge() -> None:
    fixture = Fixture()
    state = fixture.state(
        {"retry_on": "connect-failure"},
        {
            b"x-envoy-retry-on": b"5xx,retriable-status-codes",
            b"x-envoy-retry-grpc-on": b"unavailable",
            b"x-envoy-max-retries": b"4",
            b"x-envoy-retriable-status-codes": b"418, 419,x",
        },
    )
    assert state is not None
    assert state.retry_on == (
        RetryOn.CONNECT_FAILURE
        | RetryOn.FIVE_XX
        | RetryOn.RETRIABLE_STATUS_CODES
        | RetryOn.GRPC_UNAVAILABLE
    )
    assert state.remaining == 4
    assert state.retriable_status_codes == (418, 419)


def test_max_retries_header_needs_a_condition() -> None:
    state = Fixture().state(None, {b"x-envoy-retry-on": b"bogus", b"x-envoy-max-retries": b"5"})
    assert state is not None
    assert state.remaining == 1


def test_take_retry_headers() -> None:
    headers = [(b"a", b"1"), (b"x-envoy-retry-on", b"5xx"), (b"x-envoy-max-retries", b"2")]
    assert take_retry_headers(headers) == {
        b"x-envoy-retry-on": b"5xx",
        b"x-envoy-max-retries": b"2",
    }
    assert headers == [(b"a", b"1")]
    untouched = [(b"a", b"1")]
    assert take_retry_headers(untouched) == {}


def test_per_try_timeout_below_the_route_timeout_only() -> None:
    built = policy({"retry_on": "5xx", "per_try_timeout": "2s"})
    assert per_try_timeout_s(built, {}, 15.0) == 2.0
    assert per_try_timeout_s(built, {}, 2.0) is None
    assert per_try_timeout_s(built, {}, None) == 2.0
    header = {b"x-envoy-upstream-rq-per-try-timeout-ms": b"300"}
    assert per_try_timeout_s(None, header, 15.0) == pytest.approx(0.3)


def test_request_replay_limit() -> None:
    replay = RequestReplay(limit=10)
    assert replay.add(b"12345", False)
    assert replay.add(b"6789", True)
    assert replay.chunks == [b"12345", b"6789"] and replay.ended
    over = RequestReplay(limit=4)
    assert not over.add(b"12345", False)
    assert over.chunks == []


def test_the_balancer_picks_again_while_the_predicate_rejects() -> None:
    config = build_cluster_config(cluster_message("c", [1, 2, 3], lb_policy="RANDOM"), "cluster")
    cluster = Cluster(config, Stats(), rng=random.Random(3))
    a, b, c = cluster.hosts
    avoid = HostExclusion((a, b), reselect=60)
    assert {cluster.pick_host(exclude=avoid) for _ in range(50)} == {c}
    once = HostExclusion((a, b), reselect=0)  # no second pick: the first stands
    assert {cluster.pick_host(exclude=once) for _ in range(50)} == {a, b, c}
