"""Admin-triggered drains and health on the real processes (docs/draining.md):
`/healthcheck/fail|ok` and `/drain_listeners` (plain, graceful, inboundonly, skip_exit), with
DEFAULT, MODIFY_ONLY, INBOUND and OUTBOUND listeners side by side, HTTP/1.1 raw sockets.

Four listeners cover the combinations: `in_default` (INBOUND, DEFAULT), `out_default`
(OUTBOUND, DEFAULT), `in_modify` (INBOUND, MODIFY_ONLY), `out_modify` (OUTBOUND,
MODIFY_ONLY). Each listener's HCM stat prefix is its name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.helpers.http_client import HttpConnection, get, refused
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

DRAIN_TIME_S = 2.0
SLACK = 0.6
KINDS = {
    "in_default": ("INBOUND", "DEFAULT"),
    "out_default": ("OUTBOUND", "DEFAULT"),
    "in_modify": ("INBOUND", "MODIFY_ONLY"),
    "out_modify": ("OUTBOUND", "MODIFY_ONLY"),
}
INBOUND = {name for name, (direction, _) in KINDS.items() if direction == "INBOUND"}
DEFAULT = {name for name, (_, drain_type) in KINDS.items() if drain_type == "DEFAULT"}


def listeners(ports: dict[str, int], body: str = "v1") -> list[dict]:
    return [
        http_listener(
            name,
            ports[name],
            chains=[chain(f"{name}-{body}", stat_prefix=name)],
            traffic_direction=direction,
            drain_type=drain_type,
        )
        for name, (direction, drain_type) in KINDS.items()
    ]


class Setup:
    """A stub and a proxy serving the four listeners."""

    def __init__(self, stub: StubProcess, proxy: ProxyProcess, ports: dict[str, int]) -> None:
        self.stub = stub
        self.proxy = proxy
        self.ports = ports

    def push(self, listener_set: list[dict]) -> str:
        version = self.stub.client.set_resources(listeners=listener_set)["listeners"]
        self.stub.client.wait(version, timeout=10)
        return version

    def stat(self, name: str) -> int | None:
        return self.proxy.stat(name)

    def idle(self) -> dict[str, HttpConnection]:
        """One keep-alive connection per listener, its first request answered."""
        conns = {name: HttpConnection(port) for name, port in self.ports.items()}
        for name, conn in conns.items():
            response = conn.request()
            assert response.text == f"{name}-v1" and not response.closes
        return conns

    def drains(self) -> list[dict]:
        return json.loads(self.proxy.get("/drain_status")[1])["drains"]


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


def start(stub: StubProcess, tmp_path, strategy: str) -> Setup:
    ports = {name: free_port() for name in KINDS}
    version = stub.client.set_resources(listeners=listeners(ports))["listeners"]
    args = ["--drain-time-s", str(int(DRAIN_TIME_S)), "--drain-strategy", strategy]
    proxy = ProxyProcess(lds_bootstrap(stub.xds_address), tmp_path, extra_args=args).start()
    try:
        proxy.wait_ready()
        stub.client.wait(version, timeout=10)
    except Exception:
        proxy.stop()
        raise
    return Setup(stub, proxy, ports)


@pytest.fixture
def immediate(stub, tmp_path) -> Iterator[Setup]:
    setup = start(stub, tmp_path, "immediate")
    yield setup
    assert setup.proxy.alive(), "the process must never exit because of a drain"
    setup.proxy.stop()


@pytest.fixture
def gradual(stub, tmp_path) -> Iterator[Setup]:
    setup = start(stub, tmp_path, "gradual")
    yield setup
    assert setup.proxy.alive()
    setup.proxy.stop()


def closed_by_fin(conn: HttpConnection, timeout: float) -> bool:
    conn.sock.settimeout(timeout)
    try:
        return conn.sock.recv(1) == b""
    except TimeoutError:
        return False


def still_open(conn: HttpConnection) -> bool:
    """The connection is open and serves a request without being told to leave."""
    response = conn.request()
    return response.status == 200 and not response.closes


def assert_drained(conn: HttpConnection) -> None:
    """Idle connection of a draining listener (immediate): closed with a FIN at once."""
    assert closed_by_fin(conn, SLACK)


def accepting(port: int) -> bool:
    return get(port).status == 200


# -- /healthcheck/fail and /healthcheck/ok ------------------------------------------------------


def test_healthcheck_fail_and_ok(gradual):
    """Gradual strategy, t < 1 s: only the health failure can make a response close."""
    setup, proxy = gradual, gradual.proxy
    conns = setup.idle()
    assert proxy.post("/healthcheck/fail") == (200, "OK\n")
    assert proxy.get("/ready") == (503, "DRAINING\n")
    assert setup.stat("server.state") == 1 and setup.stat("server.live") == 0
    assert json.loads(proxy.get("/server_info")[1])["state"] == "DRAINING"
    [record] = setup.drains()
    assert record["kind"] == "server" and record["trigger"] == "healthcheck_fail"
    assert record["strategy"] == "immediate"
    assert record["connections"] == 2  # the DEFAULT listeners' connections
    for name, conn in conns.items():
        response = conn.request()
        assert response.status == 200
        if name in DEFAULT:  # every response at once, even with gradual
            assert response.closes, name
            assert closed_by_fin(conn, 2.0)
            assert get(setup.ports[name]).closes  # new connections too
            assert setup.stat(f"http.{name}.downstream_cx_drain_close") == 2
        else:  # MODIFY_ONLY: untouched
            assert not response.closes, name
            assert still_open(conn)
            assert setup.stat(f"http.{name}.downstream_cx_drain_close") == 0
    # Listeners keep accepting: a health failure stops nothing.
    assert all(accepting(port) for port in setup.ports.values())
    assert setup.stat("listener_manager.listener_stopped") == 0

    assert proxy.post("/healthcheck/ok") == (200, "OK\n")
    assert proxy.get("/ready") == (200, "LIVE\n")
    assert setup.stat("server.state") == 0 and setup.stat("server.live") == 1
    assert setup.drains() == []
    for name, port in setup.ports.items():
        conn = HttpConnection(port)
        assert still_open(conn) and still_open(conn), name
    for name in KINDS:
        if name not in DEFAULT:
            assert still_open(conns[name])


def test_healthcheck_endpoints_are_post_only(immediate):
    proxy = immediate.proxy
    assert proxy.get("/healthcheck/fail")[0] == 405
    assert proxy.get("/drain_listeners")[0] == 405
    assert proxy.get("/ready") == (200, "LIVE\n")
    assert immediate.stat("listener_manager.listener_stopped") == 0


# -- /drain_listeners ------------------------------------------------------------------------------


def test_graceful_drain_stops_every_listener_at_the_deadline(immediate):
    setup, proxy = immediate, immediate.proxy
    conns = setup.idle()
    busy = HttpConnection(setup.ports["in_modify"])
    busy.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
    wait_for(lambda: setup.stat("http.in_modify.downstream_rq_active") == 1, timeout=3)
    assert proxy.post("/drain_listeners?graceful") == (200, "OK\n")
    started = time.monotonic()
    [record] = setup.drains()
    assert record["kind"] == "server" and record["trigger"] == "drain_listeners"
    assert record["direction"] == "all" and record["strategy"] == "immediate"
    assert record["connections"] == 5
    for conn in conns.values():  # both drain types, both directions
        assert_drained(conn)
    busy.sock.sendall(b"\r\n")
    response = busy.read_response()
    assert response.text == "in_modify-v1" and response.closes
    # Still accepting during the window; a new connection is told to leave at once.
    for port in setup.ports.values():
        assert get(port).closes
    assert proxy.get("/ready") == (200, "LIVE\n")  # a drain is not a health failure
    # A second graceful drain while one runs is a no-op.
    assert proxy.post("/drain_listeners?graceful&inboundonly") == (200, "OK\n")
    assert [d["started_at"] for d in setup.drains()] == [record["started_at"]]
    # At DT every listener stops: refused connects, listener_stopped once each.
    wait_for(
        lambda: all(refused(port) for port in setup.ports.values()),
        timeout=DRAIN_TIME_S + SLACK,
        what="listeners stopped at DT",
    )
    assert time.monotonic() - started > DRAIN_TIME_S - 0.5
    wait_for(lambda: setup.stat("listener_manager.listener_stopped") == 4, timeout=2)
    assert setup.drains() == []
    assert set(proxy.listeners()) == set(KINDS)  # stopped listeners are still listed
    assert proxy.post("/drain_listeners?graceful") == (200, "OK\n")
    assert setup.stat("listener_manager.listener_stopped") == 4
    # Later LDS updates are ACKed and ignored.
    setup.push(listeners(setup.ports, body="v2"))
    assert all(refused(port) for port in setup.ports.values())
    assert setup.stat("listener_manager.lds.update_rejected") == 0
    assert proxy.get("/ready") == (200, "LIVE\n")


def test_graceful_inbound_only_drains_and_stops_inbound_listeners(immediate):
    setup, proxy = immediate, immediate.proxy
    conns = setup.idle()
    assert proxy.post("/drain_listeners?graceful&inboundonly") == (200, "OK\n")
    [record] = setup.drains()
    assert record["direction"] == "inbound_only" and record["connections"] == 2
    for name, conn in conns.items():
        if name in INBOUND:
            assert_drained(conn)
        else:
            assert still_open(conn), name
    wait_for(
        lambda: all(refused(setup.ports[name]) for name in INBOUND),
        timeout=DRAIN_TIME_S + SLACK,
        what="inbound listeners stopped at DT",
    )
    wait_for(lambda: setup.stat("listener_manager.listener_stopped") == 2, timeout=2)
    for name in set(KINDS) - INBOUND:  # outbound: untouched, accepting, never told
        assert still_open(conns[name])
        response = get(setup.ports[name])
        assert response.status == 200 and not response.closes
        assert setup.stat(f"http.{name}.downstream_cx_drain_close") == 0
    assert set(proxy.listeners()) == set(KINDS)
    # Later LDS updates: ACKed; ignored for the stopped (inbound) listeners only.
    setup.push(listeners(setup.ports, body="v2"))
    for name, port in setup.ports.items():
        if name in INBOUND:
            assert refused(port), name
        else:
            assert get(port).text == f"{name}-v2"
    # A later graceful drain of everything is a new drain (the running one was inbound only).
    assert proxy.post("/drain_listeners?graceful") == (200, "OK\n")
    assert [d["direction"] for d in setup.drains() if d["kind"] == "server"] == ["all"]


def test_plain_drain_stops_every_listener_at_once(immediate):
    setup, proxy = immediate, immediate.proxy
    conns = setup.idle()
    busy = HttpConnection(setup.ports["out_default"])
    busy.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
    wait_for(lambda: setup.stat("http.out_default.downstream_rq_active") == 1, timeout=3)
    assert proxy.post("/drain_listeners") == (200, "OK\n")
    started = time.monotonic()
    wait_for(lambda: all(refused(port) for port in setup.ports.values()), timeout=1)
    assert time.monotonic() - started < 1.0
    assert setup.stat("listener_manager.listener_stopped") == 4
    for conn in conns.values():  # existing connections drain (Envoy 1.40 too)
        assert_drained(conn)
    busy.sock.sendall(b"\r\n")
    response = busy.read_response()
    assert response.text == "out_default-v1" and response.closes
    assert set(proxy.listeners()) == set(KINDS)
    assert proxy.get("/ready") == (200, "LIVE\n")
    assert setup.stat("server.state") == 0


@pytest.mark.parametrize("query", ["graceful&skip_exit", "skip_exit"])
def test_skip_exit_drains_but_never_stops(immediate, query):
    setup, proxy = immediate, immediate.proxy
    conns = setup.idle()
    assert proxy.post(f"/drain_listeners?{query}") == (200, "OK\n")
    for conn in conns.values():
        assert_drained(conn)
    # Past the deadline: the drain is over, nothing stopped, new connections served normally.
    wait_for(lambda: setup.drains() == [], timeout=DRAIN_TIME_S + SLACK, what="drain over")
    assert setup.stat("listener_manager.listener_stopped") == 0
    for port in setup.ports.values():
        assert get(port).status == 200
    assert '"trigger": "drain_listeners"' in proxy.log().split("drain complete: ", 1)[1]


def test_gradual_graceful_drain_tells_idle_connections_by_half_the_window(gradual):
    setup, proxy = gradual, gradual.proxy
    conns = setup.idle()
    assert proxy.post("/drain_listeners?graceful&skip_exit") == (200, "OK\n")
    started = time.monotonic()
    [record] = setup.drains()
    assert record["strategy"] == "gradual" and record["trigger"] == "drain_listeners"
    for name, conn in conns.items():  # every drain type and direction, spread over [0, DT/2)
        left = DRAIN_TIME_S / 2 + SLACK - (time.monotonic() - started)
        assert closed_by_fin(conn, max(left, 0.01)), name
    assert time.monotonic() - started < DRAIN_TIME_S / 2 + SLACK
    closes = sum(setup.stat(f"http.{name}.downstream_cx_drain_close") for name in KINDS)
    assert closes == 4


def test_new_listener_on_the_address_of_a_stopped_removed_one_serves(immediate):
    setup, proxy = immediate, immediate.proxy
    assert proxy.post("/drain_listeners?inboundonly") == (200, "OK\n")
    port = setup.ports["in_default"]
    wait_for(lambda: refused(port), timeout=1, what="inbound listeners stopped")
    replacement = http_listener(
        "replacement", port, chains=[chain("replacement")], traffic_direction="OUTBOUND"
    )
    kept = [item for item in listeners(setup.ports) if item["name"] not in INBOUND]
    setup.push([*kept, replacement])  # the stopped inbound listeners removed, one replaced
    assert wait_for(lambda: get(port).text == "replacement", timeout=2)
