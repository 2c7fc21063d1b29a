"""LDS-triggered drains on the real processes (control-plane-stub + xds-proxy), HTTP/1.1 over
raw sockets, both strategies (docs/draining.md).

Each scenario holds three kinds of connection when the drain starts: *idle* (a request
answered, keep-alive), *busy* (a request half sent) and, for in-place updates, a connection of
an unchanged chain. What a client must see:
- idle: closed by us with a FIN, at once (immediate) or by DT/2 (gradual);
- busy: its request answered by the old config, with `connection: close`, then a FIN;
- new connections: the new config (full and in-place update) or refused (remove);
- the drain is finalised once its last connection closed, long before DT: gauges drop,
  `draining_state` leaves /config_dump, /drain_status empties, a `drain complete` log line.
Also: a 2 s upload in flight completes, a connection that never sent a request (and a request
still half sent) is closed at DT, gradual spreads idle closes over [0, DT/2), and an in-place
update of only `default_filter_chain`. The ramp itself is proved in tests/unit/test_drain.py.
"""

from __future__ import annotations

import itertools
import json
import select
import socket
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.helpers.http_client import HttpConnection, get, refused
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

DRAIN_TIME_S = 3.0
HALF = DRAIN_TIME_S / 2
DRAIN_STATUS_FIELDS = {
    "kind",
    "listener",
    "version_info",
    "filter_chain",
    "trigger",
    "direction",
    "strategy",
    "started_at",
    "deadline",
    "elapsed_s",
    "connections",
    "policy",  # the values the drain runs under (issue 24)
    "cause",  # the push that caused it and what changed (issue 24)
}
SLACK = 0.6  # scheduling slack of a loaded 2-core machine


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=["immediate", "gradual"])
def strategy(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def proxy(stub, tmp_path_factory, strategy):
    """One proxy per strategy for the whole module: every test uses its own listener names,
    ports and stat prefixes, and ends with its drains finalised."""
    args = ["--drain-time-s", str(int(DRAIN_TIME_S)), "--drain-strategy", strategy]
    process = ProxyProcess(
        lds_bootstrap(stub.xds_address), tmp_path_factory.mktemp(strategy), extra_args=args
    ).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


_names = itertools.count(1)


@pytest.fixture
def name(stub, proxy) -> Iterator[str]:
    """A fresh listener name (also its HCM stat prefix); afterwards every listener is removed
    and its drain finished, so the next test starts from an idle proxy."""
    yield f"web{next(_names)}"
    push(stub, [])
    wait_for(lambda: drains(proxy) == [], timeout=DRAIN_TIME_S + 3, what="no drain left over")


def listener(name: str, port: int, body: str, **fields) -> dict:
    return http_listener(name, port, chains=[chain(body, stat_prefix=name)], **fields)


def stat(proxy: ProxyProcess, name: str, suffix: str) -> int | None:
    return proxy.stat(f"http.{name}.{suffix}")


def push(stub: StubProcess, listeners: list[dict]) -> None:
    version = stub.client.set_resources(listeners=listeners)["listeners"]
    stub.client.wait(version, timeout=10)


def drains(proxy: ProxyProcess) -> list[dict]:
    status, body = proxy.get("/drain_status")
    assert status == 200
    return json.loads(body)["drains"]


def draining_states(proxy: ProxyProcess) -> list[dict]:
    dump = json.loads(proxy.get("/config_dump?resource=dynamic_listeners")[1])
    return [entry["draining_state"] for entry in dump["configs"] if "draining_state" in entry]


def rfc3339(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text).timestamp()


def fin_within(conn: HttpConnection, limit: float) -> float:
    """Seconds until the proxy closed `conn` with a FIN (not a reset); fails after `limit`."""
    started = time.monotonic()
    conn.sock.settimeout(limit)
    assert conn.sock.recv(1) == b"", "data instead of a FIN"
    return time.monotonic() - started


def fin_times(socks: list[socket.socket], limit: float) -> list[float]:
    """When (monotonic) each socket saw its FIN, watched all at once; stops after `limit`."""
    deadline = time.monotonic() + limit
    waiting = list(socks)
    times = []
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            assert sock.recv(1) == b"", "data instead of a FIN"
            times.append(time.monotonic())
            waiting.remove(sock)
    return times


def elapsed_at_least(proxy: ProxyProcess, seconds: float) -> bool:
    return all(drain["elapsed_s"] >= seconds for drain in drains(proxy))


def busy_connection(port: int, source: str | None = None) -> HttpConnection:
    conn = HttpConnection(port, source=source)
    conn.sock.sendall(b"GET /busy HTTP/1.1\r\nhost: x\r\n")  # not finished: no blank line
    return conn


def finish_busy(proxy: ProxyProcess, conn: HttpConnection, strategy: str) -> str:
    """Finish the half-sent request; with gradual, once the connection has surely been told
    (its moment lies in [0, DT/2)). Returns the body; asserts `connection: close` + FIN."""
    if strategy == "gradual":
        wait_for(lambda: elapsed_at_least(proxy, HALF), timeout=HALF + SLACK, what="DT/2")
    conn.sock.sendall(b"\r\n")
    response = conn.read_response()
    assert response.status == 200
    assert response.closes, response.headers
    fin_within(conn, 2.0)
    return response.text


def completion_reports(proxy: ProxyProcess, name: str) -> list[dict]:
    """The `drain complete: {...}` log lines about listener `name`."""
    reports = []
    for line in proxy.log().splitlines():
        _, found, document = line.partition("drain complete: ")
        if found and json.loads(document)["listener"] == name:
            reports.append(json.loads(document))
    return reports


def assert_finalised_before_deadline(
    proxy: ProxyProcess, name: str, started: float, gauge: str
) -> None:
    wait_for(lambda: drains(proxy) == [], timeout=DRAIN_TIME_S, what="/drain_status empty")
    assert time.monotonic() - started < DRAIN_TIME_S, "finalised at the deadline, not before"
    assert proxy.stat(f"listener_manager.{gauge}") == 0
    assert draining_states(proxy) == []
    [report] = wait_for(lambda: completion_reports(proxy, name), timeout=2, what="log line")
    assert report["outcome"] == "last connection closed"
    assert report["connections"] == 0


def idle_limit(strategy: str) -> float:
    return (HALF if strategy == "gradual" else 0.0) + SLACK


def test_full_modify(stub, proxy, strategy, name):
    port = free_port()
    push(stub, [listener(name, port, "v1")])
    idle, busy = HttpConnection(port), busy_connection(port)
    assert idle.request().text == "v1"
    wait_for(lambda: stat(proxy, name, "downstream_rq_active") == 1, timeout=3)
    push(stub, [listener(name, port, "v2", per_connection_buffer_limit_bytes=9000)])
    started = time.monotonic()
    [record] = wait_for(lambda: drains(proxy), timeout=1, what="a drain in /drain_status")
    assert set(record) == DRAIN_STATUS_FIELDS
    assert record["kind"] == "listener" and record["trigger"] == "lds_update"
    assert record["listener"] == name and record["filter_chain"] is None
    assert record["strategy"] == strategy and record["connections"] == 2
    assert record["direction"] == "all" and 0 <= record["elapsed_s"] < 1
    window = rfc3339(record["deadline"]) - rfc3339(record["started_at"])
    assert window == pytest.approx(DRAIN_TIME_S, abs=0.002)
    assert abs(rfc3339(record["started_at"]) - time.time()) < 2
    assert proxy.stat("listener_manager.total_listeners_draining") == 1
    assert len(draining_states(proxy)) == 1
    assert get(port).text == "v2"  # new connections: the new version
    assert fin_within(idle, idle_limit(strategy)) < idle_limit(strategy)
    assert finish_busy(proxy, busy, strategy) == "v1"  # the old version answers its own
    assert_finalised_before_deadline(proxy, name, started, "total_listeners_draining")
    assert stat(proxy, name, "downstream_cx_drain_close") == 2
    assert get(port).text == "v2"


def test_remove(stub, proxy, strategy, name):
    port, other = free_port(), free_port()
    # MODIFY_ONLY and OUTBOUND change nothing for LDS-triggered drains (spec section 3)
    removed = listener(name, port, "v1", drain_type="MODIFY_ONLY", traffic_direction="OUTBOUND")
    push(stub, [removed, listener(name + "-api", other, "a")])
    idle, busy = HttpConnection(port), busy_connection(port)
    assert idle.request().text == "v1"
    wait_for(lambda: stat(proxy, name, "downstream_rq_active") == 1, timeout=3)
    push(stub, [listener(name + "-api", other, "a")])
    started = time.monotonic()
    wait_for(lambda: refused(port), timeout=0.5, what="refused at once")
    [record] = wait_for(lambda: drains(proxy), timeout=1, what="a drain in /drain_status")
    assert record["trigger"] == "lds_remove" and record["listener"] == name
    assert fin_within(idle, idle_limit(strategy)) < idle_limit(strategy)
    assert finish_busy(proxy, busy, strategy) == "v1"
    assert_finalised_before_deadline(proxy, name, started, "total_listeners_draining")
    assert proxy.listeners() == {name + "-api": f"127.0.0.1:{other}"}
    assert get(other).text == "a"


def test_in_place_update_drains_only_the_changed_chain(stub, proxy, strategy, name):
    port = free_port()
    chains = [
        chain("one-a", name="one", source_prefix="127.0.0.1/32", stat_prefix=name),
        chain("two-a", name="two", source_prefix="127.0.0.2/32", stat_prefix=name),
    ]
    fields = {"drain_type": "MODIFY_ONLY", "traffic_direction": "INBOUND"}
    push(stub, [http_listener(name, port, chains=chains, **fields)])
    in_place_before = proxy.stat("listener_manager.listener_in_place_updated")
    kept = HttpConnection(port)
    idle = HttpConnection(port, source="127.0.0.2")
    busy = busy_connection(port, source="127.0.0.2")
    assert kept.request().text == "one-a"
    assert idle.request().text == "two-a"
    wait_for(lambda: stat(proxy, name, "downstream_rq_active") == 1, timeout=3)
    chains[1] = chain("two-b", name="two", source_prefix="127.0.0.2/32", stat_prefix=name)
    push(stub, [http_listener(name, port, chains=chains, **fields)])
    started = time.monotonic()
    [record] = wait_for(lambda: drains(proxy), timeout=1, what="a drain in /drain_status")
    assert record["kind"] == "filter_chain" and record["filter_chain"] == "two"
    assert record["trigger"] == "in_place_update" and record["connections"] == 2
    assert proxy.stat("listener_manager.total_filter_chains_draining") == 1
    assert proxy.stat("listener_manager.total_listeners_draining") == 0
    assert proxy.stat("listener_manager.listener_in_place_updated") == in_place_before + 1
    assert get(port, source="127.0.0.2").text == "two-b"
    assert fin_within(idle, idle_limit(strategy)) < idle_limit(strategy)
    assert finish_busy(proxy, busy, strategy) == "two-a"
    assert_finalised_before_deadline(proxy, name, started, "total_filter_chains_draining")
    # The unchanged chain's connection was never told anything, during or after the window.
    for _ in range(3):
        response = kept.request()
        assert response.text == "one-a" and not response.closes


@pytest.mark.parametrize("strategy", ["gradual"], indirect=True)
def test_slow_request_in_flight_completes_during_the_drain(stub, proxy, name):
    """A request whose body takes 2 s to arrive is answered (old config, `connection:
    close`) inside the 3 s window."""
    port = free_port()
    push(stub, [listener(name, port, "v1")])
    conn = HttpConnection(port)
    conn.sock.sendall(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\n\r\n")
    wait_for(lambda: stat(proxy, name, "downstream_rq_active") == 1, timeout=3)
    push(stub, [listener(name, port, "v2", per_connection_buffer_limit_bytes=9000)])
    started = time.monotonic()
    for _ in range(8):  # one byte every 0.25 s: the request lasts 2 s into the drain
        time.sleep(0.25)  # pacing the upload, not synchronisation
        conn.sock.sendall(b"x")
    response = conn.read_response()
    assert time.monotonic() - started < DRAIN_TIME_S
    assert response.status == 200 and response.text == "v1" and response.closes
    fin_within(conn, 1.0)


@pytest.mark.parametrize("strategy", ["immediate"], indirect=True)
def test_connection_without_a_request_is_closed_at_the_deadline(stub, proxy, name):
    """A connection that never sent a byte is not idle (its first request may be on its
    way): it is told nothing and closed with a FIN when the window ends, as is a request
    still half sent at DT. Then the drain is finalised with outcome `deadline`."""
    port = free_port()
    push(stub, [listener(name, port, "v1")])
    silent = HttpConnection(port)
    stuck = busy_connection(port)
    wait_for(lambda: stat(proxy, name, "downstream_cx_active") == 2, timeout=3)
    push(stub, [])
    started = time.monotonic()
    silent.sock.settimeout(DRAIN_TIME_S + SLACK)
    assert silent.sock.recv(1) == b""
    assert time.monotonic() - started > DRAIN_TIME_S - 0.5
    stuck.sock.settimeout(1.0)
    assert stuck.sock.recv(1) == b""
    wait_for(lambda: drains(proxy) == [], timeout=2)
    assert proxy.stat("listener_manager.total_listeners_draining") == 0
    [report] = wait_for(lambda: completion_reports(proxy, name), timeout=2, what="log line")
    assert report["outcome"] == "deadline" and report["connections"] == 2
    assert stat(proxy, name, "downstream_cx_active") == 0


@pytest.mark.parametrize("strategy", ["gradual"], indirect=True)
def test_gradual_spreads_idle_closes_over_the_first_half(stub, proxy, name):
    """Idle keep-alive connections are closed one by one over [0, DT/2), not in one burst."""
    port = free_port()
    push(stub, [listener(name, port, "v1")])
    idle = [HttpConnection(port) for _ in range(8)]
    for conn in idle:
        assert conn.request().text == "v1"
    push(stub, [])
    started = time.monotonic()
    closed_at = fin_times([conn.sock for conn in idle], HALF + SLACK)
    assert len(closed_at) == len(idle), closed_at
    # 8 uniform moments in [0, 1.5): all in one 0.2 s slot has odds below 1e-5
    assert max(closed_at) - min(closed_at) > 0.2, closed_at
    assert max(closed_at) - started < HALF + SLACK
    assert stat(proxy, name, "downstream_cx_drain_close") == 8


@pytest.mark.parametrize("strategy", ["gradual"], indirect=True)
def test_busy_connection_under_gradual_ramp_is_told_by_half_the_window(stub, proxy, name):
    """A connection sending requests back to back keeps being served during the drain and
    is told to leave by DT/2 at the latest (its pushed moment or the ramp): `connection:
    close` on a response, or a FIN between two requests if its moment found it idle (the
    keep-alive race every HTTP/1.1 client handles by retrying on a new connection)."""
    port = free_port()
    push(stub, [listener(name, port, "v1")])
    conn = HttpConnection(port)
    assert conn.request().text == "v1"
    push(stub, [listener(name, port, "v2", per_connection_buffer_limit_bytes=9000)])
    started = time.monotonic()
    while True:
        try:
            response = conn.request()
        except ConnectionError:  # FIN before any byte of a response: closed while idle
            break
        assert response.text == "v1"  # served by the old version while draining
        if response.closes:
            fin_within(conn, 2.0)
            break
        assert time.monotonic() - started < HALF + SLACK, "not told to leave by DT/2"
    assert time.monotonic() - started < HALF + SLACK
    assert stat(proxy, name, "downstream_cx_drain_close") == 1


@pytest.mark.parametrize("strategy", ["immediate"], indirect=True)
def test_in_place_update_of_the_default_chain(stub, proxy, name):
    """Only `default_filter_chain` changed: an in-place update that drains the default chain
    (its idle connection closed, its busy one answered by the old chain); the matched chain
    is untouched."""
    port = free_port()

    def version(body: str) -> dict:
        matched = chain("matched", name="matched", source_prefix="127.0.0.2/32", stat_prefix=name)
        default = chain(body, name="default", stat_prefix=name)
        return http_listener(name, port, chains=[matched], default_filter_chain=default)

    push(stub, [version("d1")])
    kept = HttpConnection(port, source="127.0.0.2")
    idle, busy = HttpConnection(port), busy_connection(port)
    assert kept.request().text == "matched"
    assert idle.request().text == "d1"
    wait_for(lambda: stat(proxy, name, "downstream_rq_active") == 1, timeout=3)
    push(stub, [version("d2")])
    started = time.monotonic()
    [record] = wait_for(lambda: drains(proxy), timeout=1, what="a drain in /drain_status")
    assert record["kind"] == "filter_chain" and record["filter_chain"] == "default"
    assert get(port).text == "d2"
    assert fin_within(idle, idle_limit("immediate")) < idle_limit("immediate")
    assert finish_busy(proxy, busy, "immediate") == "d1"
    assert_finalised_before_deadline(proxy, name, started, "total_filter_chains_draining")
    response = kept.request()
    assert response.text == "matched" and not response.closes
