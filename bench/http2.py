"""HTTP/2 requests/s on a direct_response listener: xds-proxy against Envoy 1.40, and the
ceiling of the `h2` codec itself on this machine.

Both servers run bench/http1.py's bootstrap (codec AUTO: prior-knowledge HTTP/2), one after
the other, pinned to CPU 0 with `taskset`; `h2load` (Debian's `nghttp2-client`) runs pinned
to CPU 1; the two alternate and the best round of each counts.

The codec ceiling is h2 alone in this process: a server `H2Connection` fed the bytes of
h2load-like batches of requests (frames in) and answering each with the same response
headers and body as ours (responses out), no sockets and no event loop. Our connection
answers repeated whole requests without h2 (issue 23), so it now runs above that ceiling;
"ours, no I/O" is our `Http2Connection` alone (in-process, CPU time), and the rest of our
CPU per request is the event loop and sockets.

`python -m bench.http2 --in-process N` prints only our CPU nanoseconds per request, in
process, N requests over 50 connections of 10 concurrent streams (h2load -c50 -m10), the
median of 5 runs: the steady number to compare before and after a change (also under
`valgrind --tool=callgrind`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import yaml
from google.protobuf import json_format
from hpack import Encoder
from hyperframe.frame import HeadersFrame, SettingsFrame, WindowUpdateFrame

from bench.http1 import (
    BOOTSTRAP,
    HCM_TYPE,
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    VENV_BIN,
    _cpu_seconds,
    _free_port,
    _wait_listening,
)
from bench.tools import ensure_tool, h2load_result

ROUNDS = 2
BODY = b"hello\n"


def _ensure_h2load() -> str:
    return ensure_tool("h2load", "nghttp2-client")


def _h2load(h2load: str, port: int, clients: int, streams: int, seconds: int) -> tuple[float, int]:
    command = [
        "taskset", "-c", LOAD_CPU, h2load, "-t1", f"-c{clients}", f"-m{streams}",
        f"-D{seconds}", f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return h2load_result(output)


def _measure(
    command: list[str], port: int, h2load: str, load: tuple[int, int, int], log: Path
) -> tuple[float, float]:
    """(requests/s, server CPU microseconds per request)."""
    clients, streams, seconds = load
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
            _h2load(h2load, port, clients, streams, 1)  # warm-up
            cpu_before = _cpu_seconds(process.pid)
            rate, requests = _h2load(h2load, port, clients, streams, seconds)
            cpu = _cpu_seconds(process.pid) - cpu_before
            return rate, cpu * 1e6 / requests if requests else float("nan")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _client_batches(requests: int, batch: int) -> tuple[bytes, list[bytes]]:
    """What an h2load connection sends: the preface, SETTINGS and a large connection window
    (h2load's default is 2^30-1), then `batch` requests at a time (its -m), each batch one
    read for the server. Encoded with hpack and hyperframe directly: an h2 client holding
    thousands of unanswered streams gets slower with each one."""
    opening = (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**30 - 1}).serialize()
        + WindowUpdateFrame(0, window_increment=2**30 - 1 - 65535).serialize()
    )
    encoder = Encoder()
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")]
    batches = []
    stream_id = 1
    for start in range(0, requests, batch):
        frames = []
        for _ in range(min(batch, requests - start)):
            block = encoder.encode(headers)
            frames.append(
                HeadersFrame(stream_id, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            )
            stream_id += 2
        batches.append(b"".join(frames))
    return opening, batches


def codec_ceiling(requests: int = 20000, batch: int = 10) -> float:
    """Requests per CPU second of h2 alone: frames in, responses out, in this process (CPU
    time, not wall time: other load on a shared machine would count otherwise)."""
    opening, batches = _client_batches(requests, batch)
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    server = h2.connection.H2Connection(config)
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1}
    )
    server.initiate_connection()
    server.receive_data(opening)
    server.data_to_send()
    response_headers = [
        (b":status", b"200"),
        (b"content-length", str(len(BODY)).encode()),
        (b"content-type", b"text/plain"),
        (b"date", b"Sat, 28 Nov 2026 00:00:00 GMT"),
        (b"server", b"envoy"),
    ]
    request_received = h2.events.RequestReceived
    started = time.process_time()
    for data in batches:
        for event in server.receive_data(data):
            if type(event) is request_received:
                stream_id = event.stream_id
                server.send_headers(stream_id, response_headers)
                server.send_data(stream_id, BODY, end_stream=True)
        server.data_to_send()
    return requests / (time.process_time() - started)


class _CountingTransport(asyncio.Transport):
    """Takes the connection's writes and drops them: the in-process measurement below."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (512 * 1024, 1024 * 1024)  # (low, high), as a listener's default sets them

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def connection_ceiling(requests: int = 20000, batch: int = 10) -> float:
    """Requests per CPU second of our `Http2Connection` fed the same batches as
    `codec_ceiling`, without sockets: what our connection layer adds to the codec."""
    return 1e9 / connections_cpu_ns(connections=1, streams=batch, requests=requests, runs=1)


def _bench_hcm_config() -> tuple[object, object]:
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm_pb2,
    )

    from xds_proxy.http.conn_manager import build_http_connection_manager
    from xds_proxy.stats import Stats

    text = BOOTSTRAP.format(port=1, body="hello\\n", hcm_type=HCM_TYPE)
    typed = yaml.safe_load(text)["static_resources"]["listeners"][0]["filter_chains"][0]
    typed = dict(typed["filters"][0]["typed_config"])
    typed.pop("@type")
    message = json_format.ParseDict(typed, hcm_pb2.HttpConnectionManager())
    stats = Stats()
    return build_http_connection_manager(message, "hcm", stats), stats


