"""Traffic, push and drain against a running stack: the docker-compose services when the
environment names them (the compose `tests` service sets these), otherwise processes this
test starts on loopback.

    XDS_PROXY_ADMIN       host:port of the proxy's admin        (compose: proxy:9901)
    XDS_PROXY_HOST        host where the proxy's listeners are  (compose: proxy)
    XDS_PROXY_LISTEN_IP   address the pushed listeners bind     (compose: 0.0.0.0)
    XDS_PROXY_TEST_PORTS  two ports free inside the proxy       (compose: 10100,10101)
    STUB_CONTROL          host:port of the stub's control API   (compose: control-plane:18001)
    BACKEND               host:port of the backend              (compose: backend:8080)

Nothing here restarts or kills a service, so the same tests run in both places.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from control_plane_stub.client import StubClient
from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import http_listener, lds_bootstrap
from tests.helpers.procs import Process, free_port, read_text_file, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DRAIN_TIME_S = 3


@dataclass
class Stack:
    admin: str
    host: str
    listen_ip: str
    ports: tuple[int, int]
    control: str
    backend: str
    stub: StubClient = field(init=False)

    def __post_init__(self) -> None:
        self.stub = StubClient(self.control)

    def admin_get(self, path: str) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as response:
            return response.status, response.read().decode()

    def push(self, listeners: list, version: str) -> None:
        pushed = self.stub.set_resources(listeners=listeners, version=version)["listeners"]
        self.stub.wait(pushed, timeout=15)

    def get(self, port: int, path: str = "/") -> tuple[int, str, str]:
        """One request on a new connection: status, body, `connection` header."""
        connection = http.client.HTTPConnection(self.host, port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode(), response.getheader("connection", "")
        finally:
            connection.close()


def _from_environment() -> Stack | None:
    admin = os.environ.get("XDS_PROXY_ADMIN")
    if not admin:
        return None
    first, second = (int(p) for p in os.environ["XDS_PROXY_TEST_PORTS"].split(","))
    return Stack(
        admin=admin,
        host=os.environ.get("XDS_PROXY_HOST", "127.0.0.1"),
        listen_ip=os.environ.get("XDS_PROXY_LISTEN_IP", "127.0.0.1"),
        ports=(first, second),
        control=os.environ["STUB_CONTROL"],
        backend=os.environ["BACKEND"],
    )


def backend_cluster() -> dict:
    """The `backend` cluster as docker/compose/bootstrap.yaml has it: EDS from the stub."""
    compose = yaml.safe_load((REPO_ROOT / "docker" / "compose" / "bootstrap.yaml").read_text())
    return next(c for c in compose["static_resources"]["clusters"] if c["name"] == "backend")


def backend_endpoints(port: int) -> list[dict]:
    """Its ClusterLoadAssignment: the backend on loopback (compose: its fixed address)."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return [
        {
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        }
    ]


