"""`envoy.filters.network.tcp_proxy`: bytes both ways between a downstream connection and a
host of a cluster.

- Back-pressure both ways: when one side's write buffer is full, the other side stops reading.
- Half-close: a FIN from one side becomes a FIN to the other; the connection ends when both
  directions are closed (or either side closes entirely).
- `idle_timeout` (default 1 h, 0 disables): no byte either way for that long closes both.
- Drain: TCP has nothing in-band, so `on_drain` changes nothing; `close_at_deadline` flushes
  and sends FIN both ways, then waits briefly for the peers' FINs, so unread bytes never turn
  the close into a reset.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from xds_proxy.access_log import AccessLog, build_access_log
from xds_proxy.access_log.connection import CONNECTION_RECORD
from xds_proxy.access_log.record import Downstream, LogRecord, format_address
from xds_proxy.config.tcp_proxy import TcpProxySettings, build_tcp_proxy_settings
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.connect import connect_to, limit_buffer
from xds_proxy.upstream.host import Host, host_address_text
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.upstream.outlier import Result
from xds_proxy.xxhash64 import xxhash64

TCP_PROXY_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
# After our FIN at a drain deadline, how long we wait for the peer's before closing anyway.
_CLOSE_LINGER_S = 1.0


class TcpProxyStats:
    """Handles on `tcp.<stat_prefix>.*` (Envoy's names)."""

    __slots__ = (
        "downstream_cx_no_route",
        "downstream_cx_rx_bytes_total",
        "downstream_cx_total",
        "downstream_cx_tx_bytes_total",
        "downstream_flow_control_paused_reading_total",
        "downstream_flow_control_resumed_reading_total",
        "idle_timeout",
        "upstream_flush_active",
        "upstream_flush_total",
    )

    def __init__(self, stats: Stats, stat_prefix: str) -> None:
        base = f"tcp.{stat_prefix}."
        for name in self.__slots__:
            if name == "upstream_flush_active":
                setattr(self, name, stats.gauge(base + name))
            else:
                setattr(self, name, stats.counter(base + name))


@dataclass(frozen=True)
class TcpProxyConfig:
    """A chain's tcp_proxy: its settings (config/tcp_proxy.py) and its stat handles."""

    settings: TcpProxySettings
    stats: TcpProxyStats
    access_log: AccessLog | None = None  # None: no access_log configured

    def pick_cluster(self, rng: random.Random) -> str:
        return self.settings.clusters.pick(rng)


def build_tcp_proxy(
    message: tcp_proxy_pb2.TcpProxy,
    ctx: FilterChainContext,
    path: str,
    clusters: ClusterManager | None,
    rng: random.Random | None = None,
):
    """The network filter registry's builder: translate once, one protocol per connection."""
    settings = build_tcp_proxy_settings(message, path)
    access_log = build_access_log(settings.access_logs, f"{path}.access_log")
    config = TcpProxyConfig(settings, TcpProxyStats(ctx.stats, settings.stat_prefix), access_log)
    chooser = rng or random.Random()
    return lambda: TcpProxyConnection(config, ctx, clusters, chooser)


async def _open(
    loop: asyncio.AbstractEventLoop,
    side: asyncio.Protocol,
    address: tuple[str, int],
    cluster: Cluster,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    tls = cluster.config.tls
    opened = await connect_to(
        lambda: side,
        address,
        tls.context if tls is not None else None,
        tls.server_hostname if tls is not None else None,
    )
    limit_buffer(opened[0], cluster.config.buffer_limit)
    return opened


class _UpstreamSide(asyncio.Protocol):
    """The upstream connection's protocol: forwards everything to the session."""

    def __init__(self, session: TcpProxyConnection) -> None:
        self.session = session

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def eof_received(self) -> bool:
        self.session.upstream_eof()
        return True

    def pause_writing(self) -> None:
        self.session.pause_downstream_reading()

    def resume_writing(self) -> None:
        self.session.resume_downstream_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost()


class TcpProxyConnection(asyncio.Protocol):
    """One downstream connection and its upstream connection."""

    def __init__(
        self,
        config: TcpProxyConfig,
        ctx: FilterChainContext,
        clusters: ClusterManager | None,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._clusters = clusters
        self._rng = rng
        self.downstream: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._cluster: Cluster | None = None
        self._host: Host | None = None  # the upstream host once connected (`/clusters` stats)
        self._early: list[bytes] = []
        self._early_eof = False
        self._downstream_eof = False
        self._upstream_eof = False
        self._downstream_paused = False
        self._upstream_paused = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._closing = False
        self._linger: asyncio.TimerHandle | None = None
        self._connect_task: asyncio.Task | None = None
        self._flushing = False
        self._record: LogRecord | None = None  # only with an access_log configured
        # The record whose byte counts this filter keeps (None when the listener's logging
        # wrapper counts the connection's bytes already).
        self._counted: LogRecord | None = None

    # -- downstream (asyncio.Protocol) ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.downstream = transport  # type: ignore[assignment]
        self._ctx.register(self)
        self._config.stats.downstream_cx_total.inc()
        shared = transport.get_extra_info(CONNECTION_RECORD)
        if shared is not None:
            # The listener logs this connection: one record for both, as Envoy's stream info.
            self._record = shared
        elif self._config.access_log is not None:
            self._record = self._counted = _connection_record(transport)
        name = self._config.pick_cluster(self._rng)
        cluster = self._clusters.get(name) if self._clusters is not None else None
        if self._record is not None:
            self._record.upstream_cluster = name if cluster is not None else None
        if cluster is None:
            if self._record is not None:
                self._record.flags = "NC"
            self._config.stats.downstream_cx_no_route.inc()
            self.downstream.close()  # type: ignore[union-attr]
            return
        self._cluster = cluster
        self.downstream.pause_reading()  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        self._connect_task = loop.create_task(self._connect(cluster))

    def data_received(self, data: bytes) -> None:
        self._config.stats.downstream_cx_rx_bytes_total.inc(len(data))
        if self._counted is not None:
            self._counted.bytes_received += len(data)
        if self._closing:
            return  # after our FIN at a drain deadline: read and drop, so no RST
        if self.upstream is None:
            # Held until the upstream connects; reading stops meanwhile (uvloop may deliver
            # a first read despite the pause in connection_made).
            self._early.append(data)
            if self.downstream is not None:
                self.downstream.pause_reading()
            return
        self._touch()
        if self._cluster is not None:
            self._cluster.stats.upstream_cx_tx_bytes_total.inc(len(data))
        self.upstream.write(data)

    def eof_received(self) -> bool:
        self._downstream_eof = True
        if self._closing:
            pass
        elif self.upstream is None:
            self._early_eof = True
        elif self.upstream.can_write_eof():
            self.upstream.write_eof()
        self._maybe_finish()
        return True

    def pause_writing(self) -> None:
        if self.upstream is not None and not self._upstream_paused:
            self._upstream_paused = True
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self._upstream_paused:
            self._upstream_paused = False
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream = None
        self._ctx.unregister(self)
        self._cancel_timers()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        upstream = self.upstream
        if upstream is not None and not upstream.is_closing():
            if upstream.get_write_buffer_size():
                self._flushing = True
                self._config.stats.upstream_flush_total.inc()
                self._config.stats.upstream_flush_active.inc()
            upstream.close()  # flushes what the client sent, then FIN
        record = self._record
        if record is not None:
            self._record = None
            if self._config.access_log is not None:
                record.end = time.monotonic()
                self._config.access_log.log(record)

    # -- upstream ---------------------------------------------------------------------------

    def _source_ip_hash(self) -> int | None:
        """`hash_policy` `source_ip`: the client IP's hash, for the hashing balancers."""
        if not self._config.settings.hash_source_ip or self.downstream is None:
            return None
        peer = self.downstream.get_extra_info("peername")
        return xxhash64(peer[0]) if peer else None

    async def _connect(self, cluster: Cluster) -> None:
        loop = asyncio.get_running_loop()
        stats = cluster.stats
        attempts = self._config.settings.max_connect_attempts
        hash_key = self._source_ip_hash()
        for _attempt in range(attempts):
            host = cluster.pick_host(hash_key)
            if host is None:
                stats.upstream_cx_none_healthy.inc()
                break
            limits = cluster.config.circuit_breakers
            if cluster.resources.connections >= limits.max_connections:
                stats.upstream_cx_overflow.inc()
                break
            cluster.resources.connections += 1
            stats.upstream_cx_total.inc()
            stats.upstream_cx_active.inc()
            host.stats.cx_total += 1
            host.stats.cx_active += 1
            side = _UpstreamSide(self)
            try:
                async with asyncio.timeout(cluster.config.connect_timeout_s):
                    transport, _ = await _open(loop, side, host.address, cluster)
            except (OSError, TimeoutError) as error:
                cluster.resources.connections -= 1
                stats.upstream_cx_active.dec()
                stats.upstream_cx_destroy.inc()
                stats.upstream_cx_connect_fail.inc()
                host.stats.cx_active -= 1
                host.stats.cx_connect_fail += 1
                if isinstance(error, TimeoutError):
                    stats.upstream_cx_connect_timeout.inc()
                cluster.report_result(
                    host,
                    Result.TIMEOUT if isinstance(error, TimeoutError) else Result.CONNECT_FAILED,
                )
                if self._record is not None:
                    _connect_failed(self._record, host, error)
                continue
            cluster.report_result(host, Result.CONNECT_SUCCESS_FINAL)
            self._host = host
            if self._record is not None:
                _connected(self._record, host, transport)
            self._upstream_connected(transport)  # type: ignore[arg-type]
            return
        if self._record is not None and self._record.flags == "UF":
            self._record.add_flag("URX")  # every connect attempt failed
        if self.downstream is not None:
            self.downstream.close()

    def _upstream_connected(self, transport: asyncio.Transport) -> None:
        self.upstream = transport
        if self.downstream is None:
            transport.close()
            return
        if self._early:
            data = b"".join(self._early)
            self._early.clear()
            if self._cluster is not None:
                self._cluster.stats.upstream_cx_tx_bytes_total.inc(len(data))
            transport.write(data)
        if self._early_eof and transport.can_write_eof():
            transport.write_eof()
        if not self._downstream_eof:
            self.downstream.resume_reading()
        self._touch()

    def upstream_data(self, data: bytes) -> None:
        if self._cluster is not None:
            self._cluster.stats.upstream_cx_rx_bytes_total.inc(len(data))
        if self.downstream is None or self._closing:
            return
        self._touch()
        self._config.stats.downstream_cx_tx_bytes_total.inc(len(data))
        if self._counted is not None:
            self._counted.bytes_sent += len(data)
        self.downstream.write(data)

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self.downstream is not None and not self._closing and self.downstream.can_write_eof():
            self.downstream.write_eof()
        self._maybe_finish()

    def upstream_lost(self) -> None:
        cluster = self._cluster
        if cluster is not None:
            cluster.resources.connections -= 1
            cluster.stats.upstream_cx_active.dec()
            cluster.stats.upstream_cx_destroy.inc()
        if self._host is not None:
            self._host.stats.cx_active -= 1
        if self._flushing:
            self._flushing = False
            self._config.stats.upstream_flush_active.dec()
        self.upstream = None
        if self.downstream is not None and not self.downstream.is_closing():
            self.downstream.close()  # flushes what the upstream sent, then FIN

    def pause_downstream_reading(self) -> None:
        if self.downstream is not None and not self._downstream_paused:
            self._downstream_paused = True
            self._config.stats.downstream_flow_control_paused_reading_total.inc()
            self.downstream.pause_reading()

    def resume_downstream_reading(self) -> None:
        if self.downstream is not None and self._downstream_paused:
            self._downstream_paused = False
            self._config.stats.downstream_flow_control_resumed_reading_total.inc()
            if not self._downstream_eof:
                self.downstream.resume_reading()

    # -- lifecycle --------------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        """Both directions closed: close both transports (their buffers flush first)."""
        if self._downstream_eof and self._upstream_eof:
            for transport in (self.downstream, self.upstream):
                if transport is not None:
                    transport.close()

    def _touch(self) -> None:
        timeout = self._config.settings.idle_timeout_s
        if not timeout:
            return
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_timer = None
        timeout = self._config.settings.idle_timeout_s
        assert timeout
        loop = asyncio.get_running_loop()
        remaining = self._last_activity + timeout - loop.time()
        if remaining > 0:
            self._idle_timer = loop.call_later(remaining, self._on_idle)
            return
        self._config.stats.idle_timeout.inc()
        for transport in (self.downstream, self.upstream):
            if transport is not None:
                transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._idle_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._linger = None

    # -- DrainableConnection ----------------------------------------------------------------

    def on_drain(self) -> None:
        """Nothing in-band exists for TCP: keep forwarding until the drain deadline."""

    def close_at_deadline(self) -> None:
        """Flush, FIN both ways, then close once the peers answered with FIN (or after a
        short linger): a close with unread bytes would send RST instead of FIN."""
        if self._closing:
            return
        self._closing = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        for transport in (self.downstream, self.upstream):
            if transport is None or transport.is_closing():
                continue
            if transport.can_write_eof():
                transport.write_eof()
                transport.resume_reading()
            else:
                transport.close()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(_CLOSE_LINGER_S, self._close_now)

    def _close_now(self) -> None:
        self._linger = None
        for transport in (self.downstream, self.upstream):
            if transport is not None:
                transport.close()


# -- access logging (only with an access_log configured) -----------------------------------


def _connection_record(transport: asyncio.BaseTransport) -> LogRecord:
    downstream = Downstream(
        transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    )
    record = LogRecord(downstream)
    record.protocol = None
    return record


def _address(host: Host) -> str | None:
    return host_address_text(host.address)


def _connect_failed(record: LogRecord, host: Host, error: BaseException) -> None:
    record.flags = "UF"
    record.upstream_host = _address(host)
    if isinstance(error, OSError):
        reason = (error.strerror or "unknown").replace(" ", "_")
        record.upstream_failure = f"delayed_connect_error:_{reason}"


def _connected(record: LogRecord, host: Host, transport: asyncio.BaseTransport) -> None:
    record.flags = ""
    record.upstream_failure = None
    record.upstream_host = record.upstream_remote = _address(host)
    record.upstream_local = format_address(transport.get_extra_info("sockname"))
