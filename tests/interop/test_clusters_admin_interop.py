"""`/clusters` and the clusters of `/config_dump` on Envoy 1.40 and on ours, same pushes and
same requests: the same lines, the same JSON statuses, the same dump."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_clusters_admin import clusters_scenario

pytestmark = pytest.mark.envoy


def test_clusters_admin_matches_envoy(tmp_path: Path) -> None:
    envoy = clusters_scenario(EnvoyProcess, tmp_path / "envoy")
    ours = clusters_scenario(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
