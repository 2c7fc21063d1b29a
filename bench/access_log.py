"""The cost of a file access log: requests/s on a direct_response listener with and without
an `envoy.access_loggers.file` logger (Envoy's default format), xds-proxy and Envoy 1.40, over
HTTP/1.1 keep-alive (wrk, as bench/http1.py) and HTTP/2 (h2load -c10 -m10, as bench/http2.py).
Server on CPU 0, load on CPU 1, the runs alternate, best of ROUNDS each. Target (HTTP/1.1):
ours with the log >= 0.8x ours without."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench import http2
from bench.http1 import (
    BOOTSTRAP,
    HCM_TYPE,
    LOAD_CPU,
    ROUNDS,
    SERVER_CPU,
    VENV_BIN,
    Result,
    _ensure_wrk,
    _free_port,
    _measure,
)

ACCESS_LOG = """\
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
"""


def _bootstrap(port: int, log_path: Path | None) -> str:
    text = BOOTSTRAP.format(port=port, body="hello\\n", hcm_type=HCM_TYPE)
    if log_path is None:
        return text
    marker = "          stat_prefix: bench\n"
    return text.replace(marker, marker + ACCESS_LOG.format(path=log_path))


def run(large: bool) -> list[str]:
    wrk, h2load = _ensure_wrk(), http2._ensure_h2load()
    connections, seconds = (200, 15) if large else (50, 5)
    h2_load = (10, 10, seconds)
    port = _free_port()
    results: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-access-log-") as folder:
        base = Path(folder)
        commands = {}
        for logged in (False, True):
            bootstrap = base / f"bootstrap-{logged}.yaml"
            bootstrap.write_text(_bootstrap(port, base / "access.log" if logged else None))
            commands["xds-proxy", logged] = [
                str(VENV_BIN / "python"), "-m", "xds_proxy", "-c", str(bootstrap),
                "--admin-address-path", f"{folder}/ours.admin", "--disable-hot-restart",
            ]  # fmt: skip
            commands["envoy 1.40", logged] = [
                str(VENV_BIN / "envoy"), "-c", str(bootstrap), "--concurrency", "1",
                "--disable-hot-restart", "-l", "warning",
                "--admin-address-path", f"{folder}/envoy.admin",
            ]  # fmt: skip
        for _ in range(ROUNDS):
            for (name, logged), command in commands.items():
                log = base / f"{name}-{logged}.log"
                found: Result = _measure(command, port, wrk, connections, seconds, log)
                measured = (found.requests_per_s, found.cpu_us_per_request)
                results.setdefault(("HTTP/1.1", name, logged), []).append(measured)
                (base / "access.log").unlink(missing_ok=True)
                measured = http2._measure(command, port, h2load, h2_load, log)
                results.setdefault(("HTTP/2", name, logged), []).append(measured)
                (base / "access.log").unlink(missing_ok=True)
    http1_load = f"wrk -t1 -c{connections} -d{seconds}s"
    return [
        *_table(results, "HTTP/1.1", http1_load, "   (target >= 0.80)"),
        *_table(results, "HTTP/2", f"h2load -t1 -c10 -m10 -D{seconds}", ""),
    ]


def _table(results: dict, protocol: str, load: str, target: str) -> list[str]:
    lines = [
        f"   {protocol} keep-alive, direct_response, {load} "
        f"(server on cpu {SERVER_CPU}, load on cpu {LOAD_CPU}, best of {ROUNDS} alternating)",
        f"   {'':12}{'log':>5}{'req/s':>10}  {'server CPU us/req':>18}",
    ]
    best = {}
    for (kind, name, logged), found in results.items():
        if kind != protocol:
            continue
        rate = max(rate for rate, _ in found)
        cpu = min(cpu for _, cpu in found)
        best[name, logged] = rate
        lines.append(f"   {name:12}{'on' if logged else 'off':>5}{rate:10.0f}  {cpu:18.1f}")
    for name in ("xds-proxy", "envoy 1.40"):
        ratio = best[name, True] / best[name, False]
        shown = target if name == "xds-proxy" else ""
        lines.append(f"   {name:12} req/s with the log / without: {ratio:.2f}{shown}")
    return lines


if __name__ == "__main__":
    for line in run("--large" in sys.argv):
        print(line)
