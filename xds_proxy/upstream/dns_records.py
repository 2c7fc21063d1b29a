"""A resolver that reads DNS records, with their TTLs, as Envoy's c-ares resolver does
(`RecordResolver`, used by DNS clusters with `respect_dns_ttl` or a resolver of their own).

A lookup asks one address family after the other in Envoy's order for `dns_lookup_family`
(AUTO: AAAA, then A if there was none; V4_PREFERRED: A, then AAAA; ALL: both). For each family,
as c-ares: an IP literal is its own answer, then the hosts file, then `localhost` (::1 and
127.0.0.1, RFC 6761), then DNS: the cluster's servers, else /etc/resolv.conf's, with its search
list unless `no_default_search_domain`, over TCP with `use_tcp_for_dns_lookups`. The answer's
TTL is the smallest of its records (a CNAME chain's included); an answer that did not come from
DNS has TTL 0, which `respect_dns_ttl` treats as no TTL.

DNS messages are sent and read by dnspython's asyncio resolver (no cache: each lookup asks).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from xds_proxy.config.cluster import DnsFamily, EndpointAddress
from xds_proxy.config.dns_resolver import DnsResolverConfig
from xds_proxy.upstream.dns_answer import DnsAnswer

log = logging.getLogger("xds_proxy.upstream")

HOSTS_FILE = Path("/etc/hosts")
# c-ares' defaults as Envoy sets them: 5 s per query, 4 tries.
QUERY_TIMEOUT_S = 5.0
QUERY_TRIES = 4

_V4, _V6 = 4, 6
_ORDER = {
    DnsFamily.V4_ONLY: (_V4,),
    DnsFamily.V6_ONLY: (_V6,),
    DnsFamily.AUTO: (_V6, _V4),
    DnsFamily.V4_PREFERRED: (_V4, _V6),
    DnsFamily.ALL: (_V6, _V4),
}
_RDTYPE = {_V4: dns.rdatatype.A, _V6: dns.rdatatype.AAAA}
_LOCALHOST = {_V4: "127.0.0.1", _V6: "::1"}


class RecordResolver:
    def __init__(self, settings: DnsResolverConfig, hosts_file: Path = HOSTS_FILE) -> None:
        self._resolver = _dns_resolver(settings)
        self._tcp = settings.use_tcp
        self._search = not settings.no_default_search_domain
        self._hosts_file = hosts_file

    async def lookup(self, endpoint: EndpointAddress, family: DnsFamily) -> DnsAnswer | None:
        """The endpoint's addresses in Envoy's family order; None when no family had any."""
        addresses: list[tuple[str, int]] = []
        ttls: list[int] = []
        for version in _ORDER[family]:
            found, ttl = await self._family(endpoint.host, version)
            addresses += [(ip, endpoint.port) for ip in found]
            if ttl is not None:
                ttls.append(ttl)
            if addresses and family is not DnsFamily.ALL:
                break
        if not addresses:
            return None
        return DnsAnswer(tuple(addresses), min(ttls) if ttls else 0)

    async def _family(self, host: str, version: int) -> tuple[list[str], int | None]:
        """(addresses of one family, their TTL: None when they did not come from DNS)."""
        literal = _ip(host)
        if literal is not None:
            return ([str(literal)] if literal.version == version else []), None
        from_file = _hosts_file_addresses(self._hosts_file, host, version)
        if from_file:
            return from_file, None
        if host.rstrip(".").lower() == "localhost":
            return [_LOCALHOST[version]], None
        try:
            answer = await self._resolver.resolve(
                host, _RDTYPE[version], tcp=self._tcp, search=self._search
            )
        except dns.exception.DNSException as error:
            if not isinstance(error, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
                log.warning("DNS lookup of %s (%s) failed: %s", host, _RDTYPE[version], error)
            return [], None
        except OSError as error:
            log.warning("DNS lookup of %s (%s) failed: %s", host, _RDTYPE[version], error)
            return [], None
        # Sorted: dnspython keeps a record set unordered, and the hosts must not change
        # order (and churn) from one lookup to the next.
        found = sorted({record.address for record in answer}, key=ipaddress.ip_address)
        return found, answer.chaining_result.minimum_ttl


def _dns_resolver(settings: DnsResolverConfig) -> dns.asyncresolver.Resolver:
    try:
        resolver = dns.asyncresolver.Resolver(configure=True)  # /etc/resolv.conf
    except dns.resolver.NoResolverConfiguration:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]  # c-ares' default without a resolv.conf
    if settings.servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(ip, port) for ip, port in settings.servers
        ]
    resolver.cache = None
    resolver.timeout = QUERY_TIMEOUT_S
    resolver.lifetime = QUERY_TIMEOUT_S * QUERY_TRIES
    return resolver


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _hosts_file_addresses(path: Path, host: str, version: int) -> list[str]:
    """The hosts file's addresses of `host` in one family, in file order (read each time, as
    c-ares notices a changed file)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    wanted = host.rstrip(".").lower()
    found: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or wanted not in (name.lower() for name in fields[1:]):
            continue
        address = _ip(fields[0].split("%", 1)[0])
        if address is not None and address.version == version and str(address) not in found:
            found.append(str(address))
    return found
