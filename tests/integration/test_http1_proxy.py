"""The real `xds-proxy` process serving static HTTP/1.1 listeners, and the same requests
against a real Envoy 1.40 compared byte for byte (the `date` value aside)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DIRECT_TYPE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"


def text_route(match: dict, status: int = 200, body: str | None = None) -> dict:
    action: dict = {"status": status}
    if body is not None:
        action["body"] = {"inline_string": body}
    return {"match": match, "direct_response": action}


def bootstrap(http_port: int, direct_port: int) -> dict:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "web",
        "max_request_headers_kb": 2,
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "exact",
                    "domains": ["example.com", "x.com:8080"],
                    "routes": [text_route({"prefix": "/"}, body="exact\n")],
                },
                {
                    "name": "suffix",
                    "domains": ["*.foo.com"],
                    "routes": [text_route({"prefix": "/"}, body="suffix\n")],
                },
                {
                    "name": "prefix",
                    "domains": ["api.*"],
                    "routes": [text_route({"prefix": "/"}, body="prefix\n")],
                },
                {
                    "name": "any",
                    "domains": ["*"],
                    "routes": [
                        text_route({"path": "/empty"}, status=204),
                        text_route({"path": "/nobody"}),
                        text_route({"safe_regex": {"regex": "/v[0-9]+/.*"}}, body="versioned\n"),
                        text_route(
                            {"prefix": "/h", "headers": [{"name": "x-canary", "exact_match": "1"}]},
                            body="canary\n",
                        ),
                        text_route({"prefix": "/hello"}, body="hello\n"),
                        text_route({"prefix": "/teapot"}, status=418, body="tea\n"),
                        text_route({"prefix": "/fail"}, status=503, body="down\n"),
                    ],
                },
            ],
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "web",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": http_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                },
                {
                    "name": "direct",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": direct_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.direct_response",
                                    "typed_config": {
                                        "@type": DIRECT_TYPE,
                                        "response": {"inline_string": "direct\n"},
                                    },
                                }
                            ]
                        }
                    ],
                },
            ]
        },
    }


class Served:
    def __init__(self, process: EnvoyProcess, http_port: int, direct_port: int) -> None:
        self.process = process
        self.http_port = http_port
        self.direct_port = direct_port


def start(kind: type[EnvoyProcess], workdir: Path) -> Served:
    http_port, direct_port = free_port(), free_port()
    process = kind(bootstrap(http_port, direct_port), workdir).start()
    try:
        process.wait_ready()
    except Exception:
        process.stop()
        raise
    return Served(process, http_port, direct_port)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    served = start(ProxyProcess, tmp_path_factory.mktemp("proxy"))
    yield served
    served.process.stop()


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    served = start(EnvoyProcess, tmp_path_factory.mktemp("envoy"))
    yield served
    served.process.stop()


def exchange(port: int, data: bytes, responses: int = 1, quiet: float = 0.3) -> bytes:
    """Send `data`, read until `responses` status lines and their bodies arrived, EOF, or
    nothing more came for `quiet` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(quiet)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
            if _complete(received, responses):
                break
        return received


def _complete(data: bytes, responses: int) -> bool:
    count, rest = 0, data
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        match = re.search(rb"content-length: (\d+)", head)
        length = int(match.group(1)) if match else 0
        if len(rest) < length:
            return False
        rest = rest[length:]
        count += 1
    return count >= responses and not rest


def without_date(data: bytes) -> bytes:
    return re.sub(rb"date: [^\r]+\r\n", b"date: *\r\n", data)


