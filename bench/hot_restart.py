"""Hot restart under load: xds-proxy and Envoy 1.40, each run by a restarter, side by side.

Both run the same bootstrap (one static listener, one LDS listener from control-plane-stub),
started by a restarter script with `--restart-epoch $RESTART_EPOCH` and a unique `--base-id`
(Envoy under its own `hot-restarter.py` pattern, here `xds-proxy-restarter`, which behaves the
same). HTTP/1.1 keep-alive clients that honour `connection: close` run continuously while the
restarter gets three SIGHUPs; the table shows requests served, refused connections, failed
requests and latency. xds-proxy runs twice: cold, and with `xds-proxy-restarter --prestart`
(the next epoch standing by, imports done; its rows start with `--prestart:`, against the
same Envoy run). The load generator is threads in this process, so absolute numbers are
modest; the comparison is what to read.

`HttpLoad` and `RestarterRun` are also what tests/integration/test_hot_restart.py uses.
"""

from __future__ import annotations

import compileall
import math
import os
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.envoy import envoy_binary
from tests.helpers.listeners import http_listener, lds_bootstrap
from tests.helpers.procs import Process, free_port, read_text_file, wait_for
from tests.helpers.stub import StubProcess, stub_env

REQUEST = b"GET / HTTP/1.1\r\nhost: hot-restart\r\n\r\n"
LIVE_POLL_S = 0.005  # how often the bench asks a new epoch's /ready while timing its start


@dataclass
class LoadCounts:
    ok: int = 0
    refused: int = 0  # ECONNREFUSED on connect
    failed: int = 0  # a request that got no (or a bad) response on a fresh connection
    retried: int = 0  # closed before any response byte on a reused connection (RFC 9112 9.3.1)
    connections: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, other: LoadCounts) -> None:
        self.ok += other.ok
        self.refused += other.refused
        self.failed += other.failed
        self.retried += other.retried
        self.connections += other.connections
        self.latencies += other.latencies
        self.errors += other.errors[:5]


class _Closed(Exception):
    def __init__(self, got_bytes: bool) -> None:
        self.got_bytes = got_bytes


