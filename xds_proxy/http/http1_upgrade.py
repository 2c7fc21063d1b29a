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
import time
from typing import Protocol

from xds_proxy.access_log.record import LogRecord
from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.http.http1_backpressure import PAUSE_WRITING, Http1Backpressure
from xds_proxy.http.http1_response_queue import Http1ResponseQueue
from xds_proxy.upstream.forward import Exchange
from xds_proxy.upstream.http1_response import Http1ForwardSink, Http1Owner
from xds_proxy.upstream.stream import Header


def upgrade_type(headers: list[tuple[bytes, bytes]] | None) -> str:
    """The request's `upgrade` header, lowercase (the first one)."""
    for name, value in headers or ():
        if name == b"upgrade":
            return value.decode("latin-1").strip().lower()
    return ""


class UpgradeSink(Http1ForwardSink):
    """An upgrade's response: as any forwarded one, noting when it last moved (for
    `stream_idle_timeout`) and whether its head went out."""

    __slots__ = ("last_activity", "started")

    def __init__(self, owner: Http1Owner, head_only: bool, http10: bool, server: bytes) -> None:
        super().__init__(owner, head_only, http10, server)
        self.last_activity = time.monotonic()
        self.started = False

    def send_response_headers(self, status: int, headers: list[Header], end_stream: bool) -> None:
        self.started = True
        self.last_activity = time.monotonic()
        super().send_response_headers(status, headers, end_stream)

    def send_response_data(self, data: bytes, end_stream: bool) -> None:
        self.last_activity = time.monotonic()
        super().send_response_data(data, end_stream)

    def send_whole_response(self, status: int, headers: list[Header], body: bytes) -> None:
        self.send_response_headers(status, headers, False)
        self.send_response_data(body, True)


class TunnelHost(Protocol):
    """The downstream connection, as its tunnel sees it."""

    transport: asyncio.Transport | None
    backpressure: Http1Backpressure
    responses: Http1ResponseQueue

    def connection_lost(self, exc: Exception | None) -> None: ...


class Http1UpgradeTunnel(asyncio.Protocol):
    """The protocol of a downstream connection after an allowed upgrade request's head."""

    __slots__ = (
        "_config",
        "_connection",
        "_exchange",
        "_last_rx",
        "_record",
        "_sink",
        "_timer",
    )

    def __init__(
        self,
        connection: TunnelHost,
        exchange: Exchange,
        sink: UpgradeSink,
        config: HcmConfig,
        record: LogRecord | None,
    ) -> None:
        self._connection = connection
        self._exchange = exchange
        self._sink = sink
        self._config = config
        self._record = record  # the access-log record, until the exchange logs it
        self._last_rx = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        timeout = config.stream_idle_timeout_s
        if timeout:
            self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            self._last_rx = time.monotonic()
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
        backpressure = connection.backpressure
        backpressure.write_paused = False
        backpressure.resume_reading(PAUSE_WRITING)  # (if paused so before the upgrade)
        connection.responses.resume_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._config.stats.cx_upgrades_active.value -= 1
        self._connection.connection_lost(exc)

    # -- stream_idle_timeout ---------------------------------------------------------------

    def _on_timer(self) -> None:
        """One lazy timer: it re-arms itself while either direction moved within the timeout."""
        self._timer = None
        sink = self._sink
        if sink.complete or self._connection.transport is None:
            return
        timeout = self._config.stream_idle_timeout_s or 0.0
        idle_until = max(self._last_rx, sink.last_activity) + timeout
        remaining = idle_until - time.monotonic()
        if remaining > 0:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._on_timer)
            return
        self._time_out()

    def _time_out(self) -> None:
        """Idle for `stream_idle_timeout`: as Envoy, 408 `stream timeout` if the upstream has
        not answered yet, else the stream is reset; the connection closes either way."""
        config = self._config
        config.stats.rq_idle_timeout.value += 1
        sink = self._sink
        body = config.stream_timeout_reply.body
        record = self._record
        if record is not None:
            record.add_flag("SI")
            record.details = "stream_idle_timeout"
            if not sink.started:
                record.local_reply(408, len(body), config.proxy_policy.server_name)
                record.bytes_sent = len(body)
        self._exchange.downstream_reset(disconnected=False)
        if sink.started:
            sink.reset_downstream()
        else:
            sink.send_local_reply(408, body, [])


def start_tunnel(
    connection: TunnelHost,
    exchange: Exchange,
    sink: UpgradeSink,
    config: HcmConfig,
    record: LogRecord | None,
    tail: bytes,
) -> Http1UpgradeTunnel:
    """Move the transport to a tunnel; `tail`: what followed the request head in this read."""
    tunnel = Http1UpgradeTunnel(connection, exchange, sink, config, record)
    transport = connection.transport
    if transport is not None:
        transport.set_protocol(tunnel)
    if tail:
        tunnel.data_received(tail)
    return tunnel
