"""`respect_dns_ttl` on Envoy 1.40 and on ours: the same DNS cluster, each proxy pointed by its
cluster's `envoy.network.dns_resolver.cares` config at its own DNS server on loopback
(tests/helpers/dns_server.py, the same records and TTL). Both run at once; over the window in
which Envoy's server counts N more queries, ours must count N too, give or take one (the two
proxies start their timers at different moments). Envoy re-resolves a host after the answer's
TTL with `respect_dns_ttl` (larger or smaller than `dns_refresh_rate`), at
`dns_refresh_rate` without it or when the TTL is 0. Both count each lookup in the cluster's
`update_attempt`, `update_success` and (no host changed) `update_no_rebuild`.
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.dns_server import DnsServer
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo
from tests.integration.test_cds import routed_listener

pytestmark = pytest.mark.envoy

NAME = "backend.test"
CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
DNS_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"


def _resolver(dns_port: int) -> dict[str, Any]:
    return {
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": CARES,
            "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns_port}}],
            "dns_resolver_options": {"no_default_search_domain": True},
        },
    }


def _endpoints(upstream_port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": NAME, "port_value": upstream_port}}
    return {
        "cluster_name": "backend",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


def _strict_dns(upstream_port: int, dns_port: int, **fields: Any) -> dict[str, Any]:
    return {
        "name": "backend",
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": _endpoints(upstream_port),
        "typed_dns_resolver_config": _resolver(dns_port),
        **fields,
    }


def _dns_cluster_type(upstream_port: int, dns_port: int, **fields: Any) -> dict[str, Any]:
    """`cluster_type: envoy.clusters.dns`, AUTO family (AAAA, then A: both are counted)."""
    return {
        "name": "backend",
        "connect_timeout": "1s",
        "load_assignment": _endpoints(upstream_port),
        "cluster_type": {
            "name": "envoy.clusters.dns",
            "typed_config": {
                "@type": DNS_CLUSTER,
                "typed_dns_resolver_config": _resolver(dns_port),
                **fields,
            },
        },
    }


def _legacy_resolvers(upstream_port: int, dns_port: int, **fields: Any) -> dict[str, Any]:
    """The deprecated `dns_resolvers` field (Envoy 1.40 still reads it)."""
    cluster = _strict_dns(upstream_port, dns_port, **fields)
    del cluster["typed_dns_resolver_config"]
    cluster["dns_resolvers"] = [
        {"socket_address": {"address": "127.0.0.1", "port_value": dns_port}}
    ]
    return cluster


# name -> (cluster maker, its fields, the records' TTL, queries of the window)
VARIANTS: dict[str, tuple[Any, dict[str, Any], int, int]] = {
    # TTL 1 s under a 5 s refresh rate: a lookup every second.
    "ttl_below_refresh": (
        _strict_dns,
        {"respect_dns_ttl": True, "dns_refresh_rate": "5s"},
        1,
        4,
    ),
    # TTL 2 s over a 1 s refresh rate: the TTL wins (every 2 s).
    "ttl_above_refresh": (
        _strict_dns,
        {"respect_dns_ttl": True, "dns_refresh_rate": "1s"},
        2,
        2,
    ),
    # TTL 0: the refresh rate (2 s).
    "ttl_zero": (_strict_dns, {"respect_dns_ttl": True, "dns_refresh_rate": "2s"}, 0, 2),
    # Without respect_dns_ttl: the refresh rate (2 s), whatever the TTL.
    "refresh_rate": (_strict_dns, {"dns_refresh_rate": "2s"}, 1, 2),
    "dns_cluster_type": (
        _dns_cluster_type,
        {"respect_dns_ttl": True, "dns_refresh_rate": "5s"},
        1,
        4,
    ),
    "legacy_dns_resolvers": (
        _legacy_resolvers,
        {"respect_dns_ttl": True, "dns_refresh_rate": "5s"},
        1,
        4,
    ),
}


def _bootstrap(listen_port: int, cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": {"id": "dns", "cluster": "dns"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [routed_listener(listen_port, "backend")],
            "clusters": [cluster],
        },
    }


def _status(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _stat(process: EnvoyProcess, name: str) -> int:
    return process.stat(f"cluster.backend.{name}") or 0


def _counts(dns: DnsServer) -> tuple[int, int]:
    return dns.queries(NAME, "A"), dns.queries(NAME, "AAAA")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lookups_follow_the_ttl_like_envoy(variant: str, tmp_path: Path) -> None:
    make_cluster, fields, ttl, window = VARIANTS[variant]
    with (
        Http1Echo() as upstream,
        DnsServer({NAME: ["127.0.0.1"]}, ttl=ttl) as envoy_dns,
        DnsServer({NAME: ["127.0.0.1"]}, ttl=ttl) as our_dns,
    ):
        processes = []
        try:
            for process_class, dns in ((EnvoyProcess, envoy_dns), (ProxyProcess, our_dns)):
                port = free_port()
                cluster = make_cluster(upstream.port, dns.port, **fields)
                process = process_class(_bootstrap(port, cluster), tmp_path / process_class.name)
                processes.append((process.start(), port))
            for process, port in processes:
                wait_for(
                    lambda p=process: p.stat("cluster.backend.membership_total") == 1,
                    timeout=10,
                    what=f"{process.name} resolved the host",
                )
                assert _status(port) == 200
            envoy_start, our_start = _counts(envoy_dns), _counts(our_dns)
            wait_for(
                lambda: envoy_dns.queries(NAME, "A") >= envoy_start[0] + window,
                timeout=window * 5 + 5,
                what=f"{window} more lookups by Envoy",
            )
            envoy_end, our_end = _counts(envoy_dns), _counts(our_dns)
            for process, _ in processes:
                # One answer changed the hosts (the first); every later one rebuilt nothing.
                wait_for(
                    lambda p=process: (
                        _stat(p, "update_attempt")
                        == _stat(p, "update_success")
                        == _stat(p, "update_no_rebuild") + 1
                    ),
                    timeout=5,
                    what=f"{process.name}'s update_* stats",
                )
                assert _stat(process, "update_failure") == 0
        finally:
            for process, _ in processes:
                process.stop()
    envoy_made = (envoy_end[0] - envoy_start[0], envoy_end[1] - envoy_start[1])
    ours_made = (our_end[0] - our_start[0], our_end[1] - our_start[1])
    for envoy_count, our_count in zip(envoy_made, ours_made, strict=True):
        assert abs(envoy_count - our_count) <= 1, (variant, envoy_made, ours_made)
    if make_cluster is _dns_cluster_type:  # AUTO: an AAAA query before each A query
        assert envoy_made[1] >= window - 1 and ours_made[1] >= window - 1
    else:
        assert envoy_made[1] == ours_made[1] == 0