def routing_listener(name: str, port: int, ip: str, cluster: str) -> dict:
    """Every request to `cluster`."""
    listener = http_listener(name, port, ip=ip)
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    routes["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    ]
    return listener


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    given = _from_environment()
    if given is not None:
        wait_for(lambda: given.admin_get("/ready")[0] == 200, timeout=60, what="proxy /ready")
        yield given
        given.stub.close()
        return
    workdir = tmp_path_factory.mktemp("stack")
    stub = StubProcess(workdir, xds=f"127.0.0.1:{free_port()}").start()
    port_file = workdir / "backend.port"
    backend = Process(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "backend.py"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        workdir / "backend.log",
    )
    args = ["--drain-time-s", str(DRAIN_TIME_S), "--drain-strategy", "immediate"]
    proxy: ProxyProcess | None = None
    try:
        backend_port = wait_for(lambda: read_text_file(port_file), timeout=10, what="backend")
        stub.client.set_resources(endpoints=backend_endpoints(int(backend_port)))
        bootstrap = lds_bootstrap(stub.xds_address)
        bootstrap["static_resources"]["clusters"].append(backend_cluster())
        proxy = ProxyProcess(bootstrap, workdir, extra_args=args)
        proxy.start()
        proxy.wait_ready()
        local = Stack(
            admin=str(proxy.admin_address),
            host="127.0.0.1",
            listen_ip="127.0.0.1",
            ports=(free_port(), free_port()),
            control=stub.control_address,
            backend=f"127.0.0.1:{backend_port}",
        )
        yield local
        local.stub.close()
    finally:
        if proxy is not None:
            proxy.stop()
        backend.stop()
        stub.stop()


def test_backend_answers_with_its_name(stack: Stack) -> None:
    host, _, port = stack.backend.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/where")
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert answer["path"] == "/where" and answer["backend"] == "backend"


def test_pushed_listener_serves(stack: Stack) -> None:
    port = stack.ports[1]
    stack.push([http_listener("compose-api", port, body="api-1", ip=stack.listen_ip)], "api-1")
    assert wait_for(lambda: stack.get(port)[1] == "api-1", timeout=5)
    status, body = stack.admin_get("/listeners?format=json")
    names = [entry["name"] for entry in json.loads(body)["listener_statuses"]]
    assert status == 200 and names == ["compose-api"]


def test_requests_reach_the_backend_through_the_proxy(stack: Stack) -> None:
    port = stack.ports[1]
    stack.push([routing_listener("compose-route", port, stack.listen_ip, "backend")], "route-1")
    status, body, _ = wait_for(lambda: stack.get(port, "/via/proxy"), timeout=5)
    answer = json.loads(body)
    assert status == 200 and (answer["backend"], answer["path"]) == ("backend", "/via/proxy")


class Load:
    """New connections in a loop (each one a fresh accept: the listen socket must never
    refuse or drop one during a swap); counts answers per body and every failure."""

    def __init__(self, stack: Stack, port: int) -> None:
        self.stack, self.port = stack, port
        self.bodies: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body, _ = self.stack.get(self.port)
                if status != 200:
                    self.failures.append(f"status {status}")
                self.bodies[body] = self.bodies.get(body, 0) + 1
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(repr(error))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_push_under_traffic_drains_with_zero_failures(stack: Stack) -> None:
    port = stack.ports[0]
    v1 = http_listener("compose-web", port, body="web-1", ip=stack.listen_ip)
    stack.push([v1], "web-1")
    wait_for(lambda: stack.get(port)[1] == "web-1", timeout=5)
    held = HttpConnection(port, host=stack.host)
    held.sock.sendall(b"GET /held HTTP/1.1\r\nhost: x\r\n")  # a request in progress across the push
    with Load(stack, port) as load:
        wait_for(lambda: load.bodies.get("web-1", 0) >= 20, timeout=10, what="v1 traffic")
        v2 = http_listener(
            "compose-web",
            port,
            body="web-2",
            ip=stack.listen_ip,
            per_connection_buffer_limit_bytes=1 << 16,
        )
        stack.push([v2], "web-2")
        drains = wait_for(
            lambda: json.loads(stack.admin_get("/drain_status")[1])["drains"],
            timeout=5,
            what="the drain of web-1",
        )
        assert [(d["listener"], d["version_info"]) for d in drains] == [("compose-web", "web-1")]
        assert drains[0]["connections"] >= 1
        wait_for(lambda: load.bodies.get("web-2", 0) >= 20, timeout=10, what="v2 traffic")
    held.sock.sendall(b"\r\n")
    answer = held.read_response()
    held.close()
    assert (answer.status, answer.text) == (200, "web-1")  # the old version answers it
    assert load.failures == [], load.failures[:5]
    wait_for(
        lambda: json.loads(stack.admin_get("/drain_status")[1])["drains"] == [],
        timeout=30,
        what="the drain to end",
    )
