"""Chain matching on what the listener filters detect (server name, transport protocol,
application protocols), Envoy's loopback rule, and the ambiguous chains Envoy refuses.
(Addresses and ports: tests/unit/test_filter_chain_match.py; end to end, and against Envoy:
tests/integration/test_chain_matching.py, tests/interop/test_chain_matching_interop.py.)"""

from __future__ import annotations

import ipaddress

import pytest
from envoy.config.listener.v3 import listener_components_pb2

from xds_proxy.errors import ConfigError
from xds_proxy.listener.filter_chain import ConnectionInfo, FilterChainMatcher

SourceType = listener_components_pb2.FilterChainMatch.ConnectionSourceType


def chain(name: str = "", **match) -> listener_components_pb2.FilterChain:
    result = listener_components_pb2.FilterChain(name=name)
    m = result.filter_chain_match
    m.server_names.extend(match.get("sni", []))
    m.transport_protocol = match.get("transport", "")
    m.application_protocols.extend(match.get("alpn", []))
    m.source_type = match.get("source_type", SourceType.ANY)
    m.source_ports.extend(match.get("src_ports", []))
    for cidr in match.get("src", []):
        ip, length = cidr.split("/")
        m.source_prefix_ranges.add(address_prefix=ip).prefix_len.value = int(length)
    return result


def conn(sni="", transport="raw_buffer", alpn=(), src="127.0.0.1", dst="127.0.0.1"):
    return ConnectionInfo(
        destination_ip=ipaddress.ip_address(dst),
        destination_port=443,
        source_ip=ipaddress.ip_address(src),
        source_port=40000,
        server_name=sni,
        transport_protocol=transport,
        application_protocols=tuple(alpn),
    )


def test_server_name_exact_then_longest_wildcard_then_any() -> None:
    matcher = FilterChainMatcher(
        [
            chain(sni=["*.example.com"]),
            chain(sni=["a.b.example.com"]),
            chain(sni=["*.b.example.com"]),
            chain(),
        ]
    )
    assert matcher.match(conn("a.b.example.com")) == 1
    assert matcher.match(conn("c.b.example.com")) == 2
    assert matcher.match(conn("deep.c.b.example.com")) == 2
    assert matcher.match(conn("c.example.com")) == 0
    assert matcher.match(conn("example.com")) == 3  # *.example.com needs a label before it
    assert matcher.match(conn("A.B.Example.COM")) == 1  # DNS names compare case-insensitively
    assert matcher.match(conn("")) == 3


def test_server_names_beat_transport_protocol() -> None:
    matcher = FilterChainMatcher([chain(transport="tls"), chain(sni=["a.example.com"])])
    assert matcher.match(conn("a.example.com", "tls")) == 1
    assert matcher.match(conn("b.example.com", "tls")) == 0


def test_transport_protocol() -> None:
    matcher = FilterChainMatcher([chain(transport="tls"), chain(transport="raw_buffer")])
    assert matcher.match(conn(transport="tls")) == 0
    assert matcher.match(conn()) == 1
    assert FilterChainMatcher([chain(transport="tls")]).match(conn()) is None


def test_application_protocols_follow_the_clients_order() -> None:
    matcher = FilterChainMatcher(
        [chain("h1", alpn=["http/1.1"]), chain("h2", alpn=["h2"]), chain("any")]
    )
    assert matcher.match(conn(alpn=("h2", "http/1.1"))) == 1
    assert matcher.match(conn(alpn=("http/1.1", "h2"))) == 0
    assert matcher.match(conn(alpn=("spdy/3", "h2"))) == 1
    assert matcher.match(conn(alpn=("spdy/3",))) == 2
    assert matcher.match(conn()) == 2


def test_a_chain_listing_several_protocols() -> None:
    matcher = FilterChainMatcher(
        [chain("both", alpn=["h2", "http/1.1"]), chain("h2c", alpn=["h2c"])]
    )
    assert matcher.match(conn(alpn=("http/1.1",))) == 0
    assert matcher.match(conn(alpn=("h2c",))) == 1


def test_loopback_is_127_0_0_1_only_as_in_envoy() -> None:
    matcher = FilterChainMatcher(
        [
            chain("local", source_type=SourceType.SAME_IP_OR_LOOPBACK),
            chain("external", source_type=SourceType.EXTERNAL),
        ]
    )
    assert matcher.match(conn(src="127.0.0.1", dst="127.0.0.9")) == 0
    assert matcher.match(conn(src="127.0.0.9", dst="127.0.0.1")) == 1
    assert matcher.match(conn(src="127.0.0.9", dst="127.0.0.9")) == 0  # same IP
    assert matcher.match(conn(src="::1", dst="::2")) == 0
    assert matcher.match(conn(src="10.0.0.1", dst="10.0.0.2")) == 1


def refusal(*chains) -> str:
    with pytest.raises(ConfigError) as error:
        FilterChainMatcher(list(chains))
    return str(error.value)


def test_equal_matches_are_refused() -> None:
    assert refusal(chain("a"), chain("b")) == (
        "filter_chains[1].filter_chain_match: filter chain 'b' has the same matching rules"
        " defined as 'a'"
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"sni": ["x.com", "y.com"]}, {"sni": ["y.com"]}),
        ({"alpn": ["h2"]}, {"alpn": ["h2", "http/1.1"]}),
        ({"src": ["127.0.0.1/32"]}, {"src": ["127.0.0.1/32", "10.0.0.0/8"]}),
        ({"src_ports": [1, 2]}, {"src_ports": [2, 3]}),
    ],
)
def test_overlapping_matches_are_refused(first: dict, second: dict) -> None:
    assert refusal(chain("a", **first), chain("b", **second)) == (
        "filter_chains[1].filter_chain_match: multiple filter chains with overlapping matching"
        " rules are defined (with filter_chains[0])"
    )


def test_distinct_matches_are_accepted() -> None:
    matcher = FilterChainMatcher(
        [
            chain("a", sni=["x.com"]),
            chain("b", sni=["*.x.com"]),
            chain("c", src=["127.0.0.0/8"]),
            chain("d", src=["127.0.0.0/16"]),
            chain("e"),
        ]
    )
    # Each chain is reachable: built, not merged into or shadowed by another.
    assert matcher.match(conn("x.com")) == 0
    assert matcher.match(conn("www.x.com")) == 1
    assert matcher.match(conn(src="127.1.0.1")) == 2
    assert matcher.match(conn(src="127.0.0.1")) == 3  # the longest source prefix wins
    assert matcher.match(conn(src="10.0.0.1")) == 4


@pytest.mark.parametrize("name", ["*", "foo.*.com", "a*.example.com", "*example.com"])
def test_partial_wildcards_are_refused(name: str) -> None:
    assert refusal(chain(sni=["ok.com", name])) == (
        "filter_chains[0].filter_chain_match.server_names[1]: partial wildcards are not"
        ' supported in "server_names"'
    )
