"""Benchmark: push N listeners to control-plane-stub -> ACK by 10 connected SotW LDS clients.

`run(large)` starts the stub as its own process (so its memory is its own), connects ten
Envoy-like clients (XdsProbe: SotW LDS, one node each, ACK on receipt), pushes 1,000
listeners (10,000 when large) through the control API and reports how long until every
client had the set and until the stub had recorded every ACK, plus the stub's RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from control_plane_stub.client import StubClient
from control_plane_stub.probe import XdsProbe
from control_plane_stub.resources import LISTENER_TYPE, NamedResource

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 10


def build_listeners(count: int) -> list[NamedResource]:
    """`count` HTTP listeners (HCM, inline route, direct_response), as the stub serves them."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix="bench")
    route = manager.route_config.virtual_hosts.add(name="all", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    route.direct_response.body.inline_string = "hello from the benchmark\n"
    router = manager.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.type_url = (
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    )
    typed_config = any_pb2.Any()
    typed_config.Pack(manager)
    resources = []
    for index in range(count):
        listener = listener_pb2.Listener(name=f"bench-{index}")
        listener.address.socket_address.address = "127.0.0.1"
        listener.address.socket_address.port_value = 20000 + index % 40000
        chain_filter = listener.filter_chains.add().filters.add(
            name="envoy.filters.network.http_connection_manager"
        )
        chain_filter.typed_config.CopyFrom(typed_config)
        body = any_pb2.Any(type_url=LISTENER_TYPE, value=listener.SerializeToString())
        resources.append(NamedResource(name=listener.name, body=body))
    return resources


def rss_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0])
    return values


def start_stub(workdir: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    ready = workdir / "ready.json"
    log = open(workdir / "stub.log", "wb")  # noqa: SIM115 - lives as long as the process
    python_path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{python_path or ''}"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "control_plane_stub",
            "serve",
            "--xds",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "-l",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stub exited: {(workdir / 'stub.log').read_text()[-2000:]}")
        try:
            return process, json.loads(ready.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)  # polling a file the child writes; not test synchronisation
    process.terminate()
    raise TimeoutError("stub did not start")


async def _measure(addresses: dict[str, str], count: int, pid: int) -> dict[str, float]:
    probes = [
        await XdsProbe(addresses["xds"], f"bench-{i}", auto_ack=True).start()
        for i in range(CLIENTS)
    ]
    client = StubClient(addresses["control"], rpc_timeout=120)
    try:
        for probe in probes:
            probe.subscribe()
        for probe in probes:
            await probe.next(timeout=20)  # the initial (empty) set
        idle = rss_kib(pid)
        resources = build_listeners(count)

        def push() -> tuple[dict[str, str], float]:
            versions = client.set_resources(listeners=resources)
            return versions, time.perf_counter() - started

        started = time.perf_counter()
        pushing = asyncio.create_task(asyncio.to_thread(push))
        responses = [await probe.next(timeout=300) for probe in probes]
        received = time.perf_counter() - started
        versions, pushed = await pushing
        await asyncio.to_thread(client.wait, versions["listeners"], None, 300)
        acked = time.perf_counter() - started
        after = rss_kib(pid)
        assert all(len(r.resources) == count for r in responses)
        return {
            "push_rpc_s": pushed,
            "received_s": received,
            "acked_s": acked,
            "response_mib": responses[0].ByteSize() / 2**20,
            "idle_rss_mib": idle["VmRSS"] / 1024,
            "rss_mib": after["VmRSS"] / 1024,
            "peak_rss_mib": after["VmHWM"] / 1024,
        }
    finally:
        client.close()
        for probe in probes:
            await probe.close()


def run(large: bool) -> list[str]:
    """Printable lines for `make bench` (LARGE=1: 10,000 listeners)."""
    count = 10_000 if large else 1_000
    with tempfile.TemporaryDirectory(prefix="stub-bench-") as scratch:
        process, addresses = start_stub(Path(scratch))
        try:
            result = asyncio.run(_measure(addresses, count, process.pid))
        finally:
            process.terminate()
            process.wait(10)
    return [
        f"control-plane-stub: push of {count:,} listeners -> ACK by {CLIENTS} SotW LDS clients",
        f"  response size             {result['response_mib']:8.2f} MiB per client",
        f"  push RPC returned         {result['push_rpc_s']:8.3f} s",
        f"  all clients received      {result['received_s']:8.3f} s",
        f"  stub recorded all ACKs    {result['acked_s']:8.3f} s",
        f"  stub RSS idle / after     {result['idle_rss_mib']:8.1f} / {result['rss_mib']:.1f} MiB"
        f" (peak {result['peak_rss_mib']:.1f} MiB)",
    ]


if __name__ == "__main__":
    for line in run(large="--large" in sys.argv[1:]):
        print(line)
