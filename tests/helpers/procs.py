"""Start real processes for tests and wait on conditions (never on sleeps)."""

from __future__ import annotations

import collections
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

VENV_BIN = Path(sys.executable).parent


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=2048)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (prefer port 0 in configs where the program reports it),
    and not one this process handed out recently: the kernel may offer a just-closed port
    again, and two listeners of one test must not get the same one.

    Ports come from below the kernel's ephemeral range, so that the outgoing connections a
    test makes meanwhile (each takes an ephemeral port) cannot take a listener's port before
    the listener binds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, high = _LISTEN_PORTS
    for _ in range(200):
        port = _RANDOM.randrange(low, high) if high > low else 0
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.append(port)
            return port
    raise RuntimeError("no fresh free port")


def _listen_ports() -> tuple[int, int]:
    """[low, high) below the ephemeral range (Linux), else (0, 0): let the kernel choose.

    Under pytest-xdist (`make test` runs the suite in several worker processes) each worker
    takes its own slice of that range, from PYTEST_XDIST_WORKER ("gw0", "gw1", ...) and
    PYTEST_XDIST_WORKER_COUNT: a port one worker handed out and has not bound yet is never
    handed out by another."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    if first <= 12000:
        return 0, 0
    return worker_slice(10000, first, os.environ)


def worker_slice(low: int, high: int, environ: Mapping[str, str]) -> tuple[int, int]:
    """This xdist worker's share of [low, high): the whole range outside xdist."""
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    count = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return low, high
    index = int(worker.removeprefix("gw"))
    size = (high - low) // count
    return low + index * size, low + (index + 1) * size


_LISTEN_PORTS = _listen_ports()
_RANDOM = random.Random(os.getpid())


class GaveUp(RuntimeError):
    """Raised by a condition when what it waits for can no longer happen (e.g. the process
    exited): `wait_for` lets it through at once instead of polling to the deadline."""


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; raise TimeoutError at the deadline
    (or the condition's GaveUp at once)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except GaveUp:
            raise
        except Exception as error:  # the condition may fail until the service is up
            last_error = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}: {last_error!r}")
        time.sleep(interval)


def read_json_file(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None  # still being written


def read_text_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


class Process:
    """A child process whose output goes to a log file that tests can show on failure."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode
