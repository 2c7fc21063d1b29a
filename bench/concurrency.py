"""`--concurrency 1` and `2` (issue 22): HTTP/1.1 and HTTP/2 direct_response requests/s of
xds-proxy and Envoy 1.40 in one run, the scaling factor (2 workers / 1) of each, the
per-worker accepted connections under that load, and how long a SIGKILLed worker of ours takes
to be replaced.

Placement: this machine has 2 cores, so at `--concurrency 2` no core is left for the load
generator. Every server and the load generator therefore run unpinned (the scheduler shares
both cores among them), at both concurrencies, with the same load: `wrk -t2 -c100` and
`h2load -t2 -c20 -m10` (two load threads, enough connections for two workers). The load
generator's own CPU is printed as a share of the two cores. The one-core rows, server and load
generator on separate pinned cores, are bench/http1.py and bench/http2.py.

Server CPU per request counts the whole server: Envoy's process (every thread), our main
process and its workers. Per worker: the connections each worker accepted during the measured
run (`listener.<address>.worker_<N>.downstream_cx_total`, Envoy's and ours) and each worker's
share of the server's CPU (our worker processes; Envoy's `wrk:worker_<N>` threads). Uneven
means the issue's threshold: the busiest worker accepted more than 20 % above an equal share
(Envoy hashes connections over a socket per worker; our workers share one socket).

"ours 2 x c1" is two single-process xds-proxy servers on two ports, each loaded by half the
load generator: two workers with perfectly balanced connections and no main process, the
ceiling of what balancing could add to ours at `--concurrency 2`.

The restart row (ours only): `--concurrency 2` under `wrk -t1 -c20` load; worker 0 is killed
with SIGKILL and a probe opens a new connection every few milliseconds until one is accepted
by the replacement (its `worker_0.downstream_cx_total` counts it). It prints the time from the
kill to the replacement's start (the main process's log), to its server's start (the
worker's own "all dependencies initialized" line) and to its first accepted connection, and
the probe requests that failed meanwhile (the other worker keeps accepting on the shared
socket: should be 0).

    python -m bench.concurrency [--seconds N] [--rounds N] [--restarts N]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.http1 import BOOTSTRAP, HCM_TYPE, ROOT, VENV_BIN, _free_port, _wait_listening
from bench.tools import ensure_tool, h2load_result, wrk_result

CONCURRENCIES = (1, 2)
ROUNDS = 2
SECONDS = 5
WRK_THREADS, WRK_CONNECTIONS = 2, 100
H2_THREADS, H2_CLIENTS, H2_STREAMS = 2, 20, 10
UNEVEN = 0.20  # the threshold: switch to a socket per worker above it
RESTART_LOAD_CONNECTIONS = 20
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- processes


def _stat_cpu(path: str) -> float:
    """utime + stime seconds from a /proc .../stat file."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _workers_cpu(pids: list[int], envoy: bool) -> dict[str, float]:
    """CPU seconds of each worker: Envoy's worker threads (by thread name), our worker
    processes (the main process's children), or each of several single-process servers."""
    found: dict[str, float] = {}
    if envoy:
        for task in Path(f"/proc/{pids[0]}/task").iterdir():
            name = (task / "comm").read_text().strip()
            if name.startswith("wrk:worker_"):
                found[name.removeprefix("wrk:")] = _stat_cpu(str(task / "stat"))
        return found
    workers = _children(pids[0]) if len(pids) == 1 else pids
    for worker in workers:
        found[f"pid {worker}"] = _stat_cpu(f"/proc/{worker}/stat")
    return found


def _server_cpu(pid: int) -> float:
    """The server's CPU seconds: the process (all threads) and its children (our workers)."""
    return _stat_cpu(f"/proc/{pid}/stat") + sum(
        _stat_cpu(f"/proc/{child}/stat") for child in _children(pid)
    )


def _admin_get(admin_path: Path, path: str) -> str:
    address = admin_path.read_text().strip()
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        return response.read().decode()


def accepted_per_worker(admin_path: Path, port: int) -> dict[int, int]:
    """worker index -> `listener.127.0.0.1_<port>.worker_<N>.downstream_cx_total`."""
    pattern = re.compile(
        rf"^listener\.127\.0\.0\.1_{port}\.worker_(\d+)\.downstream_cx_total: (\d+)$", re.M
    )
    body = _admin_get(admin_path, "/stats?filter=" + urllib.request.quote(r"worker_\d+\."))
    return {int(index): int(value) for index, value in pattern.findall(body)}


