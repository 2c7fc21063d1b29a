"""A client that never reads cannot make the real `xds-proxy` process buffer without bound
(issue 14, Envoy's `per_connection_buffer_limit_bytes`, default 1 MiB).

Each test pipelines far more than the limit, stops reading, waits until the proxy has stopped
making progress, and checks the proxy's peak resident memory (VmHWM, reset before the test
through /proc/PID/clear_refs) against the limit plus a fixed slack; then the client reads and
every response must arrive, in order.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hpack import Encoder
from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

from tests.helpers.listeners import chain
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import cluster_dict
from xds_proxy.http.http2 import BLOCKED_STREAM_COST

MIB = 1024 * 1024
DEFAULT_LIMIT = MIB  # Envoy's default per_connection_buffer_limit_bytes
SMALL_LIMIT = 64 * 1024  # the listener "http2_small" sets per_connection_buffer_limit_bytes
SLACK = 8 * MIB  # the interpreter, one socket read (256 KiB) and allocator noise
BIG_BODY = "b" * 4096  # Envoy's largest direct_response body
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def http1_chain(stat_prefix: str) -> dict:
    """`/big` answers 4 KiB; `/r/ID` redirects to `/x/ID`, so each answer names its request."""
    result = chain("small", stat_prefix=stat_prefix)
    routes = result["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    routes[:0] = [
        {
            "match": {"prefix": "/big"},
            "direct_response": {"status": 200, "body": {"inline_string": BIG_BODY}},
        },
        {"match": {"prefix": "/r/"}, "redirect": {"prefix_rewrite": "/x/"}},
    ]
    return result


class Served:
    def __init__(self, proxy: ProxyProcess, ports: dict[str, int], firehose: Firehose) -> None:
        self.proxy = proxy
        self.ports = ports
        self.firehose = firehose

    @property
    def pid(self) -> int:
        assert self.proxy.process is not None
        return self.proxy.process.popen.pid

    def connect(self, listener: str) -> socket.socket:
        # The default receive buffer: it stays small (about 128 KiB) while nothing is read, so
        # what the proxy writes backs up in the proxy. (Shrinking it after the connect makes
        # Linux trickle the data at one probe per retransmission timeout once we do read.)
        return socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=10)

    def stat(self, name: str) -> int:
        value = self.proxy.stat(name)
        return 0 if value is None else value


FIREHOSE_BYTES = 64 * MIB
FIREHOSE_BLOCK = bytes(range(256)) * 256  # 64 KiB


class Firehose(threading.Thread):
    """A TCP upstream that sends FIREHOSE_BYTES to each connection as fast as it is taken,
    then closes; `sent` counts what the proxy has taken so far."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                for _ in range(FIREHOSE_BYTES // len(FIREHOSE_BLOCK)):
                    try:
                        conn.sendall(FIREHOSE_BLOCK)
                    except OSError:
                        break
                    self.sent += len(FIREHOSE_BLOCK)

    def close(self) -> None:
        self.listener.close()