def get(path: str = "/hello", host: str = "h", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


PARITY_CASES = {
    "direct_response": (get(), 1),
    "no_route": (get("/nothing"), 1),
    "status_204": (get("/empty"), 1),
    "status_200_no_body": (get("/nobody"), 1),
    "status_418": (get("/teapot"), 1),
    "status_503": (get("/fail"), 1),
    "head": (b"HEAD /hello HTTP/1.1\r\nHost: h\r\n\r\n", 1),
    "query_ignored_by_path_match": (get("/empty?x=1"), 1),
    "safe_regex": (get("/v2/users"), 1),
    "safe_regex_full_match": (get("/v2"), 1),
    "header_match": (get("/hello", extra="x-canary: 1\r\n"), 1),
    "header_no_match": (get("/hello", extra="x-canary: 2\r\n"), 1),
    "vhost_exact": (get("/", "example.com"), 1),
    "vhost_exact_case": (get("/", "EXAMPLE.COM"), 1),
    "vhost_exact_port_mismatch": (get("/", "example.com:99"), 1),
    "vhost_exact_with_port": (get("/", "x.com:8080"), 1),
    "vhost_suffix": (get("/", "a.foo.com"), 1),
    "vhost_suffix_needs_a_character": (get("/", ".foo.com"), 1),
    "vhost_prefix": (get("/", "api.example.org"), 1),
    # Not "pipelined": Envoy 1.40 answers two of three pipelined requests, then closes.
    "absolute_url": (b"GET http://example.com/x?y HTTP/1.1\r\nHost: other\r\n\r\n", 1),
    "absolute_url_without_host": (b"GET http://api.x/ HTTP/1.1\r\n\r\n", 1),
    "absolute_url_with_port": (b"GET https://example.com:99/x HTTP/1.1\r\nHost: o\r\n\r\n", 1),
    "asterisk": (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 1),
    "relative_path": (b"GET hello HTTP/1.1\r\nHost: h\r\n\r\n", 1),
    "client_close": (get(extra="Connection: close\r\n"), 1),
    "http10": (b"GET /hello HTTP/1.0\r\nHost: h\r\n\r\n", 1),
    "garbage": (b"GARBAGE\r\n\r\n", 1),
    "missing_host": (b"GET /hello HTTP/1.1\r\n\r\n", 1),
    "headers_too_large": (get(extra="x-big: " + "a" * 3000 + "\r\n"), 1),
    "upgrade": (get(extra="Connection: upgrade\r\nUpgrade: websocket\r\n"), 1),
    "connect": (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 1),
    "expect_continue": (
        b"POST /hello HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        2,
    ),
}


@pytest.mark.envoy
@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_same_bytes_as_envoy(proxy, envoy, case: str) -> None:
    data, responses = PARITY_CASES[case]
    ours = without_date(exchange(proxy.http_port, data, responses))
    theirs = without_date(exchange(envoy.http_port, data, responses))
    assert ours and ours == theirs


@pytest.mark.envoy
def test_direct_response_filter_like_envoy(proxy, envoy) -> None:
    for served in (proxy, envoy):
        with socket.create_connection(("127.0.0.1", served.direct_port), timeout=5) as sock:
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received == b"direct\n"


def test_keep_alive_with_httpx_and_stats(proxy) -> None:
    before = proxy.process.stats("^http\\.web\\.")
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.http_port}") as client:
        for _ in range(10):
            response = client.get("/hello")
            assert (response.status_code, response.text) == (200, "hello\n")
        assert client.post("/teapot", content=b"x" * 200_000).status_code == 418
        assert client.get("/fail").status_code == 503
    after = proxy.process.stats("^http\\.web\\.")

    def grew(name: str) -> int:
        return int(after[f"http.web.{name}"]) - int(before.get(f"http.web.{name}", "0"))

    assert grew("downstream_cx_total") == 1
    assert grew("downstream_cx_http1_total") == 1
    assert grew("downstream_rq_total") == 12
    assert grew("downstream_rq_http1_total") == 12
    assert grew("downstream_rq_2xx") == 10
    assert grew("downstream_rq_4xx") == 1
    assert grew("downstream_rq_5xx") == 1
    wait_for(
        lambda: proxy.process.stat("http.web.downstream_cx_active") == 0,
        timeout=5,
        what="downstream_cx_active to drop to 0",
    )


def test_malformed_request_does_not_stop_the_server(proxy) -> None:
    assert exchange(proxy.http_port, b"\x00\x01garbage\r\n\r\n").startswith(
        b"HTTP/1.1 400 Bad Request\r\n"
    )
    assert exchange(proxy.http_port, get()).startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(proxy) -> None:
    result = subprocess.run(
        ["curl", "-s", "-i", f"http://127.0.0.1:{proxy.http_port}/hello",
         f"http://127.0.0.1:{proxy.http_port}/empty"],
        capture_output=True, timeout=10, check=True,
    )  # fmt: skip
    assert result.stdout.count(b"HTTP/1.1 ") == 2
    assert b"hello\n" in result.stdout and b"HTTP/1.1 204 No Content" in result.stdout
