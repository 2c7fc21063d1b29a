"""HTTP/2 connections when their listener is modified or removed over LDS (docs/draining.md),
on the real control-plane-stub + xds-proxy processes, seen frame by frame.

The HCM's `drain_timeout` is 1 s and `delayed_close_timeout` 0.5 s here, `--drain-time-s`
4 with the immediate strategy: every connection is told at drain start, so the first GOAWAY
comes at once, the final one exactly 1 s later, the close 0.5 s after the last stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.h2_client import H2Client, Response
from tests.helpers.http_client import get, refused
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

MAX_STREAM_ID = 2**31 - 1
REFUSED_STREAM = 7
DRAIN_TIMEOUT_S = 1.0
DELAYED_CLOSE_S = 0.5
DRAIN_ARGS = ["--drain-time-s", "4", "--drain-strategy", "immediate"]
HCM_OPTIONS: dict[str, Any] = {
    "drain_timeout": f"{DRAIN_TIMEOUT_S}s",
    "delayed_close_timeout": f"{DELAYED_CLOSE_S}s",
}
# Timer slack on 2 busy cores: frames are timed from the client's side of loopback.
SLACK_S = 0.25


def h2_listener(port: int, body: str, **fields: Any) -> dict[str, Any]:
    return http_listener("web", port, chains=[chain(body, **HCM_OPTIONS)], **fields)


def modified(port: int) -> dict[str, Any]:
    """A full modify (a listener-level field changed): the old version drains."""
    return h2_listener(port, "v2", per_connection_buffer_limit_bytes=65536)


@pytest.fixture
def stub(tmp_path) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path / "stub").start()
    yield process
    process.stop()


@pytest.fixture
def proxy(tmp_path, stub) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        lds_bootstrap(stub.xds_address), tmp_path / "proxy", extra_args=DRAIN_ARGS
    )
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def push(stub: StubProcess, listeners: list[dict]) -> float:
    """Push, wait for the ACK; returns when the ACK was seen (the drain has started)."""
    pushed = stub.client.set_resources(listeners=listeners)["listeners"]
    stub.client.wait(pushed, timeout=10)
    return time.monotonic()


def answered(client: H2Client, **request: Any) -> Response:
    response = client.response(client.request(**request))
    assert response.status == 200, response
    return response


class LiveConnections:
    """Three HTTP/2 connections on the v1 listener: one idle after a request, one with a
    stream in flight (request body still open), one that opens streams during the drain."""

    def __init__(self, port: int) -> None:
        self.idle = H2Client(port)
        self.busy = H2Client(port)
        self.late = H2Client(port)
        for client in (self.idle, self.busy, self.late):
            assert answered(client).body == b"v1"
        self.in_flight = self.busy.request("/upload", method="POST", end_stream=False)
        self.busy.send_data(self.in_flight, b"part one")

    def close(self) -> None:
        for client in (self.idle, self.busy, self.late):
            client.close()


def check_drain_sequence(live: LiveConnections, drain_started: float) -> None:
    """What spec section 4 says every connection sees, checked frame by frame."""
    for client in (live.idle, live.busy, live.late):
        first = client.wait_goaways(1)[0]
        assert (first.frame.last_stream_id, first.frame.error_code) == (MAX_STREAM_ID, 0)
        assert first.at - drain_started < SLACK_S  # immediate: told at drain start
    # A stream opened after the first GOAWAY is still served, by the old version.
    late_stream = live.late.request()
    late_response = live.late.response(late_stream)
    assert (late_response.status, late_response.body) == (200, b"v1")
    for client, highest in ((live.idle, 1), (live.busy, live.in_flight), (live.late, late_stream)):
        first, final = client.wait_goaways(2, timeout=DRAIN_TIMEOUT_S + 2)
        assert (final.frame.last_stream_id, final.frame.error_code) == (highest, 0)
        assert abs(final.at - first.at - DRAIN_TIMEOUT_S) < SLACK_S, client.frames
    # Above the final GOAWAY's last_stream_id: refused, never answered.
    refused_stream = live.late.request()
    assert live.late.response(refused_stream).reset_code == REFUSED_STREAM
    # No stream active: closed `delayed_close_timeout` after the final GOAWAY.
    for client in (live.idle, live.late):
        final = client.goaways()[1]
        assert abs(client.wait_closed() - final.at - DELAYED_CLOSE_S) < SLACK_S
    # The in-flight stream keeps its connection open and completes on the old version.
    assert live.busy.closed_at is None
    body_ended = time.monotonic()
    live.busy.send_data(live.in_flight, b"part two", end_stream=True)
    response = live.busy.response(live.in_flight)
    assert (response.status, response.body) == (200, b"v1")
    assert abs(live.busy.wait_closed() - body_ended - DELAYED_CLOSE_S) < SLACK_S
    sequence = live.late.sequence()
    assert sequence[-5:] == [
        f"GOAWAY({MAX_STREAM_ID},0)",
        f"HEADERS({late_stream})",
        f"DATA({late_stream},END)",
        f"GOAWAY({late_stream},0)",
        f"RST_STREAM({refused_stream},{REFUSED_STREAM})",
    ]


def test_modify_listener_with_live_http2_connections(stub, proxy) -> None:
    port = free_port()
    push(stub, [h2_listener(port, "v1")])
    live = LiveConnections(port)
    try:
        drain_started = push(stub, [modified(port)])
        live.idle.wait_goaways(1)  # the old version drains once the new one serves
        with H2Client(port) as fresh:  # new connections get the new version at once
            assert answered(fresh).body == b"v2"
        check_drain_sequence(live, drain_started)
    finally:
        live.close()
    wait_for(lambda: proxy.stat("http.ingress_http.downstream_cx_drain_close") == 3, timeout=3)
    assert proxy.stat("http.ingress_http.downstream_cx_http2_total") == 4
    wait_for(
        lambda: proxy.stat("listener_manager.total_listeners_draining") == 0,
        timeout=5,
        what="drain finished",
    )


def test_remove_listener_with_live_http2_connections(stub, proxy) -> None:
    port = free_port()
    push(stub, [h2_listener(port, "v1")])
    live = LiveConnections(port)
    try:
        drain_started = push(stub, [])
        wait_for(lambda: refused(port), timeout=1, what="refused connects")
        check_drain_sequence(live, drain_started)
    finally:
        live.close()
    assert proxy.stat("listener_manager.listener_removed") == 1
    wait_for(lambda: proxy.stat("http.ingress_http.downstream_cx_active") == 0, timeout=3)


def test_two_second_stream_completes_during_drain(stub, proxy) -> None:
    """The stream is in flight until its request body ends, 2 s after it began (beyond the
    drain_timeout of 1 s, within the 4 s drain window)."""
    port = free_port()
    push(stub, [h2_listener(port, "v1")])
    with H2Client(port) as client:
        started = time.monotonic()
        stream = client.request("/slow", method="POST", end_stream=False)
        push(stub, [modified(port)])
        client.wait_goaways(2, timeout=3)  # the final GOAWAY comes while the stream runs
        wait_for(lambda: time.monotonic() - started >= 2.0, timeout=3, what="2 s of stream")
        assert client.closed_at is None
        client.send_data(stream, b"the end", end_stream=True)
        response = client.response(stream)
        assert (response.status, response.body) == (200, b"v1")
        client.wait_closed(timeout=2)
        assert client.goaways()[1].frame.last_stream_id == stream


def test_http2_prior_knowledge_and_http1_on_one_auto_listener(stub, proxy) -> None:
    port = free_port()
    push(stub, [h2_listener(port, "v1")])
    with H2Client(port) as client:
        responses = [client.response(client.request(f"/{n}")) for n in range(20)]
        assert {(r.status, r.body) for r in responses} == {(200, b"v1")}

    assert get(port).text == "v1"
    assert proxy.stat("http.ingress_http.downstream_rq_http2_total") == 20
    assert proxy.stat("http.ingress_http.downstream_rq_http1_total") == 1
