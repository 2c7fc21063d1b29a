"""The answer of one endpoint's DNS lookup (either resolver of upstream/dns.py gives one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The addresses of one endpoint's lookup, and the smallest TTL of their records
    (0: none reported, as the system resolver and the hosts file answer)."""

    addresses: tuple[tuple[str, int], ...]
    ttl_s: int = 0