class HttpLoad:
    """Keep-alive HTTP/1.1 clients in threads: a new connection after `connection: close`;
    a request that a reused connection loses before any response byte is retried once on a
    new connection (what conforming clients do), and counted as `retried`."""

    def __init__(self, ports: list[int], expected_body: bytes, clients_per_port: int = 2):
        self.ports = ports
        self.expected_body = expected_body
        self.clients_per_port = clients_per_port
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts: list[LoadCounts] = []

    def start(self) -> HttpLoad:
        for port in self.ports:
            for _ in range(self.clients_per_port):
                counts = LoadCounts()
                self._counts.append(counts)
                thread = threading.Thread(target=self._client, args=(port, counts), daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def total(self) -> LoadCounts:
        total = LoadCounts()
        for counts in self._counts:
            total.add(counts)
        return total

    def stop(self) -> LoadCounts:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return self.total()

    def _client(self, port: int, counts: LoadCounts) -> None:
        conn: socket.socket | None = None
        reused = False
        while not self._stop.is_set():
            started = time.monotonic()
            if conn is None:
                try:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=3)
                except ConnectionRefusedError:
                    counts.refused += 1
                    continue
                except OSError as error:
                    counts.failed += 1
                    counts.errors.append(f"connect: {error!r}")
                    continue
                counts.connections += 1
                reused = False
            try:
                closes = self._exchange(conn)
            except _Closed as closed:
                conn.close()
                conn = None
                if reused and not closed.got_bytes:
                    counts.retried += 1
                else:
                    counts.failed += 1
                    counts.errors.append("closed mid-response")
                continue
            except (OSError, ValueError) as error:
                conn.close()
                conn = None
                counts.failed += 1
                counts.errors.append(repr(error))
                continue
            counts.ok += 1
            counts.latencies.append(time.monotonic() - started)
            if closes:
                conn.close()
                conn = None
            else:
                reused = True
        if conn is not None:
            conn.close()

    def _exchange(self, conn: socket.socket) -> bool:
        """One request and its whole response; True when it says `connection: close`."""
        try:
            conn.sendall(REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            raise _Closed(False) from None
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += self._recv(conn, bool(buffer))
        head, _, body = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += self._recv(conn, True)
        if status != 200 or body != self.expected_body:
            raise ValueError(f"unexpected response {status} {body[:80]!r}")
        return headers.get("connection") == "close"

    @staticmethod
    def _recv(conn: socket.socket, got_bytes: bool) -> bytes:
        try:
            data = conn.recv(65536)
        except ConnectionResetError:
            raise _Closed(got_bytes) from None
        if not data:
            raise _Closed(got_bytes)
        return data


class RestarterRun:
    """`xds-proxy-restarter SCRIPT` where SCRIPT execs xds-proxy (or Envoy) with the epoch."""

    STARTED = re.compile(r"started epoch (\d+) pid (\d+)")
    STANDBY_READY = re.compile(r"standby for epoch (\d+): pid (\d+) ready")
    EXITED = re.compile(r"epoch (\d+) pid (\d+) exited with status (-?\d+)")

    def __init__(
        self,
        workdir: Path,
        bootstrap: dict,
        envoy: bool = False,
        drain_time_s: int = 1,
        parent_shutdown_time_s: int = 2,
        prestart: bool = False,
        env: dict[str, str] | None = None,
        concurrency: int = 1,
    ) -> None:
        import yaml

        self.workdir = workdir
        self.kind = "envoy" if envoy else "xds-proxy"
        self.base_id = random.randrange(1000, 100_000)
        config = workdir / f"{self.kind}.yaml"
        config.write_text(yaml.safe_dump(bootstrap))
        program = envoy_binary() if envoy else f"{sys.executable} -m xds_proxy"
        script = workdir / f"start_{self.kind}.sh"
        script.write_text(
            "#!/bin/sh\n"
            f'exec {program} -c {config} --restart-epoch "$RESTART_EPOCH"'
            f" --base-id {self.base_id} --concurrency {concurrency} --drain-time-s {drain_time_s}"
            f" --drain-strategy immediate --parent-shutdown-time-s {parent_shutdown_time_s}"
            f' --admin-address-path {workdir}/{self.kind}-admin-"$RESTART_EPOCH"'
            f" -l {'warning' if envoy else 'info'}\n"
        )
        script.chmod(0o755)
        self.log_path = workdir / f"{self.kind}-restarter.log"
        self.process = Process(
            [
                sys.executable,
                "-m",
                "xds_proxy.restarter",
                *(["--prestart"] if prestart else []),
                str(script),
            ],
            self.log_path,
            env={**stub_env(), **(env or {})},
        )
        self.restarted_at: dict[int, float] = {0: time.monotonic()}
        self.restarted_wall: dict[int, float] = {0: time.time()}  # for the child's log stamps
        self.exited_at: dict[int, float] = {}  # when the watcher saw the restarter say so
        self._watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch_exits, daemon=True)
        self._watcher.start()

    def _watch_exits(self) -> None:
        """Record each epoch's exit time within ~10 ms of the restarter reporting it."""
        while not self._watching.wait(0.01):
            for found_epoch, _, _ in self.EXITED.findall(self.log()):
                self.exited_at.setdefault(int(found_epoch), time.monotonic())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, epoch: int, timeout: float = 15.0, interval: float = 0.02) -> str:
        return wait_for(
            lambda: self._alive_or_fail() and read_text_file(self.admin_path(epoch)),
            timeout=timeout,
            interval=interval,
            what=f"{self.kind} epoch {epoch} admin address",
        )

    def admin_path(self, epoch: int) -> Path:
        return self.workdir / f"{self.kind}-admin-{epoch}"

    def get(self, epoch: int, path: str) -> tuple[int, str]:
        url = f"http://{self.admin(epoch)}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stat(self, epoch: int, name: str) -> int | None:
        _, body = self.get(epoch, f"/stats?filter=^{re.escape(name)}$")
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            if key == name and value.strip().lstrip("-").isdigit():
                return int(value)
        return None

    def wait_live(self, epoch: int, timeout: float = 15.0, interval: float = 0.02) -> None:
        """Until `/ready` says LIVE, asking every `interval` s (the bench times the restart
        with LIVE_POLL_S: what it reports is late by up to one interval)."""
        deadline = time.monotonic() + timeout
        self.admin(epoch, timeout, interval)
        wait_for(
            lambda: self.get(epoch, "/ready") == (200, "LIVE\n"),
            timeout=max(0.0, deadline - time.monotonic()),
            interval=interval,
            what=f"{self.kind} epoch {epoch} LIVE",
        )

    def pid(self, epoch: int, timeout: float = 10.0) -> int:
        def find() -> int | None:
            for found_epoch, pid in self.STARTED.findall(self.log()):
                if int(found_epoch) == epoch:
                    return int(pid)
            return None

        return wait_for(find, timeout=timeout, what=f"{self.kind} epoch {epoch} pid")

    def standby_pid(self, epoch: int, timeout: float = 15.0) -> int:
        """The pid of the pre-started process for `epoch` once it said it is ready."""

        def find() -> int | None:
            found = [int(p) for e, p in self.STANDBY_READY.findall(self.log()) if int(e) == epoch]
            return found[-1] if found else None

        return wait_for(find, timeout=timeout, what=f"the standby for epoch {epoch} ready")

    def script_path(self) -> Path:
        return self.workdir / f"start_{self.kind}.sh"

    def exit_status(self, epoch: int) -> int | None:
        for found_epoch, _, status in self.EXITED.findall(self.log()):
            if int(found_epoch) == epoch:
                wait_for(lambda: epoch in self.exited_at, what="the exit time recorded")
                return int(status)
        return None

    def restart(self) -> int:
        """SIGHUP: the restarter starts the next epoch; returns it."""
        epoch = max(self.restarted_at) + 1
        self.restarted_at[epoch] = time.monotonic()
        self.restarted_wall[epoch] = time.time()
        self.process.popen.send_signal(signal.SIGHUP)
        return epoch

    def _alive_or_fail(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"restarter exited:\n{self.log()[-3000:]}")
        return True

    def stop(self) -> int | None:
        status = self.process.stop(timeout=15)
        self._watching.set()
        self._watcher.join()
        return status


