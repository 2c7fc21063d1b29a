"""Cluster balancing as control planes write it, on Envoy 1.40 and on ours: the
`load_balancing_policy` extensions (round_robin, least_request, random), the `lb_policy` enum,
an empty `common_lb_config`, and `cluster_type: envoy.clusters.dns`. The same requests go
through a static listener to three real upstreams; both proxies must accept the bootstrap and
spread the requests over the hosts the same way (exactly even for round robin, within a stated
tolerance for the random ones)."""

from __future__ import annotations

import collections
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_cds import routed_listener

pytestmark = pytest.mark.envoy

REQUESTS = 300
POLICY = "type.googleapis.com/envoy.extensions.load_balancing_policies."
DNS_CLUSTER = "type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster"


def _policy(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "load_balancing_policy": {
            "policies": [
                {
                    "typed_extension_config": {
                        "name": f"envoy.load_balancing_policies.{name}",
                        "typed_config": {"@type": f"{POLICY}{name}.v3.{_camel(name)}", **fields},
                    }
                }
            ]
        }
    }


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _dns_cluster(name: str, ports: list[int]) -> dict[str, Any]:
    cluster = cluster_dict(name, ports, host="localhost")
    del cluster["type"]
    cluster["cluster_type"] = {
        "name": "envoy.clusters.dns",
        "typed_config": {
            "@type": DNS_CLUSTER,
            "dns_lookup_family": "V4_ONLY",
            "dns_refresh_rate": "1s",
        },
    }
    return cluster


VARIANTS: dict[str, Any] = {
    "round_robin_extension": lambda ports: cluster_dict(
        "backends", ports, common_lb_config={}, **_policy("round_robin")
    ),
    "least_request_extension": lambda ports: cluster_dict(
        "backends", ports, **_policy("least_request", choice_count=3)
    ),
    "random_extension": lambda ports: cluster_dict("backends", ports, **_policy("random")),
    "random_enum": lambda ports: cluster_dict("backends", ports, lb_policy="RANDOM"),
    "dns_cluster_type": lambda ports: _dns_cluster("backends", ports),
}


def _bootstrap(listen_port: int, cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": {"id": "balancing", "cluster": "balancing"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [routed_listener(listen_port, "backends")],
            "clusters": [cluster],
        },
    }


def _upstream_of_each_request(port: int) -> list[str]:
    """REQUESTS sequential GETs, each on a new connection; the `x-upstream` label of each."""
    labels = []
    for _ in range(REQUESTS):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        labels += [
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")[1:]
            if line.startswith("x-upstream:")
        ]
    return labels


def _spread(process_class: type[EnvoyProcess], variant: str, workdir: Path) -> dict[str, int]:
    with Http1Echo("a") as a, Http1Echo("b") as b, Http1Echo("c") as c:
        port = free_port()
        cluster = VARIANTS[variant]([a.port, b.port, c.port])
        process = process_class(_bootstrap(port, cluster), workdir).start()
        try:
            wait_for(
                lambda: process.stat("cluster.backends.membership_healthy") == 3,
                timeout=10,
                what="three healthy hosts",
            )
            return dict(collections.Counter(_upstream_of_each_request(port)))
        finally:
            process.stop()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_balancing_spreads_like_envoy(variant: str, tmp_path: Path) -> None:
    envoy = _spread(EnvoyProcess, variant, tmp_path / "envoy")
    ours = _spread(ProxyProcess, variant, tmp_path / "ours")
    for spread in (envoy, ours):
        assert sorted(spread) == ["a", "b", "c"], spread
        assert sum(spread.values()) == REQUESTS
    if variant in ("round_robin_extension", "dns_cluster_type"):
        # Strict rotation (sequential requests: least request degenerates to it too).
        assert sorted(envoy.values()) == sorted(ours.values()) == [100, 100, 100]
    else:
        # Random choices: each host within 100 +/- 45 of 300 (about 5 standard deviations).
        for spread in (envoy, ours):
            assert all(55 <= count <= 145 for count in spread.values()), spread