def tcp_proxy_chain(stat_prefix: str, cluster: str) -> dict:
    return {
        "filters": [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": TCP_PROXY,
                    "stat_prefix": stat_prefix,
                    "cluster": cluster,
                },
            }
        ]
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ports = {name: free_port() for name in ("http1", "http2", "http2_small", "tcp")}
    chains = {
        "http1": http1_chain("http1"),
        "http2": http1_chain("http2"),
        "http2_small": http1_chain("http2_small"),
        "tcp": tcp_proxy_chain("tcp", "firehose"),
    }
    listeners = [
        {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [chains[name]],
            **({"per_connection_buffer_limit_bytes": SMALL_LIMIT} if name == "http2_small" else {}),
        }
        for name in ports
    ]
    firehose = Firehose()
    firehose.start()
    bootstrap = {
        "node": {"id": "buffers", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": listeners,
            "clusters": [cluster_dict("firehose", [firehose.port])],
        },
    }
    proxy = ProxyProcess(bootstrap, tmp_path_factory.mktemp("bounded-buffers"), log_level="warning")
    try:
        proxy.start()
        proxy.wait_ready()
        yield Served(proxy, ports, firehose)
    finally:
        proxy.stop()
        firehose.close()


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def reset_peak(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_until_stalled(progress: Callable[[], int], what: str) -> int:
    """Wait until `progress()` stops moving across several consecutive polls: the proxy has
    stopped reading the client (a deadline, not a sleep, bounds the wait)."""
    history: list[int] = []

    def stalled() -> bool:
        history.append(progress())
        return len(history) >= 6 and len(set(history[-6:])) == 1

    wait_for(stalled, timeout=20, interval=0.05, what=what)
    return history[-1]


class Sender(threading.Thread):
    """Sends one payload with blocking writes, so the proxy's pace sets ours."""

    def __init__(self, sock: socket.socket, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.payload = payload
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self.sock.sendall(self.payload)
        except OSError as error:  # reported by the test
            self.error = error


def read_until(sock: socket.socket, done: Callable[[bytes], bool], timeout: float) -> bytes:
    received = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    while not done(received):
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(received)} bytes arrived")
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    return bytes(received)


BIG_REQUESTS = 8_000
SMALL_REQUESTS = 192_000


def test_http1_pipelining_client_that_does_not_read(served: Served) -> None:
    """200k pipelined requests (8k for 4 KiB answers first: one socket read of them would make
    35 MB of answers), sent while the client reads nothing."""
    pid = served.pid
    requests = [b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n"] * BIG_REQUESTS
    requests += [b"GET /r/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(SMALL_REQUESTS)]
    total = len(requests)
    reset_peak(pid)
    before = memory_kib(pid)
    sock = served.connect("http1")
    sender = Sender(sock, b"".join(requests))
    try:
        sender.start()
        answered = wait_until_stalled(
            lambda: served.stat("http.http1.downstream_rq_total"), "the proxy to stop reading"
        )
        during = memory_kib(pid)
        grown_kib = during["VmHWM"] - before["VmRSS"]
        print(f"before {before}, during {during}: grew {grown_kib} KiB, {answered} answered")
        assert answered < total, "the proxy answered everything without pushing back"
        assert grown_kib * 1024 < DEFAULT_LIMIT + SLACK, f"the proxy grew {grown_kib} KiB"

        expected_tail = b"location: http://h/x/%d\r\n" % (SMALL_REQUESTS - 1)
        received = read_until(sock, lambda data: expected_tail in data[-4096:], timeout=60)
        sender.join(timeout=10)
        assert sender.error is None, sender.error
    finally:
        sock.close()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    assert len(statuses) == total
    assert statuses[:BIG_REQUESTS] == [b"200"] * BIG_REQUESTS
    locations = re.findall(rb"location: http://h/x/(\d+)\r\n", received)
    assert [int(n) for n in locations] == list(range(SMALL_REQUESTS))
    assert served.proxy.alive()


class H2Frames(threading.Thread):
    """Reads the proxy's frames off the socket (acknowledging its SETTINGS): per stream, the
    DATA bytes, whether it ended, whether it was refused."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.lock = threading.Lock()
        self.answered: set[int] = set()  # HEADERS received
        self.refused: set[int] = set()
        self.data: dict[int, int] = {}
        self.ended: set[int] = set()
        self.goaway = False

    def run(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags = buffer[3], buffer[4]
                stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                buffer = buffer[9 + length :]
                with self.lock:
                    self._on_frame(kind, flags, stream_id, length)

    def _on_frame(self, kind: int, flags: int, stream_id: int, length: int) -> None:
        end_stream = bool(flags & 0x1)
        if kind == 0x0:  # DATA
            self.data[stream_id] = self.data.get(stream_id, 0) + length
        elif kind == 0x1:  # HEADERS
            self.answered.add(stream_id)
        elif kind == 0x3:  # RST_STREAM
            self.refused.add(stream_id)
        elif kind == 0x4 and not flags & 0x1:  # SETTINGS, not an ACK
            self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        elif kind == 0x7:
            self.goaway = True
        if end_stream and kind in (0x0, 0x1):
            self.ended.add(stream_id)

    def settled(self, streams: int) -> bool:
        with self.lock:
            return len(self.answered) + len(self.refused) == streams


H2_STREAMS = 10_000


@pytest.mark.parametrize(
    ("listener", "limit"), [("http2", DEFAULT_LIMIT), ("http2_small", SMALL_LIMIT)]
)
def test_http2_client_that_grants_no_flow_control_credit(
    served: Served, listener: str, limit: int
) -> None:
    """10k streams asking for 4 KiB each, with a stream window of 0: no DATA may flow. The
    proxy answers the headers of as many as the listener's buffer limit holds and refuses the
    rest (REFUSED_STREAM: safe to retry); then the client grants credit and every answered
    stream gets its whole body."""
    pid = served.pid
    encoder = Encoder()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "h"), (":path", "/big")]
    frames = [H2_PREFACE, SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})]
    for index in range(H2_STREAMS):
        frame = HeadersFrame(1 + 2 * index, flags=["END_HEADERS", "END_STREAM"])
        frame.data = encoder.encode(headers)
        frames.append(frame)
    payload = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
    reset_peak(pid)
    before = memory_kib(pid)
    sock = socket.create_connection(("127.0.0.1", served.ports[listener]), timeout=10)
    reader = H2Frames(sock)
    try:
        reader.start()
        sock.sendall(payload)
        wait_for(lambda: reader.settled(H2_STREAMS), timeout=30, what="an answer to every stream")
        during = memory_kib(pid)
        grown_kib = during["VmHWM"] - before["VmRSS"]
        with reader.lock:
            answered, refused = set(reader.answered), set(reader.refused)
        print(f"grew {grown_kib} KiB; {len(answered)} answered, {len(refused)} refused")
        assert grown_kib * 1024 < DEFAULT_LIMIT + SLACK, f"the proxy grew {grown_kib} KiB"
        assert len(answered) == limit // BLOCKED_STREAM_COST
        assert not reader.data  # no credit, no DATA
        refused_stat = f"http.{listener}.downstream_rq_refused_flow_control"
        assert served.stat(refused_stat) == len(refused)

        credit = [WindowUpdateFrame(0, window_increment=len(answered) * 4096)]
        credit += [WindowUpdateFrame(stream_id, window_increment=4096) for stream_id in answered]
        sock.sendall(b"".join(frame.serialize() for frame in credit))
        wait_for(lambda: reader.ended >= answered, timeout=20, what="every answered body")
        with reader.lock:
            assert all(reader.data[stream_id] == 4096 for stream_id in answered)
            assert not reader.goaway
    finally:
        sock.close()
    assert served.proxy.alive()


def test_tcp_proxy_fast_upstream_and_a_downstream_that_does_not_read(served: Served) -> None:
    """The upstream sends 64 MiB at once; the client reads nothing until the proxy has stopped
    taking the upstream's bytes, then reads all of them, intact and in order."""
    pid = served.pid
    firehose = served.firehose
    reset_peak(pid)
    before = memory_kib(pid)
    sent_before = firehose.sent
    with socket.create_connection(("127.0.0.1", served.ports["tcp"]), timeout=10) as sock:
        taken = wait_until_stalled(lambda: firehose.sent, "the proxy to stop taking bytes")
        during = memory_kib(pid)
        grown_kib = during["VmHWM"] - before["VmRSS"]
        print(f"grew {grown_kib} KiB with {taken - sent_before} bytes taken from the upstream")
        assert taken - sent_before < FIREHOSE_BYTES, "the proxy took everything"
        assert grown_kib * 1024 < DEFAULT_LIMIT + SLACK, f"the proxy grew {grown_kib} KiB"

        received = 0
        mismatch = None
        pending = b""
        sock.settimeout(20)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            pending += chunk
            whole = len(pending) - len(pending) % len(FIREHOSE_BLOCK)
            if mismatch is None and pending[:whole] != FIREHOSE_BLOCK * (
                whole // len(FIREHOSE_BLOCK)
            ):
                mismatch = received
            received += whole
            pending = pending[whole:]
    assert mismatch is None, f"bytes differ after offset {mismatch}"
    assert received + len(pending) == FIREHOSE_BYTES
    assert served.proxy.alive()
