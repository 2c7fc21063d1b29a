"""Filter chain matching in Envoy's order of criteria, most specific match first."""

from __future__ import annotations

import ipaddress

from envoy.config.listener.v3 import listener_components_pb2

from xds_proxy.listener.filter_chain import ConnectionInfo, FilterChainMatcher

SourceType = listener_components_pb2.FilterChainMatch.ConnectionSourceType


def chain(**match) -> listener_components_pb2.FilterChain:
    result = listener_components_pb2.FilterChain()
    m = result.filter_chain_match
    if "port" in match:
        m.destination_port.value = match["port"]
    for key, target in (("dst", m.prefix_ranges), ("src", m.source_prefix_ranges)):
        for cidr in match.get(key, []):
            ip, length = cidr.split("/")
            target.add(address_prefix=ip).prefix_len.value = int(length)
    m.source_ports.extend(match.get("src_ports", []))
    m.server_names.extend(match.get("sni", []))
    if "source_type" in match:
        m.source_type = match["source_type"]
    return result


def conn(src="127.0.0.1", src_port=5555, dst="127.0.0.1", dst_port=10000) -> ConnectionInfo:
    return ConnectionInfo(
        destination_ip=ipaddress.ip_address(dst),
        destination_port=dst_port,
        source_ip=ipaddress.ip_address(src),
        source_port=src_port,
    )


def test_empty_match_takes_everything():
    assert FilterChainMatcher([chain()]).match(conn()) == 0


def test_destination_port_beats_wildcard_and_mismatch_falls_through():
    matcher = FilterChainMatcher([chain(), chain(port=10000), chain(port=9)])
    assert matcher.match(conn(dst_port=10000)) == 1
    assert matcher.match(conn(dst_port=7)) == 0


def test_longest_source_prefix_wins():
    matcher = FilterChainMatcher([chain(src=["127.0.0.0/8"]), chain(src=["127.0.0.2/32"]), chain()])
    assert matcher.match(conn(src="127.0.0.2")) == 1
    assert matcher.match(conn(src="127.0.0.3")) == 0
    assert matcher.match(conn(src="10.1.1.1")) == 2


def test_no_match_means_default():
    matcher = FilterChainMatcher([chain(src=["10.0.0.0/8"])])
    assert matcher.match(conn(src="127.0.0.1")) is None


def test_destination_criteria_come_before_source():
    # The chain with the specific destination prefix wins even though the other one has a
    # more specific source match: criteria are narrowed in order.
    matcher = FilterChainMatcher([chain(dst=["127.0.0.0/8"]), chain(src=["127.0.0.1/32"])])
    assert matcher.match(conn()) == 0


def test_source_ports():
    matcher = FilterChainMatcher([chain(src_ports=[5555]), chain()])
    assert matcher.match(conn(src_port=5555)) == 0
    assert matcher.match(conn(src_port=5556)) == 1


def test_server_names_need_sni():
    matcher = FilterChainMatcher([chain(sni=["example.com"]), chain()])
    assert matcher.match(conn()) == 1


def test_source_type():
    matcher = FilterChainMatcher(
        [chain(source_type=SourceType.EXTERNAL), chain(source_type=SourceType.SAME_IP_OR_LOOPBACK)]
    )
    assert matcher.match(conn()) == 1
    assert matcher.match(conn(src="10.0.0.1", dst="10.0.0.2")) == 0


def test_ipv6():
    matcher = FilterChainMatcher([chain(src=["::1/128"]), chain()])
    assert matcher.match(conn(src="::1", dst="::1")) == 0
    assert matcher.match(conn(src="127.0.0.1")) == 1