def connections_cpu_ns(
    connections: int = 50, streams: int = 10, requests: int = 50000, runs: int = 5
) -> float:
    """CPU nanoseconds per request of our `Http2Connection`s without sockets, as h2load
    -c`connections` -m`streams` loads them: each connection is fed `streams` GET requests per
    read, the connections take turns; `process_time`, the median of `runs` (steadier than
    wall time on a shared machine)."""
    from xds_proxy.http.http2 import Http2Connection
    from xds_proxy.listener.context import FilterChainContext

    config, stats = _bench_hcm_config()
    per_connection = max(1, requests // connections)
    # Every connection's client encodes the same requests the same way: one list serves all.
    opening, batches = _client_batches(per_connection, streams)

    async def measure() -> float:
        context = FilterChainContext(stats=stats, listener_name="b")  # type: ignore[arg-type]
        opened = []
        for _ in range(connections):
            connection = Http2Connection(config, context)  # type: ignore[arg-type]
            connection.connection_made(_CountingTransport())
            connection.data_received(opening)
            opened.append(connection)
        started = time.process_time()
        for data in batches:
            for connection in opened:
                connection.data_received(data)
        elapsed = time.process_time() - started
        for connection in opened:
            connection.connection_lost(None)
        return elapsed * 1e9 / (per_connection * connections)

    results = sorted(asyncio.run(measure()) for _ in range(runs))
    return results[len(results) // 2]


def run(large: bool) -> list[str]:
    h2load = _ensure_h2load()
    clients, streams, seconds = (100, 10, 15) if large else (10, 10, 5)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-http2-") as folder:
        bootstrap = Path(folder) / "bootstrap.yaml"
        bootstrap.write_text(BOOTSTRAP.format(port=port, body="hello\\n", hcm_type=HCM_TYPE))
        ours_command = [
            str(VENV_BIN / "python"), "-m", "xds_proxy", "-c", str(bootstrap),
            "--admin-address-path", f"{folder}/ours.admin", "--disable-hot-restart",
        ]  # fmt: skip
        envoy_command = [
            str(VENV_BIN / "envoy"), "-c", str(bootstrap), "--concurrency", "1",
            "--disable-hot-restart", "-l", "warning",
            "--admin-address-path", f"{folder}/envoy.admin",
        ]  # fmt: skip
        load = (clients, streams, seconds)
        ours, theirs, ceilings, in_process = [], [], [], []
        for _ in range(ROUNDS):
            ceilings.append(_pinned("codec_ceiling"))
            in_process.append(_pinned("connection_ceiling"))
            ours.append(_measure(ours_command, port, h2load, load, Path(folder) / "ours.log"))
            theirs.append(_measure(envoy_command, port, h2load, load, Path(folder) / "envoy.log"))
    best_ours = max(rate for rate, _ in ours)
    best_theirs = max(rate for rate, _ in theirs)
    ceiling = max(ceilings)
    connection = max(in_process)
    cpu_ours = min(cpu for _, cpu in ours)
    cpu_theirs = min(cpu for _, cpu in theirs)
    return [
        f"   HTTP/2 prior knowledge, direct_response, h2load -t1 -c{clients} -m{streams} "
        f"-D{seconds} (server on cpu {SERVER_CPU}, h2load on cpu {LOAD_CPU}, "
        f"best of {ROUNDS} alternating)",
        f"   {'':14}{'req/s':>10}  {'server CPU us/req':>18}",
        f"   {'xds-proxy':14}{best_ours:10.0f}  {cpu_ours:18.1f}",
        f"   {'envoy 1.40':14}{best_theirs:10.0f}  {cpu_theirs:18.1f}",
        f"   {'h2 codec':14}{ceiling:10.0f}  {1e6 / ceiling:18.1f}"
        "   (frames in, responses out, no sockets; per CPU second)",
        f"   {'ours, no I/O':14}{connection:10.0f}  {1e6 / connection:18.1f}"
        "   (our Http2Connection fed the same frames, no sockets; per CPU second)",
        f"   ratio ours/envoy {best_ours / best_theirs:7.2f} req/s, "
        f"{cpu_theirs / cpu_ours:5.2f} CPU per request   (goal >= 0.30)   ours/h2 codec "
        f"{best_ours / ceiling:5.2f} req/s",
        _breakdown(cpu_ours, 1e6 / ceiling, 1e6 / connection),
    ]


def _breakdown(ours_us: float, codec_us: float, connection_us: float) -> str:
    """Where our CPU per request goes: our connection (h2 and the direct path, measured
    in-process) and the rest (event loop, sockets, the proxy's other work); h2 alone for
    scale."""
    layer = min(connection_us, ours_us)
    rest = max(0.0, ours_us - layer)
    return (
        f"   where ours goes ({ours_us:.1f} us CPU per request): our HTTP/2 connection "
        f"{layer / ours_us:.0%}, event loop and sockets {rest / ours_us:.0%}   "
        f"(h2 alone would take {codec_us:.0f} us)"
    )


def _pinned(function: str) -> float:
    """An in-process measurement run in a child pinned to the server's CPU, like the
    servers."""
    output = subprocess.run(
        ["taskset", "-c", SERVER_CPU, sys.executable, "-c",
         f"from bench.http2 import {function}; print({function}())"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    return float(output.strip())


if __name__ == "__main__":
    if "--in-process" in sys.argv:  # CPU ns/request only, no sockets (also for callgrind)
        count = int(sys.argv[sys.argv.index("--in-process") + 1])
        print(f"{connections_cpu_ns(requests=count, runs=1 if count < 20000 else 5):.0f}")
    else:
        for line in run("--large" in sys.argv):
            print(line)
