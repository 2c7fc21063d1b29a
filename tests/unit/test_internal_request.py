"""Which requests are internal (`internal_address_config`) and what the router reads from
them, as Envoy 1.40 (tests/interop/test_hcm_fields2_interop.py checks the same against it)."""

from __future__ import annotations

import ipaddress

import pytest

from xds_proxy.codec.forwarded_for import single_xff_address
from xds_proxy.config.hcm import ProxyPolicy
from xds_proxy.config.internal_address import InternalAddresses, legacy_internal
from xds_proxy.upstream.internal_request import forced_trace_id, is_internal, trusted_timeouts

LEGACY = InternalAddresses()
TENS = InternalAddresses((ipaddress.ip_network("10.0.0.0/8"),))


@pytest.mark.parametrize(
    ("ip", "internal"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.0.1", True),
        ("192.169.0.1", False),
        ("127.0.0.1", True),
        ("127.0.0.2", False),  # only the one loopback address, as Envoy
        ("fd00::1", True),
        ("fc00::1", False),
        ("::1", True),
        ("1.1.1.1", False),
        ("not-an-ip", False),
    ],
)
def test_the_legacy_internal_addresses(ip: str, internal: bool) -> None:
    assert legacy_internal(ip) is internal
    assert LEGACY.contains(ip) is internal


def test_cidr_ranges_replace_the_legacy_set() -> None:
    assert TENS.contains("10.9.9.9")
    assert not TENS.contains("192.168.0.1")
    assert not TENS.contains("fd00::1")


def test_single_xff_address() -> None:
    assert single_xff_address(b"10.0.0.1") == "10.0.0.1"
    assert single_xff_address(b" 10.0.0.1 ") == "10.0.0.1"
    assert single_xff_address(b"10.0.0.1,") is None
    assert single_xff_address(b"1.1.1.1,10.0.0.1") is None
    assert single_xff_address(b"ten") is None


def _policy(**fields) -> ProxyPolicy:
    return ProxyPolicy(internal_addresses=fields.pop("addresses", LEGACY), **fields)


def test_without_internal_address_config_nothing_is_internal() -> None:
    policy = ProxyPolicy()
    assert not is_internal([(b"x-forwarded-for", b"10.0.0.1")], "127.0.0.1", policy)


def test_without_use_remote_address_the_one_forwarded_address_decides() -> None:
    policy = _policy()
    assert is_internal([(b"x-forwarded-for", b"10.0.0.1")], "1.1.1.1", policy)
    assert not is_internal([(b"x-forwarded-for", b"1.1.1.1")], "127.0.0.1", policy)
    assert not is_internal([], "127.0.0.1", policy)  # no x-forwarded-for: external
    two = [(b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2")]
    assert not is_internal(two, "127.0.0.1", policy)
    hops = _policy(xff_num_trusted_hops=1)
    assert not is_internal([(b"x-forwarded-for", b"10.0.0.1")], "127.0.0.1", hops)


def test_with_use_remote_address_the_peer_decides_when_nothing_was_forwarded() -> None:
    policy = _policy(use_remote_address=True)
    assert is_internal([], "127.0.0.1", policy)
    assert not is_internal([(b"x-forwarded-for", b"10.0.0.1")], "127.0.0.1", policy)
    assert not is_internal([], "1.1.1.1", policy)
    assert is_internal([], "10.0.0.7", _policy(use_remote_address=True, addresses=TENS))
    assert not is_internal([], "127.0.0.1", _policy(use_remote_address=True, addresses=TENS))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (15.0, 15.0)),
        ([(b"x-envoy-upstream-rq-timeout-ms", b"4000")], (4.0, 4.0)),
        ([(b"x-envoy-upstream-rq-timeout-ms", b"0")], (None, None)),
        ([(b"x-envoy-upstream-rq-timeout-ms", b"5s")], (15.0, 15.0)),
        ([(b"x-envoy-upstream-rq-per-try-timeout-ms", b"3000")], (15.0, 3.0)),
        (
            [
                (b"x-envoy-upstream-rq-timeout-ms", b"1000"),
                (b"x-envoy-upstream-rq-per-try-timeout-ms", b"2000"),
            ],
            (1.0, 1.0),
        ),
        (
            [
                (b"x-envoy-upstream-rq-per-try-timeout-ms", b"3000"),
                (b"x-envoy-hedge-on-per-try-timeout", b"true"),
            ],
            (15.0, 15.0),
        ),
    ],
)
def test_trusted_timeouts(headers, expected) -> None:
    assert trusted_timeouts(headers, 15.0) == expected


def test_forced_trace_id() -> None:
    assert forced_trace_id([(b"x-envoy-force-trace", b"1"), (b"x-request-id", b"a")]) == b"a"
    assert forced_trace_id([(b"x-request-id", b"a")]) is None
