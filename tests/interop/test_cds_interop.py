"""CDS through a real Envoy 1.40 and through xds-proxy, with the same stub pushes: the same
answers from the same upstreams, the same ACK/NACK counts and cluster stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_cds import run_scenario, run_unanswered_cds

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize(
    ("delta", "ads"),
    [(False, True), (True, True), (False, False)],
    ids=["sotw-ads", "delta-ads", "sotw-plain"],
)
def test_cds_steps_match_envoy(tmp_path: Path, delta: bool, ads: bool) -> None:
    envoy = run_scenario(EnvoyProcess, tmp_path / "envoy", delta, ads)
    ours = run_scenario(ProxyProcess, tmp_path / "ours", delta, ads)
    assert ours == envoy


def test_unanswered_cds_matches_envoy(tmp_path: Path) -> None:
    envoy = run_unanswered_cds(EnvoyProcess, tmp_path / "envoy")
    ours = run_unanswered_cds(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
