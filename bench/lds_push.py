"""Push-to-ACK and push-to-all-serving for N distinct listeners (bench/fleet.py: own names,
routes, bodies; every one must answer a request), and for one modified listener among 1,000:
xds-proxy and Envoy 1.40 side by side, each fed by the same minimal LDS server.

The server here pre-builds every DiscoveryResponse and timestamps the moment it hands one to
gRPC and the moment the ACK (the request carrying its nonce) comes back, so the numbers are
the proxy's, not the control plane's.

`python -m bench.lds_push --modifies N` (ours only): N modifies in a row on one proxy, each
changing one more listener never sent before; the first's and the median's time to served
and the CPU time of the proxy's main thread (decode, apply, ACK, serve) from push to served:
steadier than one wall-clock row on a shared machine.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc
from google.protobuf import any_pb2, json_format

import xds_proxy.extensions  # noqa: F401 - registers the typed_config types for ParseDict
from bench.fleet import all_answer, catch_all_body, distinct_listener
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


class MinimalLds(lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    """One SotW LDS stream at a time; `push()` returns (sent, acked) monotonic times."""

    def __init__(self) -> None:
        self._outbox: queue.Queue[discovery_pb2.DiscoveryResponse] = queue.Queue()
        self._requests: queue.Queue[discovery_pb2.DiscoveryRequest] = queue.Queue()
        self._nonce = 0
        self._sent_at = 0.0

    def StreamListeners(self, request_iterator, context):
        def read() -> None:
            try:
                for request in request_iterator:
                    self._requests.put(request)
            except grpc.RpcError:
                pass  # the proxy went away at the end of the run

        threading.Thread(target=read, daemon=True).start()
        while context.is_active():
            try:
                response = self._outbox.get(timeout=0.05)
            except queue.Empty:
                continue
            self._sent_at = time.monotonic()
            yield response

    def response(self, version: str, listeners: list[listener_pb2.Listener]):
        self._nonce += 1
        resources = []
        for listener in listeners:
            packed = any_pb2.Any()
            packed.Pack(listener)
            resources.append(packed)
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=LISTENER_TYPE,
            nonce=str(self._nonce),
            resources=resources,
        )

    def push(self, response: discovery_pb2.DiscoveryResponse) -> tuple[float, float]:
        self._outbox.put(response)
        while True:
            request = self._requests.get(timeout=120)
            if request.response_nonce == response.nonce:
                if request.HasField("error_detail"):
                    raise RuntimeError(f"NACK: {request.error_detail.message}")
                return self._sent_at, time.monotonic()

    def wait_subscribed(self) -> None:
        self._requests.get(timeout=30)


def _messages(dicts: list[dict]) -> list[listener_pb2.Listener]:
    result = []
    for doc in dicts:
        message = listener_pb2.Listener()
        json_format.ParseDict(doc, message)
        result.append(message)
    return result


def _fleet(prefix: str, ports: list[int], modified: int = -1) -> list[dict]:
    return [
        distinct_listener(prefix, i, port, modified=(i == modified)) for i, port in enumerate(ports)
    ]


def _ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


def _push(process, plane: MinimalLds, count: int) -> dict[str, float]:
    """`count` distinct listeners at once: until the ACK, and until each has answered."""
    prefix = f"n{count}"
    ports = _ports(count)
    response = plane.response(prefix, _messages(_fleet(prefix, ports)))
    sent, acked = plane.push(response)
    served = all_answer({port: catch_all_body(prefix, i) for i, port in enumerate(ports)})
    return {
        f"push {count:>5} distinct -> ACK": acked - sent,
        f"push {count:>5} distinct -> all serving": served - sent,
    }


def _modify_one_of_1000(process, plane: MinimalLds) -> dict[str, float]:
    """An in-place filter-chain update of one listener among 1,000 distinct ones."""
    ports = _ports(1000)
    plane.push(plane.response("m1", _messages(_fleet("m", ports))))
    all_answer({port: catch_all_body("m", i) for i, port in enumerate(ports)})
    changed = plane.response("m2", _messages(_fleet("m", ports, modified=500)))
    sent, acked = plane.push(changed)
    served = all_answer({ports[500]: catch_all_body("m", 500, modified=True)}, retry_s=0.0005)
    return {
        "modify 1 of 1000 -> ACK": acked - sent,
        "modify 1 of 1000 -> served": served - sent,
    }


def _main_thread_cpu_s(pid: int) -> float:
    """CPU time of a process's main thread (for ours: its event loop)."""
    with open(f"/proc/{pid}/task/{pid}/schedstat") as stat:
        return int(stat.read().split()[0]) / 1e9