def listen_inodes() -> dict[int, set[int]]:
    """Listening TCP sockets on 127.0.0.1 (IPv4) by port -> their inodes (/proc/net/tcp)."""
    found: dict[int, set[int]] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if state != "0A":  # TCP_LISTEN
            continue
        port = int(local.rpartition(":")[2], 16)
        found.setdefault(port, set()).add(inode)
    return found


def socket_inodes(pid: int) -> set[int]:
    """The inodes of every socket that process `pid` holds (os.stat on /proc/PID/fd/N)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            if entry.readlink().as_posix().startswith("socket:"):
                inodes.add(entry.stat().st_ino)
        except OSError:
            continue  # closed meanwhile
    return inodes


def bootstrap_with_static(xds_address: str, static_port: int, body: str) -> dict:
    bootstrap = lds_bootstrap(xds_address, node_id="hot-restart")
    bootstrap["static_resources"]["listeners"] = [http_listener("static", static_port, body)]
    return bootstrap


@dataclass
class RunResult:
    counts: LoadCounts
    seconds: float
    restart_to_live: list[float]
    parent_lifetimes: list[float]  # SIGHUP of epoch N+1 -> exit of epoch N
    same_inodes: bool
    start_cpu: list[float]  # CPU seconds each new epoch had used when seen LIVE
    start_phases: list[dict[str, float]] = field(default_factory=list)  # ours: START_PHASES


def restart_under_load(
    workdir: Path, envoy: bool, restarts: int = 3, settle_s: float = 1.0, prestart: bool = False
) -> RunResult:
    """Stub + restarter + load; `restarts` SIGHUPs, each once the previous epoch is LIVE and
    has served for `settle_s`; then every old epoch must exit. With `prestart` (xds-proxy
    only) each SIGHUP waits for the standby to be ready, and the child's CPU is counted from
    the SIGHUP (what it spent standing by is not the restart's)."""
    body = "hot restart"
    stub = StubProcess(workdir / "stub").start()
    run = None
    load = None
    try:
        static_port, lds_port = free_port(), free_port()
        stub.client.set_resources(listeners=[http_listener("dynamic", lds_port, body)])
        bootstrap = bootstrap_with_static(stub.xds_address, static_port, body)
        run = RestarterRun(workdir, bootstrap, envoy=envoy, prestart=prestart)
        run.wait_live(0)
        wait_for(lambda: lds_port in listen_inodes(), what="LDS listener bound")
        inodes = {port: listen_inodes()[port] for port in (static_port, lds_port)}
        load = HttpLoad([static_port, lds_port], body.encode()).start()
        started = time.monotonic()
        restart_to_live = []
        phases: list[dict[str, float]] = []
        start_cpu: list[float] = []
        same = True
        for _ in range(restarts):
            wait_for(lambda: load.total().ok > 0, what="load flowing")
            time.sleep(settle_s)  # benchmark pacing, not synchronisation
            standing_by = 0.0
            if prestart:
                standing_by = cpu_seconds(run.standby_pid(max(run.restarted_at) + 1))
            epoch = run.restart()
            run.wait_live(epoch, interval=LIVE_POLL_S)
            restart_to_live.append(time.monotonic() - run.restarted_at[epoch])
            start_cpu.append(cpu_seconds(run.pid(epoch)) - standing_by)
            phases.append(start_phases(run, epoch))
            held = socket_inodes(run.pid(epoch))
            same &= all(inodes[p] == listen_inodes().get(p) for p in inodes)
            same &= all(inodes[p] <= held for p in inodes)
        time.sleep(settle_s)
        for epoch in range(restarts):
            wait_for(lambda e=epoch: run.exit_status(e) is not None, timeout=30)
        counts = load.stop()
        load = None
        seconds = time.monotonic() - started
        lifetimes = [run.exited_at[e] - run.restarted_at[e + 1] for e in range(restarts)]
        return RunResult(counts, seconds, restart_to_live, lifetimes, same, start_cpu, phases)
    finally:
        if load is not None:
            load.stop()
        if run is not None:
            run.stop()
        stub.stop()


# The child's start, from its own log lines (xds-proxy logs at info; Envoy's side at warning
# has none): phase name -> the message that ends it. Each phase is measured from the end of
# the previous one (the first from the SIGHUP).
START_PHASES = {
    "exec, imports, bootstrap": "xds-proxy starting, pid",
    "hand-over, statics, admin": "admin address:",
    "xDS (LDS) to LIVE": "all dependencies initialized",
}
# The same phases of a pre-started child: its interpreter and imports were done before the
# SIGHUP; the first phase is the `go`, the module-file check, the flags and the bootstrap.
PRESTARTED_PHASES = ("go, file check, bootstrap", *list(START_PHASES)[1:])
_LOG_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\]\[(\d+)\]\[\w+\]\[\w+\] (.*)$"
)


