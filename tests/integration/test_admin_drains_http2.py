"""Admin-triggered drains seen by HTTP/2 clients (docs/draining.md): the same rows
as tests/integration/test_admin_drains.py, where the signal to leave is a GOAWAY."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.h2_client import H2Client
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

MAX_STREAM_ID = 2**31 - 1
HCM_OPTIONS: dict[str, Any] = {"drain_timeout": "0.5s", "delayed_close_timeout": "0.2s"}


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[ProxyProcess, dict[str, int]]]:
    """A DEFAULT and a MODIFY_ONLY listener, both INBOUND, on one proxy (immediate strategy)."""
    stub = StubProcess(tmp_path / "stub").start()
    proxy = ProxyProcess(
        lds_bootstrap(stub.xds_address),
        tmp_path / "proxy",
        extra_args=["--drain-time-s", "3", "--drain-strategy", "immediate"],
    )
    ports = {"default": free_port(), "modify_only": free_port()}
    try:
        proxy.start()
        proxy.wait_ready()
        listeners = [
            http_listener(
                name,
                port,
                chains=[chain(name, **HCM_OPTIONS)],
                drain_type="DEFAULT" if name == "default" else "MODIFY_ONLY",
                traffic_direction="INBOUND",
            )
            for name, port in ports.items()
        ]
        version = stub.client.set_resources(listeners=listeners)["listeners"]
        stub.client.wait(version, timeout=10)
        yield proxy, ports
    finally:
        proxy.stop()
        stub.stop()


@pytest.fixture
def connect() -> Iterator[Any]:
    """Open H2Clients that are closed at the end of the test."""
    opened: list[H2Client] = []

    def open_client(port: int) -> H2Client:
        opened.append(H2Client(port))
        return opened[-1]

    yield open_client
    for client in opened:
        client.close()


def answered(client: H2Client) -> None:
    response = client.response(client.request(path="/"))
    assert response.status == 200, response


def test_graceful_drain_listeners_sends_the_goaway_pair(served, connect) -> None:
    proxy, ports = served
    clients = {name: connect(port) for name, port in ports.items()}
    for client in clients.values():
        answered(client)  # then idle
    assert proxy.post("/drain_listeners?graceful") == (200, "OK\n")
    for name, client in clients.items():  # both drain types drain on /drain_listeners
        goaways = client.wait_goaways(2, timeout=5)
        first, final = goaways[0].frame, goaways[1].frame
        assert (first.last_stream_id, first.error_code) == (MAX_STREAM_ID, 0), name
        assert (final.last_stream_id, final.error_code) == (1, 0), name
        client.wait_closed(timeout=5)
    assert proxy.stat("listener_manager.listener_stopped") == 0  # graceful: only at DT


def test_healthcheck_fail_goaways_default_listeners_only(served, connect) -> None:
    proxy, ports = served
    default, modify_only = connect(ports["default"]), connect(ports["modify_only"])
    answered(default)
    answered(modify_only)
    assert proxy.post("/healthcheck/fail") == (200, "OK\n")
    assert proxy.get("/ready") == (503, "DRAINING\n")
    # The next response on a DEFAULT listener carries the drain: GOAWAY before it.
    answered(default)
    assert default.wait_goaways(1, timeout=5)[0].frame.last_stream_id == MAX_STREAM_ID
    answered(modify_only)
    assert modify_only.goaways() == []  # MODIFY_ONLY listeners are untouched
    assert proxy.post("/healthcheck/ok") == (200, "OK\n")
    wait_for(lambda: proxy.get("/ready") == (200, "LIVE\n"), timeout=5)
    fresh = connect(ports["default"])
    answered(fresh)
    assert fresh.goaways() == []


def test_a_connection_opened_during_a_drain_gets_settings_then_its_answer(served, connect):
    """A new HTTP/2 connection accepted while an immediate drain runs is told at once, after
    our SETTINGS: its first request is still answered (it was a reset before)."""
    proxy, ports = served
    assert proxy.post("/drain_listeners?graceful") == (200, "OK\n")
    client = connect(ports["default"])
    answered(client)
    assert client.wait_goaways(1, timeout=5)[0].frame.last_stream_id == MAX_STREAM_ID
    assert "AttributeError" not in proxy.log()
