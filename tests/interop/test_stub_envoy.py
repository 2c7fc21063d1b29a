"""A real Envoy 1.40 against control-plane-stub in the four ways Envoy takes LDS.

For each: a pushed listener is served (a real HTTP request through Envoy) and `wait`
exits 0; an invalid set (two listeners on one address) is NACKed, `status` shows Envoy's
error_detail, `wait` exits 2 and prints it, and the valid listener keeps serving; the stub
stops and restarts on the same port, Envoy reconnects and resyncs without draining.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
import yaml

from control_plane_stub.resources import LISTENER_TYPE
from tests.helpers.envoy import (
    BOOTSTRAP_MODES,
    REPO_ROOT,
    EnvoyProcess,
    load_bootstrap,
    with_xds_address,
)
from tests.helpers.procs import free_port, wait_for
from tests.helpers.stub import StubProcess

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def http_listener(name: str, port: int, body: str) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {
                                                    "status": 200,
                                                    "body": {"inline_string": body},
                                                },
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def http_get(port: int, path: str = "/") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def listener_stream(status: dict, node: str) -> dict | None:
    for entry in status["nodes"]:
        if entry["node"] == node:
            for stream in entry["streams"]:
                if stream["type_url"] == LISTENER_TYPE:
                    return stream
    return None


@pytest.mark.parametrize("mode", sorted(BOOTSTRAP_MODES))
def test_envoy_serves_nacks_and_resyncs(mode: str, tmp_path: Path) -> None:
    node = f"envoy-{mode}"
    xds_port = free_port()
    web_port = free_port()
    valid = {"listeners": [http_listener("web", web_port, f"hello {mode}\n")]}
    valid_file = tmp_path / "valid.yaml"
    valid_file.write_text(yaml.safe_dump(valid))
    stub = StubProcess(tmp_path, xds=f"127.0.0.1:{xds_port}").start()
    envoy = None
    try:
        bootstrap = with_xds_address(load_bootstrap(mode), stub.xds_address, node_id=node)
        envoy = EnvoyProcess(bootstrap, tmp_path).start()

        # 1. Push a listener: Envoy serves it and `wait` exits 0.
        pushed = stub.cli("push", str(valid_file))
        assert pushed.returncode == 0, pushed.stderr
        version = pushed.stdout.split()[1]
        assert pushed.stdout.splitlines()[0] == f"listeners {version}"
        waited = stub.cli("wait", "--version", version, "--timeout", "10")
        assert waited.returncode == 0, waited.stderr + envoy.log()[-2000:]
        assert http_get(web_port) == (200, f"hello {mode}\n")
        assert envoy.listeners() == {"web": f"127.0.0.1:{web_port}"}

        # 2. Two listeners on one address: Envoy NACKs; status and wait show its error_detail.
        invalid = stub.client.set_resources(
            listeners=[*valid["listeners"], http_listener("clash", web_port, "never\n")]
        )
        assert invalid["listeners"] != version
        waited = stub.cli("wait", "--version", invalid["listeners"], "--timeout", "10")
        assert waited.returncode == 2, waited.stdout + waited.stderr
        assert "clash" in waited.stderr and node in waited.stderr
        shown = json.loads(stub.cli("status", "--json").stdout)
        stream = listener_stream(shown, node)
        assert stream is not None
        assert stream["acked_version"] == version
        assert stream["nack"]["version"] == invalid["listeners"]
        assert "clash" in stream["nack"]["message"]
        assert stream["mode"] == ("delta" if mode.endswith("delta") else "sotw")
        table = stub.cli("status").stdout
        assert "NACK of version " + invalid["listeners"] in table
        assert http_get(web_port) == (200, f"hello {mode}\n")

        # 3. Restart the stub on the same port with the valid set: Envoy resyncs, drains nothing.
        before = envoy.stats("listener_manager")
        stub.stop()
        stub = StubProcess(tmp_path, resources=valid_file, xds=f"127.0.0.1:{xds_port}").start()
        wait_for(
            lambda: (
                (listener_stream(stub.client.status(), node) or {}).get("acked_version") == version
            ),
            timeout=10,
            what="Envoy to reconnect and ACK the same version",
        )
        after = envoy.stats("listener_manager")
        for stat in (
            "listener_manager.listener_removed",
            "listener_manager.listener_modified",
            "listener_manager.listener_added",
        ):
            assert after[stat] == before[stat], stat
        assert after["listener_manager.total_listeners_draining"] == "0"
        assert http_get(web_port) == (200, f"hello {mode}\n")
    finally:
        if envoy is not None:
            envoy.stop()
        stub.stop()


def render_example(name: str, ports: dict[int, int]) -> dict:
    """An example listener file with its fixed demo ports swapped for free ones."""
    document = yaml.safe_load((REPO_ROOT / "examples" / name).read_text())
    for item in document["listeners"]:
        socket_address = item["address"]["socket_address"]
        socket_address["port_value"] = ports[socket_address["port_value"]]
    return document


def test_example_listener_sets_on_envoy(tmp_path: Path) -> None:
    ports = {10000: free_port(), 10001: free_port()}
    stub = StubProcess(tmp_path).start()
    envoy = None
    try:
        bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address)
        envoy = EnvoyProcess(bootstrap, tmp_path).start()
        steps = (
            ("listeners-v1.yaml", "hello from v1\n"),
            ("routes-v2.yaml", "hello from routes-v2\n"),  # a route-only change
            ("listeners-v2.yaml", "hello from v2\n"),
        )
        for name, body in steps:
            path = tmp_path / name
            path.write_text(yaml.safe_dump(render_example(name, ports)))
            pushed = stub.cli("push", str(path))
            assert pushed.returncode == 0, pushed.stderr
            waited = stub.cli("wait", "--version", pushed.stdout.split()[1], "--timeout", "10")
            assert waited.returncode == 0, waited.stderr
            # `web` takes its routes from RDS: it may warm a moment after the LDS ACK.
            wait_for(lambda b=body: http_get(ports[10000]) == (200, b), timeout=10, what=body)
        assert http_get(ports[10001], "/health") == (200, "ok\n")
        assert http_get(ports[10001], "/other") == (404, "no such api\n")
    finally:
        if envoy is not None:
            envoy.stop()
        stub.stop()
