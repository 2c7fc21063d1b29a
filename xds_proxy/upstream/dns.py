"""The lookups of a DNS cluster's endpoints, and when each endpoint's next lookup comes.

Two resolvers answer a lookup (a `Lookup`):

- the system resolver (`getaddrinfo`: /etc/hosts, nsswitch, the system's DNS), which reports
  no TTL; a cluster uses it unless it asks for TTLs or names a resolver;
- upstream/dns_records.py's `RecordResolver` (DNS messages, as Envoy's c-ares resolver): it
  reports the answer's TTL and asks the servers the cluster names (`typed_dns_resolver_config`,
  config/dns_resolver.py), for clusters with `respect_dns_ttl` or a resolver of their own.

`next_lookup_delay_s` is Envoy's rule for the next lookup of one endpoint (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from xds_proxy.config.cluster import ClusterConfig, DnsFamily, EndpointAddress
from xds_proxy.config.dns_resolver import DnsResolverConfig
from xds_proxy.lazy import lazy_import
from xds_proxy.upstream.dns_answer import DnsAnswer

if TYPE_CHECKING:
    from xds_proxy.upstream import dns_records
else:  # dnspython (~50 ms of start-up) only for the clusters that ask for TTLs or a resolver
    dns_records = lazy_import("xds_proxy.upstream.dns_records")

__all__ = [
    "AddressLookup",
    "DnsAnswer",
    "Lookup",
    "choose_lookup",
    "next_lookup_delay_s",
    "resolve_endpoint",
]

# One endpoint's lookup: its answer, or None when the lookup failed.
Lookup = Callable[[EndpointAddress, DnsFamily], Awaitable[DnsAnswer | None]]
# A lookup that gives addresses only (the system resolver; tests inject their own).
AddressLookup = Callable[[EndpointAddress, DnsFamily], Awaitable[list[tuple[str, int]] | None]]


def next_lookup_delay_s(
    answer: DnsAnswer | None, config: ClusterConfig, rng: random.Random
) -> float:
    """Seconds until an endpoint's next lookup, after `answer` (None: the lookup failed).

    As Envoy: with `respect_dns_ttl`, an answer with addresses and a TTL above 0 is looked up
    again after its TTL (the smallest of its records), larger or smaller than
    `dns_refresh_rate`; otherwise (no TTL, TTL 0, no addresses, not asked) after
    `dns_refresh_rate`. A failed lookup is retried at `dns_refresh_rate`. `dns_jitter` adds a
    random [0, jitter) to each."""
    delay = config.dns_refresh_s
    if config.respect_dns_ttl and answer is not None and answer.addresses and answer.ttl_s > 0:
        delay = float(answer.ttl_s)
    if config.dns_jitter_s:
        delay += rng.uniform(0, config.dns_jitter_s)
    return delay


def choose_lookup(config: ClusterConfig, injected: AddressLookup | None) -> Lookup:
    """The lookup of a DNS cluster: the test's when it injects one, the record resolver when
    the cluster asks for TTLs or names a resolver, else the system resolver."""
    if injected is not None:
        return _without_ttl(injected)
    if config.respect_dns_ttl or config.dns_resolver is not None:
        return dns_records.RecordResolver(config.dns_resolver or DnsResolverConfig()).lookup
    return _without_ttl(resolve_endpoint)


def _without_ttl(lookup: AddressLookup) -> Lookup:
    async def answer(endpoint: EndpointAddress, family: DnsFamily) -> DnsAnswer | None:
        found = await lookup(endpoint, family)
        return None if found is None else DnsAnswer(tuple(found))

    return answer


_FAMILIES = {
    DnsFamily.V4_ONLY: (socket.AF_INET,),
    DnsFamily.V6_ONLY: (socket.AF_INET6,),
    DnsFamily.AUTO: (socket.AF_INET6, socket.AF_INET),
    DnsFamily.V4_PREFERRED: (socket.AF_INET, socket.AF_INET6),
}


async def resolve_endpoint(
    endpoint: EndpointAddress, family: DnsFamily
) -> list[tuple[str, int]] | None:
    """The system resolver: addresses of a DNS endpoint in Envoy's family order; None when
    the lookup failed."""
    loop = asyncio.get_running_loop()
    families = _FAMILIES.get(family, (socket.AF_INET6, socket.AF_INET))
    found: list[tuple[str, int]] = []
    for one_family in families:
        with contextlib.suppress(socket.gaierror):
            infos = await loop.getaddrinfo(
                endpoint.host, endpoint.port, family=one_family, type=socket.SOCK_STREAM
            )
            for info in infos:
                address = (info[4][0], endpoint.port)
                if address not in found:
                    found.append(address)
        if found and family is not DnsFamily.ALL:
            break
    if family is DnsFamily.ALL and not found:
        return None
    return found or None
