"""`use_downstream_protocol_config`: each request goes upstream in the protocol it came in on.
Two such clusters, one to an HTTP/1.1-only and one to an HTTP/2-only backend; HTTP/1.1 and
HTTP/2 requests to each show which protocol went upstream (the mismatched pairs fail with 503).

`protocol_matrix` takes the process class so the interop test runs it on Envoy 1.40 too.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.h2_client import H2Client
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import PROTOCOL_OPTIONS_KEY, Http1Echo, Http2Echo, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route


def follow_downstream(name: str, port: int) -> dict[str, Any]:
    cluster = cluster_dict(name, [port])
    cluster["typed_extension_protocol_options"] = {
        PROTOCOL_OPTIONS_KEY: {
            "@type": "type.googleapis.com/" + PROTOCOL_OPTIONS_KEY,
            "use_downstream_protocol_config": {
                "http_protocol_options": {},
                "http2_protocol_options": {},
            },
        }
    }
    return cluster


def http1_get(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head = received.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    label = next((h.split(":", 1)[1].strip() for h in head if h.startswith("x-upstream:")), "")
    return int(head[0].split()[1]), label


def http2_get(port: int, path: str) -> tuple[int, str]:
    with H2Client(port) as client:
        response = client.response(client.request(path, authority="t"))
        return response.status, response.header("x-upstream") or ""


def protocol_matrix(process_class: type[EnvoyProcess], workdir: Path) -> dict[str, Any]:
    with Http1Echo("h1") as h1, Http2Echo("h2") as h2:
        port = free_port()
        listener = http_listener(port, [route("/to-h2/", "to_h2"), route("/", "to_h1")])
        document = bootstrap(
            [listener], [follow_downstream("to_h1", h1.port), follow_downstream("to_h2", h2.port)]
        )
        process = process_class(document, workdir, "warning")
        process.start()
        try:
            process.wait_ready()
            seen = {
                "h1 -> h1 backend": http1_get(port, "/a"),
                "h2 -> h2 backend": http2_get(port, "/to-h2/a"),
                "h1 -> h2 backend": http1_get(port, "/to-h2/a")[0],
                "h2 -> h1 backend": http2_get(port, "/a")[0],
            }
            for cluster in ("to_h1", "to_h2"):
                for kind in ("http1", "http2"):
                    name = f"cluster.{cluster}.upstream_cx_{kind}_total"
                    seen[name] = process.stat(name)
            return seen
        finally:
            process.stop()


def test_requests_go_upstream_in_their_downstream_protocol(tmp_path: Path) -> None:
    seen = protocol_matrix(ProxyProcess, tmp_path)
    assert seen["h1 -> h1 backend"] == (200, "h1")
    assert seen["h2 -> h2 backend"] == (200, "h2")
    assert seen["h1 -> h2 backend"] == 502  # the HTTP/1.1 parser fails: protocol error
    assert seen["h2 -> h1 backend"] == 503
    assert seen["cluster.to_h1.upstream_cx_http1_total"] == 1
    assert seen["cluster.to_h1.upstream_cx_http2_total"] == 1
    assert seen["cluster.to_h2.upstream_cx_http2_total"] == 1
