"""A `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS resource) translated
once into the endpoints a cluster makes hosts of. Pure: no sockets, no DNS.

Each `lb_endpoint` becomes one `EndpointAddress` carrying what Envoy reads of it: the address,
`hostname`, `health_check_config.port_value` (active checks go there), `health_status`,
`load_balancing_weight` (default 1), and its locality's
`priority`, `locality` and `load_balancing_weight` (0: unset). `policy.overprovisioning_factor`
(Envoy's default 140, i.e. 1.4) scales each priority's healthy share (upstream/priority.py).

The gate (PGV and the support table) runs first; then what Envoy refuses on top of it: an
address that is not an IP where one is needed (`malformed IP address: X`; for an EDS resource
Envoy 1.40's whole NACK text). Envoy 1.40 accepts the same locality twice at one priority and
the same address twice; so do we (one host per address, the first one's settings).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError

DEFAULT_OVERPROVISIONING_FACTOR = 140  # percent, Envoy's default (1.4)

# `health_status` values Envoy counts as failed (`/failed_eds_health`) and as degraded.
FAILED_EDS_HEALTH = frozenset(
    {health_check_pb2.UNHEALTHY, health_check_pb2.DRAINING, health_check_pb2.TIMEOUT}
)
DEGRADED_EDS_HEALTH = frozenset({health_check_pb2.DEGRADED})


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


NO_LOCALITY = Locality()


# An endpoint on a UNIX socket (`address.pipe`) is (path, PIPE_PORT) (upstream/connect.py).
PIPE_PORT = -1


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    """One `lb_endpoint` as configured: an IP (STATIC, EDS) or a host name to resolve (DNS
    types), and how Envoy balances over it."""

    host: str
    port: int
    hostname: str = ""  # `endpoint.hostname` (/clusters)
    health: int = health_check_pb2.UNKNOWN  # `health_status`, a HealthStatus value
    weight: int = 1  # `load_balancing_weight`
    priority: int = 0
    locality: Locality = NO_LOCALITY
    locality_weight: int = 0  # the locality's `load_balancing_weight`; 0: unset
    health_check_port: int = 0  # `health_check_config.port_value`; 0: the host's own port


@dataclass(frozen=True, slots=True)
class Assignment:
    """A built ClusterLoadAssignment: its endpoints in order and the overprovisioning factor."""

    endpoints: tuple[EndpointAddress, ...]
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR


EMPTY_ASSIGNMENT = Assignment(())


def build_assignment(
    assignment: endpoint_pb2.ClusterLoadAssignment, path: str, require_ip: bool = True
) -> Assignment:
    """Check (PGV, the support table) and build; raises `ConfigError("PATH.FIELD: reason")`.
    `require_ip`: the addresses must be IPs (every type but the DNS ones)."""
    require_valid(assignment, path)
    return read_assignment(assignment, path, require_ip)


def read_assignment(
    assignment: endpoint_pb2.ClusterLoadAssignment, path: str, require_ip: bool = True
) -> Assignment:
    """Build an assignment the gate already checked (a cluster's, with the whole cluster)."""
    found: list[EndpointAddress] = []
    for l_index, group in enumerate(assignment.endpoints):
        group_path = f"{path}.endpoints[{l_index}]"
        locality = Locality(group.locality.region, group.locality.zone, group.locality.sub_zone)
        locality_weight = group.load_balancing_weight.value
        for e_index, lb_endpoint in enumerate(group.lb_endpoints):
            endpoint = lb_endpoint.endpoint
            socket_address = endpoint.address.socket_address
            host, port = socket_address.address, socket_address.port_value
            if endpoint.address.HasField("pipe"):  # a UNIX socket (STATIC and EDS clusters)
                if not require_ip:
                    address_path = f"{group_path}.lb_endpoints[{e_index}].endpoint.address"
                    raise ConfigError(f"{address_path}.pipe: not supported yet (DNS types)")
                host, port = endpoint.address.pipe.path, PIPE_PORT
            elif require_ip:
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    if not path:  # an EDS resource: Envoy 1.40's NACK text
                        raise ConfigError(
                            f"malformed IP address: {host}. Consider setting resolver_name or "
                            "setting cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'"
                        ) from None
                    socket_path = (
                        f"{group_path}.lb_endpoints[{e_index}].endpoint.address.socket_address"
                    )
                    raise ConfigError(
                        f"{socket_path}.address: malformed IP address: {host}"
                    ) from None
            found.append(
                EndpointAddress(
                    host,
                    port,
                    hostname=endpoint.hostname,
                    health=lb_endpoint.health_status,
                    weight=lb_endpoint.load_balancing_weight.value or 1,
                    priority=group.priority,
                    locality=locality,
                    locality_weight=locality_weight,
                    health_check_port=endpoint.health_check_config.port_value,
                )
            )
    factor = DEFAULT_OVERPROVISIONING_FACTOR
    if assignment.policy.HasField("overprovisioning_factor"):
        factor = assignment.policy.overprovisioning_factor.value
    return Assignment(tuple(found), factor)
