"""Filter chain matching, in Envoy's order of criteria.

Envoy narrows the candidate chains criterion by criterion: destination port, destination IP,
server name, transport protocol, application protocols, source type, source IP, source port.
At each step the chains with the most specific match survive; if no chain names that
criterion specifically, the chains that leave it empty survive; if none survive, the
connection falls to `default_filter_chain` (or is closed: `no_filter_chain_match`).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envoy.config.listener.v3 import listener_components_pb2

from xds_proxy.errors import ConfigError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SourceType = listener_components_pb2.FilterChainMatch.ConnectionSourceType


@dataclass(frozen=True)
class ConnectionInfo:
    destination_ip: IpAddress
    destination_port: int
    source_ip: IpAddress
    source_port: int
    server_name: str = ""
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()


@dataclass(frozen=True)
class _CompiledMatch:
    index: int
    destination_port: int | None
    prefix_ranges: tuple[IpNetwork, ...]
    server_names: tuple[str, ...]
    transport_protocol: str
    application_protocols: tuple[str, ...]
    source_type: int
    source_prefix_ranges: tuple[IpNetwork, ...]
    source_ports: frozenset[int]


def _networks(ranges) -> tuple[IpNetwork, ...]:
    """CIDR ranges as Envoy reads them: a prefix that is not an IP address is an error; a
    length beyond the address's bits means the whole address (Envoy clamps it too)."""
    networks = []
    for cidr in ranges:
        try:
            address = ipaddress.ip_address(cidr.address_prefix)
        except ValueError:
            raise ConfigError(f"malformed IP address: {cidr.address_prefix}") from None
        full = address.max_prefixlen
        length = min(cidr.prefix_len.value, full) if cidr.HasField("prefix_len") else full
        networks.append(ipaddress.ip_network((address, length), strict=False))
    return tuple(networks)


def _compile(index: int, match: listener_components_pb2.FilterChainMatch) -> _CompiledMatch:
    return _CompiledMatch(
        index=index,
        destination_port=match.destination_port.value
        if match.HasField("destination_port")
        else None,
        prefix_ranges=_networks(match.prefix_ranges),
        server_names=tuple(name.lower() for name in match.server_names),
        transport_protocol=match.transport_protocol,
        application_protocols=tuple(match.application_protocols),
        source_type=match.source_type,
        source_prefix_ranges=_networks(match.source_prefix_ranges),
        source_ports=frozenset(match.source_ports),
    )


def _longest_prefix(networks: tuple[IpNetwork, ...], ip: IpAddress) -> int:
    """Length of the longest range containing ip; -1 when none does."""
    best = -1
    for network in networks:
        if network.version == ip.version and ip in network:
            best = max(best, network.prefixlen)
    return best


def _server_name_score(names: tuple[str, ...], sni: str) -> int:
    best = -1
    sni = sni.lower()
    for name in names:
        if name == sni:
            return 1_000
        if name.startswith("*.") and sni.endswith(name[1:]):
            best = max(best, len(name))
    return best


# Each criterion scores a chain for a connection: None = the chain leaves it empty (wildcard),
# -1 = the chain names it and it does not match, otherwise higher is more specific.
Criterion = Callable[[_CompiledMatch, ConnectionInfo], int | None]

_CRITERIA: tuple[Criterion, ...] = (
    lambda m, c: (
        None
        if m.destination_port is None
        else (0 if m.destination_port == c.destination_port else -1)
    ),
    lambda m, c: _longest_prefix(m.prefix_ranges, c.destination_ip) if m.prefix_ranges else None,
    lambda m, c: _server_name_score(m.server_names, c.server_name) if m.server_names else None,
    lambda m, c: (
        None
        if not m.transport_protocol
        else (0 if m.transport_protocol == c.transport_protocol else -1)
    ),
    lambda m, c: (
        _application_protocol_score(m.application_protocols, c.application_protocols)
        if m.application_protocols
        else None
    ),
    lambda m, c: None if m.source_type == SourceType.ANY else _source_type_score(m, c),
    lambda m, c: (
        _longest_prefix(m.source_prefix_ranges, c.source_ip) if m.source_prefix_ranges else None
    ),
    lambda m, c: None if not m.source_ports else (0 if c.source_port in m.source_ports else -1),
)


