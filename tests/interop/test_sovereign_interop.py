"""REST xDS from a real sovereign (templates over a file data source, tests/helpers/sovereign.py),
run against Envoy 1.40 and against xds-proxy with the same bootstrap, the same data changes
and the same clients; what each step shows must be equal:

1. a listener (RDS over REST), its route configuration and its cluster arrive and serve;
2. the cluster's data changes: new requests reach the other upstream within a few polls;
3. the listener changes: it is modified (a full update), a request through it succeeds while
   it changes (no refused connection), the old version drains by its drain_type (a kept-alive
   connection is told `connection: close`);
4. a listener both reject: sovereign has no NACK handling and sends it again on every poll;
   the old listener keeps serving, the rejections are counted (update_rejected grows), and
   xds-proxy logs the rejection once (Envoy's log is not checked);
5. a valid listener again: accepted and serving.

And the README's example (examples/sovereign) serves as it says.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import HttpConnection, get
from tests.helpers.procs import Process, free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.sovereign import (
    INSTALL_HINT,
    SovereignProcess,
    sovereign_binary,
)
from tests.helpers.sovereign import (
    REPO_ROOT as REPO,
)
from tests.helpers.upstreams import Http1Echo, cluster_dict

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(180),
    pytest.mark.skipif(sovereign_binary() is None, reason=INSTALL_HINT),
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DRAIN_ARGS = ["--drain-time-s", "1", "--drain-strategy", "immediate"]
REFRESH = "0.2s"


def rest_source() -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "REST",
            "transport_api_version": "V3",
            "cluster_names": ["sovereign"],
            "refresh_delay": REFRESH,
        },
    }


def bootstrap(sovereign_port: int) -> dict[str, Any]:
    return {
        "node": {"id": "proxy-1", "cluster": "web"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {"lds_config": rest_source(), "cds_config": rest_source()},
        "static_resources": {"clusters": [cluster_dict("sovereign", [sovereign_port])]},
    }


def listener(port: int, stat_prefix: str = "web", buffer: int | None = None) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "rds": {"route_config_name": "web-routes", "config_source": rest_source()},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    result: dict[str, Any] = {
        "name": "web",
        "drain_type": "DEFAULT",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    if buffer is not None:
        result["per_connection_buffer_limit_bytes"] = buffer
    return result


def routes() -> dict[str, Any]:
    return {
        "name": "web-routes",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
            }
        ],
    }


class Scenario:
    def __init__(self, tmp_path: Path, make_process: type[EnvoyProcess]) -> None:
        self.blue = Http1Echo("blue").start()
        self.green = Http1Echo("green").start()
        self.port = free_port()
        self.listener = listener(self.port)
        self.backend = self.blue
        self.sovereign = SovereignProcess(tmp_path, self.resources()).start()
        self.process = make_process(bootstrap(self.sovereign.port), tmp_path, extra_args=DRAIN_ARGS)

    def resources(self) -> list[tuple[str, dict[str, Any]]]:
        port = self.backend.port
        return [
            ("listener", self.listener),
            ("routes", routes()),
            ("cluster", cluster_dict("backend", [port])),
        ]

    def publish(self) -> None:
        self.sovereign.set_resources(self.resources())

    def stat(self, name: str) -> int:
        return self.process.stat(name) or 0

    def served_by(self) -> str | int:
        try:
            response = get(self.port)
        except OSError as error:
            return type(error).__name__
        return json.loads(response.body)["server"] if response.status == 200 else response.status

    def versions_match(self) -> dict[str, bool]:
        stats = self.process.stats("version_text")
        return {
            "lds": stats.get("listener_manager.lds.version_text")
            == f'"{self.sovereign.version("listener")}"',
            "cds": stats.get("cluster_manager.cds.version_text")
            == f'"{self.sovereign.version("cluster")}"',
            "rds": stats.get("http.web.rds.web-routes.version_text")
            == f'"{self.sovereign.version("routes")}"',
        }

    def dumped(self) -> dict[str, list[tuple[str, bool]]]:
        """config_dump's dynamic resources by section: (name, whether its version_info is the
        one sovereign serves now) of each (the versions hash the data, ports included)."""
        _, body = self.process.get("/config_dump")
        serving = {kind: self.sovereign.version(kind) for kind in ("listener", "routes", "cluster")}
        found: dict[str, list[tuple[str, bool]]] = {}
        for config in json.loads(body)["configs"]:
            for listener in config.get("dynamic_listeners", []):
                version = listener.get("active_state", {}).get("version_info")
                found.setdefault("listeners", []).append(
                    (listener["name"], version == serving["listener"])
                )
            for route in config.get("dynamic_route_configs", []):
                name, version = route["route_config"]["name"], route.get("version_info")
                found.setdefault("routes", []).append((name, version == serving["routes"]))
            for cluster in config.get("dynamic_active_clusters", []):
                name, version = cluster["cluster"]["name"], cluster.get("version_info")
                found.setdefault("clusters", []).append((name, version == serving["cluster"]))
        return found

    def stop(self) -> None:
        self.process.stop()
        self.sovereign.stop()
        self.blue.stop()
        self.green.stop()


def served(scenario: Scenario, label: str) -> bool:
    return scenario.served_by() == label


def run_scenario(make_process: type[EnvoyProcess], tmp_path: Path) -> list[tuple[str, Any]]:
    notes: list[tuple[str, Any]] = []
    scenario = Scenario(tmp_path, make_process)
    try:
        process = scenario.process
        process.start()
        # 1. everything arrives.
        wait_for(lambda: served(scenario, "blue"), timeout=20, what="served by blue")
        wait_for(lambda: all(scenario.versions_match().values()), timeout=10, what="versions")
        notes.append(("1 versions", scenario.versions_match()))
        notes.append(("1 served", scenario.served_by()))
        notes.append(("1 lds", (scenario.stat("listener_manager.lds.update_success") >= 1)))
        notes.append(("1 config_dump", scenario.dumped()))

        # 2. the cluster's data changes: the other upstream, within a few polls.
        scenario.backend = scenario.green
        scenario.publish()
        wait_for(lambda: served(scenario, "green"), timeout=15, what="served by green")
        notes.append(("2 served", scenario.served_by()))
        notes.append(("2 modified", scenario.stat("listener_manager.listener_modified")))

        # 3. the listener changes: a full update; new connections never refused; the old
        # version drains (a kept-alive connection is told to close).
        kept = HttpConnection(scenario.port)
        notes.append(("3 kept before", kept.request().status))
        failures: list[str] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                result = scenario.served_by()
                if result != "green":
                    failures.append(str(result))

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            scenario.listener = listener(scenario.port, buffer=65536)
            scenario.publish()
            wait_for(
                lambda: scenario.stat("listener_manager.listener_modified") == 1,
                timeout=15,
                what="listener modified",
            )
            wait_for(
                lambda: scenario.stat("listener_manager.total_listeners_draining") == 0,
                timeout=15,
                what="old version drained",
            )
        finally:
            stop.set()
            thread.join()
        notes.append(("3 refused or failed while changing", failures))
        try:
            after = kept.request()
            notes.append(("3 kept after", (after.status, after.closes)))
        except OSError:
            notes.append(("3 kept after", "closed"))
        kept.close()
        notes.append(("3 served", scenario.served_by()))

        # 4. a listener both reject, sent again on every poll: the old one keeps serving.
        version_before = process.stats("version_text").get("listener_manager.lds.version_text")
        scenario.listener = listener(scenario.port, stat_prefix="", buffer=65536)
        scenario.publish()
        wait_for(
            lambda: scenario.stat("listener_manager.lds.update_rejected") >= 4,
            timeout=20,
            what="the rejected listener sent again",
        )
        notes.append(("4 served", scenario.served_by()))
        notes.append(
            (
                "4 version kept",
                process.stats("version_text").get("listener_manager.lds.version_text")
                == version_before,
            )
        )
        notes.append(("4 modified", scenario.stat("listener_manager.listener_modified")))

        # 5. valid again.
        scenario.listener = listener(scenario.port, buffer=32768)
        scenario.publish()
        wait_for(
            lambda: scenario.stat("listener_manager.listener_modified") == 2,
            timeout=15,
            what="the valid listener accepted",
        )
        wait_for(lambda: served(scenario, "green"), timeout=10, what="served again")
        notes.append(("5 served", scenario.served_by()))
        notes.append(("5 versions", scenario.versions_match()))
        notes.append(("5 config_dump", scenario.dumped()))
        if make_process is ProxyProcess:
            log = process.log()
            rejected = [line for line in log.splitlines() if "rejected:" in line]
            nacks = [line for line in log.splitlines() if "NACK version" in line]
            assert len(rejected) == 1, rejected
            assert len(nacks) == 1, nacks
            assert "REST config for" in rejected[0]
            assert not [line for line in log.splitlines() if "REST update for" in line], log
        return notes
    except BaseException:
        print(scenario.process.log()[-6000:] if scenario.process.process else "")
        print(scenario.sovereign.log()[-3000:])
        raise
    finally:
        scenario.stop()


def test_sovereign_envoy_and_xds_proxy_agree(tmp_path: Path) -> None:
    envoy = run_scenario(EnvoyProcess, tmp_path / "envoy")
    ours = run_scenario(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
    assert dict(envoy)["1 served"] == "blue"
    assert dict(envoy)["3 refused or failed while changing"] == []
    served_now = {"clusters": [("backend", True)], "listeners": [("web", True)]}
    served_now["routes"] = [("web-routes", True)]
    assert dict(envoy)["1 config_dump"] == dict(envoy)["5 config_dump"] == served_now


def test_the_readme_example_serves(tmp_path: Path) -> None:
    """examples/sovereign (README "With sovereign"), on free ports: xds-proxy serves the
    templated listener, its routes and its cluster."""
    example = tmp_path / "example"
    shutil.copytree(REPO / "examples" / "sovereign", example)
    sovereign_port, listen_port = free_port(), free_port()
    echo = Http1Echo("backend").start()
    (example / "data.json").write_text(
        (example / "data.json")
        .read_text()
        .replace("10000", str(listen_port))
        .replace("8081", str(echo.port))
    )
    boot = (example / "bootstrap.yaml").read_text()
    boot = boot.replace("port_value: 8080", f"port_value: {sovereign_port}")
    boot = boot.replace("port_value: 9901", "port_value: 0")
    env = {
        "SOVEREIGN_CONFIG": "file://sovereign.yaml",
        "SOVEREIGN_HOST": "127.0.0.1",
        "SOVEREIGN_PORT": str(sovereign_port),
        "SOVEREIGN_WORKERS": "1",
        "PYTHONPATH": "",
    }
    command = f"cd {example} && exec {sovereign_binary()}"
    sovereign = Process(["/bin/sh", "-c", command], tmp_path / "sovereign.log", env=env)
    proxy = ProxyProcess(boot, tmp_path)
    try:
        proxy.start()
        wait_for(lambda: get(listen_port).status == 200, timeout=30, what="served")
        assert json.loads(get(listen_port, "/hello").body)["server"] == "backend"
    except BaseException:
        print(proxy.log()[-3000:], sovereign.log()[-3000:])
        raise
    finally:
        proxy.stop()
        sovereign.stop()
        echo.stop()
