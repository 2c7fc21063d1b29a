"""The cost of a file access log: HTTP/1.1 keep-alive requests/s on a direct_response
listener with and without an `envoy.access_loggers.file` logger (Envoy's default format),
xds-proxy and Envoy 1.40. Same setup as bench/http1.py (server on CPU 0, wrk on CPU 1, the
runs alternate, best of ROUNDS each). Target: ours with the log >= 0.8x ours without."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

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
    wrk = _ensure_wrk()
    connections, seconds = (200, 15) if large else (50, 5)
    port = _free_port()
    results: dict[tuple[str, bool], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-access-log-") as folder:
        base = Path(folder)
        commands = {}
        for logged in (False, True):
            bootstrap = base / f"bootstrap-{logged}.yaml"
            bootstrap.write_text(_bootstrap(port, base / "access.log" if logged else None))
            commands["xds-proxy", logged] = [
                str(VENV_BIN / "python"), "-m", "xds_proxy", "-c", str(bootstrap),
                "--admin-address-path", f"{folder}/ours.admin",
            ]  # fmt: skip
            commands["envoy 1.40", logged] = [
                str(VENV_BIN / "envoy"), "-c", str(bootstrap), "--concurrency", "1",
                "--disable-hot-restart", "-l", "warning",
                "--admin-address-path", f"{folder}/envoy.admin",
            ]  # fmt: skip
        for _ in range(ROUNDS):
            for key, command in commands.items():
                log = base / f"{key[0]}-{key[1]}.log"
                result = _measure(command, port, wrk, connections, seconds, log)
                results.setdefault(key, []).append(result)
                (base / "access.log").unlink(missing_ok=True)
    lines = [
        f"   HTTP/1.1 keep-alive, direct_response, wrk -t1 -c{connections} -d{seconds}s "
        f"(server on cpu {SERVER_CPU}, wrk on cpu {LOAD_CPU}, best of {ROUNDS} alternating)",
        f"   {'':12}{'log':>5}{'req/s':>10}  {'server CPU us/req':>18}",
    ]
    best = {}
    for (name, logged), found in results.items():
        rate = max(result.requests_per_s for result in found)
        cpu = min(result.cpu_us_per_request for result in found)
        best[name, logged] = rate
        lines.append(f"   {name:12}{'on' if logged else 'off':>5}{rate:10.0f}  {cpu:18.1f}")
    for name in ("xds-proxy", "envoy 1.40"):
        ratio = best[name, True] / best[name, False]
        target = "   (target >= 0.80)" if name == "xds-proxy" else ""
        lines.append(f"   {name:12} req/s with the log / without: {ratio:.2f}{target}")
    return lines


if __name__ == "__main__":
    for line in run("--large" in sys.argv):
        print(line)
