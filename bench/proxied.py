"""Proxied HTTP/1.1 requests/s and the p99 latency the proxy adds: xds-proxy against Envoy
1.40, to an HTTP/1.1 and to an HTTP/2 upstream.

The upstream is a real Envoy answering with `direct_response` (fast and the same for both
runs), pinned with `wrk` to CPU 1; the proxy under test (ours, then Envoy with the same
bootstrap) runs alone on CPU 0. The p99 added is the proxy's p99 minus the upstream's own p99
measured directly. Only the ratios are worth reading on a shared machine.

`python -m bench.proxied --callgrind` counts instead the user-space instructions our proxy
spends per proxied request (valgrind's callgrind, instrumentation switched on around a fixed
number of keep-alive requests): slow, but the same number whatever else the machine runs,
so a change to the proxy path can be compared before and after.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.http1 import _cpu_seconds, _ensure_wrk, _free_port, _wait_listening
from bench.tools import wrk_result

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SERVER_CPU = "0"
LOAD_CPU = "1"
HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _hcm(route: dict) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM_TYPE,
            "stat_prefix": "bench",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, **route}],
                    }
                ]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
            ],
        },
    }


def _listener(name: str, port: int, route: dict) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [_hcm(route)]}],
    }


def _admin() -> dict:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}


def upstream_bootstrap(port: int) -> dict:
    """The fast upstream: 200 `hello`; codec AUTO serves HTTP/1.1 and HTTP/2 alike."""
    route = {"direct_response": {"status": 200, "body": {"inline_string": "hello\n"}}}
    return {"admin": _admin(), "static_resources": {"listeners": [_listener("up", port, route)]}}


def proxy_bootstrap(port: int, upstream_port: int, http2: bool) -> dict:
    cluster: dict = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": "127.0.0.1",
                                        "port_value": upstream_port,
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            PROTOCOL_OPTIONS_KEY: {
                "@type": "type.googleapis.com/" + PROTOCOL_OPTIONS_KEY,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    route = {"route": {"cluster": "upstream"}}
    return {
        "admin": _admin(),
        "static_resources": {
            "listeners": [_listener("bench", port, route)],
            "clusters": [cluster],
        },
    }


def _wrk(wrk: str, port: int, connections: int, seconds: int) -> tuple[float, float, int]:
    """(requests/s, p99 latency in ms, requests)."""
    command = [
        "taskset", "-c", LOAD_CPU, wrk, "-t1", f"-c{connections}", f"-d{seconds}s",
        "--latency", f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate, total = wrk_result(output)
    p99 = re.search(r"99%\s+([0-9.]+)(us|ms|s)\b", output)
    if p99 is None:
        raise RuntimeError(f"cannot read wrk's latency: {output!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rate, float(p99.group(1)) * scale, total


def _start(command: list[str], cpu: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as log_file:
        return subprocess.Popen(
            ["taskset", "-c", cpu, *command],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _envoy(config: Path, admin: Path, base_id: int) -> list[str]:
    return [
        str(VENV_BIN / "envoy"), "-c", str(config), "--concurrency", "1",
        "--base-id", str(base_id), "-l", "warning", "--admin-address-path", str(admin),
    ]  # fmt: skip


def _ours(config: Path, admin: Path) -> list[str]:
    return [
        str(VENV_BIN / "python"), "-m", "xds_proxy", "-c", str(config),
        "--disable-hot-restart", "--admin-address-path", str(admin),
    ]  # fmt: skip


def _wait_proxied(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Listening and answering 200 through to the upstream."""
    _wait_listening(port, process, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no 200 through port {port} within {timeout:.0f} s")


def _measure(
    command: list[str], port: int, wrk: str, connections: int, seconds: int, log: Path
) -> tuple[float, float, float]:
    """(requests/s, p99 latency in ms, the proxy's CPU microseconds per request)."""
    process = _start(command, SERVER_CPU, log)
    try:
        _wait_proxied(port, process)
        _wrk(wrk, port, connections, 1)  # warm-up
        cpu_before = _cpu_seconds(process.pid)  # taskset execs: this pid is the proxy
        rate, p99, requests = _wrk(wrk, port, connections, seconds)
        cpu = _cpu_seconds(process.pid) - cpu_before
        return rate, p99, cpu * 1e6 / requests if requests else float("nan")
    finally:
        _stop(process)


def run(large: bool) -> list[str]:
    wrk = _ensure_wrk()
    connections, seconds = (100, 10) if large else (50, 4)
    lines = [
        f"   proxied HTTP/1.1 keep-alive, wrk -t1 -c{connections} -d{seconds}s (proxy on cpu "
        f"{SERVER_CPU}; wrk and an Envoy direct_response upstream on cpu {LOAD_CPU})"
    ]
    with tempfile.TemporaryDirectory(prefix="bench-proxied-") as name:
        folder = Path(name)
        upstream_port = _free_port()
        upstream_config = folder / "upstream.yaml"
        upstream_config.write_text(yaml.safe_dump(upstream_bootstrap(upstream_port)))
        upstream = _start(
            _envoy(upstream_config, folder / "upstream.admin", 61),
            LOAD_CPU,
            folder / "upstream.log",
        )
        try:
            _wait_listening(upstream_port, upstream)
            _wrk(wrk, upstream_port, connections, 1)
            _, direct_p99, _ = _wrk(wrk, upstream_port, connections, seconds)
            for http2 in (False, True):
                port = _free_port()
                config = folder / f"proxy-{int(http2)}.yaml"
                config.write_text(yaml.safe_dump(proxy_bootstrap(port, upstream_port, http2)))
                ours = _measure(
                    _ours(config, folder / "ours.admin"),
                    port, wrk, connections, seconds, folder / "ours.log",
                )  # fmt: skip
                theirs = _measure(
                    _envoy(config, folder / "envoy.admin", 62),
                    port, wrk, connections, seconds, folder / "envoy.log",
                )  # fmt: skip
                ratio = ours[0] / theirs[0] if theirs[0] else float("nan")
                upstream_kind = "HTTP/2" if http2 else "HTTP/1.1"
                goal = "HTTP/2 >= 0.9, p99 added <= 2x" if http2 else "HTTP/1.1 >= 0.5"
                lines += [
                    f"   to an {upstream_kind} upstream:",
                    f"     xds-proxy   {ours[0]:10.0f} req/s   p99 added "
                    f"{ours[1] - direct_p99:8.2f} ms   {ours[2]:6.1f} CPU us/req",
                    f"     envoy 1.40  {theirs[0]:10.0f} req/s   p99 added "
                    f"{theirs[1] - direct_p99:8.2f} ms   {theirs[2]:6.1f} CPU us/req",
                    f"     ratio       {ratio:10.2f}   (goal for {goal})",
                ]
        finally:
            _stop(upstream)
    return lines


# -- instructions per request (callgrind) ------------------------------------------------------

CALLGRIND_CONNECTIONS = 10
CALLGRIND_REQUESTS = 100  # per connection


async def _keep_alive_client(port: int, requests: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(requests):
        writer.write(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"not a 200: {head!r}")
        length = re.search(rb"content-length: (\d+)", head.lower())
        await reader.readexactly(int(length.group(1)) if length else 0)
    writer.close()


def _requests(port: int, per_connection: int) -> None:
    async def all_clients() -> None:
        clients = [_keep_alive_client(port, per_connection) for _ in range(CALLGRIND_CONNECTIONS)]
        await asyncio.gather(*clients)

    asyncio.run(all_clients())


def _instructions(out_file: Path) -> int:
    for line in out_file.read_text().splitlines():
        if line.startswith("totals:"):  # (the `summary:` line says 0 once switched on late)
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out_file}")


def instructions_per_request(http2: bool) -> float:
    """Our proxy's user-space instructions per proxied request, HTTP/2 upstream or not."""
    with tempfile.TemporaryDirectory(prefix="bench-proxied-cg-") as name:
        folder = Path(name)
        upstream_port = _free_port()
        port = _free_port()  # (chosen before the upstream's admin takes an ephemeral port)
        upstream_config = folder / "upstream.yaml"
        upstream_config.write_text(yaml.safe_dump(upstream_bootstrap(upstream_port)))
        upstream = _start(
            _envoy(upstream_config, folder / "upstream.admin", 63 + int(http2)),
            LOAD_CPU,
            folder / "upstream.log",
        )
        try:
            _wait_listening(upstream_port, upstream)
            config = folder / "proxy.yaml"
            config.write_text(yaml.safe_dump(proxy_bootstrap(port, upstream_port, http2)))
            out_file = folder / "callgrind.out"
            command = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out_file}", *_ours(config, folder / "ours.admin"),
            ]  # fmt: skip
            proxy = _start(command, SERVER_CPU, folder / "ours.log")
            try:
                _wait_proxied(port, proxy, timeout=600)
                if proxy.poll() is not None:
                    raise RuntimeError(f"the proxy exited: {(folder / 'ours.log').read_text()}")
                _requests(port, 20)  # warm-up: connections made, caches filled
                subprocess.run(
                    ["callgrind_control", "-i", "on", str(proxy.pid)],
                    check=True,
                    capture_output=True,
                )
                _requests(port, CALLGRIND_REQUESTS)
                subprocess.run(
                    ["callgrind_control", "-i", "off", str(proxy.pid)],
                    check=True,
                    capture_output=True,
                )
            finally:
                proxy.terminate()
                proxy.wait(120)
            return _instructions(out_file) / (CALLGRIND_CONNECTIONS * CALLGRIND_REQUESTS)
        finally:
            _stop(upstream)


if __name__ == "__main__":
    if "--callgrind" in sys.argv:
        for http2 in (False, True):
            kind = "HTTP/2" if http2 else "HTTP/1.1"
            count = instructions_per_request(http2)
            print(f"to an {kind} upstream: {count:,.0f} instructions per proxied request")
    else:
        for line in run("--large" in sys.argv):
            print(line)
