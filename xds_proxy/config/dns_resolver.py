"""Which DNS resolver a DNS cluster uses, as Envoy picks it (`DnsResolverConfig`, frozen).

Envoy's order for a STRICT_DNS / LOGICAL_DNS cluster: `typed_dns_resolver_config`, else the
deprecated `dns_resolution_config`, else the deprecated `dns_resolvers` and
`use_tcp_for_dns_lookups`. A `cluster_type: envoy.clusters.dns` cluster reads only its
extension's own `typed_dns_resolver_config` (Envoy ignores the cluster's fields there). The
one resolver extension built is `envoy.network.dns_resolver.cares`: its `resolvers` (IP and
port) and its `dns_resolver_options`; the table refuses its other fields.

Pure: no sockets. upstream/dns_records.py carries the settings out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, resolver_pb2
from envoy.extensions.clusters.dns.v3 import dns_cluster_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2

from xds_proxy.errors import ConfigError

DNS_PORT = 53  # a resolver's port 0 (unset) is the DNS port, as c-ares takes it


@dataclass(frozen=True, slots=True)
class DnsResolverConfig:
    """A resolver the cluster names. No servers: the system's (/etc/resolv.conf)."""

    servers: tuple[tuple[str, int], ...] = ()
    use_tcp: bool = False  # `use_tcp_for_dns_lookups`
    no_default_search_domain: bool = False  # the resolv.conf search list is not tried


def cluster_dns_resolver(
    cluster: cluster_pb2.Cluster, dns: dns_cluster_pb2.DnsCluster | None, path: str
) -> DnsResolverConfig | None:
    """The resolver the cluster names, None when it names none (the default resolver)."""
    if dns is not None:
        if not dns.HasField("typed_dns_resolver_config"):
            return None
        where = f"{path}.cluster_type.typed_config.typed_dns_resolver_config.typed_config"
        return _cares(dns.typed_dns_resolver_config.typed_config, where)
    if cluster.HasField("typed_dns_resolver_config"):
        where = f"{path}.typed_dns_resolver_config.typed_config"
        return _cares(cluster.typed_dns_resolver_config.typed_config, where)
    if cluster.HasField("dns_resolution_config"):
        resolution = cluster.dns_resolution_config
        return _settings(
            resolution.resolvers,
            resolution.dns_resolver_options,
            f"{path}.dns_resolution_config.resolvers",
        )
    if cluster.dns_resolvers or cluster.use_tcp_for_dns_lookups:
        options = resolver_pb2.DnsResolverOptions(
            use_tcp_for_dns_lookups=cluster.use_tcp_for_dns_lookups
        )
        return _settings(cluster.dns_resolvers, options, f"{path}.dns_resolvers")
    return None


def _cares(typed_config: object, path: str) -> DnsResolverConfig:
    """The c-ares resolver's config (the gate allows no other resolver type)."""
    cares = cares_dns_resolver_pb2.CaresDnsResolverConfig()
    typed_config.Unpack(cares)  # type: ignore[attr-defined]
    return _settings(cares.resolvers, cares.dns_resolver_options, f"{path}.resolvers")


def _settings(
    resolvers: Iterable[address_pb2.Address],
    options: resolver_pb2.DnsResolverOptions,
    path: str,
) -> DnsResolverConfig:
    servers = []
    for index, resolver in enumerate(resolvers):
        socket_address = resolver.socket_address
        try:
            ip = str(ipaddress.ip_address(socket_address.address))
        except ValueError:
            raise ConfigError(
                f"{path}[{index}].socket_address.address: DNS resolver "
                f"'{socket_address.address}' is not an IP address"
            ) from None
        servers.append((ip, socket_address.port_value or DNS_PORT))
    return DnsResolverConfig(
        servers=tuple(servers),
        use_tcp=options.use_tcp_for_dns_lookups,
        no_default_search_domain=options.no_default_search_domain,
    )
