"""`make run` tells the story: examples/demo.py on free ports, traffic flowing; a route change
pushed as its printed next step says (the same connections get the new body, nothing
drains), then a listener change (the drain seen); zero failed requests, Ctrl-C stops
everything."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.procs import free_port, wait_for
from tests.helpers.stub import REPO_ROOT, run_cli

DEMO_FLAGS = ["--drain-time-s=3", "--drain-strategy=gradual", "--connections=4"]
LIVE = re.compile(r"^\[\s*\d+s\] requests ok (\d+) failed (\d+) retried (\d+) \| ")


class Output:
    """The demo's stdout, line by line, collected by a thread (the test waits on it)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> str | None:
        return next((line for line in list(self.lines) if re.search(pattern, line)), None)

    def live_lines(self) -> list[str]:
        return [line for line in list(self.lines) if LIVE.match(line)]

    def text(self) -> str:
        return "\n".join(self.lines)


def nobody_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(180)  # ~5 s; its own bounded waits add up to 125 s and speak first
def test_demo_pushes_v2_with_zero_failures_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("xds", "control", "admin", "web", "api")}
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    demo = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "examples" / "demo.py"), *args, *DEMO_FLAGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    out = Output(demo)
    try:
        routes_line = wait_for(lambda: out.find(r"next step, a route change"), 30, what="step")
        push_line = wait_for(lambda: out.find(r"then a listener change"), 30, what="next step")
        assert f"--control 127.0.0.1:{ports['control']}" in push_line, push_line
        wait_for(lambda: len(out.live_lines()) >= 2, 10, what="two live lines")
        assert "connections by version v1=4" in out.live_lines()[-1], out.text()
        # A route change: the same connections answer routes-v2 on their next request and
        # nothing drains.
        pushed = run_cli(
            "push", "--control", f"127.0.0.1:{ports['control']}", routes_line.split()[-1]
        )
        assert pushed.returncode == 0, pushed.stderr
        wait_for(
            lambda: "connections by version routes-v2=4 " in (out.live_lines() or [""])[-1],
            10,
            what="every connection on routes-v2",
        )
        assert out.find(r"^drain started") is None, out.text()
        assert all("draining: none" in line for line in out.live_lines()), out.text()
        v2_file = push_line.split()[-1]
        pushed = run_cli("push", "--control", f"127.0.0.1:{ports['control']}", v2_file)
        assert pushed.returncode == 0, pushed.stderr
        wait_for(lambda: out.find(r"^drain started: listener web"), 10, what="drain start")
        wait_for(lambda: out.find(r"^drain finished: listener web"), 10, what="drain end")
        wait_for(
            lambda: "connections by version v2=4 " in (out.live_lines() or [""])[-1],
            10,
            what="every connection on v2",
        )
        assert "draining: none" in out.live_lines()[-1]
        demo.send_signal(signal.SIGINT)
        assert demo.wait(20) == 0, out.text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    summary = wait_for(lambda: out.find(r"^demo stopped: "), 5, what="the summary")
    ok, failed = re.match(r"demo stopped: (\d+) requests ok, (\d+) failed", summary).groups()
    assert int(ok) > 100 and int(failed) == 0, out.text()
    assert all(LIVE.match(line).group(2) == "0" for line in out.live_lines()), out.text()
    # Ctrl-C stopped the stub and the proxy too: nothing listens on their ports any more.
    assert all(nobody_listens(port) for port in ports.values()), ports


@pytest.mark.timeout(120)  # ~2 s; its own bounded waits add up to 55 s and speak first
def test_demo_backend_is_reached_through_the_proxy(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("xds", "control", "admin", "web", "api", "backend")}
    args = [f"--{name}-port={port}" for name, port in ports.items()]
    demo = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "examples" / "demo.py"), *args, "--backend"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    out = Output(demo)
    try:
        hint = wait_for(lambda: out.find(r"through to backend: "), 30, what="the backend hint")
        url = hint.split()[-1]
        assert url == f"http://127.0.0.1:{ports['web']}/backend/hello"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
        assert (answer["backend"], answer["path"]) == ("backend", "/backend/hello")
        # The backend's address came from the control plane: the cluster is EDS.
        admin = f"http://127.0.0.1:{ports['admin']}"
        with urllib.request.urlopen(f"{admin}/clusters", timeout=5) as response:
            clusters = response.read().decode()
        assert "backend::eds_service_name::backend" in clusters
        assert f"backend::127.0.0.1:{ports['backend']}::health_flags::healthy" in clusters
        demo.send_signal(signal.SIGINT)
        assert demo.wait(20) == 0, out.text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert nobody_listens(ports["backend"])
