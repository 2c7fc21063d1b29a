"""The drain controls of issue 24 on the real processes (control-plane-stub + xds-proxy) with
raw-socket clients: a listener with its own drain time drains on its own schedule next to one
on the global schedule, and `/drain_status` says why (push version, nonce, changed fields);
2,000 idle keep-alive connections under `max_closes_per_second: 200` are told to leave at no
more than 200 a second while busy clients lose no request; and exit when drained
(`--drain-on-sigterm`, `POST /drain_and_exit`)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

POLICY = "xds_proxy.drain"


@pytest.fixture
def stub(tmp_path) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path / "stub").start()
    yield process
    process.stop()


def start_proxy(stub: StubProcess, tmp_path, *args: str) -> ProxyProcess:
    process = ProxyProcess(
        lds_bootstrap(stub.xds_address), tmp_path / "proxy", extra_args=list(args)
    ).start()
    process.wait_ready()
    return process


def push(stub: StubProcess, listeners: list[dict]) -> str:
    version = stub.client.set_resources(listeners=listeners)["listeners"]
    stub.client.wait(version, timeout=10)
    return version


def policy_listener(name: str, port: int, body: str = "v1", **policy) -> dict:
    result = http_listener(name, port, chains=[chain(body, stat_prefix=name)])
    if policy:
        result["metadata"] = {"filter_metadata": {POLICY: policy}}
    return result


def half_sent(port: int) -> socket.socket:
    """A request half sent: its drain leaves it open until the deadline."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
    return sock


def closed_within(sock: socket.socket, limit: float) -> float | None:
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return None
    except ConnectionResetError:
        data = b""
    assert data == b"" or b"HTTP/1.1" in data
    return time.monotonic() - started


def drains(proxy: ProxyProcess) -> list[dict]:
    return json.loads(proxy.get("/drain_status")[1])["drains"]


# -- per-listener drain policy --------------------------------------------------------------------


def test_a_listener_with_its_own_drain_time_drains_next_to_the_global_schedule(
    stub, tmp_path
) -> None:
    proxy = start_proxy(stub, tmp_path, "--drain-time-s", "30", "--drain-strategy", "gradual")
    try:
        fast_port, slow_port = free_port(), free_port()
        first = push(
            stub,
            [
                policy_listener("fast", fast_port, drain_time_s=2, drain_strategy="immediate"),
                policy_listener("slow", slow_port),
            ],
        )
        fast, slow = half_sent(fast_port), half_sent(slow_port)
        wait_for(lambda: proxy.stat("server.total_connections") == 2, timeout=5, what="held")
        second = push(
            stub,
            [
                policy_listener(
                    "fast", fast_port, "v2", drain_time_s=2, drain_strategy="immediate"
                ),
                policy_listener("slow", slow_port, "v2"),
            ],
        )
        started = time.monotonic()
        records = {
            d["listener"]: d
            for d in wait_for(lambda: len(drains(proxy)) == 2 and drains(proxy), timeout=5)
        }
        assert records["fast"]["policy"] == {
            "source": "listener",
            "drain_time_s": 2.0,
            "drain_strategy": "immediate",
            "max_closes_per_second": 0.0,
        }
        assert records["slow"]["policy"]["source"] == "global"
        assert records["slow"]["policy"]["drain_time_s"] == 30.0
        for record in records.values():
            assert record["version_info"] == first
            cause = record["cause"]
            assert cause["version_info"] == second and cause["nonce"]
            assert cause["changed"] == [
                "filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
                ".routes[0].direct_response.body.inline_string"
            ]
        # The fast listener's half-sent request is cut at its own deadline (2 s) ...
        waited = closed_within(fast, 2 + 3)
        assert waited is not None and 1.5 <= time.monotonic() - started <= 2 + 3
        # ... while the other drains on the global schedule: still open, still listed.
        assert closed_within(slow, 0.5) is None
        assert [d["listener"] for d in drains(proxy)] == ["slow"]
        line = next(
            json.loads(text.split("drain complete: ", 1)[1])
            for text in proxy.log().splitlines()
            if "drain complete: " in text
        )
        assert line["listener"] == "fast" and line["outcome"] == "deadline"
        assert line["cause"]["version_info"] == second and line["policy"]["drain_time_s"] == 2.0
        slow.close()
        fast.close()
    finally:
        proxy.stop()


def test_an_invalid_policy_is_nacked_naming_the_field(stub, tmp_path) -> None:
    proxy = start_proxy(stub, tmp_path)
    try:
        version = stub.client.set_resources(
            listeners=[policy_listener("l", free_port(), max_closes_per_second=-5)]
        )["listeners"]
        wait_for(lambda: stub.nacks(), timeout=5, what="a NACK")
        assert stub.nacks()[-1]["version"] == version
        assert stub.nacks()[-1]["message"] == (
            "Error adding/updating listener(s) l: "
            'metadata.filter_metadata["xds_proxy.drain"].max_closes_per_second: '
            "must be between 0 and 1e+09, got -5\n"
        )
    finally:
        proxy.stop()


# -- paced closes --------------------------------------------------------------------------------


