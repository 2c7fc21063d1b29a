"""HTTP/1.1 keep-alive requests/s on a direct_response listener: xds-proxy against Envoy 1.40.

Both servers run the same bootstrap, one after the other, pinned to CPU 0 with `taskset`;
the load generator `wrk` runs pinned to CPU 1, the two servers alternate and the best round
of each counts. Besides requests/s it prints the server's CPU time per request (from /proc),
which other load on a shared machine disturbs much less than throughput.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.tools import ensure_tool, wrk_result

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SERVER_CPU = "0"
LOAD_CPU = "1"
ROUNDS = 2

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
BOOTSTRAP = """\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm_type}
          stat_prefix: bench
          route_config:
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_wrk() -> str:
    return ensure_tool("wrk", "wrk")


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:.0f} s")


@dataclass
class Result:
    requests_per_s: float
    cpu_us_per_request: float  # the server's CPU time (all its threads) per request


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(wrk: str, port: int, connections: int, seconds: int) -> tuple[float, int]:
    command = [
        "taskset", "-c", LOAD_CPU, wrk, "-t1", f"-c{connections}", f"-d{seconds}s",
        f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return wrk_result(output)


def _measure(
    command: list[str], port: int, wrk: str, connections: int, seconds: int, log: Path
) -> Result:
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *command],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            try:
                _wait_listening(port, process)
            except RuntimeError as error:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"{command[0]}: {error}: {' '.join(tail)}") from None
            _wrk(wrk, port, connections, 1)  # warm-up
            cpu_before = _cpu_seconds(process.pid)  # taskset execs: this pid is the server
            rate, requests = _wrk(wrk, port, connections, seconds)
            cpu = _cpu_seconds(process.pid) - cpu_before
            return Result(rate, cpu * 1e6 / requests if requests else float("nan"))
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(large: bool) -> list[str]:
    wrk = _ensure_wrk()
    envoy = VENV_BIN / "envoy"
    connections, seconds = (200, 15) if large else (50, 5)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-http1-") as folder:
        bootstrap = Path(folder) / "bootstrap.yaml"
        logs = (Path(folder) / "ours.log", Path(folder) / "envoy.log")
        bootstrap.write_text(BOOTSTRAP.format(port=port, body="hello\\n", hcm_type=HCM_TYPE))
        ours_command = [
            str(VENV_BIN / "python"), "-m", "xds_proxy", "-c", str(bootstrap),
            "--admin-address-path", f"{folder}/ours.admin", "--disable-hot-restart",
        ]  # fmt: skip
        envoy_command = [
            str(envoy), "-c", str(bootstrap), "--concurrency", "1", "--disable-hot-restart",
            "-l", "warning", "--admin-address-path", f"{folder}/envoy.admin",
        ]  # fmt: skip
        # Alternate the two, best of ROUNDS each: other load on a shared machine hits both.
        ours: list[Result] = []
        theirs: list[Result] = []
        for _ in range(ROUNDS):
            ours.append(_measure(ours_command, port, wrk, connections, seconds, logs[0]))
            theirs.append(_measure(envoy_command, port, wrk, connections, seconds, logs[1]))
    best_ours = max(result.requests_per_s for result in ours)
    best_theirs = max(result.requests_per_s for result in theirs)
    cpu_ours = min(result.cpu_us_per_request for result in ours)
    cpu_theirs = min(result.cpu_us_per_request for result in theirs)
    return [
        f"   HTTP/1.1 keep-alive, direct_response, wrk -t1 -c{connections} -d{seconds}s "
        f"(server on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}, best of {ROUNDS} alternating)",
        f"   {'':12}{'req/s':>10}  {'server CPU us/req':>18}",
        f"   {'xds-proxy':12}{best_ours:10.0f}  {cpu_ours:18.1f}",
        f"   {'envoy 1.40':12}{best_theirs:10.0f}  {cpu_theirs:18.1f}",
        f"   ratio       {best_ours / best_theirs:10.2f}  {cpu_theirs / cpu_ours:18.2f}"
        "   (req/s ours/envoy; CPU envoy/ours; target >= 0.5, goal >= 1.0)",
    ]


if __name__ == "__main__":
    for line in run("--large" in sys.argv):
        print(line)