def unevenness(counts: list[int]) -> float:
    """How far the busiest worker is above an equal share (0.25: it took 25 % more)."""
    total = sum(counts)
    return max(counts) * len(counts) / total - 1 if total else 0.0


@dataclass
class Server:
    """One server process to start: `concurrency` workers, listening on `port`."""

    name: str  # "xds-proxy" or "envoy 1.40"
    concurrency: int
    port: int
    command: list[str]
    admin_path: Path

    @property
    def envoy(self) -> bool:
        return self.name.startswith("envoy")


@dataclass
class Setup:
    """What one row measures: one server, or (SPLIT) two single-worker ones on two ports
    with half the load each, the perfectly balanced case."""

    name: str
    concurrency: int
    servers: list[Server]

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]


SPLIT = "ours 2 x c1"


def server(folder: Path, name: str, concurrency: int, port: int, tag: str = "") -> Server:
    """xds-proxy or Envoy 1.40 on bench/http1.py's bootstrap (direct_response on `port`)."""
    envoy = name.startswith("envoy")
    stem = f"{'envoy' if envoy else 'ours'}-{concurrency}{tag}"
    bootstrap = folder / f"{stem}.yaml"
    bootstrap.write_text(BOOTSTRAP.format(port=port, body="hello\\n", hcm_type=HCM_TYPE))
    admin = folder / f"{stem}.admin"
    common = ["-c", str(bootstrap), "--concurrency", str(concurrency), "--disable-hot-restart"]
    common += ["--admin-address-path", str(admin)]
    if envoy:
        command = [str(VENV_BIN / "envoy"), *common, "-l", "warning"]
    else:
        command = [str(VENV_BIN / "python"), "-m", "xds_proxy", *common]
    return Server(name, concurrency, port, command, admin)


def setups(folder: Path, port: int, split_ports: tuple[int, int]) -> list[Setup]:
    """Ours and Envoy at each concurrency, and ours as two single-process servers."""
    found = [
        Setup(name, concurrency, [server(folder, name, concurrency, port)])
        for concurrency in CONCURRENCIES
        for name in ("xds-proxy", "envoy 1.40")
    ]
    split = [server(folder, "xds-proxy", 1, one, tag=f"-{one}") for one in split_ports]
    return [*found, Setup(SPLIT, 2, split)]


SETUP_COUNT = 2 * len(CONCURRENCIES) + 1  # what setups() returns


