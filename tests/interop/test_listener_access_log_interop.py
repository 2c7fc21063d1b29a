"""A listener's own `access_log` (one line per connection), through a real Envoy 1.40 and
through xds-proxy: an HTTP/1.1 connection (wire bytes both ways, PROTOCOL from the HCM), a
tcp_proxy connection (the line shares tcp_proxy's upstream fields), a connection that matches
no filter chain (NR, filter_chain_not_found). Lines compared with timestamps and ports
masked."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import TcpEcho, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, tcp_listener
from tests.interop.test_access_log_interop import (
    FILE_LOG,
    FULL_FORMAT,
    mask_default,
    mask_full,
)

pytestmark = pytest.mark.envoy

DIRECT = {
    "match": {"prefix": "/"},
    "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
}
NAMES = ("http", "tcp", "no_chain")


def _logs(folder: Path, name: str) -> list[dict[str, Any]]:
    full = {"log_format": {"text_format_source": {"inline_string": FULL_FORMAT}}}
    return [
        {"name": "d", "typed_config": {"@type": FILE_LOG, "path": str(folder / f"{name}_default")}},
        {
            "name": "f",
            "typed_config": {"@type": FILE_LOG, "path": str(folder / f"{name}_full"), **full},
        },
    ]


def _run(process_class, echo_port: int, folder: Path) -> dict[str, tuple[str, str]]:
    ports = {name: free_port() for name in NAMES}
    http = http_listener(ports["http"], [DIRECT])
    tcp = tcp_listener(ports["tcp"], "echo")
    no_chain = tcp_listener(ports["no_chain"], "echo")
    no_chain["filter_chains"][0]["filter_chain_match"] = {"destination_port": 1}
    for listener, name in ((http, "http"), (tcp, "tcp"), (no_chain, "no_chain")):
        listener["access_log"] = _logs(folder, name)
    process = process_class(
        bootstrap([http, tcp, no_chain], [cluster_dict("echo", [echo_port])]),
        folder,
        log_level="warning",
        extra_args=["--file-flush-interval-msec", "50"],
    )
    process.start()
    try:
        process.wait_ready()
        with socket.create_connection(("127.0.0.1", ports["http"])) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /a HTTP/1.1\r\nhost: foo\r\n\r\n")
            received = b""
            while not received.endswith(b"ok"):
                received += sock.recv(1000)
        with socket.create_connection(("127.0.0.1", ports["tcp"])) as sock:
            sock.settimeout(5)
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(100):
                pass
        with socket.create_connection(("127.0.0.1", ports["no_chain"])) as sock:
            sock.settimeout(5)
            assert sock.recv(10) == b""
        files = [f"{name}_{kind}" for name in NAMES for kind in ("default", "full")]
        wait_for(
            lambda: all((folder / name).exists() and (folder / name).read_text() for name in files),
            timeout=10,
            what="one line per connection",
        )
        time.sleep(0.2)
        return {
            name: (
                (folder / f"{name}_default").read_text().splitlines()[0],
                (folder / f"{name}_full").read_text().splitlines()[0],
            )
            for name in NAMES
        }
    finally:
        process.stop()


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    with TcpEcho() as echo:
        return {
            kind: _run(process_class, echo.port, tmp_path_factory.mktemp(kind))
            for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess))
        }


@pytest.mark.parametrize("name", NAMES)
def test_connection_lines_same_as_envoy(lines, name: str) -> None:
    envoy_default, envoy_full = lines["envoy"][name]
    ours_default, ours_full = lines["ours"][name]
    assert mask_default(ours_default) == mask_default(envoy_default)
    assert mask_full(ours_full) == mask_full(envoy_full)
