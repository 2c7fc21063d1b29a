"""`make run`: the bundled control plane, an xds-proxy connected to it, the example listeners.

Starts `control-plane-stub` with examples/listeners-v1.yaml and `xds-proxy` with
examples/bootstrap.yaml, waits until the proxy serves, prints where to send traffic and the
command that pushes the next listener version, and runs until Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ADMIN = "http://127.0.0.1:9901"


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def admin(path: str) -> str:
    with urllib.request.urlopen(ADMIN + path, timeout=2) as response:
        return response.read().decode()


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="xds-proxy-demo-"))
    ready_file = workdir / "stub-ready.json"
    stub = subprocess.Popen(
        [
            str(BIN / "control-plane-stub"),
            "serve",
            "--xds",
            "127.0.0.1:18000",
            "--control",
            "127.0.0.1:18001",
            "--resources",
            str(HERE / "listeners-v1.yaml"),
            "--ready-file",
            str(ready_file),
        ]
    )
    processes = [stub]
    try:
        wait_until(
            lambda: stub.poll() is None and ready_file.exists() and ready_file.read_text(),
            15,
            "the control plane (is port 18000 or 18001 in use?)",
        )
        proxy = subprocess.Popen(
            [
                str(BIN / "xds-proxy"),
                "-c",
                str(HERE / "bootstrap.yaml"),
                "--drain-time-s",
                "30",
                "--drain-strategy",
                "gradual",
            ]
        )
        processes.append(proxy)
        wait_until(
            lambda: proxy.poll() is None and "web::" in admin("/listeners"),
            15,
            "xds-proxy to serve the example listeners (is port 9901 or 10000 in use?)",
        )
        push = f"{BIN / 'control-plane-stub'} push {HERE / 'listeners-v2.yaml'}"
        print(
            "\n"
            "xds-proxy is serving the listeners of examples/listeners-v1.yaml.\n"
            "\n"
            "  send traffic:          curl http://127.0.0.1:10000/\n"
            f"  push the next version: {push}\n"
            f"  watch it drain:        curl {ADMIN}/drain_status\n"
            f"  listeners and stats:   curl {ADMIN}/listeners ; curl {ADMIN}/stats\n"
            f"  what the stub sees:    {BIN / 'control-plane-stub'} status\n"
            "\n"
            "Ctrl-C stops both.\n",
            flush=True,
        )
        print(json.dumps({"listeners": admin("/listeners").split()}), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    raise SystemExit(main())
