"""LDS add / modify / remove against the real processes: control-plane-stub + xds-proxy.

Clients are raw sockets, so what the tests see is exactly what the proxy wrote.
"""

from __future__ import annotations

import json
import threading

import pytest

from control_plane_stub.client import StubNack
from tests.helpers.http_client import HttpConnection, get, refused
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

DRAIN_ARGS = ["--drain-time-s", "2", "--drain-strategy", "immediate"]


@pytest.fixture
def stub(tmp_path):
    process = StubProcess(tmp_path, xds=f"127.0.0.1:{free_port()}").start()
    yield process
    process.stop()


@pytest.fixture
def proxy(tmp_path, stub):
    process = ProxyProcess(lds_bootstrap(stub.xds_address), tmp_path, extra_args=DRAIN_ARGS)
    process.start()
    process.wait_ready()
    yield process
    process.stop()


def push(stub, listeners, version=None) -> str:
    """Push and wait for the proxy's ACK; returns the listeners' version."""
    pushed = stub.client.set_resources(listeners=listeners, version=version)["listeners"]
    stub.client.wait(pushed, timeout=10)
    return pushed


def stat(proxy, name: str) -> int:
    value = proxy.stat(name)
    assert value is not None, name
    return value


def test_add_serves_and_counts(stub, proxy):
    port = free_port()
    push(stub, [http_listener("web", port, body="v1")])
    assert get(port).text == "v1"
    assert proxy.listeners() == {"web": f"127.0.0.1:{port}"}
    assert stat(proxy, "listener_manager.listener_added") == 1
    assert stat(proxy, "listener_manager.total_listeners_active") == 1
    assert proxy.get("/ready") == (200, "LIVE\n")


def test_identical_repush_is_a_noop(stub, proxy):
    port = free_port()
    push(stub, [http_listener("web", port)], version="v1")
    conn = HttpConnection(port)
    assert conn.request().status == 200
    push(stub, [http_listener("web", port)], version="v2")
    assert not conn.request().closes  # nothing drained
    assert stat(proxy, "listener_manager.listener_modified") == 0
    assert proxy.stats()["listener_manager.lds.version_text"] == '"v2"'
    dump = json.loads(proxy.get("/config_dump?resource=dynamic_listeners")[1])
    assert dump["configs"][0]["active_state"]["version_info"] == "v1"


def test_full_modify_keeps_old_connections_on_old_config(stub, proxy):
    port = free_port()
    push(stub, [http_listener("web", port, body="v1")])
    idle, busy = HttpConnection(port), HttpConnection(port)
    assert idle.request().text == "v1"
    busy.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # a request half sent: not idle
    modified = http_listener("web", port, body="v2", per_connection_buffer_limit_bytes=65536)
    push(stub, [modified])
    assert get(port).text == "v2"
    assert idle.closed_by_peer()  # idle keep-alive: told to leave with a FIN at drain start
    busy.sock.sendall(b"\r\n")
    response = busy.read_response()
    assert response.text == "v1"  # the old version answers its own connections
    assert response.closes  # ... and tells them to go away (immediate strategy)
    assert busy.closed_by_peer()
    assert stat(proxy, "listener_manager.listener_modified") == 1
    assert stat(proxy, "listener_manager.listener_in_place_updated") == 0
    wait_for(lambda: stat(proxy, "listener_manager.total_listeners_draining") == 0, timeout=5)


def test_in_place_update_drains_only_the_changed_chain(stub, proxy):
    port = free_port()
    chains = [
        chain("one-a", name="one", source_prefix="127.0.0.1/32"),
        chain("two-a", name="two", source_prefix="127.0.0.2/32"),
    ]
    push(stub, [http_listener("web", port, chains=chains)])
    first, second = HttpConnection(port), HttpConnection(port, source="127.0.0.2")
    assert first.request().text == "one-a"
    assert second.request().text == "two-a"
    second.sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
    chains[1] = chain("two-b", name="two", source_prefix="127.0.0.2/32")
    push(stub, [http_listener("web", port, chains=chains)])
    second.sock.sendall(b"\r\n")
    changed = second.read_response()
    assert changed.text == "two-a" and changed.closes
    unchanged = first.request()
    assert unchanged.text == "one-a" and not unchanged.closes
    assert get(port, source="127.0.0.2").text == "two-b"
    assert stat(proxy, "listener_manager.listener_in_place_updated") == 1
    assert stat(proxy, "listener_manager.total_listeners_draining") == 0
    wait_for(lambda: stat(proxy, "listener_manager.total_filter_chains_draining") == 0, timeout=5)
    assert not first.request().closes


def test_remove_refuses_new_connections_at_once(stub, proxy):
    port, other = free_port(), free_port()
    push(stub, [http_listener("web", port), http_listener("api", other)])
    push(stub, [http_listener("api", other)])
    wait_for(lambda: refused(port), timeout=1, what="refused connects")
    assert get(other).status == 200
    assert proxy.listeners() == {"api": f"127.0.0.1:{other}"}
    assert stat(proxy, "listener_manager.listener_removed") == 1


def test_remove_then_add_again_binds_afresh(stub, proxy):
    port = free_port()
    push(stub, [http_listener("web", port, body="first")])
    push(stub, [])
    wait_for(lambda: refused(port), timeout=1, what="refused connects")
    push(stub, [http_listener("web", port, body="again")])
    assert get(port).text == "again"


