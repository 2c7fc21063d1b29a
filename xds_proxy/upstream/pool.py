"""What the HTTP/1.1 and HTTP/2 pools to one upstream host share: the pending queue and its
circuit-breaker accounting, opening connections (limits, stats, connect failures), the
per-request accounting and the end of the pool.

Subclasses name their stream and connection classes and fill in the hooks: where a free
connection is, how a stream starts on one, when pending requests need another connection,
what happens once a connection is up and which pending requests a failed connect fails.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from xds_proxy.upstream.connect import open_connection
from xds_proxy.upstream.stream import (
    CONNECTION_TIMEOUT,
    OVERFLOW,
    RequestHead,
    ResponseHandler,
)

if TYPE_CHECKING:
    from xds_proxy.upstream.host import Host, PoolOwner
    from xds_proxy.upstream.stats import ClusterStats


class PooledStream:
    """What both protocols' streams share: the request, its handler, reset and failure.
    `_conn` is None while the stream waits in the pool's queue."""

    __slots__ = ("_conn", "_pool", "_request_ended", "done", "handler", "head")

    def __init__(
        self,
        pool: ConnectionPool[Any, Any],
        head: RequestHead,
        handler: ResponseHandler,
        end_stream: bool,
    ) -> None:
        self._pool = pool
        self.head = head
        self.handler = handler
        self._conn: Any = None
        self._request_ended = end_stream
        self.done = False

    @property
    def host(self) -> Host:
        return self._pool.host

    def local_address(self) -> object:
        """The upstream connection's local (ip, port), or None before it has one."""
        transport = self._conn.transport if self._conn is not None else None
        return transport.get_extra_info("sockname") if transport is not None else None

    def reset(self) -> None:
        if self.done:
            return
        self.done = True
        self._pool.cluster.stats.upstream_rq_tx_reset.value += 1
        if self._conn is None:
            self._pool.cancel_pending(self)
        else:
            self._conn.cancel_stream(self)

    def fail(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.handler.on_reset(reason)


class PooledConnection(asyncio.Protocol):
    """What both protocols' connections share: the transport, closing it, counting its end."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._closing = False
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool:
        return False

    def _count_lost(self, stats: ClusterStats) -> None:
        """The transport is gone: stop the idle timer and count who ended the connection."""
        self.transport = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        stats.upstream_cx_destroy.value += 1
        if self._closing:
            stats.upstream_cx_destroy_local.value += 1
        else:
            stats.upstream_cx_destroy_remote.value += 1

    def cancel_stream(self, stream: Any) -> None:
        """The caller reset a stream this connection carries."""
        raise NotImplementedError

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()


StreamT = TypeVar("StreamT", bound=PooledStream)
ConnT = TypeVar("ConnT", bound=PooledConnection)


class ConnectionPool(Generic[StreamT, ConnT]):
    """Connections and waiting requests of one cluster to one host."""

    # Made as `stream_class(pool, head, handler, end_stream)` and `connection_class(pool)`.
    stream_class: Callable[..., StreamT]
    connection_class: Callable[[Any], ConnT]

    def __init__(self, cluster: PoolOwner, host: Host) -> None:
        self.cluster = cluster
        self.host = host
        self.connecting = 0
        self.pending: collections.deque[StreamT] = collections.deque()
        self.retired = False
        self._connect_tasks: set[asyncio.Task] = set()

    # -- hooks ------------------------------------------------------------------------------

    def _free_connection(self) -> ConnT | None:
        """A connection that can take one more stream now, if any."""
        raise NotImplementedError

    def _start(self, conn: ConnT, stream: StreamT) -> None:
        """Put an accounted stream on the connection."""
        raise NotImplementedError

    def _wants_connection(self) -> bool:
        """Whether the pending requests need one more connection than those connecting."""
        raise NotImplementedError

    def _open_connections(self) -> list[ConnT]:
        """Every connection that is up, whether it is in use or not."""
        raise NotImplementedError

    def _count_protocol_connection(self, stats: ClusterStats) -> None:
        """Count a new connection in its protocol's `upstream_cx_http*_total`."""
        raise NotImplementedError

    def _connected(self, conn: ConnT) -> None:
        """A new connection is up and no longer counted in `connecting`."""
        raise NotImplementedError

    def _eject_pending(self, reason: str) -> None:
        """A connect failed: fail the pending requests no other connect will serve."""
        raise NotImplementedError

    def _forget_connection(self, conn: ConnT) -> None:
        """Drop a closed connection from the subclass's collections."""
        raise NotImplementedError

    # -- streams ----------------------------------------------------------------------------

    def new_stream(self, head: RequestHead, handler: ResponseHandler, end_stream: bool) -> StreamT:
        stream = self.stream_class(self, head, handler, end_stream)
        conn = self._free_connection()
        if conn is not None:
            self._attach(conn, stream)
            return stream
        cluster = self.cluster
        resources = cluster.resources
        stats = cluster.stats
        if resources.pending >= cluster.config.circuit_breakers.max_pending_requests:
            stats.upstream_rq_pending_overflow.value += 1
            asyncio.get_running_loop().call_soon(stream.fail, OVERFLOW)
            return stream
        stats.upstream_rq_pending_total.value += 1
        stats.upstream_rq_pending_active.value += 1
        self.host.stats.rq_pending_active += 1
        resources.pending += 1
        resources.requests += 1
        self.pending.append(stream)
        if self._wants_connection():
            self._maybe_connect()
        return stream

    def _attach(self, conn: ConnT, stream: StreamT) -> None:
        stats = self.cluster.stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1
        self.cluster.resources.requests += 1
        self.host.active_requests += 1
        self.host.stats.rq_total += 1
        self.host.stats.rq_active += 1
        self._start(conn, stream)

    def _dequeue(self) -> StreamT:
        """The oldest pending request, no longer counted as pending."""
        stream = self.pending.popleft()
        self._count_dequeued()
        return stream

    def _count_dequeued(self) -> None:
        resources = self.cluster.resources
        resources.pending -= 1
        resources.requests -= 1
        self.cluster.stats.upstream_rq_pending_active.value -= 1
        self.host.stats.rq_pending_active -= 1

    def _eject_one(self, reason: str) -> None:
        stream = self._dequeue()
        self.cluster.stats.upstream_rq_pending_failure_eject.value += 1
        stream.fail(reason)

    def cancel_pending(self, stream: StreamT) -> None:
        if stream in self.pending:
            self.pending.remove(stream)
            self._count_dequeued()
            self.cluster.stats.upstream_rq_cancelled.value += 1

    def stream_done(self, stream: StreamT) -> None:
        """An attached stream ended (complete, failed or reset)."""
        stats = self.cluster.stats
        stats.upstream_rq_active.value -= 1
        stats.upstream_rq_completed.value += 1
        self.cluster.resources.requests -= 1
        self.host.active_requests -= 1
        self.host.stats.rq_active -= 1

    # -- connections ------------------------------------------------------------------------

    def _maybe_connect(self) -> None:
        cluster = self.cluster
        resources = cluster.resources
        stats = cluster.stats
        if resources.connections >= cluster.config.circuit_breakers.max_connections:
            stats.upstream_cx_overflow.value += 1
            if self.connecting or self._open_connections():
                return
            # A pool with no connection at all opens one anyway, as Envoy does.
        self.connecting += 1
        resources.connections += 1
        stats.upstream_cx_total.value += 1
        self._count_protocol_connection(stats)
        stats.upstream_cx_active.value += 1
        self.host.stats.cx_total += 1
        self.host.stats.cx_active += 1
        task = asyncio.get_running_loop().create_task(self._connect())
        self._connect_tasks.add(task)
        task.add_done_callback(self._connect_tasks.discard)

    async def _connect(self) -> None:
        conn = self.connection_class(self)
        failure = await open_connection(self.cluster, self.host, conn)
        if failure is not None:
            self._connect_failed(failure)
            return
        self.connecting -= 1
        self._connected(conn)

    def _connect_failed(self, reason: str) -> None:
        stats = self.cluster.stats
        self.connecting -= 1
        self.cluster.resources.connections -= 1
        stats.upstream_cx_active.value -= 1
        stats.upstream_cx_destroy.value += 1
        stats.upstream_cx_connect_fail.value += 1
        self.host.stats.cx_active -= 1
        self.host.stats.cx_connect_fail += 1
        if reason == CONNECTION_TIMEOUT:
            stats.upstream_cx_connect_timeout.value += 1
        self._eject_pending(reason)

    def connection_closed(self, conn: ConnT) -> None:
        self._forget_connection(conn)
        self.cluster.resources.connections -= 1
        self.cluster.stats.upstream_cx_active.value -= 1
        self.host.stats.cx_active -= 1
        if self._wants_connection():
            self._maybe_connect()

    # -- lifecycle --------------------------------------------------------------------------

    def retire(self) -> None:
        """No new streams go here; connections close once they carry none."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop connecting and abort every connection, whatever it is doing."""
        self.retired = True
        for task in self._connect_tasks:
            task.cancel()
        for conn in self._open_connections():
            conn.abort()
