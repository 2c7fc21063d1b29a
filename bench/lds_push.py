"""Push-to-ACK and push-to-serving for N listeners, and for one modified listener among 1,000:
xds-proxy and Envoy 1.40 side by side, each fed by the same minimal LDS server.

The server here pre-builds every DiscoveryResponse and timestamps the moment it hands one to
gRPC and the moment the ACK (the request carrying its nonce) comes back, so the numbers are
the proxy's, not the control plane's.
"""

from __future__ import annotations

import queue
import socket
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
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get
from tests.helpers.listeners import http_listener, lds_bootstrap
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


def _listeners(
    prefix: str, count: int, body: str = "ok", modified: int = -1, ports: list[int] | None = None
) -> list[dict]:
    return [
        http_listener(
            f"{prefix}-{i}", ports[i] if ports else 0, body=("changed" if i == modified else body)
        )
        for i in range(count)
    ]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _port_of(process, name: str) -> int | None:
    address = process.listeners().get(name)
    return None if address is None else int(address.rpartition(":")[2])


def _until(condition, what: str, timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"timed out waiting for {what}")


def _push(process, plane: MinimalLds, count: int) -> dict[str, float]:
    prefix = f"n{count}"
    response = plane.response(prefix, _messages(_listeners(prefix, count)))
    sent, acked = plane.push(response)
    last = f"{prefix}-{count - 1}"
    served = _until(
        lambda: (port := _port_of(process, last)) and get(port).status == 200,
        f"{type(process).__name__}: {last} serving",
    )
    return {
        f"push {count:>5} -> ACK": acked - sent,
        f"push {count:>5} -> serving": served - sent,
    }


def _modify_one_of_1000(process, plane: MinimalLds) -> dict[str, float]:
    """An in-place filter-chain update of one listener among 1,000."""
    ports = _free_ports(1000)
    plane.push(plane.response("m1", _messages(_listeners("m", 1000, ports=ports))))
    _until(lambda: get(ports[500]).text == "ok", "m-500 serving")
    changed = plane.response("m2", _messages(_listeners("m", 1000, modified=500, ports=ports)))
    sent, acked = plane.push(changed)
    served = _until(
        lambda: get(ports[500]).text == "changed", f"{type(process).__name__}: m-500 changed"
    )
    return {
        "modify 1 of 1000 -> ACK": acked - sent,
        "modify 1 of 1000 -> serving": served - sent,
    }


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
            envoy |= _run_one(
                lambda b, w: EnvoyProcess(b, w, log_level="error"), workdir / f"e{i}", scenario
            )
            ours |= _run_one(
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
