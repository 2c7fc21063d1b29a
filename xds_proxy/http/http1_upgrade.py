"""HTTP/1.1 upgrades (`Connection: upgrade` + `Upgrade: <type>`, e.g. WebSocket) on a downstream
connection, as Envoy 1.40 does them.

Whether an upgrade is allowed is Envoy's rule (config/upgrades.py `upgrade_allowed`): the
route's `upgrade_configs` entry for the type decides when it has one, otherwise the HCM's. A
refused one is answered 403 (`upgrade_failed`, `downstream_rq_ws_on_non_ws_route`) by the
reader, as before. An allowed one counts `downstream_cx_upgrades_total` and `_active`, and is
forwarded like any request (http1_reader.py `_route_early`) with its `connection` and
`upgrade` headers kept and no framing; its response says `connection: close` unless it is the
101 that accepts the upgrade.

Once the request head is parsed, the rest of the connection is not HTTP/1.1 any more: an
`Http1UpgradeTunnel` takes the transport over and passes every byte the client sends on as
request body (the upstream connection buffers it until the 101, as Envoy does). The response
goes through the connection's response queue as a forwarded one; after a 101 its body is the
upstream's raw bytes (upstream/http1_tunnel.py). The connection ends with the upgraded stream:
the upstream closing ends the response and the connection closes (half-close, then the usual
lingering close); the client's FIN or close closes the upstream connection (a FIN) and this
one, as Envoy (whose connection manager does not half-close). A drain treats the connection as
busy (it is never idle) and closes it at the drain deadline.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from xds_proxy.access_log.record import LogRecord
from xds_proxy.http.conn_manager import HcmStats
from xds_proxy.http.http1_backpressure import Http1Backpressure
from xds_proxy.http.http1_response_queue import Http1ResponseQueue
from xds_proxy.upstream.forward import Exchange


def upgrade_type(headers: list[tuple[bytes, bytes]] | None) -> str:
    """The request's `upgrade` header, lowercase (the first one)."""
    for name, value in headers or ():
        if name == b"upgrade":
            return value.decode("latin-1").strip().lower()
    return ""


class TunnelHost(Protocol):
    """The downstream connection, as its tunnel sees it."""

    transport: asyncio.Transport | None
    backpressure: Http1Backpressure
    responses: Http1ResponseQueue

    def connection_lost(self, exc: Exception | None) -> None: ...


class Http1UpgradeTunnel(asyncio.Protocol):
    """The protocol of a downstream connection after an allowed upgrade request's head."""

    __slots__ = ("_connection", "_exchange", "_record", "_stats")

    def __init__(
        self,
        connection: TunnelHost,
        exchange: Exchange,
        stats: HcmStats,
        record: LogRecord | None,
    ) -> None:
        self._connection = connection
        self._exchange = exchange
        self._stats = stats
        self._record = record  # the access-log record, until the exchange logs it

    def data_received(self, data: bytes) -> None:
        if self._record is not None:
            self._record.bytes_received += len(data)  # (as Envoy's BYTES_RECEIVED)
        self._exchange.request_data(data, False)

    def eof_received(self) -> bool:
        return False  # the client's FIN ends the upgraded stream: close both sides

    def pause_writing(self) -> None:
        # The client is not reading: the upstream waits (its bytes to the client are held),
        # but what the client sends still goes on (unlike between HTTP/1.1 requests).
        connection = self._connection
        connection.backpressure.write_paused = True
        connection.responses.pause_head()

    def resume_writing(self) -> None:
        connection = self._connection
        connection.backpressure.write_paused = False
        connection.responses.resume_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.cx_upgrades_active.value -= 1
        self._connection.connection_lost(exc)


def start_tunnel(
    connection: TunnelHost,
    exchange: Exchange,
    stats: HcmStats,
    record: LogRecord | None,
    tail: bytes,
) -> Http1UpgradeTunnel:
    """Move the transport to a tunnel; `tail`: what followed the request head in this read."""
    tunnel = Http1UpgradeTunnel(connection, exchange, stats, record)
    transport = connection.transport
    if transport is not None:
        transport.set_protocol(tunnel)
    if tail:
        tunnel.data_received(tail)
    return tunnel
