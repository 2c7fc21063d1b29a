"""tcp_proxy on a real loopback listener (in-process server) to real upstream servers."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

from tests.helpers.loops import event_loop_policy  # noqa: F401 - runs each test on both loops
from tests.helpers.upstreams import Stall, TcpEcho, cluster_message
from tests.helpers.waiting import wait_until
from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.stats import Stats
from xds_proxy.tcp_proxy import TcpProxyConnection, build_tcp_proxy
from xds_proxy.upstream.manager import ClusterManager


class Proxy:
    """A tcp_proxy listener on 127.0.0.1:0 in this event loop."""

    def __init__(self, config: dict, clusters: dict[str, list[int]], seed: int = 1) -> None:
        self.stats = Stats()
        self.manager = ClusterManager(self.stats)
        for name, ports in clusters.items():
            self.manager.add_or_update(cluster_message(name, ports))
        self.connections: set[TcpProxyConnection] = set()
        self.ctx = FilterChainContext(
            stats=self.stats,
            listener_name="tcp",
            register=self.connections.add,
            unregister=self.connections.discard,
        )
        message = json_format.ParseDict(
            {"stat_prefix": "tcp_in", **config}, tcp_proxy_pb2.TcpProxy()
        )
        self.factory = build_tcp_proxy(
            message, self.ctx, "typed_config", self.manager, random.Random(seed)
        )
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> Proxy:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.factory, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for conn in list(self.connections):
            if conn.downstream is not None:
                conn.downstream.abort()
        self.manager.close()

    def stat(self, name: str) -> int | str | None:
        return self.stats.value(name)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
def echo():
    with TcpEcho() as server:
        yield server


async def test_round_trip_and_half_close(echo: TcpEcho) -> None:
    async with Proxy({"cluster": "backend"}, {"backend": [echo.port]}) as proxy:
        reader, writer = await proxy.open()
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.write_eof()  # half-close: the upstream still answers after our FIN
        rest = await asyncio.wait_for(reader.read(), 5)  # until the proxy's FIN
        assert rest == b"after-eof:5"
        writer.close()
        await wait_until(lambda: proxy.stat("cluster.backend.upstream_cx_active") == 0)
        assert proxy.stat("tcp.tcp_in.downstream_cx_total") == 1
        assert proxy.stat("tcp.tcp_in.downstream_cx_rx_bytes_total") == 5
        assert proxy.stat("tcp.tcp_in.downstream_cx_tx_bytes_total") == 5 + len(b"after-eof:5")
        assert proxy.stat("cluster.backend.upstream_cx_total") == 1
        assert echo.eofs == 1
        host = proxy.manager.clusters["backend"].hosts[0].stats  # `/clusters`
        assert (host.cx_total, host.cx_active, host.cx_connect_fail) == (1, 0, 0)


async def test_bytes_sent_before_the_upstream_connects_are_kept(echo: TcpEcho) -> None:
    async with Proxy({"cluster": "backend"}, {"backend": [echo.port]}) as proxy:
        reader, writer = await proxy.open()
        writer.write(b"early")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"earlyafter-eof:5"
        writer.close()


async def test_large_transfer_both_ways(echo: TcpEcho) -> None:
    async with Proxy({"cluster": "backend"}, {"backend": [echo.port]}) as proxy:
        reader, writer = await proxy.open()
        payload = bytes(range(256)) * 16384  # 4 MiB

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.read(), 15)
        await sender
        assert received == payload + b"after-eof:%d" % len(payload)
        writer.close()


async def test_upstream_that_does_not_read_pauses_the_downstream() -> None:
    with Stall() as stall:
        async with Proxy({"cluster": "sink"}, {"sink": [stall.port]}) as proxy:
            _, writer = await proxy.open()
            chunk = b"z" * 65536
            sent = 0
            # Write until the client's own buffer stays full: the proxy stopped reading.
            while sent < 64 * 1024 * 1024:
                writer.write(chunk)
                sent += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    break
            assert sent < 64 * 1024 * 1024
            assert proxy.stat("tcp.tcp_in.downstream_flow_control_paused_reading_total") >= 1
            writer.transport.abort()


async def test_weighted_clusters_split_connections() -> None:
    with TcpEcho() as a, TcpEcho() as b:
        config = {
            "weighted_clusters": {
                "clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]
            }
        }
        async with Proxy(config, {"a": [a.port], "b": [b.port]}) as proxy:
            for _ in range(40):
                reader, writer = await proxy.open()
                writer.write(b"x")
                await asyncio.wait_for(reader.readexactly(1), 5)
                writer.close()
            assert a.connections + b.connections == 40
            assert 3 <= a.connections <= 18  # 10 expected; seeded, so deterministic anyway


async def test_unknown_cluster_closes_and_counts_no_route() -> None:
    async with Proxy({"cluster": "missing"}, {}) as proxy:
        reader, writer = await proxy.open()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert proxy.stat("tcp.tcp_in.downstream_cx_no_route") == 1
        writer.close()


async def test_connect_failure_closes_the_downstream() -> None:
    with TcpEcho() as gone:
        port = gone.port
    async with Proxy({"cluster": "down"}, {"down": [port]}) as proxy:
        reader, writer = await proxy.open()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert proxy.stat("cluster.down.upstream_cx_connect_fail") == 1
        assert proxy.stat("cluster.down.upstream_cx_active") == 0
        host = proxy.manager.clusters["down"].hosts[0].stats
        assert (host.cx_total, host.cx_active, host.cx_connect_fail) == (1, 0, 1)
        writer.close()


async def test_idle_timeout_closes_both_sides(echo: TcpEcho) -> None:
    async with Proxy({"cluster": "backend", "idle_timeout": "0.2s"}, {"backend": [echo.port]}) as p:
        reader, writer = await p.open()
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert p.stat("tcp.tcp_in.idle_timeout") == 1
        await wait_until(lambda: p.stat("cluster.backend.upstream_cx_active") == 0)
        writer.close()


async def test_drain_deadline_sends_fin_both_ways_never_rst(echo: TcpEcho) -> None:
    async with Proxy({"cluster": "backend"}, {"backend": [echo.port]}) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"data")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b"data"
        (conn,) = proxy.connections
        conn.on_drain()  # nothing in-band for TCP: traffic goes on
        await loop.sock_sendall(sock, b"more")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b"more"
        # Unread bytes on the proxy's side would turn a plain close into RST.
        await loop.sock_sendall(sock, b"unread" * 1000)
        conn.close_at_deadline()
        received = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)  # RST would raise
            if not chunk:
                break
            received += chunk
        assert b"after-eof" not in received  # the upstream saw our FIN; its answer is dropped
        await wait_until(lambda: echo.eofs == 1)
        sock.close()
        await wait_until(lambda: not proxy.connections)


def test_config_errors_name_the_field() -> None:
    """The PGV rules and the support table (config/) refuse before anything is built."""
    with pytest.raises(ConfigError, match=r"^tc: one of cluster, weighted_clusters is required$"):
        require_valid(tcp_proxy_pb2.TcpProxy(stat_prefix="s"), "tc")
    with pytest.raises(ConfigError, match=r"^tc\.stat_prefix: must not be empty$"):
        require_valid(tcp_proxy_pb2.TcpProxy(cluster="c"), "tc")
    message = tcp_proxy_pb2.TcpProxy(stat_prefix="s", cluster="c")
    message.access_log.add()
    with pytest.raises(ConfigError, match=r"^tc\.access_log\[0\]\.typed_config: is required$"):
        require_valid(message, "tc")
    message = tcp_proxy_pb2.TcpProxy(stat_prefix="s", cluster="c")
    message.on_demand.SetInParent()
    with pytest.raises(ConfigError, match=r"^tc\.on_demand: not supported$"):
        require_valid(message, "tc")
