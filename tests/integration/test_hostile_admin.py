"""The admin interface under hostile use, against the real process: it binds only where the
bootstrap says, its mutating endpoints act on POST only, no answer reflects input into HTML,
and malformed or endless requests cost one connection, not the admin server."""

from __future__ import annotations

import socket
import urllib.parse

import pytest

from tests.helpers.http_client import get
from tests.helpers.listeners import chain
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
PAYLOAD = "<script>alert(1)</script>"
MUTATING = ["/quitquitquit", "/healthcheck/fail", "/healthcheck/ok", "/drain_listeners"]
READING = [
    "/",
    "/ready",
    "/server_info",
    "/listeners",
    "/config_dump",
    "/stats",
    "/stats/prometheus",
    "/drain_status",
    "/help",
    "/no-such-endpoint",
]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    port = free_port()
    bootstrap = {
        "node": {"id": "hostile-admin", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": HOSTILE_NAME,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [chain("ok", stat_prefix="x")],
                }
            ]
        },
    }
    process = ProxyProcess(bootstrap, tmp_path_factory.mktemp("hostile-admin"), "warning")
    process.listener_port = port  # type: ignore[attr-defined]
    try:
        process.start()
        process.wait_ready()
        yield process
    finally:
        process.stop()


def raw_request(proxy: ProxyProcess, data: bytes, timeout: float = 3.0) -> bytes:
    """Send `data` to the admin port; everything it answers until it closes."""
    host, _, port = proxy.admin_address.rpartition(":")  # type: ignore[union-attr]
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def test_admin_binds_only_the_bootstrap_address(proxy) -> None:
    host, _, port = proxy.admin_address.rpartition(":")
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=3):
        pass
    for other in ("127.0.0.2", "::1"):
        family = socket.AF_INET6 if ":" in other else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            assert sock.connect_ex((other, int(port))) != 0, f"admin answers on {other}"


@pytest.mark.parametrize("path", MUTATING)
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_mutating_endpoints_refuse_other_methods(proxy, path: str, method: str) -> None:
    request = f"{method} {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    status, _, body = split(raw_request(proxy, request))
    assert status == 405
    if method != "HEAD":
        assert body == b"Method GET not allowed, POST required."
    # ... and nothing happened.
    assert proxy.alive()
    assert proxy.get("/ready") == (200, "LIVE\n")
    assert get(proxy.listener_port).text == "ok"


@pytest.mark.parametrize("path", READING)
def test_no_answer_reflects_input_as_html(proxy, path: str) -> None:
    query = urllib.parse.urlencode(
        {"filter": PAYLOAD, "name_regex": PAYLOAD, "format": PAYLOAD, "resource": PAYLOAD}
    )
    hostile = f"GET {path}?{query}&{urllib.parse.quote(PAYLOAD)} HTTP/1.1\r\nHost: {PAYLOAD}\r\n"
    status, headers, body = split(
        raw_request(proxy, (hostile + "Connection: close\r\n\r\n").encode())
    )
    assert headers["x-content-type-options"] == "nosniff"
    if headers["content-type"].startswith("text/html"):
        plain = f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
        assert body == split(raw_request(proxy, plain))[2], "the HTML page depends on its input"
    for unsafe in (PAYLOAD.encode(), HOSTILE_NAME.encode()):
        assert unsafe not in body or not headers["content-type"].startswith("text/html")
    assert status in (200, 400, 404, 503)


def test_listener_names_reach_html_only_escaped(proxy) -> None:
    status, headers, body = split(
        raw_request(proxy, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    )
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert HOSTILE_NAME.encode() not in body  # the page fills itself from JSON, as text
    status, headers, body = split(
        raw_request(proxy, b"GET /listeners HTTP/1.1\r\nConnection: close\r\n\r\n")
    )
    assert headers["content-type"].startswith("text/plain")
    assert HOSTILE_NAME.encode() in body


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x01\x02 garbage\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /\xff HTTP/1.1\r\n\r\n"],
)
def test_malformed_admin_requests_cost_one_connection(proxy, garbage: bytes) -> None:
    answer = raw_request(proxy, garbage)
    assert answer == b"" or split(answer)[0] == 400 or split(answer)[0] == 404
    assert proxy.get("/ready") == (200, "LIVE\n")


def test_an_endless_url_is_cut_off(proxy) -> None:
    """A request line that never ends is answered 431 at Envoy's 60 KiB (found: the admin
    server buffered it without bound)."""
    host, _, port = proxy.admin_address.rpartition(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        sock.sendall(b"GET /")
        try:
            while sent < 16 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass  # our unread bytes made the close a reset; the answer may be lost with it
    assert sent < 16 * 1024 * 1024, "16 MiB of URL taken in"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    assert proxy.get("/ready") == (200, "LIVE\n")