def start_phases(run: RestarterRun, epoch: int) -> dict[str, float]:
    """How long each START_PHASES phase of `epoch`'s start took, in seconds (empty when its
    log does not show them all: Envoy's)."""
    pid = run.pid(epoch)
    ends: dict[str, float] = {}
    for line in run.log().splitlines():
        found = _LOG_LINE.match(line)
        if found is None or int(found.group(3)) != pid:
            continue
        stamp = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
        for phase, message in START_PHASES.items():
            if phase not in ends and found.group(4).startswith(message):
                ends[phase] = stamp + int(found.group(2)) / 1000
    if len(ends) != len(START_PHASES):
        return {}
    durations, previous = {}, run.restarted_wall[epoch]
    for phase in START_PHASES:
        durations[phase], previous = ends[phase] - previous, ends[phase]
    return durations


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (every thread), from /proc/PID/stat: unlike
    the time to LIVE, it hardly depends on what else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _mean_phase(result: RunResult, phase: str) -> float:
    values = [phases[phase] for phases in result.start_phases if phases]
    return sum(values) / len(values) if values else float("nan")


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def byte_compile() -> None:
    """Compile xds-proxy's modules once, as an installed package is (pip writes the .pyc files
    at install; the Docker image has them): without this, a machine that sets
    PYTHONDONTWRITEBYTECODE (this project's does) compiles every module at every start, and
    the restart row would time the compiler instead of the start-up."""
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "xds_proxy", quiet=1)


