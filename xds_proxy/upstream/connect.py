"""Opening one upstream connection, the same way for every pool."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from xds_proxy.upstream.host import PIPE_PORT
from xds_proxy.upstream.stream import CONNECTION_FAILURE, CONNECTION_TIMEOUT

if TYPE_CHECKING:
    from xds_proxy.upstream.host import Host, PoolOwner


async def open_connection(cluster: PoolOwner, host: Host, conn: asyncio.Protocol) -> str | None:
    """Connect `conn` to `host` within the cluster's `connect_timeout`, over TLS when the
    cluster has a transport socket; None once connected, else Envoy's reset reason."""
    config = cluster.config
    tls = config.tls
    if tls is not None and tls.context is None:  # a secret from SDS has not arrived
        tls.on_not_ready()
        return CONNECTION_FAILURE
    try:
        async with asyncio.timeout(config.connect_timeout_s):
            transport, _ = await connect_to(
                lambda: conn,
                host.address,
                tls.context if tls is not None else None,
                tls.server_hostname if tls is not None else None,
                config.source_address,
            )
    except TimeoutError:
        return CONNECTION_TIMEOUT
    except OSError as error:
        # Envoy's transport failure reason, e.g. `delayed_connect_error:_Connection_refused`.
        reason = error.strerror or "unknown"
        host.last_connect_error = "delayed_connect_error:_" + reason.replace(" ", "_")
        return CONNECTION_FAILURE
    limit_buffer(transport, cluster.config.buffer_limit)
    return None


async def connect_to(
    factory: Callable[[], asyncio.BaseProtocol],
    address: tuple[str, int],
    context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    local_addr: tuple[str, int] | None = None,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """A TCP connection to (ip, port), or a UNIX one to a pipe host's path (`@`: abstract)."""
    loop = asyncio.get_running_loop()
    ip, port = address
    tls = {"ssl": context, "server_hostname": server_hostname} if context is not None else {}
    if port == PIPE_PORT:
        path = "\0" + ip[1:] if ip.startswith("@") else ip
        return await loop.create_unix_connection(factory, path, **tls)  # type: ignore[arg-type]
    return await loop.create_connection(
        factory,
        ip,
        port,
        local_addr=local_addr,
        **tls,  # type: ignore[arg-type]
    )


def limit_buffer(transport: asyncio.BaseTransport, limit: int) -> None:
    """The cluster's `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): past it the
    connection's writer is paused (the pools then pause the downstream request body)."""
    transport.set_write_buffer_limits(high=limit, low=limit // 2)  # type: ignore[attr-defined]
