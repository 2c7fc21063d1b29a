"""A fleet of distinct listeners for the LDS push bench, and a concurrent check that each one
answers.

Real fleets differ listener by listener: names, stat prefixes, route-config names, virtual
hosts, route prefixes, response bodies and headers. Caches keyed by bytes see no repeats here,
so the bench measures the per-listener cost, not the cost of one listener copied N times.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.listeners import HCM, ROUTER

TEAMS = ("payments", "search", "catalog", "identity", "billing", "media", "ads", "infra")


def listener_name(prefix: str, i: int) -> str:
    return f"{prefix}-{TEAMS[i % len(TEAMS)]}-svc{i}"


def catch_all_body(prefix: str, i: int, modified: bool = False) -> str:
    """What `GET /` on listener `i` answers (a different text once modified)."""
    return f"{'changed' if modified else 'served'} by {listener_name(prefix, i)}"


def _direct(body: str, status: int = 200) -> dict[str, Any]:
    return {"status": status, "body": {"inline_string": body}}


def _route(match: dict[str, Any], body: str, header: str, status: int = 200) -> dict[str, Any]:
    return {
        "match": match,
        "direct_response": _direct(body, status),
        "request_headers_to_add": [{"header": {"key": "x-route", "value": header}}],
    }


def distinct_listener(prefix: str, i: int, port: int, modified: bool = False) -> dict[str, Any]:
    """Listener `i` of a fleet: its own name, stat prefix, routes, bodies and headers."""
    name = listener_name(prefix, i)
    team = TEAMS[i % len(TEAMS)]
    api = f"/api/v{i % 3 + 1}/{team}/svc{i}"
    service_host = {
        "name": f"{name}-host",
        "domains": [f"svc{i}.{team}.example.com", f"svc{i}.{team}.internal:{8000 + i % 100}"],
        "routes": [
            _route({"path": f"{api}/healthz"}, f"healthy {i}", f"health-{i}"),
            _route({"prefix": f"{api}/items"}, f"items of svc{i} ({team})", f"items-{i}"),
            _route(
                {"prefix": f"{api}/admin", "headers": [_header_present("x-admin-token")]},
                f"admin of svc{i}",
                f"admin-{i}",
            ),
            _route({"prefix": api}, f"svc{i} api root", f"api-{i}"),
            _route({"prefix": "/"}, f"svc{i} not found", f"nf-{i}", status=404),
        ],
        "request_headers_to_add": [{"header": {"key": "x-service", "value": f"svc{i}"}}],
    }
    catch_all = {
        "name": f"{name}-default",
        "domains": ["*"],
        "routes": [
            _route({"prefix": f"/legacy/{i}"}, f"legacy {i}", f"legacy-{i}", status=410),
            _route({"prefix": "/"}, catch_all_body(prefix, i, modified), f"default-{i}"),
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "name": f"{name}-chain",
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": f"{team}_svc{i}",
                            "route_config": {
                                "name": f"{name}-routes",
                                "virtual_hosts": [service_host, catch_all],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def _header_present(name: str) -> dict[str, Any]:
    return {"name": name, "present_match": True}


@dataclass
class _Attempt:
    port: int
    expected: bytes
    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    sent: bool = False


def all_answer(
    expected: dict[int, str], timeout: float = 120.0, in_flight: int = 64, retry_s: float = 0.002
) -> float:
    """Polls every port with `GET /` (at most `in_flight` at a time) until each has answered
    200 with a body ending in its expected text; returns the monotonic time of the last
    answer. A refused, reset or wrong answer is retried after `retry_s`."""
    request = b"GET / HTTP/1.1\r\nhost: fleet.example.com\r\nconnection: close\r\n\r\n"
    waiting = [(port, text.encode()) for port, text in expected.items()]
    retry_at: list[tuple[float, int, bytes]] = []
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    active = 0

    def launch(port: int, text: bytes) -> None:
        nonlocal active
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE, _Attempt(port, text, sock))
        active += 1

    def finish(attempt: _Attempt, ok: bool) -> None:
        nonlocal active, last
        selector.unregister(attempt.sock)
        attempt.sock.close()
        active -= 1
        if ok:
            last = time.monotonic()
        else:
            retry_at.append((time.monotonic() + retry_s, attempt.port, attempt.expected))

    while waiting or retry_at or active:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"{len(waiting) + len(retry_at) + active} listeners not serving")
        due = [entry for entry in retry_at if entry[0] <= now]
        if due:
            retry_at = [entry for entry in retry_at if entry[0] > now]
            waiting.extend((port, text) for _, port, text in due)
        while waiting and active < in_flight:
            launch(*waiting.pop())
        for key, _events in selector.select(timeout=retry_s):
            attempt: _Attempt = key.data
            try:
                if not attempt.sent:
                    attempt.sock.send(request)
                    attempt.sent = True
                    selector.modify(attempt.sock, selectors.EVENT_READ, attempt)
                    continue
                chunk = attempt.sock.recv(65536)
            except OSError:
                finish(attempt, ok=False)
                continue
            attempt.received += chunk
            complete = _complete(bytes(attempt.received))
            if complete is not None:  # not waiting for the close: Envoy delays it by 1 s
                head, body = complete
                finish(
                    attempt, head.startswith(b"HTTP/1.1 200") and body.endswith(attempt.expected)
                )
            elif not chunk:
                finish(attempt, ok=False)
    selector.close()
    return last


def _complete(received: bytes) -> tuple[bytes, bytes] | None:
    """(head, body) once a whole content-length framed response is in `received`."""
    head, separator, body = received.partition(b"\r\n\r\n")
    if not separator:
        return None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            return (head, body[:length]) if len(body) >= length else None
    return None