def _application_protocol_score(names: tuple[str, ...], offered: tuple[str, ...]) -> int:
    """Envoy tries the connection's protocols in the client's order: a chain naming an earlier
    one is more specific than a chain naming only a later one."""
    for position, protocol in enumerate(offered):
        if protocol in names:
            return len(offered) - position
    return -1


_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def _source_type_score(match: _CompiledMatch, conn: ConnectionInfo) -> int:
    # Envoy's isSameIpOrLoopback: loopback means exactly 127.0.0.1 or ::1, not 127.0.0.0/8.
    local = conn.source_ip == conn.destination_ip or conn.source_ip in _LOOPBACK
    if match.source_type == SourceType.SAME_IP_OR_LOOPBACK:
        return 0 if local else -1
    return 0 if not local else -1  # EXTERNAL


def _match_points(match: _CompiledMatch) -> set[tuple]:
    """Every combination of values a chain's match names (Envoy's match tree leaves)."""
    return set(
        itertools.product(
            [match.destination_port or 0],
            [str(n) for n in match.prefix_ranges] or [""],
            list(match.server_names) or [""],
            [match.transport_protocol],
            list(match.application_protocols) or [""],
            [match.source_type],
            [str(n) for n in match.source_prefix_ranges] or [""],
            sorted(match.source_ports) or [0],
        )
    )


def _check_unambiguous(
    chains: Sequence[listener_components_pb2.FilterChain], matches: list[_CompiledMatch]
) -> None:
    """What Envoy refuses when it adds a listener: partial wildcards in server names, two
    chains with equal matches, two chains that share one combination of values."""
    for index, chain in enumerate(chains):
        for position, name in enumerate(chain.filter_chain_match.server_names):
            if "*" in name and not name.startswith("*."):
                raise ConfigError(
                    f"filter_chains[{index}].filter_chain_match.server_names[{position}]:"
                    ' partial wildcards are not supported in "server_names"'
                )
    seen: dict[bytes, int] = {}
    for index, chain in enumerate(chains):
        key = chain.filter_chain_match.SerializeToString(deterministic=True)
        if key in seen:
            raise ConfigError(
                f"filter_chains[{index}].filter_chain_match: filter chain '{chain.name}' has the"
                f" same matching rules defined as '{chains[seen[key]].name}'"
            )
        seen[key] = index
    owners: dict[tuple, int] = {}
    for match in matches:
        for point in _match_points(match):
            if point in owners:
                raise ConfigError(
                    f"filter_chains[{match.index}].filter_chain_match: multiple filter chains"
                    f" with overlapping matching rules are defined (with"
                    f" filter_chains[{owners[point]}])"
                )
            owners[point] = match.index


class FilterChainMatcher:
    def __init__(self, chains: Sequence[listener_components_pb2.FilterChain]) -> None:
        """Raises ConfigError for chains Envoy refuses as ambiguous."""
        self._matches = [_compile(i, chain.filter_chain_match) for i, chain in enumerate(chains)]
        _check_unambiguous(chains, self._matches)

    def match(self, conn: ConnectionInfo) -> int | None:
        """The index of the chain that serves this connection, or None (use the default)."""
        candidates = self._matches
        for criterion in _CRITERIA:
            if not candidates:
                return None
            scored = [(criterion(m, conn), m) for m in candidates]
            specific = [(score, m) for score, m in scored if score is not None and score >= 0]
            if specific:
                best = max(score for score, _ in specific)
                candidates = [m for score, m in specific if score == best]
            else:
                candidates = [m for score, m in scored if score is None]
        return candidates[0].index if candidates else None
