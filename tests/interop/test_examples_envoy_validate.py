"""The example bootstraps are accepted by a real Envoy 1.40 and by xds-proxy, both in
`--mode validate`; bad bootstraps are refused by both (exit 1), ours with one exact line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.envoy import envoy_binary

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("bootstrap*.yaml"))
STATIC = REPO / "examples" / "bootstrap-static.yaml"
SOCKET = "static_resources.listeners[0].address.socket_address"


def run_envoy(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--admin-address-path",
            str(tmp_path / "envoy-admin.txt"),
            "-l",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_ours(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xds_proxy", "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_there_are_three_examples() -> None:
    assert [p.name for p in EXAMPLES] == [
        "bootstrap-ads.yaml",
        "bootstrap-static.yaml",
        "bootstrap.yaml",
    ]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_accepted_by_envoy_and_ours(example: Path, tmp_path: Path) -> None:
    envoy = run_envoy(example, tmp_path)
    assert envoy.returncode == 0, envoy.stderr
    assert f"configuration '{example}' OK" in envoy.stdout
    ours = run_ours(example)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, f"configuration '{example}' OK\n", "")


def camel(value):
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            head, *rest = key.split("_")
            name = (
                key
                if key.startswith("@") or "." in key
                else head + "".join(part.title() for part in rest)
            )
            result[name] = camel(item)
        return result
    if isinstance(value, list):
        return [camel(item) for item in value]
    return value


def test_camel_case_json_accepted_by_both(tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(camel(yaml.safe_load(STATIC.read_text())), indent=1))
    assert "staticResources" in config.read_text()
    assert run_envoy(config, tmp_path).returncode == 0
    ours = run_ours(config)
    assert (ours.returncode, ours.stderr) == (0, "")


def static_with(**socket_address) -> str:
    doc = yaml.safe_load(STATIC.read_text())
    doc["static_resources"]["listeners"][0]["address"]["socket_address"].update(socket_address)
    return yaml.safe_dump(doc)


def static_text(**replacements: str) -> str:
    text = STATIC.read_text()
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    return text


# Plain YAML scalars are typed as Envoy's yaml-cpp types them: yes/on/y are booleans, 0x10 is
# an integer, floats stay strings (and protobuf reads numbers from strings).
YAML_TYPING_ACCEPTED = {
    "bool-yes": static_text(
        **{
            "stat_prefix: ingress_http": "stat_prefix: ingress_http\n"
            "          use_remote_address: yes"
        }
    ),
    "port-1e3": static_text(**{"port_value: 10000": "port_value: 1e3"}),
    "name-1e3": static_text(**{"name: static_web": "name: 1e3"}),
    "port-leading-zero": static_text(**{"port_value: 10000": "port_value: 010000"}),
}


@pytest.mark.parametrize("case", sorted(YAML_TYPING_ACCEPTED))
def test_yaml_typing_accepted_by_both(case: str, tmp_path: Path) -> None:
    config = tmp_path / "bootstrap.yaml"
    config.write_text(YAML_TYPING_ACCEPTED[case])
    envoy = run_envoy(config, tmp_path)
    assert envoy.returncode == 0, envoy.stderr
    ours = run_ours(config)
    assert (ours.returncode, ours.stderr) == (0, "")


BAD = {
    "name-yes": (
        static_text(**{"name: static_web": "name: yes"}),
        "static_resources.listeners[0].name: must be a string, got true",
    ),
    "port-octal": (
        static_text(**{"port_value: 10000": "port_value: 0o17"}),
        f"{SOCKET}.port_value: must be an integer, got '0o17'",
    ),
    "port-underscore": (
        static_text(**{"port_value: 10000": "port_value: 1_000"}),
        f"{SOCKET}.port_value: must be an integer, got '1_000'",
    ),
    "port-out-of-range": (
        static_with(port_value=70000),
        f"{SOCKET}.port_value: must be <= 65535, got 70000",
    ),
    "port-not-a-number": (
        static_with(port_value="abc"),
        f"{SOCKET}.port_value: must be an integer, got 'abc'",
    ),
    "unknown-field": (
        static_with(port_valeu=1),
        f"{SOCKET}.port_valeu: unknown field (did you mean 'port_value'?)",
    ),
    "listener-hostname": (
        static_with(address="localhost"),
        f"{SOCKET}.address: must be an IP address, got 'localhost'",
    ),
    "yaml-syntax": (
        "admin:\n  address: [\n",
        "{path}: line 3, column 1: expected the node content, but found '<stream end>'",
    ),
    "empty": ("", "{path}: the document is empty"),
    "duration-not-a-string": (
        STATIC.read_text().replace(
            "stat_prefix: ingress_http", "stat_prefix: ingress_http\n          drain_timeout: 5"
        ),
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.drain_timeout: "
        "must be a string like '1.5s', got 5",
    ),
    "router-without-typed-config": (
        "\n".join(STATIC.read_text().splitlines()[:-2]) + "\n",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]"
        ".typed_config: is required",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bootstrap_refused_by_both(case: str, tmp_path: Path) -> None:
    text, message = BAD[case]
    config = tmp_path / "bootstrap.yaml"
    config.write_text(text)
    envoy = run_envoy(config, tmp_path)
    assert envoy.returncode == 1, envoy.stdout + envoy.stderr
    ours = run_ours(config)
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        1,
        "",
        message.format(path=config) + "\n",
    )


def test_missing_file_refused_by_both(tmp_path: Path) -> None:
    config = tmp_path / "nope.yaml"
    assert run_envoy(config, tmp_path).returncode == 1
    ours = run_ours(config)
    assert (ours.returncode, ours.stderr) == (1, f"{config}: cannot read: no such file\n")
