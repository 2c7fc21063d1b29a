"""`upgrade_configs` of an HCM and of a route (config/upgrades.py): what is built, what is
refused (with Envoy's texts for duplicates, checked with `envoy --mode validate`), and Envoy's
rule for whether an upgrade is allowed."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from tests.unit.test_http_filters import build, hcm
from xds_proxy.config.hcm import build_hcm_settings
from xds_proxy.config.upgrades import upgrade_allowed
from xds_proxy.errors import ConfigError

WS = {"upgrade_type": "websocket"}


def settings(**fields: object):
    config = hcm(**fields)["typed_config"]
    message = json_format.ParseDict(
        {k: v for k, v in config.items() if k != "@type"}, hcm_pb2.HttpConnectionManager()
    )
    return build_hcm_settings(message, "hcm")


def test_hcm_upgrades_are_lowercase_and_enabled_by_default() -> None:
    built = settings(upgrade_configs=[{"upgrade_type": "WebSocket"}, {"upgrade_type": "h2c"}])
    assert built.upgrades == (("websocket", True), ("h2c", True))
    assert settings(upgrade_configs=[{**WS, "enabled": False}]).upgrades == (("websocket", False),)
    assert settings().upgrades == ()


def _routes(action: dict) -> dict:
    return {
        "name": "r",
        "virtual_hosts": [
            {
                "name": "v",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c", **action}}],
            }
        ],
    }


def test_route_upgrades_are_built() -> None:
    assert callable(build([hcm(route_config=_routes({"upgrade_configs": [WS]}))]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"upgrade_configs": [WS, {"upgrade_type": "WebSocket"}]},
            "filters[0].typed_config.upgrade_configs: Error: multiple upgrade configs with the "
            "same name: 'WebSocket'",
        ),
        (
            {"route_config": _routes({"upgrade_configs": [WS, {"upgrade_type": "WEBSOCKET"}]})},
            "filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route"
            ".upgrade_configs: Duplicate upgrade WEBSOCKET",
        ),
        (
            {"upgrade_configs": [{"upgrade_type": "CONNECT"}]},
            "filters[0].typed_config.upgrade_configs[0].upgrade_type: CONNECT: not supported yet",
        ),
        (
            {"upgrade_configs": [{**WS, "filters": [{"name": "f"}]}]},
            "filters[0].typed_config.upgrade_configs[0].filters: not supported yet",
        ),
        (
            {
                "route_config": _routes(
                    {"upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}
                )
            },
            "filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route"
            ".upgrade_configs[0].connect_config: not supported yet",
        ),
    ],
)
def test_refused(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build([hcm(**fields)])
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("hcm_upgrades", "route_upgrades", "allowed"),
    [
        ((), None, False),
        ((("websocket", True),), None, True),
        ((("websocket", False),), None, False),
        ((("websocket", True),), (("websocket", False),), False),  # the route disables it
        ((), (("websocket", True),), True),  # the route enables it alone
        ((("websocket", False),), (("websocket", True),), True),
        ((("websocket", True),), (("h2c", False),), True),  # another type: the HCM decides
        ((("foo", True),), None, False),
    ],
)
def test_upgrade_allowed_is_envoys_rule(hcm_upgrades, route_upgrades, allowed: bool) -> None:
    assert upgrade_allowed("websocket", hcm_upgrades, route_upgrades) is allowed
