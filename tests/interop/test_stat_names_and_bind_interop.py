"""Fields a service mesh sets on every inbound listener and cluster (Kuma does), on Envoy 1.40
and on ours with the same bootstrap and the same requests:

- a listener's `stat_prefix`: its stats are `listener.<stat_prefix>.*` instead of
  `listener.<address>_<port>.*`;
- a cluster's `alt_stat_name`: its stats are `cluster.<alt_stat_name>.*`;
- a cluster's `upstream_bind_config.source_address`: upstream connections come from that
  address (127.0.0.6, as a mesh's inbound passthrough uses);
- `circuit_breakers.thresholds[].track_remaining`: the `circuit_breakers.default.remaining_*`
  gauges next to the `*_open` ones every cluster has.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import get
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import cluster_dict

pytestmark = pytest.mark.envoy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


class PeerRecorder:
    """An HTTP/1.1 upstream that answers 200 to every request and records where each
    connection came from."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            buffered = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffered += data
                while b"\r\n\r\n" in buffered:
                    _, buffered = buffered.split(b"\r\n\r\n", 1)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    def stop(self) -> None:
        self.sock.close()


def bootstrap(port: int, upstream_port: int) -> dict:
    cluster = cluster_dict(
        "inbound_svc",
        [upstream_port],
        alt_stat_name="inbound_alt",
        upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}},
        circuit_breakers={"thresholds": [{"track_remaining": True, "max_connections": 7}]},
    )
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound_svc"}}],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    listener = {
        "name": "inbound_80",
        "stat_prefix": "inbound_80_prefix",
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
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def observe(process_type: type[EnvoyProcess], workdir: Path) -> tuple[dict, list[str]]:
    upstream = PeerRecorder()
    port = free_port()
    process = process_type(bootstrap(port, upstream.port), workdir).start()
    try:
        process.wait_ready()
        statuses = [get(port).status for _ in range(3)]
        assert statuses == [200, 200, 200]
        stats = process.stats(r"^(listener\.inbound_80_prefix|cluster\.inbound_alt)\.")
        picked = {
            name: stats.get(name)
            for name in (
                "listener.inbound_80_prefix.downstream_cx_total",
                "cluster.inbound_alt.upstream_rq_total",
                "cluster.inbound_alt.upstream_cx_total",
            )
        }
        named_by_address = process.stats(rf"^listener\.127\.0\.0\.1_{port}\.")
        assert named_by_address == {}
        breakers = process.stats(r"^cluster\.inbound_alt\.circuit_breakers\.")
        return picked, sorted(set(upstream.peers)), breakers
    finally:
        process.stop()
        upstream.stop()


def test_stat_prefix_alt_stat_name_and_source_address_as_envoy(tmp_path: Path) -> None:
    envoy = observe(EnvoyProcess, tmp_path / "envoy")
    ours = observe(ProxyProcess, tmp_path / "ours")
    assert envoy[0]["listener.inbound_80_prefix.downstream_cx_total"] == "3"
    assert envoy[0]["cluster.inbound_alt.upstream_rq_total"] == "3"
    assert envoy[1] == ["127.0.0.6"]
    # one keep-alive upstream connection stays open: 7 - 1 connections remain
    assert envoy[2]["cluster.inbound_alt.circuit_breakers.default.remaining_cx"] == "6"
    assert ours == envoy
