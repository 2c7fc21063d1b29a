"""An HCM's `rds`: the route configuration it names and where that comes from.

`rds_spec` reads one checked `Rds` message; `listener_route_names` lists the route
configuration names a listener's HCMs take from RDS (what a listener version waits for while
it warms). Envoy's `initial_fetch_timeout` default for an RDS subscription is 15 s; 0 waits
forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf.message import DecodeError

from xds_proxy.config.values import duration_seconds
from xds_proxy.errors import ConfigError

HCM_TYPE_URL = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
DEFAULT_INITIAL_FETCH_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class RdsSpec:
    """One HCM's `rds`: the name, its config source, and how long to wait for the first copy."""

    route_config_name: str
    source: config_source_pb2.ConfigSource
    initial_fetch_timeout_s: float | None  # None: wait forever

    @property
    def aggregated(self) -> bool:
        return self.source.WhichOneof("config_source_specifier") == "ads"


def rds_spec(rds: hcm_pb2.Rds, path: str) -> RdsSpec:
    """Raises ConfigError for a source we cannot subscribe with."""
    kind = rds.config_source.WhichOneof("config_source_specifier")
    if kind not in ("ads", "api_config_source"):
        raise ConfigError(f"{path}.config_source: one of ads or api_config_source is required")
    timeout_s: float | None = DEFAULT_INITIAL_FETCH_TIMEOUT_S
    if rds.config_source.HasField("initial_fetch_timeout"):
        timeout_s = duration_seconds(rds.config_source.initial_fetch_timeout) or None
    return RdsSpec(rds.route_config_name, rds.config_source, timeout_s)


def listener_route_names(listener: listener_pb2.Listener) -> frozenset[str]:
    """The route configuration names the listener's HCMs take from RDS."""
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    names: set[str] = set()
    for chain in chains:
        for network_filter in chain.filters:
            if network_filter.typed_config.type_url != HCM_TYPE_URL:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            try:
                hcm.ParseFromString(network_filter.typed_config.value)
            except DecodeError:
                continue  # the compile step reports it
            if hcm.HasField("rds"):
                names.add(hcm.rds.route_config_name)
    return frozenset(names)
