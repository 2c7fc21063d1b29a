"""Opening one upstream connection, the same way for every pool."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from xds_proxy.upstream.stream import CONNECTION_FAILURE, CONNECTION_TIMEOUT

if TYPE_CHECKING:
    from xds_proxy.upstream.host import Host, PoolOwner


async def open_connection(cluster: PoolOwner, host: Host, conn: asyncio.Protocol) -> str | None:
    """Connect `conn` to `host` within the cluster's `connect_timeout`, over TLS when the
    cluster has a transport socket; None once connected, else Envoy's reset reason."""
    loop = asyncio.get_running_loop()
    ip, port = host.address
    config = cluster.config
    tls = config.tls
    if tls is not None and tls.context is None:  # a secret from SDS has not arrived
        tls.on_not_ready()
        return CONNECTION_FAILURE
    try:
        async with asyncio.timeout(config.connect_timeout_s):
            if tls is None:
                transport, _ = await loop.create_connection(
                    lambda: conn, ip, port, local_addr=config.source_address
                )
            else:
                transport, _ = await loop.create_connection(
                    lambda: conn,
                    ip,
                    port,
                    ssl=tls.context,
                    server_hostname=tls.server_hostname,
                    local_addr=config.source_address,
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


def limit_buffer(transport: asyncio.BaseTransport, limit: int) -> None:
    """The cluster's `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): past it the
    connection's writer is paused (the pools then pause the downstream request body)."""
    transport.set_write_buffer_limits(high=limit, low=limit // 2)  # type: ignore[attr-defined]
