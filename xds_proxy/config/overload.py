"""What the bootstrap's overload manager may configure: the one resource monitor xds-proxy
implements, `envoy.resource_monitors.global_downstream_max_connections` (listener/limits.py
runs it); the other monitors are accepted and inert."""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (
    downstream_connections_pb2,
)

GLOBAL_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
DOWNSTREAM_CONNECTIONS_TYPE = (
    downstream_connections_pb2.DownstreamConnectionsConfig.DESCRIPTOR.full_name
)


def is_global_monitor(monitor: overload_pb2.ResourceMonitor) -> bool:
    """The one resource monitor that xds-proxy implements (the others stay inert)."""
    return monitor.name == GLOBAL_MONITOR or (
        monitor.typed_config.type_url.rsplit("/", 1)[-1] == DOWNSTREAM_CONNECTIONS_TYPE
    )


def global_limit_errors(bootstrap: bootstrap_pb2.Bootstrap) -> list[str]:
    """What Envoy refuses about the global monitor at start-up: a name that does not match its
    `@type`, or the monitor twice."""
    errors: list[str] = []
    seen = False
    for index, monitor in enumerate(bootstrap.overload_manager.resource_monitors):
        if not is_global_monitor(monitor):
            continue
        path = f"overload_manager.resource_monitors[{index}]"
        type_name = monitor.typed_config.type_url.rsplit("/", 1)[-1]
        if monitor.name != GLOBAL_MONITOR or type_name != DOWNSTREAM_CONNECTIONS_TYPE:
            errors.append(
                f"{path}: Didn't find a registered implementation for '{monitor.name}'"
                f" with type URL: '{type_name}'"
            )
        elif seen:
            errors.append(f"{path}.name: Duplicate resource monitor {GLOBAL_MONITOR}")
        seen = True
    return errors
