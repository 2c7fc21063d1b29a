"""A real sovereign (the Python REST xDS control plane, on PyPI) for tests, on loopback.

sovereign pins versions that clash with ours (cryptography 50, uvloop 0.22), so it lives in a
virtualenv of its own and runs as a process: `SOVEREIGN_BIN` names its `sovereign` script, or
else `<repo>/.venv-sovereign/bin/sovereign`, `<repo>/.venv/bin/sovereign` or a `sovereign` on
PATH is used. `sovereign_binary()` is
None when there is none (the tests skip, saying how to install it).

The config is what a user writes: a `file` data source (JSON, re-read every second) and one
Python template per resource type. The data is a list of instances `{"kind": "listener" |
"routes" | "cluster" | "endpoints", "resource": {...}}`; each template renders the instances
of its kind as Envoy resources (sovereign picks an EDS request's ClusterLoadAssignments by
their `cluster_name`). `set_resources()` rewrites the data file (atomically); sovereign serves the
new versions after its next source refresh.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers.procs import Process, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
TYPE_PREFIX = "type.googleapis.com/"
TYPES = {
    "listener": "envoy.config.listener.v3.Listener",
    "routes": "envoy.config.route.v3.RouteConfiguration",
    "cluster": "envoy.config.cluster.v3.Cluster",
    "endpoints": "envoy.config.endpoint.v3.ClusterLoadAssignment",
}
PATHS = {
    "listener": "listeners",
    "routes": "routes",
    "cluster": "clusters",
    "endpoints": "endpoints",
}
TEMPLATE = '''"""sovereign template: the {kind} instances of the data source, as Envoy resources."""


def call(instances, discovery_request, **kwargs):
    for instance in instances:
        if instance["kind"] == "{kind}":
            yield {{"@type": "{type_url}", **instance["resource"]}}
'''
CONFIG = """\
templates:
  default:
{templates}
sources:
  - type: file
    scope: default
    config:
      path: file+json://{data}
source_config:
  refresh_rate: 1
matching:
  enabled: false
"""
INSTALL_HINT = (
    "sovereign is not installed: python -m venv .venv-sovereign && "
    ".venv-sovereign/bin/pip install 'sovereign>=0.32,<0.33' (`make test` does; it pins "
    "cryptography and uvloop versions that clash with ours, so it needs a virtualenv of its "
    "own), or set SOVEREIGN_BIN"
)


def sovereign_binary() -> str | None:
    named = os.environ.get("SOVEREIGN_BIN")
    if named:
        return named
    for venv in (".venv-sovereign", ".venv"):
        local = REPO_ROOT / venv / "bin" / "sovereign"
        if local.exists():
            return str(local)
    return shutil.which("sovereign")


class SovereignProcess:
    def __init__(self, workdir: Path, resources: list[tuple[str, dict[str, Any]]]) -> None:
        self.workdir = Path(workdir) / "sovereign"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_path = self.workdir / "data.json"
        self.set_resources(resources)
        specs = []
        for kind, type_name in TYPES.items():
            template = self.workdir / f"{kind}.py"
            template.write_text(TEMPLATE.format(kind=kind, type_url=TYPE_PREFIX + type_name))
            specs.append(
                f"    - type: {PATHS[kind]}\n"
                f"      spec: {{protocol: python, serialization: passthrough, path: {template}}}"
            )
        self.config_path = self.workdir / "sovereign.yaml"
        self.config_path.write_text(CONFIG.format(templates="\n".join(specs), data=self.data_path))
        self.process: Process | None = None

    def start(self, timeout: float = 30.0) -> SovereignProcess:
        binary = sovereign_binary()
        assert binary is not None, INSTALL_HINT
        env = {
            "SOVEREIGN_CONFIG": f"file://{self.config_path}",
            "SOVEREIGN_HOST": "127.0.0.1",
            "SOVEREIGN_PORT": str(self.port),
            "SOVEREIGN_WORKERS": "1",
            "PYTHONPATH": "",
        }
        self.process = Process([binary], self.workdir / "sovereign.log", env=env)
        try:
            wait_for(self._serving, timeout=timeout, what="sovereign answering on its port")
        except Exception:
            self.stop()
            raise
        return self

    def set_resources(self, resources: list[tuple[str, dict[str, Any]]]) -> None:
        data = [{"kind": kind, "resource": resource} for kind, resource in resources]
        staged = self.data_path.with_suffix(".tmp")
        staged.write_text(json.dumps(data))
        staged.replace(self.data_path)

    def version(self, kind: str) -> str:
        """The version sovereign serves now for `kind` ("" if it does not answer 200)."""
        status, body = self.discover(kind)
        return json.loads(body)["version_info"] if status == 200 else ""

    def discover(self, kind: str, resource_names: list[str] | None = None) -> tuple[int, bytes]:
        request = {
            "node": {"id": "probe", "cluster": "probe"},
            "type_url": TYPE_PREFIX + TYPES[kind],
            "resource_names": resource_names or [],
        }
        http = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v3/discovery:{PATHS[kind]}",
            data=json.dumps(request).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(http, timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def _serving(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"sovereign exited:\n{self.log()[-3000:]}")
        try:
            return self.discover("cluster")[0] in (200, 404)
        except OSError:
            return False