def _modifies(count: int):
    """`count` modifies in a row among 1,000, each of a listener not modified before."""

    def scenario(process: ProxyProcess, plane: MinimalLds) -> dict[str, float]:
        ports = _ports(1000)
        documents = _fleet("m", ports)
        plane.push(plane.response("m1", _messages(documents)))
        all_answer({port: catch_all_body("m", i) for i, port in enumerate(ports)})
        assert process.process is not None
        pid = process.process.popen.pid
        served: list[float] = []
        cpu: list[float] = []
        for k in range(count):
            i = 100 + k
            documents[i] = distinct_listener("m", i, ports[i], modified=True)
            response = plane.response(f"m{k + 2}", _messages(documents))
            before = _main_thread_cpu_s(pid)
            sent, _ = plane.push(response)
            done = all_answer({ports[i]: catch_all_body("m", i, modified=True)}, retry_s=0.0005)
            cpu.append(_main_thread_cpu_s(pid) - before)
            served.append(done - sent)
        return {
            "first modify -> served": served[0],
            "first modify, main-thread CPU": cpu[0],
            f"median of {count} -> served": statistics.median(served),
            f"median of {count}, main-thread CPU": statistics.median(cpu),
        }

    return scenario


def _measured(make, workdir: Path, scenario, attempts: int = 3) -> dict[str, float]:
    """`_run_one`, again with fresh ports when one of the 1,000 picked was taken meanwhile by
    another process on this machine (the bind NACK is about the machine, not the proxy)."""
    for attempt in range(attempts):
        try:
            return _run_one(make, workdir / f"try{attempt}", scenario)
        except RuntimeError as error:
            if "ddress already in use" not in str(error) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _run_one(make, workdir: Path, scenario) -> dict[str, float]:
    """One scenario on a fresh LDS server and a fresh proxy."""
    plane = MinimalLds()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(plane, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    process = make(lds_bootstrap(f"127.0.0.1:{port}"), workdir)
    try:
        process.start()
        plane.wait_subscribed()
        plane.push(plane.response("empty", []))
        return scenario(process, plane)
    finally:
        process.stop()
        server.stop(0)


def run(large: bool) -> list[str]:
    counts = [1, 100, 1000] + ([10000] if large else [])
    scenarios = [lambda p, s, n=n: _push(p, s, n) for n in counts] + [_modify_one_of_1000]
    envoy: dict[str, float] = {}
    ours: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-lds-") as scratch:
        workdir = Path(scratch)
        for i, scenario in enumerate(scenarios):
            envoy |= _measured(
                lambda b, w: EnvoyProcess(b, w, log_level="error"), workdir / f"e{i}", scenario
            )
            ours |= _measured(
                lambda b, w: ProxyProcess(b, w, log_level="error"), workdir / f"o{i}", scenario
            )
    lines = [f"   {'':32} {'envoy':>10} {'xds-proxy':>10} {'envoy/ours':>10}"]
    for key in envoy:
        ratio = envoy[key] / ours[key] if ours[key] else float("inf")
        lines.append(
            f"   {key:32} {envoy[key] * 1000:8.1f}ms {ours[key] * 1000:8.1f}ms {ratio:9.2f}x"
        )
    lines.append("   (envoy/ours > 1: xds-proxy is faster)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lds_push")
    parser.add_argument("--modifies", type=int, default=20, help="modifies in a row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lds-") as scratch:
        rows = _measured(
            lambda b, w: ProxyProcess(b, w, log_level="error"),
            Path(scratch),
            _modifies(args.modifies),
        )
    for key, value in rows.items():
        print(f"   {key:36} {value * 1000:8.2f}ms")


if __name__ == "__main__":
    main()
