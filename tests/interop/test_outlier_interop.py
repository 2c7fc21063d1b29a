"""Outlier detection on Envoy 1.40 and on ours: two hosts, one answers 503 to everything.
With `consecutive_5xx: 3` the failing host is ejected after its third 503 and every later
request goes to the other one; both proxies must route the same requests to the same hosts,
show the same `/clusters` flags and count the same ejections. With the default
`max_ejection_percent` (10 %) one host of two may not be ejected: the detection overflows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_cds import routed_listener
from tests.interop.test_health_check_interop import Always503, _flags, _outcomes

pytestmark = pytest.mark.envoy

STATS = (
    "ejections_active",
    "ejections_enforced_total",
    "ejections_enforced_consecutive_5xx",
    "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_enforced_consecutive_gateway_failure",
    "ejections_overflow",
)


def _scenario(
    process_class: type[EnvoyProcess], workdir: Path, outlier: dict[str, Any]
) -> dict[str, Any]:
    with Http1Echo("a") as a, Always503() as b:
        port = free_port()
        cluster = cluster_dict("backends", [a.port, b.port], outlier_detection=outlier)
        bootstrap = {
            "node": {"id": "od", "cluster": "od"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [routed_listener(port, "backends")],
                "clusters": [cluster],
            },
        }
        process = process_class(bootstrap, workdir).start()
        try:
            wait_for(lambda: process.listeners(), timeout=10, what="the listener")
            outcomes = _outcomes(port)
            stats = {
                name: process.stat(f"cluster.backends.outlier_detection.{name}") or 0
                for name in STATS
            }
            return {
                "outcomes": outcomes,
                "flags": _flags(process, {a.port: "a", b.port: "b"}),
                "stats": stats,
            }
        finally:
            process.stop()


@pytest.mark.parametrize(
    "outlier",
    [
        {"consecutive_5xx": 3, "max_ejection_percent": 100, "interval": "5s"},
        {"consecutive_5xx": 3, "interval": "5s"},
    ],
    ids=["ejects", "overflows"],
)
@pytest.mark.serial  # the scenario must fit one 5 s interval: under parallel load it did not
def test_outlier_detection_like_envoy(outlier: dict[str, Any], tmp_path: Path) -> None:
    envoy = _scenario(EnvoyProcess, tmp_path / "envoy", outlier)
    ours = _scenario(ProxyProcess, tmp_path / "ours", outlier)
    assert ours == envoy
    if "max_ejection_percent" in outlier:
        assert envoy["flags"]["b"] == "/failed_outlier_check"
        assert envoy["outcomes"] == {"a": 27, "b": 3}
    else:
        assert envoy["stats"]["ejections_overflow"] > 0
