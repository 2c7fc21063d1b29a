"""HTTP/1.1 upgrades (WebSocket) through a real Envoy 1.40 and through xds-proxy: the same
scenarios, compared on what the client sees (status line and headers, echoed frames, who
closes), what the upstream sees (the request's headers) and the stats both keep
(docs/upgrades.md).

Two listeners: `main` has `upgrade_configs: [websocket]` on its HCM and a route (`/off`) that
disables it; `plain` has none, and a route (`/on`) that enables it alone.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import HttpConnection
from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.helpers.websocket import BINARY, CLOSE, TEXT, WebSocketEcho, WsClient
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route

pytestmark = pytest.mark.envoy

KINDS = {"envoy": EnvoyProcess, "ours": ProxyProcess}
IDLE_TIMEOUT_S = 0.5
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key: the same accept value every time
STATS = (
    "http.ingress.downstream_cx_upgrades_total",
    "http.ingress.downstream_cx_upgrades_active",
    "http.ingress.downstream_rq_ws_on_non_ws_route",
    "http.ingress.downstream_rq_idle_timeout",
    "http.ingress.downstream_rq_1xx",
    "http.ingress.downstream_rq_4xx",
    "http.ingress.downstream_cx_total",
    "cluster.ws.upstream_rq_101",
    "cluster.ws.upstream_rq_1xx",
    "cluster.ws.upstream_rq_4xx",
    "cluster.ws.upstream_cx_total",
    "cluster.ws.upstream_cx_destroy_local",
    "cluster.ws.upstream_cx_destroy_remote",
)


LOG_FORMAT = (
    "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% "
    "%RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER%\n"
)


def _access_log(path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
        },
    }


class Side:
    """One implementation with its own WebSocket upstream."""

    def __init__(self, process_class: type[EnvoyProcess], workdir) -> None:
        self.upstream = WebSocketEcho()
        self.upstream.start()
        self.echo = Http1Echo()
        self.echo.start()
        self.main, self.plain, self.idle, self.local = (free_port() for _ in range(4))
        main = http_listener(
            self.main,
            [
                route(
                    "/off", "ws", upgrade_configs=[{"upgrade_type": "WebSocket", "enabled": False}]
                ),
                {
                    "match": {"prefix": "/direct"},
                    "direct_response": {"status": 200, "body": {"inline_string": "direct\n"}},
                },
                route("/echo", "echo"),
                route("/", "ws"),
            ],
            upgrade_configs=[{"upgrade_type": "websocket"}],
            access_log=[_access_log(workdir / "access.log")],
        )
        self.access_log = workdir / "access.log"
        plain = http_listener(
            self.plain,
            [route("/on", "ws", upgrade_configs=[{"upgrade_type": "websocket"}]), route("/", "ws")],
        )
        idle = http_listener(
            self.idle,
            [route("/", "ws")],
            upgrade_configs=[{"upgrade_type": "websocket"}],
            stream_idle_timeout=f"{IDLE_TIMEOUT_S}s",
        )
        # No cluster route at all: an allowed upgrade gets the route's local answer.
        local = http_listener(
            self.local,
            [{"match": {"path": "/here"}, "direct_response": {"status": 204}}],
            upgrade_configs=[{"upgrade_type": "websocket"}],
        )
        clusters = [
            cluster_dict("ws", [self.upstream.port]),
            cluster_dict("echo", [self.echo.port]),
        ]
        document = bootstrap([main, plain, idle, local], clusters)
        self.process = process_class(
            document, workdir, log_level="warning", extra_args=["--file-flush-interval-msec", "50"]
        )
        self.process.start()
        self.process.wait_ready()

    def stop(self) -> None:
        self.process.stop()
        self.upstream.stop()
        self.echo.stop()

    def stats(self) -> dict[str, int]:
        every = self.process.stats()
        return {name: int(every.get(name, 0)) for name in STATS}

    def settled(self) -> dict[str, int]:
        """The stats once every upgraded stream has ended and both sides' closes are counted
        (two reads in a row agree)."""
        last: list[dict[str, int]] = [{}]

        def steady() -> dict[str, int] | None:
            now = self.stats()
            if now["http.ingress.downstream_cx_upgrades_active"] or now != last[0]:
                last[0] = now
                return None
            return now

        return wait_for(steady, interval=0.1, what="upgraded streams to end")


@pytest.fixture(scope="module")
def sides(tmp_path_factory) -> Iterator[dict[str, Side]]:
    started: dict[str, Side] = {}
    try:
        for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess)):
            started[kind] = Side(process_class, tmp_path_factory.mktemp(kind))
        yield started
    finally:
        for side in started.values():
            side.stop()


def _head(text: str) -> tuple[str, list[tuple[str, str]]]:
    lines = text.split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
    return lines[0], [(n.lower(), v) for n, v in headers if n.lower() != "date"]  # type: ignore[misc]


def _upstream_headers(side: Side) -> list[tuple[str, str]]:
    request = side.upstream.requests[-1]
    return [(n.lower(), v) for n, v in request["headers"] if n.lower() != "x-request-id"]


def _read_all(client: WsClient) -> bytes:
    try:
        return client.read_rest()
    except ConnectionResetError:
        return b"<reset>"


def accepted_and_closed_by_upstream(side: Side) -> dict[str, Any]:
    client = WsClient(side.main)
    head = client.handshake("/chat?room=1", key=KEY)
    client.send(b"hello", TEXT)
    text = client.recv_frame()
    big = bytes(range(256)) * 1200  # 300 KiB each way
    client.send(big, BINARY)
    echoed = client.recv_frame()
    client.send(b"close-me", TEXT)
    closing = client.recv_frame()
    rest = _read_all(client)
    client.close()
    return {
        "head": _head(head),
        "upstream": _upstream_headers(side),
        "text": text,
        "big": echoed is not None and echoed[1] == big,
        "closing": closing,
        "rest": rest,
    }


def closed_by_client(side: Side) -> dict[str, Any]:
    client = WsClient(side.main)
    head = client.handshake("/ws", key=KEY)
    client.send(b"ping", TEXT)
    first = client.recv_frame()
    eofs = side.upstream.eofs
    client.sock.shutdown(socket.SHUT_WR)
    after = client.recv_frame()  # the upstream answers a FIN; the proxy has closed by then
    client.close()
    wait_for(lambda: side.upstream.eofs > eofs, what="the upstream's FIN")
    return {"head": _head(head)[0], "first": first, "after": after}


def close_frame_from_client(side: Side) -> dict[str, Any]:
    client = WsClient(side.main)
    client.handshake("/ws", key=KEY)
    client.send(b"\x03\xe8bye", CLOSE)
    answer = client.recv_frame()
    rest = _read_all(client)
    client.close()
    return {"answer": answer, "rest": rest}


def _answered(port: int, path: str, upgrade: str = "websocket") -> Callable[[Side], Any]:
    def scenario(side: Side) -> dict[str, Any]:
        client = WsClient(getattr(side, port))  # type: ignore[arg-type]
        head = client.handshake(path, upgrade=upgrade, key=KEY)
        rest = _read_all(client)
        client.close()
        return {"head": _head(head), "rest": rest}

    return scenario


def route_enables(side: Side) -> dict[str, Any]:
    client = WsClient(side.plain)
    head = client.handshake("/on", key=KEY)
    client.send(b"x" * 70000, BINARY)
    echoed = client.recv_frame()
    client.close()
    return {"head": _head(head), "echoed": echoed is not None and len(echoed[1])}


def upstream_refuses(side: Side) -> dict[str, Any]:
    client = WsClient(side.main)
    head = client.handshake("/ws", extra="x-status: 403\r\n", key=KEY)
    rest = _read_all(client)
    client.close()
    return {"head": _head(head), "rest": rest}


def idle_after_the_upgrade(side: Side) -> dict[str, Any]:
    """`stream_idle_timeout` ends an upgraded stream that is idle both ways: reset, closed."""
    client = WsClient(side.idle)
    head = client.handshake("/ws", key=KEY)
    client.send(b"once", TEXT)
    echoed = client.recv_frame()
    started = time.monotonic()
    end = client.recv_frame()
    waited = time.monotonic() - started
    client.close()
    return {"head": _head(head)[0], "echoed": echoed, "end": end, "waited": waited > 0.4}


def idle_before_the_upgrade(side: Side) -> dict[str, Any]:
    """The upstream never answers the handshake: 408 `stream timeout`."""
    client = WsClient(side.idle)
    head = client.handshake("/ws", extra="x-silent: 1\r\n", key=KEY)
    rest = _read_all(client)
    client.close()
    return {"head": _head(head), "rest": rest}


def h2c_upgrade_served_as_http1(side: Side) -> dict[str, Any]:
    """`curl --http2 http://...` asks for h2c: served as plain HTTP/1.1 (the upgrade and
    `http2-settings` dropped), keep-alive, a pipelined request after it answered too."""
    conn = HttpConnection(side.main)
    h2c = (
        "GET /echo/h2c HTTP/1.1\r\nhost: ws.example\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        "upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
    conn.sock.sendall((h2c + "GET /echo/next HTTP/1.1\r\nhost: ws.example\r\n\r\n").encode())
    first, second = conn.read_response(), conn.read_response()
    conn.close()
    echoed = json.loads(first.body)
    return {
        "statuses": (first.status, second.status),
        "closes": (first.closes, second.closes),
        "upstream_headers": sorted(
            (name, value) for name, value in echoed["headers"] if name != "x-request-id"
        ),
        "second_path": json.loads(second.body)["path"],
    }


def h2c_upgrade_answered_here(side: Side) -> dict[str, Any]:
    """The same, to a direct_response route, with a pipelined request after it."""
    conn = HttpConnection(side.main)
    h2c = (
        "GET /direct HTTP/1.1\r\nhost: ws.example\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        "upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    )
    conn.sock.sendall((h2c + "GET /direct HTTP/1.1\r\nhost: ws.example\r\n\r\n").encode())
    answers = [conn.read_response() for _ in range(2)]
    conn.close()
    return [(answer.status, answer.body, answer.closes) for answer in answers]


SCENARIOS: dict[str, Callable[[Side], Any]] = {
    "accepted_and_closed_by_upstream": accepted_and_closed_by_upstream,
    "closed_by_client": closed_by_client,
    "close_frame_from_client": close_frame_from_client,
    "route_disables": _answered("main", "/off"),
    "hcm_without_upgrades": _answered("plain", "/x"),
    "other_upgrade_type": _answered("main", "/ws", upgrade="foo"),
    "direct_response": _answered("main", "/direct"),
    "no_cluster_route_direct": _answered("local", "/here"),
    "no_cluster_route_none": _answered("local", "/elsewhere"),
    "route_enables": route_enables,
    "upstream_refuses": upstream_refuses,
    "idle_after_the_upgrade": idle_after_the_upgrade,
    "idle_before_the_upgrade": idle_before_the_upgrade,
    "h2c_upgrade_served_as_http1": h2c_upgrade_served_as_http1,
    "h2c_upgrade_answered_here": h2c_upgrade_answered_here,
}


def _log_lines(side: Side) -> list[str]:
    return side.access_log.read_text().splitlines() if side.access_log.exists() else []


def test_access_log_lines_as_envoy(sides: dict[str, Side]) -> None:
    """An upstream closing (UC), a client closing (DC) and an upstream refusing, logged when
    each stream ends, with the bytes that crossed the tunnel."""
    lines = {}
    for kind, side in sides.items():
        side.settled()
        before = len(_log_lines(side))
        for scenario in (accepted_and_closed_by_upstream, closed_by_client, upstream_refuses):
            scenario(side)
        lines[kind] = wait_for(
            lambda side=side, before=before: (
                _log_lines(side)[before:] if len(_log_lines(side)) >= before + 3 else None
            ),
            what="three access-log lines",
        )
    assert lines["ours"] == lines["envoy"]
    assert lines["ours"][0].startswith("GET /chat?room=1 HTTP/1.1 101 UC ")


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in STATS if after[name] != before[name]}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_as_envoy(sides: dict[str, Side], name: str) -> None:
    observed = {}
    for kind, side in sides.items():
        before = side.settled()
        seen = SCENARIOS[name](side)
        observed[kind] = (seen, _delta(before, side.settled()))
    assert observed["ours"][0] == observed["envoy"][0]
    assert observed["ours"][1] == observed["envoy"][1]


# -- an LDS removal with a WebSocket open ----------------------------------------------------------

DRAIN_TIME_S = 2


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


def _drained_websocket(kind: str, stub: StubProcess, workdir) -> dict[str, Any]:
    """Open a WebSocket, remove its listener by LDS: does it keep working during the drain,
    and when is it closed (and by what)?"""
    node = f"upgrade-drain-{kind}"
    upstream = WebSocketEcho()
    upstream.start()
    port = free_port()
    listener = http_listener(
        port, [route("/", "ws")], upgrade_configs=[{"upgrade_type": "websocket"}]
    )
    document = lds_bootstrap(stub.xds_address, node_id=node)
    document["static_resources"]["clusters"].append(cluster_dict("ws", [upstream.port]))
    version = stub.client.set_resources(listeners=[listener], node=node)["listeners"]
    args = ["--drain-time-s", str(DRAIN_TIME_S), "--drain-strategy", "immediate"]
    process = KINDS[kind](document, workdir, extra_args=args, log_level="warning").start()
    try:
        process.wait_ready()
        stub.client.wait(version, node=node, timeout=10)
        client = WsClient(port, timeout=DRAIN_TIME_S + 5)
        head = client.handshake("/ws", key=KEY)
        started = time.monotonic()
        removed = stub.client.set_resources(listeners=[], node=node)["listeners"]
        stub.client.wait(removed, node=node, timeout=10)
        client.send(b"during the drain", TEXT)
        during = client.recv_frame()
        end = client.recv_frame()  # None: closed, with nothing (no close frame) before it
        elapsed = time.monotonic() - started
        client.close()
        wait_for(lambda: upstream.eofs or not upstream.open_transports, what="upstream closed")
        return {
            "head": _head(head)[0],
            "during": during,
            "end": end,
            "closed_at_the_deadline": DRAIN_TIME_S - 0.5 <= elapsed < DRAIN_TIME_S + 2,
            # (Envoy drops a removed listener's HCM stats; ours keeps them, at 0 by now)
            "upgrades_active": process.stat("http.ingress.downstream_cx_upgrades_active") or 0,
        }
    finally:
        process.stop()
        upstream.stop()


def test_lds_removal_closes_an_open_websocket_at_the_drain_deadline(stub, tmp_path_factory):
    observed = {
        kind: _drained_websocket(kind, stub, tmp_path_factory.mktemp(f"drain-{kind}"))
        for kind in KINDS
    }
    assert observed["ours"] == observed["envoy"]
    assert observed["ours"]["closed_at_the_deadline"]
