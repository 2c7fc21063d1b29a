"""TLS pass-through by SNI: tls_inspector reads the ClientHello, the chain's tcp_proxy gets
those bytes first and then the rest, and the client completes its handshake with the upstream
TLS server behind (real loopback sockets, in-process, asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import random
import ssl

import pytest
import uvloop
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from tests.helpers.certs import CertificateAuthority
from tests.helpers.upstreams import cluster_message
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.listener.inspectors import Inspection, ListenerFilters, TlsInspector, hand_over
from xds_proxy.stats import Stats
from xds_proxy.tcp_proxy import build_tcp_proxy
from xds_proxy.upstream.manager import ClusterManager


class TlsEcho(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"upstream:" + data)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_sni_pass_through_to_the_upstream_tls_server(loop_kind: str, tmp_path) -> None:
    ca = CertificateAuthority()
    paths = ca.issue("upstream", dns_names=["db.example.com"]).write(tmp_path)
    upstream_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    upstream_context.load_cert_chain(paths["cert"], paths["key"])
    stats = Stats()
    detected: list = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        upstream = await loop.create_server(TlsEcho, "127.0.0.1", 0, ssl=upstream_context)
        upstream_port = upstream.sockets[0].getsockname()[1]
        manager = ClusterManager(stats)
        manager.add_or_update(cluster_message("db", [upstream_port]))
        ctx = FilterChainContext(stats=stats, listener_name="passthrough")
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix="db", cluster="db")
        factory = build_tcp_proxy(proxy, ctx, "typed_config", manager, random.Random(1))
        config = ListenerFilters((TlsInspector(),), 5.0, False)

        def finished(transport, found, already_read) -> None:
            detected.append(found)
            hand_over(transport, already_read, factory, None, stats, "listener.x.")

        class Acceptor(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                inspection = Inspection(config, stats, "listener.x.", finished)
                transport.set_protocol(inspection)
                inspection.connection_made(transport)

        listener = await loop.create_server(Acceptor, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        client_context = ssl.create_default_context(cadata=ca.cert_pem.decode())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="db.example.com"
        )
        writer.write(b"select 1")
        # the client verified the upstream's certificate for db.example.com on the way
        assert await asyncio.wait_for(reader.readexactly(17), 5) == b"upstream:select 1"
        writer.close()
        listener.close()
        upstream.close()
        manager.close()

    if loop_kind == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())
    assert detected[0].server_name == "db.example.com"
    assert detected[0].transport_protocol == "tls"
