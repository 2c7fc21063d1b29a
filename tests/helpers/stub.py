"""Run `python -m control_plane_stub serve` as a real process for tests.

    stub = StubProcess(tmp_path).start()
    try:
        stub.client.set_resources(listeners=[...])
        stub.cli("wait", "--version", version)
    finally:
        stub.stop()

Addresses come from `--ready-file` (port 0 by default); pass `xds="127.0.0.1:PORT"` (a
`free_port()`) to restart a stub where clients already point.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

from control_plane_stub.client import StubClient
from tests.helpers.procs import GaveUp, Process, read_json_file, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
_instances = itertools.count(1)


def stub_env() -> dict[str, str]:
    """The environment for stub processes: the repo importable without `pip install -e`."""
    python_path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{python_path}" if python_path else str(REPO_ROOT)
    }


def run_cli(
    *args: str, timeout: float = 30.0, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m control_plane_stub ARGS...` to completion (stdout/stderr captured)."""
    return subprocess.run(
        [sys.executable, "-m", "control_plane_stub", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **stub_env()},
        input=input_text,
    )


class StubProcess:
    def __init__(
        self,
        workdir: Path,
        resources: Path | None = None,
        xds: str = "127.0.0.1:0",
        control: str = "127.0.0.1:0",
        extra_args: list[str] | None = None,
    ):
        self.instance = next(_instances)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.resources = resources
        self.requested = {"xds": xds, "control": control}
        self.extra_args = extra_args or []
        self.ready_path = self.workdir / f"stub-{self.instance}.ready.json"
        self.log_path = self.workdir / f"stub-{self.instance}.log"
        self.process: Process | None = None
        self.starts = 0
        self.addresses: dict[str, str] = {}
        self._client: StubClient | None = None

    def start(self, timeout: float = 15.0) -> StubProcess:
        """Start (or, after stop(), restart) the stub; each start logs to its own file."""
        self.starts += 1
        if self.starts > 1:
            self.log_path = self.workdir / f"stub-{self.instance}.{self.starts}.log"
        self.ready_path.unlink(missing_ok=True)
        args = [
            sys.executable,
            "-m",
            "control_plane_stub",
            "serve",
            "--xds",
            self.requested["xds"],
            "--control",
            self.requested["control"],
            "--ready-file",
            str(self.ready_path),
            *self.extra_args,
        ]
        if self.resources is not None:
            args += ["--resources", str(self.resources)]
        self.process = Process(args, self.log_path, env=stub_env())
        try:
            self.addresses = wait_for(
                self._ready_or_exit, timeout=timeout, what="control-plane-stub ready file"
            )
        except Exception:
            self.stop()
            raise
        return self

    def _ready_or_exit(self) -> dict[str, str] | None:
        assert self.process is not None
        if not self.process.alive():
            raise GaveUp(f"stub exited early:\n{self.log()[-3000:]}")
        return read_json_file(self.ready_path)

    @property
    def xds_address(self) -> str:
        return self.addresses["xds"]

    @property
    def control_address(self) -> str:
        return self.addresses["control"]

    @property
    def client(self) -> StubClient:
        if self._client is None:
            self._client = StubClient(self.control_address)
        return self._client

    def subscriptions(self, node: str, type_url: str) -> list[list[str]]:
        """What each of `node`'s streams of that type subscribes to, from the stub's ledger
        (`["*"]` is the wildcard; one list per stream, `[]` when none is open)."""
        for entry in self.client.status()["nodes"]:
            if entry["node"] == node:
                return [s["subscribed"] for s in entry["streams"] if s["type_url"] == type_url]
        return []

    def acked_versions(self, node: str, type_url: str) -> list[str | None]:
        """The version `node` last ACKed for that type, one per stream of that type (None
        before any ACK), from the stub's ledger."""
        for entry in self.client.status()["nodes"]:
            if entry["node"] == node:
                return [s["acked_version"] for s in entry["streams"] if s["type_url"] == type_url]
        return []

    def nacks(self) -> list[dict]:
        """Every stream's last NACK (`{version, nonce, code, message}`), of any node and type."""
        streams = [s for entry in self.client.status()["nodes"] for s in entry["streams"]]
        return [s["nack"] for s in streams if s["nack"] is not None]

    def cli(self, command: str, *args: str, timeout: float = 30.0):
        """Run a client command (`push`, `status`, `wait`) against this stub."""
        return run_cli(command, "--control", self.control_address, *args, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def pid(self) -> int | None:
        return None if self.process is None else self.process.popen.pid

    def stop(self, timeout: float = 5.0) -> int | None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None:
            return None
        return self.process.stop(timeout)
