"""Which trusted client addresses are internal (`internal_address_config`), as Envoy 1.40's
connection manager decides it.

A request is internal when the address it is trusted to come from is internal and it is the
only one: without `use_remote_address`, `x-forwarded-for` holds exactly one valid address
(and `xff_num_trusted_hops` is 0); with it, the request has no `x-forwarded-for` and the peer
(or, with trusted hops, still the peer) is internal. `cidr_ranges` lists the internal
addresses; without ranges (`internal_address_config: {}` included) Envoy's legacy set is used:
10/8, 172.16/12, 192.168/16, 127.0.0.1, fd00::/8 and ::1."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def legacy_internal(ip: str) -> bool:
    """Envoy's `Network::Utility::isInternalAddress`: RFC 1918, the one loopback address
    127.0.0.1 (not 127/8), fd00::/8 and ::1."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.version == 4:
        first, second = address.packed[0], address.packed[1]
        return (
            first == 10
            or (first == 192 and second == 168)
            or (first == 172 and 16 <= second <= 31)
            or address == _LOOPBACK4
        )
    return address.packed[0] == 0xFD or address == _LOOPBACK6


_LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK6 = ipaddress.IPv6Address("::1")


@dataclass(frozen=True, slots=True)
class InternalAddresses:
    """An HCM's `internal_address_config`: `cidr_ranges` (empty: Envoy's legacy set) and
    `unix_sockets` (peers on Unix sockets are internal; no listener of ours has one)."""

    cidr_ranges: tuple[Network, ...] = ()
    unix_sockets: bool = False

    def contains(self, ip: str) -> bool:
        if not self.cidr_ranges:
            return legacy_internal(ip)
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.cidr_ranges)
