"""An upstream HTTP/1.1 connection after `101 Switching Protocols`: raw bytes both ways.

When the response to an upgrade request (`RequestHead.upgrade`) is a 101, the pool's
connection hands its transport to an `UpstreamTunnel` (as Envoy's HTTP/1.1 codec stops
parsing after an upgrade): what the upstream sends goes to the stream's handler as response
data, what the downstream sends goes out unframed (`Http1Stream.send_data`). The stream stays
active on its connection until the tunnel ends, and the connection never returns to the pool.

It ends when either side closes. The upstream's FIN or close resets the stream with
`connection termination` (Envoy logs `UC`), and the downstream then closes. The downstream
going away closes the upstream connection with a FIN (`close_from_downstream`), which is
counted as no reset (Envoy counts no `upstream_rq_tx_reset` for it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from xds_proxy.upstream.stream import CONNECTION_TERMINATION, ResponseHandler


class TunnelStream(Protocol):
    """The pool's stream (http1_pool.py `Http1Stream`), as its tunnel sees it."""

    done: bool
    handler: ResponseHandler
    tunnel: UpstreamTunnel | None

    def finish(self) -> None: ...


class TunnelConnection(Protocol):
    """The pool's connection (http1_pool.py `Http1ClientConnection`), as its tunnel sees it."""

    pool: Any  # the Http1Pool: cluster stats, connection_closed(), stream_done()
    stream: Any
    transport: asyncio.Transport | None

    def _count_lost(self, stats: Any) -> None: ...

    def close(self) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class UpstreamTunnel(asyncio.Protocol):
    """The protocol of an upgraded upstream connection."""

    __slots__ = ("_conn", "_stream")

    def __init__(self, conn: TunnelConnection, stream: TunnelStream) -> None:
        self._conn = conn
        self._stream = stream

    def data_received(self, data: bytes) -> None:
        stream = self._stream
        if not stream.done and data:
            stream.handler.on_response_data(data, False)

    def eof_received(self) -> bool:
        return False  # the upstream's FIN ends the tunnel: close (connection_lost follows)

    def pause_writing(self) -> None:
        self._conn.pause_writing()  # the downstream stops being read

    def resume_writing(self) -> None:
        self._conn.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self._conn
        pool = conn.pool
        conn._count_lost(pool.cluster.stats)
        conn.stream = None
        pool.connection_closed(conn)
        stream = self._stream
        if not stream.done:
            # Envoy ends the stream with a reset: `UC`,
            # `upstream_reset_after_response_started{connection_termination}`.
            stream.finish()
            pool.stream_done(stream)
            stream.handler.on_reset(CONNECTION_TERMINATION)

    def close_from_downstream(self) -> None:
        """The downstream went away (or the exchange was cancelled): FIN the upstream."""
        stream = self._stream
        if stream.done:
            return
        stream.finish()
        self._conn.pool.stream_done(stream)
        self._conn.close()


def start_tunnel(conn: TunnelConnection, stream: TunnelStream, tail: bytes) -> None:
    """The 101 has been passed on: move the transport to a tunnel and pass on what followed
    the response head in the same read."""
    transport = conn.transport
    if transport is None:
        return
    tunnel = UpstreamTunnel(conn, stream)
    stream.tunnel = tunnel
    transport.set_protocol(tunnel)
    if tail:
        tunnel.data_received(tail)
