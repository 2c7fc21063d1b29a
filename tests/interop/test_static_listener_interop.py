"""A bootstrap with one static listener, on Envoy 1.40 and on ours: the same
`listener_manager.*` counters and gauges once the server is LIVE (Envoy counts a static
listener in `total_listeners_active`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers.envoy import EXAMPLES, EnvoyProcess
from tests.helpers.proxy import ProxyProcess

pytestmark = pytest.mark.envoy

# Envoy-only: whether its workers are pinned to CPUs (we have no worker threads to pin).
ENVOY_ONLY = {"listener_manager.workers_pinned"}


def static_bootstrap() -> dict:
    bootstrap = yaml.safe_load((EXAMPLES / "bootstrap-static.yaml").read_text())
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
    return bootstrap


def listener_manager_stats(process_type: type[EnvoyProcess], workdir: Path) -> dict[str, str]:
    process = process_type(static_bootstrap(), workdir).start()
    try:
        process.wait_ready()
        assert list(process.listeners()) == ["static_web"]
        return process.stats(r"^listener_manager\.")
    finally:
        process.stop()


def test_static_listener_stats_match_envoy(tmp_path: Path) -> None:
    envoy = listener_manager_stats(EnvoyProcess, tmp_path / "envoy")
    ours = listener_manager_stats(ProxyProcess, tmp_path / "ours")
    assert envoy["listener_manager.total_listeners_active"] == "1"
    assert ours == {name: value for name, value in envoy.items() if name not in ENVOY_ONLY}
