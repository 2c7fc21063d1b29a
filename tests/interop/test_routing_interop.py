"""The same routes through a real Envoy 1.40 and through xds-proxy: same statuses, bodies,
Envoy-defined headers, and the same request as the upstream sees it."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, Http2Echo, Resetter, TcpEcho, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route, tcp_listener

pytestmark = pytest.mark.envoy

# Headers whose values legitimately differ between two runs.
_VARIABLE = {"x-request-id", "date", "x-envoy-upstream-service-time"}


@pytest.fixture(scope="module")
def backends():
    servers = {"h1": Http1Echo(), "h2": Http2Echo(), "reset": Resetter(), "tcp": TcpEcho()}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


def _document(backends, http_port: int, tcp_port: int, closed_port: int) -> dict[str, Any]:
    routes = [
        route("/h2/", "h2"),
        route("/rewrite/", "h1", prefix_rewrite="/new/", host_rewrite_literal="back.example"),
        route("/slow", "h1", timeout="0.3s"),
        route("/reset", "reset"),
        route("/refused", "closed"),
        route("/missing", "no_such_cluster"),
        route("/overflow", "tiny"),
        {
            "match": {"prefix": "/mutate"},
            "route": {"cluster": "h1"},
            "request_headers_to_add": [{"header": {"key": "x-added", "value": "1"}}],
            "request_headers_to_remove": ["x-remove-me"],
            "response_headers_to_add": [{"header": {"key": "x-resp", "value": "r"}}],
            "response_headers_to_remove": ["x-upstream"],
        },
        route("/", "h1"),
    ]
    return bootstrap(
        [http_listener(http_port, routes), tcp_listener(tcp_port, "tcp")],
        [
            cluster_dict("h1", [backends["h1"].port]),
            cluster_dict("h2", [backends["h2"].port], http2=True),
            cluster_dict("reset", [backends["reset"].port]),
            cluster_dict("closed", [closed_port]),
            cluster_dict("tcp", [backends["tcp"].port]),
            cluster_dict("tiny", [backends["h1"].port], max_pending=0),
        ],
    )


@pytest.fixture(scope="module")
def servers(backends, tmp_path_factory):
    with Http1Echo() as gone:
        closed_port = gone.port
    started = {}
    try:
        for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess)):
            http_port, tcp_port = free_port(), free_port()
            document = _document(backends, http_port, tcp_port, closed_port)
            process = process_class(document, tmp_path_factory.mktemp(kind), log_level="warning")
            process.start()
            process.wait_ready()
            started[kind] = (process, http_port, tcp_port)
        yield started
    finally:
        for process, _, _ in started.values():
            process.stop()


def exchange(port: int, request: bytes) -> bytes:
    """One request on a fresh connection; reads until the response is complete (a HEAD
    response ends with its headers)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        sock.sendall(request)
        received = b""
        while True:
            head, separator, body = received.partition(b"\r\n\r\n")
            if separator and (
                request.startswith(b"HEAD ") or re.match(rb"HTTP/1\.[01] (204|304) ", head)
            ):
                return received
            if separator:
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    return received
                if b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
                    return received
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def parse(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.lower(), value.strip()))
    return lines[0], headers, body


def comparable(raw: bytes) -> tuple[str, list[tuple[str, str]], Any]:
    status, headers, body = parse(raw)
    shown = [(n, "*" if n in _VARIABLE else v) for n, v in headers]
    try:
        echoed = json.loads(body)
    except ValueError:
        return status, shown, body
    echoed["headers"] = [[n, "*" if n in _VARIABLE else v] for n, v in echoed["headers"]]
    return status, shown, echoed


REQUESTS = {
    "get": b"GET /a?x=1 HTTP/1.1\r\nhost: foo\r\nuser-agent: t\r\nte: trailers\r\n"
    b"connection: keep-alive\r\nx-forwarded-for: 1.2.3.4\r\n\r\n",
    "post_length": b"POST /p HTTP/1.1\r\nhost: foo\r\ncontent-length: 5\r\n\r\nhello",
    "post_chunked": b"POST /p HTTP/1.1\r\nhost: foo\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "chunked_response": b"GET /c HTTP/1.1\r\nhost: foo\r\nx-chunked: 1\r\nx-body-size: 10\r\n\r\n",
    "head": b"HEAD /h HTTP/1.1\r\nhost: foo\r\nx-body-size: 10\r\n\r\n",
    "rewrite": b"GET /rewrite/x?q HTTP/1.1\r\nhost: foo\r\n\r\n",
    "mutate": b"GET /mutate HTTP/1.1\r\nhost: foo\r\nx-remove-me: 1\r\n\r\n",
    "h2_upstream": b"GET /h2/x HTTP/1.1\r\nhost: foo\r\n\r\n",
    "upstream_status": b"GET /s HTTP/1.1\r\nhost: foo\r\nx-status: 404\r\n\r\n",
    "reset": b"GET /reset HTTP/1.1\r\nhost: foo\r\n\r\n",
    "refused": b"GET /refused HTTP/1.1\r\nhost: foo\r\n\r\n",
    "missing": b"GET /missing HTTP/1.1\r\nhost: foo\r\n\r\n",
    "timeout": b"GET /slow HTTP/1.1\r\nhost: foo\r\nx-delay-ms: 2000\r\n\r\n",
    "close": b"GET /bye HTTP/1.1\r\nhost: foo\r\nconnection: close\r\n\r\n",
    "http10": b"GET /old HTTP/1.0\r\nhost: foo\r\n\r\n",
    "overflow": b"GET /overflow HTTP/1.1\r\nhost: foo\r\n\r\n",
    "upstream_close": b"GET /uc HTTP/1.1\r\nhost: foo\r\nx-close: 1\r\n\r\n",
    "upstream_eof_body": b"GET /eof HTTP/1.1\r\nhost: foo\r\nx-eof-body: 1\r\n"
    b"x-body-size: 20\r\n\r\n",
    "no_content": b"GET /nc HTTP/1.1\r\nhost: foo\r\nx-status: 204\r\nx-body-size: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(REQUESTS))
def test_same_response_as_envoy(servers, name: str) -> None:
    request = REQUESTS[name]
    _, envoy_port, _ = servers["envoy"]
    _, our_port, _ = servers["ours"]
    theirs = comparable(exchange(envoy_port, request))
    mine = comparable(exchange(our_port, request))
    assert mine == theirs


def test_tcp_proxy_same_bytes_as_envoy(servers) -> None:
    results = []
    for kind in ("envoy", "ours"):
        _, _, tcp_port = servers[kind]
        with socket.create_connection(("127.0.0.1", tcp_port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"ping")
            first = sock.recv(4)
            sock.shutdown(socket.SHUT_WR)
            rest = b""
            while chunk := sock.recv(100):
                rest += chunk
            results.append((first, rest))
    assert results[0] == results[1] == (b"ping", b"after-eof:4")