RUNS = (  # name, Envoy?, --prestart?
    ("xds-proxy", False, False),
    ("xds-proxy --prestart", False, True),
    ("envoy", True, False),
)


def run(large: bool = False) -> list[str]:
    byte_compile()
    results = {}
    for name, envoy, prestart in RUNS:
        with tempfile.TemporaryDirectory(prefix="bench-hot-restart-") as tmp:
            results[name] = restart_under_load(Path(tmp), envoy, prestart=prestart)
    ours, prestarted, theirs = (results[name] for name, _, _ in RUNS)
    rows = [
        ("requests ok", lambda r: r.counts.ok, "{:.0f}"),
        ("requests/s", lambda r: r.counts.ok / r.seconds, "{:.0f}"),
        ("refused connects", lambda r: r.counts.refused, "{:.0f}"),
        ("failed requests", lambda r: r.counts.failed, "{:.0f}"),
        ("retried (idle close race)", lambda r: r.counts.retried, "{:.0f}"),
        ("connections opened", lambda r: r.counts.connections, "{:.0f}"),
        ("p50 latency ms", lambda r: 1000 * _percentile(r.counts.latencies, 0.5), "{:.2f}"),
        ("p99 latency ms", lambda r: 1000 * _percentile(r.counts.latencies, 0.99), "{:.2f}"),
        ("max latency ms", lambda r: 1000 * max(r.counts.latencies, default=0), "{:.1f}"),
        ("SIGHUP -> child LIVE s (mean)", lambda r: sum(r.restart_to_live) / 3, "{:.3f}"),
        ("SIGHUP -> child LIVE s (min)", lambda r: min(r.restart_to_live), "{:.3f}"),
        ("child CPU s until LIVE (mean)", lambda r: sum(r.start_cpu) / 3, "{:.3f}"),
        *(
            (f"  {phase} s", lambda r, p=phase: _mean_phase(r, p), "{:.3f}")
            for phase in START_PHASES
        ),
        ("parent lifetime after SIGHUP s", lambda r: sum(r.parent_lifetimes) / 3, "{:.2f}"),
        ("same listen inodes", lambda r: float(r.same_inodes), "{:.0f}"),
    ]
    # xds-proxy-restarter --prestart (the next epoch started ahead, standing by) against the
    # same Envoy run: its own requests, the restart and the child's CPU from the SIGHUP
    prestart_rows = [
        ("--prestart: requests ok", lambda r: r.counts.ok, "{:.0f}"),
        ("--prestart: refused + failed", lambda r: r.counts.refused + r.counts.failed, "{:.0f}"),
        ("--prestart: SIGHUP -> LIVE s (mean)", lambda r: sum(r.restart_to_live) / 3, "{:.3f}"),
        ("--prestart: SIGHUP -> LIVE s (min)", lambda r: min(r.restart_to_live), "{:.3f}"),
        ("--prestart: CPU SIGHUP->LIVE (mean)", lambda r: sum(r.start_cpu) / 3, "{:.3f}"),
        *(
            (f"  --prestart: {label} s", lambda r, p=phase: _mean_phase(r, p), "{:.3f}")
            for phase, label in zip(START_PHASES, PRESTARTED_PHASES, strict=True)
        ),
    ]
    lines = [
        "   3 hot restarts under HTTP/1.1 load (DT 1 s immediate, parent shutdown 2 s;"
        " xds-proxy byte-compiled, as installed)",
        f"   {'':42} {'xds-proxy':>12} {'envoy 1.40':>12} {'ratio':>8}",
    ]
    compared = [(row, ours) for row in rows] + [(row, prestarted) for row in prestart_rows]
    for (label, value, shown), mine in compared:
        a, b = value(mine), value(theirs)
        ratio = f"{a / b:.2f}" if b and not math.isnan(b) else "-"
        a_text, b_text = ("-" if math.isnan(v) else shown.format(v) for v in (a, b))
        lines.append(f"   {label:42} {a_text:>12} {b_text:>12} {ratio:>8}")
    for name, result in results.items():
        for error in result.counts.errors[:3]:
            lines.append(f"   {name} error: {error}")
    return lines


if __name__ == "__main__":  # python -m bench.hot_restart (from the repository root)
    for line in run():
        print(line, flush=True)