def test_remove_and_add_on_one_address_in_one_response(stub, proxy):
    port = free_port()
    push(stub, [http_listener("old", port, body="old")])
    push(stub, [http_listener("new", port, body="new")])
    assert get(port).text == "new"
    assert proxy.listeners() == {"new": f"127.0.0.1:{port}"}


def test_address_change_stops_the_old_address(stub, proxy):
    first, second = free_port(), free_port()
    push(stub, [http_listener("web", first, body="a")])
    conn = HttpConnection(first)
    assert conn.request().text == "a"
    push(stub, [http_listener("web", second, body="b")])
    wait_for(lambda: refused(first), timeout=1, what="refused connects")
    assert get(second).text == "b"
    assert conn.closed_by_peer()  # the idle connection of the old version is told to leave


def test_swap_of_two_addresses_is_rejected_for_both(stub, proxy):
    a, b = free_port(), free_port()
    push(stub, [http_listener("a", a, body="a"), http_listener("b", b, body="b")], version="v1")
    stub.client.set_resources(
        listeners=[http_listener("a", b, body="a"), http_listener("b", a, body="b")], version="v2"
    )
    with pytest.raises(StubNack) as nack:
        stub.client.wait("v2", timeout=10)
    assert nack.value.detail.count("has duplicate address") == 2
    assert get(a).text == "a" and get(b).text == "b"
    assert stat(proxy, "listener_manager.lds.update_rejected") == 1
    assert proxy.stats()["listener_manager.lds.version_text"] == '"v1"'


def test_partial_apply_keeps_valid_listeners(stub, proxy):
    good, taken = free_port(), free_port()
    push(stub, [http_listener("first", taken)], version="v1")
    stub.client.set_resources(
        listeners=[
            http_listener("first", taken),
            http_listener("good", good, body="good"),
            http_listener("clash", taken),
        ],
        version="v2",
    )
    with pytest.raises(StubNack) as nack:
        stub.client.wait("v2", timeout=10)
    assert "Error adding/updating listener(s) clash: " in nack.value.detail
    assert get(good).text == "good"
    dump = json.loads(proxy.get("/config_dump?resource=dynamic_listeners")[1])["configs"]
    by_name = {entry.get("name"): entry for entry in dump}
    assert "has duplicate address" in by_name["clash"]["error_state"]["details"]
    assert by_name["good"]["active_state"]["version_info"] == "v2"
    assert any("name" not in entry and "error_state" in entry for entry in dump)


def test_control_plane_restart_keeps_everything_serving(tmp_path, stub, proxy):
    port = free_port()
    listeners = [http_listener("web", port, body="kept")]
    push(stub, listeners)
    conn = HttpConnection(port)
    assert conn.request().text == "kept"
    accepted = stat(proxy, "listener_manager.lds.update_success")
    stub.stop()
    wait_for(
        lambda: stat(proxy, "listener_manager.lds.control_plane.connected_state") == 0,
        timeout=5,
    )
    assert get(port).text == "kept"
    # A control plane comes back with its state: the same set, served from its first response.
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"listeners": listeners}))
    stub.resources = state
    stub.start()
    wait_for(
        lambda: stat(proxy, "listener_manager.lds.control_plane.connected_state") == 1,
        timeout=10,
    )
    wait_for(lambda: stat(proxy, "listener_manager.lds.update_success") > accepted, timeout=10)
    assert not conn.request().closes
    assert stat(proxy, "listener_manager.listener_modified") == 0
    assert stat(proxy, "listener_manager.listener_removed") == 0
    assert stat(proxy, "listener_manager.lds.update_failure") >= 1


def test_connect_loop_sees_no_refusal_during_100_modifications(stub, proxy):
    port = free_port()
    push(stub, [http_listener("web", port, body="0")])
    errors: list[str] = []
    answered = 0
    stop = threading.Event()

    def connect_loop() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                response = get(port)
                if response.status != 200:
                    errors.append(f"status {response.status}")
                answered += 1
            except OSError as error:
                errors.append(repr(error))

    thread = threading.Thread(target=connect_loop)
    thread.start()
    try:
        for i in range(1, 101):
            push(
                stub,
                [
                    http_listener(
                        "web", port, body=str(i), per_connection_buffer_limit_bytes=i + 1000
                    )
                ],
            )
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert answered > 100
    assert stat(proxy, "listener_manager.listener_modified") == 100
    assert get(port).text == "100"


def test_invalid_and_unsupported_listeners_are_nacked_by_field(stub, proxy):
    good = free_port()
    nameless_filter = http_listener("pgv", free_port())
    nameless_filter["filter_chains"][0]["filters"][0]["name"] = ""
    unsupported = http_listener("unsupported", free_port(), freebind=True)
    stub.client.set_resources(
        listeners=[nameless_filter, http_listener("good", good, body="ok"), unsupported],
        version="v1",
    )
    with pytest.raises(StubNack) as nack:
        stub.client.wait("v1", timeout=10)
    lines = nack.value.detail.split("Error adding/updating listener(s) ", 1)[1].splitlines()
    assert lines[0].startswith("pgv: filter_chains[0].filters[0].name: ")
    assert lines[1].startswith("unsupported: freebind: not supported")
    assert get(good).text == "ok"
    assert sorted(proxy.listeners()) == ["good"]
