"""HTTP upgrades (`upgrade_configs`) of an HCM and of a route's `RouteAction`, and Envoy's rule
for whether a request's upgrade is allowed (`upgrade_allowed`).

Both lists become `((lowercase upgrade type, enabled), ...)`; `enabled` defaults to true. An
upgrade's own `filters` and a route's `connect_config` are refused by the table (NotYet);
`CONNECT` (which Envoy enables through the same list) is refused here: CONNECT requests are
not forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xds_proxy.errors import ConfigError

Upgrades = tuple[tuple[str, bool], ...]


def build_upgrades(configs: Iterable[Any], path: str, hcm_duplicates: bool = False) -> Upgrades:
    """An HCM's or a route's `upgrade_configs`; the duplicate errors are Envoy's."""
    found: dict[str, bool] = {}
    for index, config in enumerate(configs):
        name = config.upgrade_type
        lower = name.lower()
        if lower == "connect":
            raise ConfigError(f"{path}[{index}].upgrade_type: CONNECT: not supported yet")
        if lower in found:
            if hcm_duplicates:
                raise ConfigError(
                    f"{path}: Error: multiple upgrade configs with the same name: '{name}'"
                )
            raise ConfigError(f"{path}: Duplicate upgrade {name}")
        found[lower] = config.enabled.value if config.HasField("enabled") else True
    return tuple(found.items())


def upgrade_allowed(upgrade: str, hcm: Upgrades, route: Upgrades | None) -> bool:
    """Envoy's rule (`createUpgradeFilterChain`): the route's entry for the type decides when
    it has one; otherwise the HCM must list it enabled. `upgrade` is lowercase."""
    if route:
        for name, enabled in route:
            if name == upgrade:
                return enabled
    for name, enabled in hcm:
        if name == upgrade:
            return enabled
    return False
