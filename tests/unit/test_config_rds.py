"""config/rds.py: an HCM's `rds` read once, and the route names a listener waits for."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.unit.test_listener_warming import rds_listener
from xds_proxy.config.rds import listener_route_names, rds_spec
from xds_proxy.errors import ConfigError


def rds(**source) -> hcm_pb2.Rds:
    message = hcm_pb2.Rds(route_config_name="R")
    message.config_source.ads.SetInParent()
    for name, value in source.items():
        getattr(message.config_source, name).FromJsonString(value)
    return message


def test_initial_fetch_timeout_defaults_to_envoys_15_s_and_0_waits_forever() -> None:
    assert rds_spec(rds(), "rds").initial_fetch_timeout_s == 15.0
    assert rds_spec(rds(initial_fetch_timeout="1s"), "rds").initial_fetch_timeout_s == 1.0
    assert rds_spec(rds(initial_fetch_timeout="0s"), "rds").initial_fetch_timeout_s is None
    assert rds_spec(rds(), "rds").aggregated


def test_a_source_is_required() -> None:
    with pytest.raises(ConfigError, match=r"rds\.config_source: one of ads or api_config_source"):
        rds_spec(hcm_pb2.Rds(route_config_name="R"), "rds")


def test_the_route_names_of_a_listener() -> None:
    assert listener_route_names(rds_listener("L", 1, "R")) == {"R"}
