"""Our own corpus of resource lists in the shape production control planes emit
(tests/data/corpus/: a mesh sidecar's outbound HTTP listener on RDS and EDS, a mesh's
inbound tcp_proxy side, a gateway's HTTPS listener with its certificate from SDS), pushed
over ADS to Envoy 1.40 and to xds-proxy: every file Envoy accepts fully (every type ACKed,
every listener active) we accept fully too, and a request through each listener reaches the
endpoint its cluster names, on both.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.corpus import (
    load_resource_list,
    localize,
    push_and_observe,
    with_placeholder_secrets,
)
from tests.helpers.upstreams import Http1Echo

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
FILES = sorted(CORPUS.glob("*.yaml"))


def _sections(path: Path, echo_port: int, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    rendered = workdir / path.name
    rendered.write_text(path.read_text().replace("ECHO_PORT", str(echo_port)))
    return with_placeholder_secrets(localize(load_resource_list(rendered)))


def _server_name(listener: dict[str, Any]) -> str | None:
    """The SNI a TLS listener's first chain matches, or None for a plaintext listener."""
    chain = (listener.get("filterChains") or listener.get("filter_chains") or [{}])[0]
    if "transportSocket" not in chain and "transport_socket" not in chain:
        return None
    match = chain.get("filterChainMatch") or chain.get("filter_chain_match") or {}
    names = match.get("serverNames") or match.get("server_names") or ["example.com"]
    return names[0]


def _request(port: int, server_name: str | None) -> bytes:
    """One GET through the listener (over TLS with SNI when it terminates TLS); the raw
    response."""
    host = server_name or "example.com"
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock: socket.socket = raw
    if server_name is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a placeholder certificate
        sock = context.wrap_socket(raw, server_hostname=server_name)
    with sock:
        sock.sendall(f"GET /corpus HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_what_envoy_accepts_we_accept_and_serve(path: Path, tmp_path: Path) -> None:
    results = {}
    for kind in ("envoy", "xds-proxy"):
        echo = Http1Echo(kind).start()
        try:
            sections = _sections(path, echo.port, tmp_path)
            observed, proxy, stub = push_and_observe(
                kind, sections, tmp_path / kind, keep_running=True
            )
            assert proxy is not None and stub is not None
            try:
                served = {}
                for listener in sections.get("listeners", []):
                    port = observed.listener_ports.get(listener["name"])
                    if port is None:
                        continue
                    response = _request(port, _server_name(listener))
                    served[listener["name"]] = response.split(b"\r\n", 1)[0]
            finally:
                proxy.stop()
                stub.stop()
            results[kind] = (observed, served, len(echo.requests))
        finally:
            echo.stop()
    envoy, ours = results["envoy"], results["xds-proxy"]
    assert envoy[0].accepted_fully, envoy[0]
    assert ours[0].accepted_fully, ours[0]
    assert set(envoy[1].values()) == {b"HTTP/1.1 200 OK"}, envoy[1]
    assert ours[1] == envoy[1]
    assert ours[2] == envoy[2] == len(sections.get("listeners", []))
