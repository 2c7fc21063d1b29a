"""`respect_dns_ttl` and the DNS resolver a cluster names (pure): what config/cluster.py and
config/dns_resolver.py build, what they refuse, and upstream/dns.py's rule for the next lookup.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.network.dns_resolver.getaddrinfo.v3 import (  # noqa: F401 - its @type
    getaddrinfo_dns_resolver_pb2,
)
from google.protobuf import json_format

from tests.helpers.upstreams import cluster_dict
from xds_proxy.config.cluster import ClusterConfig, build_cluster_config
from xds_proxy.config.dns_resolver import DnsResolverConfig
from xds_proxy.errors import ConfigError
from xds_proxy.upstream.dns import DnsAnswer, next_lookup_delay_s

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
DNS_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"


def build(document: dict) -> ClusterConfig:
    return build_cluster_config(
        json_format.ParseDict(document, cluster_pb2.Cluster()), "clusters[0]"
    )


def strict_dns(**fields: Any) -> dict:
    return cluster_dict("dns", [80], host="backend.test", type="STRICT_DNS", **fields)


def resolver(port: int = 5353, address: str = "127.0.0.1") -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def cares(**fields: Any) -> dict:
    return {"name": "envoy.network.dns_resolver.cares", "typed_config": {"@type": CARES, **fields}}


def dns_cluster_type(**fields: Any) -> dict:
    document = cluster_dict("dns", [80], host="backend.test")
    del document["type"]
    document["cluster_type"] = {
        "name": "envoy.clusters.dns",
        "typed_config": {"@type": DNS_CLUSTER, **fields},
    }
    return document


def test_defaults_name_no_resolver_and_no_ttl() -> None:
    config = build(strict_dns())
    assert config.respect_dns_ttl is False
    assert config.dns_resolver is None


def test_respect_dns_ttl_on_a_cluster_and_on_the_dns_cluster_type() -> None:
    assert build(strict_dns(respect_dns_ttl=True)).respect_dns_ttl is True
    assert build(dns_cluster_type(respect_dns_ttl=True)).respect_dns_ttl is True
    # The extension's own field wins, as its others do.
    document = dns_cluster_type()
    document["respect_dns_ttl"] = True
    assert build(document).respect_dns_ttl is False


def test_the_cares_resolver_servers_and_options() -> None:
    config = build(
        strict_dns(
            typed_dns_resolver_config=cares(
                resolvers=[resolver(5353), resolver(0, "::1")],
                dns_resolver_options={
                    "use_tcp_for_dns_lookups": True,
                    "no_default_search_domain": True,
                },
            )
        )
    )
    assert config.dns_resolver == DnsResolverConfig(
        servers=(("127.0.0.1", 5353), ("::1", 53)),
        use_tcp=True,
        no_default_search_domain=True,
    )


def test_the_dns_cluster_type_reads_only_its_own_resolver() -> None:
    document = dns_cluster_type(typed_dns_resolver_config=cares(resolvers=[resolver(5300)]))
    document["dns_resolvers"] = [resolver(5400)]
    assert build(document).dns_resolver == DnsResolverConfig(servers=(("127.0.0.1", 5300),))
    document = dns_cluster_type()
    document["typed_dns_resolver_config"] = cares(resolvers=[resolver(5400)])
    assert build(document).dns_resolver is None  # Envoy ignores the cluster's fields here


def test_envoy_order_of_the_cluster_fields() -> None:
    """typed_dns_resolver_config, else dns_resolution_config, else dns_resolvers and
    use_tcp_for_dns_lookups (both deprecated, still read by Envoy)."""
    both = strict_dns(
        typed_dns_resolver_config=cares(resolvers=[resolver(1)]),
        dns_resolution_config={"resolvers": [resolver(2)]},
        dns_resolvers=[resolver(3)],
    )
    assert build(both).dns_resolver == DnsResolverConfig(servers=(("127.0.0.1", 1),))
    del both["typed_dns_resolver_config"]
    assert build(both).dns_resolver == DnsResolverConfig(servers=(("127.0.0.1", 2),))
    del both["dns_resolution_config"]
    assert build(both).dns_resolver == DnsResolverConfig(servers=(("127.0.0.1", 3),))
    legacy = build(strict_dns(use_tcp_for_dns_lookups=True)).dns_resolver
    assert legacy == DnsResolverConfig(use_tcp=True)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"typed_dns_resolver_config": cares(resolvers=[resolver(53, "dns.example")])},
            r"^clusters\[0\]\.typed_dns_resolver_config\.typed_config\.resolvers\[0\]"
            r"\.socket_address\.address: DNS resolver 'dns.example' is not an IP address$",
        ),
        (
            {"typed_dns_resolver_config": cares(query_tries=2)},
            r"^clusters\[0\]\.typed_dns_resolver_config\.typed_config\.query_tries: "
            r"not supported yet$",
        ),
        (
            {"typed_dns_resolver_config": cares(use_resolvers_as_fallback=True)},
            r"typed_config\.use_resolvers_as_fallback: not supported yet$",
        ),
        (
            {
                "typed_dns_resolver_config": {
                    "name": "envoy.network.dns_resolver.getaddrinfo",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver"
                        ".getaddrinfo.v3.GetAddrInfoDnsResolverConfig"
                    },
                }
            },
            r"^clusters\[0\]\.typed_dns_resolver_config\.typed_config: @type "
            r"'type.googleapis.com/envoy.extensions.network.dns_resolver.getaddrinfo.v3"
            r".GetAddrInfoDnsResolverConfig' not supported$",
        ),
        (
            {"dns_resolvers": [{"pipe": {"path": "/run/dns"}}]},
            r"^clusters\[0\]\.dns_resolvers\[0\]\.pipe: not supported$",
        ),
        (
            {
                "typed_dns_resolver_config": cares(
                    resolvers=[
                        {
                            "socket_address": {
                                "address": "127.0.0.1",
                                "port_value": 53,
                                "protocol": "UDP",
                            }
                        }
                    ]
                )
            },
            r"resolvers\[0\]\.socket_address\.protocol: not supported$",
        ),
    ],
)
def test_what_is_refused_names_the_field(fields: dict, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        build(strict_dns(**fields))


def test_the_dns_cluster_type_resolver_is_checked_too() -> None:
    document = dns_cluster_type(typed_dns_resolver_config=cares(rotate_nameservers=True))
    with pytest.raises(
        ConfigError,
        match=r"^clusters\[0\]\.cluster_type\.typed_config\.typed_dns_resolver_config"
        r"\.typed_config\.rotate_nameservers: not supported yet$",
    ):
        build(document)


# -- the next lookup (upstream/dns.py), as Envoy's DNS cluster schedules it --------------------

ANSWER = DnsAnswer((("127.0.0.1", 80),), ttl_s=30)


def delay(answer: DnsAnswer | None, **fields: Any) -> float:
    config = build(strict_dns(dns_refresh_rate="5s", **fields))
    return next_lookup_delay_s(answer, config, random.Random(7))


def test_the_ttl_sets_the_next_lookup_only_when_asked() -> None:
    assert delay(ANSWER) == 5.0
    assert delay(ANSWER, respect_dns_ttl=True) == 30.0  # longer than the refresh rate
    assert delay(DnsAnswer(ANSWER.addresses, 1), respect_dns_ttl=True) == 1.0  # and shorter


def test_no_ttl_no_addresses_or_a_failure_use_the_refresh_rate() -> None:
    assert delay(DnsAnswer(ANSWER.addresses, 0), respect_dns_ttl=True) == 5.0  # TTL 0
    assert delay(DnsAnswer((), 30), respect_dns_ttl=True) == 5.0  # an empty answer
    assert delay(None, respect_dns_ttl=True) == 5.0  # the lookup failed


def test_jitter_is_added_to_the_ttl_too() -> None:
    document = dns_cluster_type(respect_dns_ttl=True, dns_jitter="2s", dns_refresh_rate="5s")
    config = build(document)
    delays = [next_lookup_delay_s(ANSWER, config, random.Random(seed)) for seed in range(50)]
    assert all(30.0 <= value < 32.0 for value in delays)
    assert len(set(delays)) > 1
