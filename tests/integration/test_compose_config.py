"""The docker-compose file and the configs its services read are valid, without an engine:
`docker compose config` (or Debian's `docker-compose config`) when a CLI is present, and
our own loaders for the bootstrap and listener files in docker/compose/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2

from control_plane_stub.resources import load_resource_file
from tests.helpers.envoy import envoy_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "docker" / "compose"


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cli = compose_cli()
    if cli is None:
        reason = "neither `docker compose` nor `docker-compose` is installed"
        print(f"SKIP docker-compose.yml validation: {reason}")
        pytest.skip(reason)
    return cli


def rendered(compose: list[str], *profiles: str) -> dict:
    args = [*compose, "-f", str(REPO_ROOT / "docker-compose.yml")]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_default_services_and_profiles(compose: list[str]) -> None:
    everything = rendered(compose, "envoy", "tests")["services"]
    assert set(everything) == {"control-plane", "proxy", "backend", "envoy", "tests"}
    # `docker compose up` starts the first three; envoy and tests only with their profile.
    profiles = {name: service.get("profiles", []) for name, service in everything.items()}
    assert profiles == {
        "control-plane": [],
        "proxy": [],
        "backend": [],
        "envoy": ["envoy"],
        "tests": ["tests"],
    }
    tests = everything["tests"]
    assert tests["environment"]["XDS_PROXY_ADMIN"] == "proxy:9901"
    assert tests["environment"]["STUB_CONTROL"] == "control-plane:18001"
    assert tests["build"]["target"] == "tests"
    assert everything["envoy"]["build"]["dockerfile"].endswith("docker/envoy.Dockerfile")
    published = [p for service in everything.values() for p in service.get("ports", [])]
    # Every published port stays on the host's loopback.
    assert published and all(str(p).startswith("127.0.0.1:") or _host_ip(p) for p in published)


def _host_ip(port: object) -> bool:
    return isinstance(port, dict) and port.get("host_ip") == "127.0.0.1"


def test_proxy_bootstrap_validates() -> None:
    for name in ("bootstrap.yaml", "envoy-bootstrap.yaml"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "xds_proxy",
                "--mode",
                "validate",
                "-c",
                str(COMPOSE_DIR / name),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _listeners(path: Path) -> list[listener_pb2.Listener]:
    section = load_resource_file(path).sections["listeners"] or []
    return [listener_pb2.Listener.FromString(item.body.value) for item in section]


def test_listener_files_are_the_demos_on_every_interface() -> None:
    for version in ("v1", "v2"):
        ours = _listeners(COMPOSE_DIR / f"listeners-{version}.yaml")
        demo = _listeners(REPO_ROOT / "examples" / f"listeners-{version}.yaml")
        assert ours and len(ours) == len(demo)
        for listener, original in zip(ours, demo, strict=True):
            assert listener.address.socket_address.address == "0.0.0.0"
            original.address.socket_address.address = "0.0.0.0"
            assert listener.SerializeToString(deterministic=True) == original.SerializeToString(
                deterministic=True
            )


@pytest.mark.envoy
def test_envoy_accepts_the_compose_envoy_bootstrap() -> None:
    flags = ["--mode", "validate", "--disable-hot-restart", "-l", "error"]
    config = str(COMPOSE_DIR / "envoy-bootstrap.yaml")
    result = subprocess.run(
        [envoy_binary(), *flags, "-c", config], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
