"""`use_downstream_protocol_config` on Envoy 1.40 and on ours: the same statuses, the same
upstream protocol per request, the same per-protocol connection counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_downstream_protocol import protocol_matrix

pytestmark = pytest.mark.envoy


def test_downstream_protocol_matches_envoy(tmp_path: Path) -> None:
    envoy = protocol_matrix(EnvoyProcess, tmp_path / "envoy")
    ours = protocol_matrix(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
