"""DNS clusters with `respect_dns_ttl` and a resolver of their own, against a real DNS server on
loopback (tests/helpers/dns_server.py): the record resolver's answers and TTLs, and a proxy
process whose next lookup of a host follows the answer's TTL instead of `dns_refresh_rate`.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dns_server import DnsServer
from tests.helpers.loops import event_loop_policy  # noqa: F401 - a fixture
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo
from tests.integration.test_cds import routed_listener
from xds_proxy.config.cluster import DnsFamily, EndpointAddress
from xds_proxy.config.dns_resolver import DnsResolverConfig
from xds_proxy.upstream.dns_records import DnsAnswer, RecordResolver

CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
NAME = "backend.test"


def record_resolver(dns: DnsServer, tmp_path: Path, **settings: Any) -> RecordResolver:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.5 from-file.test  # a comment\n::5 from-file.test\n")
    config = DnsResolverConfig(servers=(("127.0.0.1", dns.port),), **settings)
    return RecordResolver(config, hosts_file=hosts)


# -- the record resolver -----------------------------------------------------------------------


async def test_an_answer_carries_its_ttl_and_its_addresses_sorted(tmp_path: Path) -> None:
    with DnsServer({NAME: ["127.0.0.3", "127.0.0.2"]}, ttl=42) as dns:
        resolver = record_resolver(dns, tmp_path, no_default_search_domain=True)
        answer = await resolver.lookup(EndpointAddress(NAME, 80), DnsFamily.V4_ONLY)
        assert answer == DnsAnswer((("127.0.0.2", 80), ("127.0.0.3", 80)), ttl_s=42)
        assert dns.queries(NAME, "A", transport="udp") == 1
        assert dns.queries(NAME, "AAAA") == 0


async def test_auto_asks_aaaa_first_then_a(tmp_path: Path) -> None:
    """Envoy's AUTO: IPv6 first, IPv4 when there was none (the server has no AAAA records)."""
    with DnsServer({NAME: ["127.0.0.1"]}, ttl=9) as dns:
        resolver = record_resolver(dns, tmp_path, no_default_search_domain=True)
        answer = await resolver.lookup(EndpointAddress(NAME, 80), DnsFamily.AUTO)
        assert answer == DnsAnswer((("127.0.0.1", 80),), ttl_s=9)
        assert (dns.queries(NAME, "AAAA"), dns.queries(NAME, "A")) == (1, 1)


async def test_use_tcp_for_dns_lookups(tmp_path: Path) -> None:
    with DnsServer({NAME: ["127.0.0.1"]}) as dns:
        resolver = record_resolver(dns, tmp_path, use_tcp=True, no_default_search_domain=True)
        assert await resolver.lookup(EndpointAddress(NAME, 80), DnsFamily.V4_ONLY)
        assert dns.queries(NAME, transport="tcp") == 1
        assert dns.queries(NAME, transport="udp") == 0


async def test_an_unknown_name_fails_the_lookup(tmp_path: Path) -> None:
    with DnsServer({}) as dns:
        resolver = record_resolver(dns, tmp_path, no_default_search_domain=True)
        assert await resolver.lookup(EndpointAddress("nope.test", 80), DnsFamily.ALL) is None
        assert dns.queries("nope.test", "A") == dns.queries("nope.test", "AAAA") == 1


async def test_the_hosts_file_localhost_and_literals_answer_first_with_no_ttl(
    tmp_path: Path,
) -> None:
    """As c-ares: no DNS query for them, and TTL 0 (the refresh rate applies)."""
    with DnsServer({}) as dns:
        resolver = record_resolver(dns, tmp_path)
        lookup = resolver.lookup
        assert await lookup(EndpointAddress("from-file.test", 1), DnsFamily.ALL) == DnsAnswer(
            (("::5", 1), ("127.0.0.5", 1))
        )
        assert await lookup(EndpointAddress("localhost", 2), DnsFamily.AUTO) == DnsAnswer(
            (("::1", 2),)
        )
        assert await lookup(EndpointAddress("127.0.0.9", 3), DnsFamily.AUTO) == DnsAnswer(
            (("127.0.0.9", 3),)
        )
        assert await lookup(EndpointAddress("127.0.0.9", 3), DnsFamily.V6_ONLY) is None
        assert dns.queries("from-file.test") == dns.queries("localhost") == 0