@pytest.mark.serial  # the rate is measured on the client's clock: parallel load bunches it
def test_2000_idle_connections_are_told_at_most_200_a_second_and_no_request_fails(
    stub, tmp_path
) -> None:
    rate, count = 200, 2000
    proxy = start_proxy(stub, tmp_path, "--drain-time-s", "60", "--drain-strategy", "immediate")
    port = free_port()
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]
    try:
        push(stub, [policy_listener("paced", port, max_closes_per_second=rate)])
        idle = []
        for _ in range(count):
            conn = HttpConnection(port)
            assert conn.request().status == 200
            idle.append(conn)

        def busy() -> None:  # keeps requesting; a connection told to leave is replaced
            conn = HttpConnection(port)
            while not stop.is_set():
                try:
                    response = conn.request()
                except (ConnectionError, OSError) as error:
                    failures.append(repr(error))
                    conn = HttpConnection(port)
                    continue
                answered[0] += 1
                if response.status != 200:
                    failures.append(f"status {response.status}")
                if response.closes:
                    conn.close()
                    conn = HttpConnection(port)
            conn.close()

        threads = [threading.Thread(target=busy) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: answered[0] > 20, timeout=5, what="busy clients answered")
        push(stub, [policy_listener("paced", port, "v2", max_closes_per_second=rate)])
        fins = fin_times([conn.sock for conn in idle], limit=count / rate + 10)
        stop.set()
        for thread in threads:
            thread.join()
        assert len(fins) == count, f"only {len(fins)} closed"
        fins.sort()
        per_window = max(
            sum(1 for t in fins[i : i + rate + 50] if t < start + 1.0)
            for i, start in enumerate(fins)
        )
        buckets = [0] * (int((fins[-1] - fins[0]) * 10) + 1)  # FINs per 100 ms, for a failure
        for t in fins:
            buckets[int((t - fins[0]) * 10)] += 1
        # client-side timing: a stall of the test or the machine bunches what it sees by 10%
        assert per_window <= rate * 1.1, (per_window, buckets)
        span = fins[-1] - fins[0]
        assert span >= (count - 1) / rate * 0.9, span
        assert failures == []
        assert answered[0] > 100
        for conn in idle:
            conn.close()
    finally:
        stop.set()
        proxy.stop()


def fin_times(socks: list[socket.socket], limit: float) -> list[float]:
    """When (monotonic) each socket saw its FIN, watched all at once."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + limit
    times = []
    while len(times) < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            now = time.monotonic()
            try:
                data = key.fileobj.recv(1)
            except ConnectionResetError:
                data = b"reset"
            assert data == b"", f"{data!r} instead of a FIN"
            times.append(now)
            selector.unregister(key.fileobj)
    selector.close()
    return times


# -- exit when drained ----------------------------------------------------------------------------


@pytest.mark.serial  # the exit is timed to within 1 s of the last close on the client's clock
def test_sigterm_with_drain_on_sigterm_exits_once_the_last_connection_closes(
    stub, tmp_path
) -> None:
    proxy = start_proxy(
        stub, tmp_path, "--drain-time-s", "6", "--drain-strategy", "gradual", "--drain-on-sigterm"
    )
    port = free_port()
    push(stub, [policy_listener("web", port)])
    # A request in flight: its body half uploaded when SIGTERM arrives.
    in_flight = socket.create_connection(("127.0.0.1", port), timeout=10)
    in_flight.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12345")
    # Load: clients that stop once told to leave (their load balancer moved on).
    closed_at: list[float] = []
    failures: list[str] = []

    def client() -> None:
        conn = HttpConnection(port)
        while True:
            try:
                response = conn.request()
            except (ConnectionError, OSError) as error:
                failures.append(repr(error))
                break
            if response.status != 200:
                failures.append(f"status {response.status}")
            if response.closes:
                break
        conn.close()
        closed_at.append(time.monotonic())

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_for(lambda: proxy.stat("server.total_connections") == 7, timeout=5, what="7 connections")
    assert proxy.process is not None
    os.kill(proxy.process.popen.pid, signal.SIGTERM)
    wait_for(lambda: proxy.get("/ready")[1] == "DRAINING\n", timeout=5, what="DRAINING")
    assert proxy.alive()  # not at once: it drains
    in_flight.sendall(b"67890")
    response = HttpConnection.__new__(HttpConnection)
    response.sock, response._buffer = in_flight, b""
    answer = response.read_response()
    assert answer.status == 200 and answer.text == "v1"  # the full response
    in_flight.settimeout(10)
    assert in_flight.recv(1) == b""  # then, idle, told to leave on the ramp: a FIN
    closed_at.append(time.monotonic())
    in_flight.close()
    for thread in threads:
        thread.join(timeout=15)
    last_closed = max(closed_at)
    code = proxy.process.popen.wait(timeout=5)
    exited = time.monotonic()
    assert code == 0
    assert exited - last_closed <= 1.0, exited - last_closed
    assert failures == []
    assert "drain and exit: exiting (no connection left)" in proxy.log()


def test_drain_and_exit_waits_for_min_drain_time_and_sigterm_without_the_flag_is_at_once(
    stub, tmp_path
) -> None:
    proxy = start_proxy(stub, tmp_path, "--min-drain-time-s", "1.5")
    assert proxy.process is not None
    started = time.monotonic()
    assert proxy.post("/drain_and_exit") == (200, "OK\n")
    assert proxy.post("/drain_and_exit") == (200, "already draining\n")
    assert proxy.process.popen.wait(timeout=10) == 0
    assert time.monotonic() - started >= 1.5
    other = start_proxy(stub, tmp_path / "other", "--drain-time-s", "30")
    port = free_port()
    push(stub, [policy_listener("web", port)])
    conn = HttpConnection(port)
    assert conn.request().status == 200
    assert other.process is not None
    os.kill(other.process.popen.pid, signal.SIGTERM)  # as Envoy: exit at once, no drain
    assert other.process.popen.wait(timeout=3) == 0
    conn.close()