class Running:
    """A server started and listening; `stop()` ends it."""

    def __init__(self, server: Server, log: Path) -> None:
        self.server = server
        port = server.port
        server.admin_path.unlink(missing_ok=True)
        self.log = log
        with open(log, "wb") as log_file:
            self.process = subprocess.Popen(
                server.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        try:
            _wait_listening(port, self.process)
            deadline = time.monotonic() + 20
            while not server.admin_path.exists() or not server.admin_path.read_text().strip():
                if time.monotonic() > deadline:
                    raise RuntimeError("no admin address")
                time.sleep(0.05)
            self._wait_workers(port)
        except RuntimeError as error:
            self.stop()
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{server.name}: {error}: {' '.join(tail)}") from None

    def _wait_workers(self, port: int) -> None:
        """Until every worker has the listener: the main process listens (and the kernel
        completes handshakes) before its workers accept, so connecting proves nothing."""
        if self.server.concurrency == 1 and not self.server.envoy:
            return
        deadline = time.monotonic() + 60
        while len(accepted_per_worker(self.server.admin_path, port)) < self.server.concurrency:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ----------------------------------------------------------------------------- load


def _ensure_tools() -> tuple[str, str]:
    return ensure_tool("wrk", "wrk"), ensure_tool("h2load", "nghttp2-client")


@dataclass
class Load:
    """`wrk` or `h2load` with `threads` threads and `connections` connections in all; over
    several ports, one process per port with an equal share of both."""

    tool: str  # "wrk" or "h2load"
    binary: str
    threads: int
    connections: int
    streams: int = 1  # h2load -m

    def describe(self) -> str:
        streams = f" -m{self.streams}" if self.tool == "h2load" else ""
        return f"{self.tool} -t{self.threads} -c{self.connections}{streams}"

    def command(self, port: int, seconds: float, share: int) -> list[str]:
        threads, connections = self.threads // share, self.connections // share
        url = f"http://127.0.0.1:{port}/"
        if self.tool == "wrk":
            return [self.binary, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", url]
        duration = f"-D{max(1, round(seconds))}"
        return [self.binary, f"-t{threads}", f"-c{connections}", f"-m{self.streams}", duration, url]

    def parse(self, output: str) -> tuple[float, int]:
        """(requests/s, requests answered); raises on a failed or non-2xx request."""
        if self.tool == "wrk":
            return wrk_result(output)
        return h2load_result(output)

    def run(self, ports: list[int], seconds: float) -> tuple[float, int]:
        """Runs on every port at once; the sums."""
        processes = [
            subprocess.Popen(
                self.command(port, seconds, len(ports)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for port in ports
        ]
        rate = requests = 0.0
        for process in processes:
            output, errors = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"{self.tool} failed: {errors.strip()}")
            one_rate, one_requests = self.parse(output)
            rate, requests = rate + one_rate, requests + one_requests
        return rate, int(requests)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- one measurement


@dataclass
class Measurement:
    setup: str
    concurrency: int
    requests_per_s: float
    cpu_us_per_request: float
    load_cores: float  # the load generator's CPU, in cores (of 2)
    accepted: dict[int, int] = field(default_factory=dict)  # worker -> connections
    worker_cpu: list[float] = field(default_factory=list)  # each worker's share of the server's


def measure(setup: Setup, load: Load, seconds: float, folder: Path) -> Measurement:
    running: list[Running] = []
    try:
        for one in setup.servers:
            log = folder / f"{one.admin_path.stem}.log"
            running.append(Running(one, log))
        pids = [process.process.pid for process in running]
        load.run(setup.ports, 1)  # warm-up
        first = setup.servers[0]
        accepted_before = accepted_per_worker(first.admin_path, first.port)
        workers_before = _workers_cpu(pids, first.envoy)
        cpu_before, load_before = sum(map(_server_cpu, pids)), _children_cpu()
        started = time.monotonic()
        rate, requests = load.run(setup.ports, seconds)
        elapsed = time.monotonic() - started
        cpu = sum(map(_server_cpu, pids)) - cpu_before
        load_cpu = _children_cpu() - load_before
        workers_after = _workers_cpu(pids, first.envoy)
        accepted_after = accepted_per_worker(first.admin_path, first.port)
    finally:
        for process in running:
            process.stop()
    accepted = {
        index: count - accepted_before.get(index, 0) for index, count in accepted_after.items()
    }
    busy = [workers_after[name] - workers_before.get(name, 0.0) for name in sorted(workers_after)]
    total_busy = sum(busy)
    return Measurement(
        setup=setup.name,
        concurrency=setup.concurrency,
        requests_per_s=rate,
        cpu_us_per_request=cpu * 1e6 / requests if requests else float("nan"),
        load_cores=load_cpu / elapsed,
        accepted=accepted if len(setup.servers) == 1 else {},
        worker_cpu=[value / total_busy for value in busy] if total_busy else [],
    )


# ----------------------------------------------------------------------------- worker restart


@dataclass
class Restart:
    spawned_s: float  # kill -> the replacement's process started (main process's log)
    initialized_s: float  # kill -> the replacement's server started (its own log line)
    serving_s: float  # kill -> an admin read that shows the replacement accepted a connection
    read_s: float  # how long that admin read took (the precision of serving_s)
    startup_cpu_s: float  # the replacement's CPU time until then: what starting one costs
    probes: int
    probe_failures: int


def _worker_started(log: Path, index: int) -> list[tuple[float, int]]:
    """(wall-clock time, pid) of each start of worker `index`, from the main process's log."""
    pattern = rf"^\[(\S+ \S+)\]\[\d+\]\[info\]\[workers\] worker {index} started \(pid (\d+)\)"
    found = re.findall(pattern, log.read_text(errors="replace"), re.M)
    return [(_log_time(stamp), int(pid)) for stamp, pid in found]


def _initialized_at(log: Path, pid: int) -> float:
    """When process `pid` logged that its server started (wall clock), NaN if it did not."""
    pattern = rf"^\[(\S+ \S+)\]\[{pid}\]\[info\]\[main\] all dependencies initialized"
    found = re.findall(pattern, log.read_text(errors="replace"), re.M)
    return _log_time(found[0]) if found else float("nan")


def _log_time(stamp: str) -> float:
    """`2026-12-06 22:28:47.728` (local time) as seconds since the epoch."""
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float(stamp[19:])


def _probe(port: int) -> bool:
    """One request on a new connection: True if answered 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        return answer.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Prober:
    """A new connection and one request every few milliseconds, in a thread; counts failures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):  # probe spacing, not synchronisation
            self.sent += 1
            self.failed += not _probe(self.port)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def worker_restart(server: Server, wrk: str, log: Path) -> Restart:
    """SIGKILL worker 0 under load; time its replacement's start and first accept."""
    port = server.port
    running = Running(server, log)
    background = prober = None
    try:
        background = subprocess.Popen(
            [wrk, "-t1", f"-c{RESTART_LOAD_CONNECTIONS}", "-d60s", f"http://127.0.0.1:{port}/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)  # load running before the kill (a load length, not synchronisation)
        prober = Prober(port)
        victim = _worker_started(log, 0)[-1][1]
        os.kill(victim, signal.SIGKILL)
        killed_wall, killed = time.time(), time.monotonic()
        serving_s = read_s = startup_cpu_s = float("nan")
        while time.monotonic() - killed < 20:
            asked = time.monotonic()
            accepted = accepted_per_worker(server.admin_path, port).get(0, 0)
            answered = time.monotonic()
            replacement = _worker_started(log, 0)[-1][1]
            if accepted and replacement != victim:
                serving_s, read_s = answered - killed, answered - asked
                startup_cpu_s = _stat_cpu(f"/proc/{replacement}/stat")
                break
            time.sleep(0.005)  # poll spacing, not synchronisation
        prober.stop()
        spawned_at, replacement = _worker_started(log, 0)[-1]
        if replacement == victim:
            spawned_at = float("nan")
        deadline = time.monotonic() + 5  # its line may come after its first accept
        initialized = _initialized_at(log, replacement)
        while math.isnan(initialized) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the log, not synchronisation
            initialized = _initialized_at(log, replacement)
        initialized_s = initialized - killed_wall
        return Restart(
            spawned_at - killed_wall,
            initialized_s,
            serving_s,
            read_s,
            startup_cpu_s,
            prober.sent,
            prober.failed,
        )
    finally:
        if prober is not None:
            prober.stop()
        if background is not None:
            background.terminate()
            background.wait()
        running.stop()


# ----------------------------------------------------------------------------- report


def _best(results: list[Measurement]) -> Measurement:
    return max(results, key=lambda result: result.requests_per_s)


def _per_worker_line(name: str, results: list[Measurement]) -> str:
    """Accepted connections and CPU share per worker, round by round; uneven by the
    accepted connections of every round together."""
    accepted: dict[int, int] = {}
    rounds = []
    for result in results:
        for index, count in result.accepted.items():
            accepted[index] = accepted.get(index, 0) + count
        counts = "/".join(str(result.accepted[index]) for index in sorted(result.accepted))
        shares = "/".join(f"{share:.0%}" for share in result.worker_cpu)
        rounds.append(f"{counts} ({shares} CPU, {result.requests_per_s / 1000:.1f}k req/s)")
    spread = unevenness([accepted[index] for index in sorted(accepted)])
    verdict = "UNEVEN (> 20 %)" if spread > UNEVEN else "even (<= 20 %)"
    return (
        f"     {name:12} {'; '.join(rounds)}; all rounds: busiest {spread:+.0%} over an equal"
        f" share, {verdict}"
    )


def protocol_table(title: str, load: Load, results: dict[str, list[Measurement]]) -> list[str]:
    """`results` by setup name and concurrency (`f"{name}@{concurrency}"`)."""
    best = {key: _best(value) for key, value in results.items()}
    rounds = min(len(value) for value in results.values())
    lines = [
        f"   {title}, {load.describe()} (best of {rounds})",
        f"   {'':14}{'workers':>8}{'req/s':>10}{'CPU us/req':>12}{'load cores':>12}",
    ]
    for result in sorted(best.values(), key=lambda r: (r.concurrency, r.setup == SPLIT)):
        lines.append(
            f"   {result.setup:14}{result.concurrency:8d}{result.requests_per_s:10.0f}"
            f"{result.cpu_us_per_request:12.1f}{result.load_cores:12.2f}"
        )
    for name in ("xds-proxy", "envoy 1.40"):
        one, two = best[f"{name}@1"], best[f"{name}@2"]
        lines.append(
            f"   scaling {name:12} 2 / 1 workers: {two.requests_per_s / one.requests_per_s:.2f}x"
        )
    for concurrency in CONCURRENCIES:
        ours, theirs = best[f"xds-proxy@{concurrency}"], best[f"envoy 1.40@{concurrency}"]
        lines.append(
            f"   ours / envoy at --concurrency {concurrency}: "
            f"{ours.requests_per_s / theirs.requests_per_s:.2f}x req/s, "
            f"{theirs.cpu_us_per_request / ours.cpu_us_per_request:.2f}x less CPU per request"
        )
    split, theirs = best[f"{SPLIT}@2"], best["envoy 1.40@2"]
    lines.append(
        f"   {SPLIT} (two single-process servers, half the load each: balance by construction)"
        f" / envoy at 2: {split.requests_per_s / theirs.requests_per_s:.2f}x"
    )
    lines.append(
        "   per worker at --concurrency 2, each round: connections accepted in the measured"
        " run (CPU share)"
    )
    lines += [_per_worker_line(name, results[f"{name}@2"]) for name in ("xds-proxy", "envoy 1.40")]
    return lines


def run(
    large: bool = False, seconds: float = SECONDS, rounds: int = ROUNDS, restarts: int = 3
) -> list[str]:
    if large:
        seconds = max(seconds, 15)
    wrk, h2load = _ensure_tools()
    loads = {
        "HTTP/1.1 keep-alive, direct_response": Load("wrk", wrk, WRK_THREADS, WRK_CONNECTIONS),
        "HTTP/2 prior knowledge, direct_response": Load(
            "h2load", h2load, H2_THREADS, H2_CLIENTS, H2_STREAMS
        ),
    }
    lines = [
        f"   servers and load generator unpinned on {os.cpu_count()} cores, {seconds:g} s per"
        f" round, alternating; 'load cores' = the load generator's CPU (cores busy)"
    ]
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as folder:
        for title, load in loads.items():
            results: dict[str, list[Measurement]] = {}
            for _ in range(rounds):
                for index in range(SETUP_COUNT):
                    result = _measure_retrying(index, load, seconds, Path(folder))
                    results.setdefault(f"{result.setup}@{result.concurrency}", []).append(result)
            lines += protocol_table(title, load, results)
        ours = server(Path(folder), "xds-proxy", 2, _free_port())
        timings = [
            worker_restart(ours, wrk, Path(folder) / f"restart-{attempt}.log")
            for attempt in range(restarts)
        ]
    if timings:
        lines += restart_lines(timings)
    return lines


def _measure_retrying(index: int, load: Load, seconds: float, folder: Path) -> Measurement:
    """The `index`th setup on fresh ports; again on others when a port was taken meanwhile
    (other work on a shared machine binds free ports too)."""
    for attempt in range(3):
        setup = setups(folder, _free_port(), (_free_port(), _free_port()))[index]
        try:
            return measure(setup, load, seconds, folder)
        except RuntimeError as error:
            if "in use" not in str(error) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def restart_lines(timings: list[Restart]) -> list[str]:
    lines = [
        f"   worker restart, xds-proxy --concurrency 2 under wrk -t1 -c{RESTART_LOAD_CONNECTIONS}"
        " load: SIGKILL of worker 0 -> replacement started / its server up / accepting (the"
        " admin read that saw it took; the replacement's CPU time by then; new-connection"
        " probes failed meanwhile, of sent)"
    ]
    lines += [
        f"     {timing.spawned_s * 1000:6.0f} ms / {timing.initialized_s * 1000:6.0f} ms"
        f" / {timing.serving_s * 1000:6.0f} ms"
        f"   (read {timing.read_s * 1000:.0f} ms; CPU {timing.startup_cpu_s * 1000:.0f} ms;"
        f" probes failed {timing.probe_failures}"
        f" of {timing.probes})"
        for timing in timings
    ]
    worst = max(timing.serving_s for timing in timings)
    lines.append(f"     worst {worst * 1000:.0f} ms (target <= 1000 ms)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="per round (5)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds (2)")
    parser.add_argument("--restarts", type=int, default=3, help="worker kills (3; 0: none)")
    args = parser.parse_args()
    for line in run(False, args.seconds, args.rounds, args.restarts):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