# -- a proxy process ---------------------------------------------------------------------------


def dns_bootstrap(listen_port: int, upstream_port: int, dns_port: int, **fields: Any) -> dict:
    cluster = {
        "name": "backend",
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {
            "cluster_name": "backend",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": NAME,
                                        "port_value": upstream_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "typed_dns_resolver_config": {
            "name": "envoy.network.dns_resolver.cares",
            "typed_config": {
                "@type": CARES,
                "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns_port}}],
                "dns_resolver_options": {"no_default_search_domain": True},
            },
        },
        **fields,
    }
    return {
        "node": {"id": "dns", "cluster": "dns"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [routed_listener(listen_port, "backend")],
            "clusters": [cluster],
        },
    }


def seconds_for_queries(dns: DnsServer, count: int, timeout: float) -> float:
    """From the next query of NAME on, the seconds until `count` more have come."""
    start = dns.queries(NAME)
    wait_for(lambda: dns.queries(NAME) > start, timeout=timeout, what="a DNS query")
    began = time.monotonic()
    first = dns.queries(NAME)
    wait_for(
        lambda: dns.queries(NAME) >= first + count,
        timeout=timeout,
        what=f"{count} more DNS queries",
    )
    return time.monotonic() - began


def get(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return f"{response.status}"
    finally:
        connection.close()


@pytest.mark.timeout(90)
def test_the_next_lookup_follows_the_ttl_and_traffic_follows_the_answer(tmp_path: Path) -> None:
    with Http1Echo() as upstream, DnsServer({NAME: ["127.0.0.1"]}, ttl=1) as dns:
        port = free_port()
        bootstrap = dns_bootstrap(
            port, upstream.port, dns.port, respect_dns_ttl=True, dns_refresh_rate="5s"
        )
        proxy = ProxyProcess(bootstrap, tmp_path).start()
        try:
            wait_for(lambda: proxy.stat("cluster.backend.membership_total") == 1, timeout=10)
            assert get(port) == "200"
            # TTL 1 s: four more lookups take about 4 s (dns_refresh_rate would take 20 s).
            elapsed = seconds_for_queries(dns, 4, timeout=15)
            assert 3.5 <= elapsed <= 6.5, elapsed
            # A changed answer is picked up at the next lookup, within about a TTL.
            dns.set(NAME, ["127.0.0.1", "127.0.0.2"])
            wait_for(lambda: proxy.stat("cluster.backend.membership_total") == 2, timeout=4)
            attempts = proxy.stat("cluster.backend.update_attempt") or 0
            assert attempts >= 6
            assert proxy.stat("cluster.backend.update_success") == attempts - (
                proxy.stat("cluster.backend.update_failure") or 0
            )
        finally:
            proxy.stop()


@pytest.mark.timeout(90)
def test_without_respect_dns_ttl_the_refresh_rate_applies(tmp_path: Path) -> None:
    with Http1Echo() as upstream, DnsServer({NAME: ["127.0.0.1"]}, ttl=1) as dns:
        port = free_port()
        bootstrap = dns_bootstrap(port, upstream.port, dns.port, dns_refresh_rate="3s")
        proxy = ProxyProcess(bootstrap, tmp_path).start()
        try:
            wait_for(lambda: proxy.stat("cluster.backend.membership_total") == 1, timeout=10)
            assert get(port) == "200"  # a named resolver without the TTL: still served
            elapsed = seconds_for_queries(dns, 1, timeout=15)
            assert 2.5 <= elapsed <= 4.5, elapsed
        finally:
            proxy.stop()
