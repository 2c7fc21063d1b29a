"""Fields a service-mesh control plane (Kuma) sends, on Envoy 1.40 and on ours with the same
bootstrap and the same requests (the scenarios: tests/integration/test_mesh_fields.py): the
route's host rewrites, ORIGINAL_DST clusters, and listeners on a UNIX socket (`pipe`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.proxy import ProxyProcess
from tests.integration import test_mesh_fields as mesh

pytestmark = pytest.mark.envoy


def test_host_rewrites(tmp_path: Path) -> None:
    envoy = mesh.host_rewrite_observations(EnvoyProcess, tmp_path / "envoy")
    ours = mesh.host_rewrite_observations(ProxyProcess, tmp_path / "ours")
    assert envoy == mesh.HOST_REWRITE_EXPECTED
    assert ours == envoy


def test_original_dst_clusters(tmp_path: Path) -> None:
    envoy = mesh.original_dst_observations(EnvoyProcess, tmp_path / "envoy")
    ours = mesh.original_dst_observations(ProxyProcess, tmp_path / "ours")
    assert envoy == mesh.ORIGINAL_DST_EXPECTED
    assert ours == envoy


def test_pipe_listeners(tmp_path: Path) -> None:
    envoy = mesh.pipe_observations(EnvoyProcess, tmp_path / "envoy")
    ours = mesh.pipe_observations(ProxyProcess, tmp_path / "ours")
    assert envoy == mesh.PIPE_EXPECTED
    assert ours == envoy


def test_pipe_upstreams(tmp_path: Path) -> None:
    envoy = mesh.pipe_upstream_observations(EnvoyProcess, tmp_path / "envoy")
    ours = mesh.pipe_upstream_observations(ProxyProcess, tmp_path / "ours")
    assert envoy == mesh.PIPE_UPSTREAM_EXPECTED
    assert ours == envoy
