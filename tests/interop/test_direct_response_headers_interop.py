"""`response_headers_to_add` on `direct_response` routes (a mesh's ETag on its DNS table, a
gateway's fixed answers), on Envoy 1.40 and on ours with the same requests over HTTP/1.1 and
HTTP/2: the route's, virtual host's and route configuration's headers come first, in that
order, then Envoy's own; a `server` added by a mutation holds the server name where it stands.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.h2_client import H2Client
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def add(key: str, value: str, **option: Any) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, **option}


def bootstrap(port: int) -> dict[str, Any]:
    routes = [
        {
            "match": {"path": "/body"},
            "direct_response": {"status": 200, "body": {"inline_string": "hello"}},
            "response_headers_to_add": [add("Etag", "abc"), add("x-route", "r")],
        },
        {
            "match": {"path": "/server"},
            "direct_response": {"status": 200, "body": {"inline_string": "s"}},
            "response_headers_to_add": [add("server", "mine"), add("x-route", "r")],
        },
        {
            "match": {"path": "/empty"},
            "direct_response": {"status": 204},
            "response_headers_to_add": [add("etag", "e")],
        },
        {
            "match": {"path": "/overwrite"},
            "direct_response": {"status": 200},
            "response_headers_to_add": [
                add("x-vh", "from-route"),
                add("x-cfg", "route", append_action="ADD_IF_ABSENT"),
            ],
        },
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "dr",
        "route_config": {
            "response_headers_to_add": [add("x-cfg", "c")],
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "response_headers_to_add": [
                        add("x-vh", "v", append_action="OVERWRITE_IF_EXISTS_OR_ADD")
                    ],
                    "routes": routes,
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener]},
    }


PATHS = ["/body", "/server", "/empty", "/overwrite"]


def http1(port: int, path: str) -> tuple[bytes, list[bytes], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], [line for line in lines[1:] if not line.startswith(b"date:")], body


def http2(port: int, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    client = H2Client(port)
    try:
        response = client.response(client.request(path))
    finally:
        client.close()
    return response.status, [h for h in response.headers if h[0] != "date"], response.body


def observe(process_type: type[EnvoyProcess], workdir: Path) -> list[Any]:
    port = free_port()
    process = process_type(bootstrap(port), workdir).start()
    try:
        process.wait_ready()
        return [(http1(port, path), http2(port, path)) for path in PATHS]
    finally:
        process.stop()


def test_direct_response_headers_as_envoy(tmp_path: Path) -> None:
    envoy = observe(EnvoyProcess, tmp_path / "envoy")
    assert envoy[0][0][1][:2] == [b"etag: abc", b"x-route: r"]
    ours = observe(ProxyProcess, tmp_path / "ours")
    for path, theirs, mine in zip(PATHS, envoy, ours, strict=True):
        assert mine == theirs, path
