"""Where one downstream HTTP/1.1 connection is in its life, and the timers that end it.

Open, then draining (told to leave: the next response carries `connection: close`), then
closing (our side is half-closed once flushed, and we linger up to `delayed_close_timeout` for
the client's FIN). Once a response that ends the connection has been decided, no further
request is read (`no_more_requests`) and the connection closes when the responses owed are out.

No per-request timers: one lazy timer per connection covers the idle timeout and the request
timeouts (headers, whole request, stream idle), moved only when a deadline comes earlier.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sized
from typing import Protocol

from xds_proxy.codec.responses import LocalResponse
from xds_proxy.http.conn_manager import (
    DrainState,
    HcmConfig,
    close_after_delayed_close_timeout,
)
from xds_proxy.listener.context import FilterChainContext

# DrainState as plain ints: cheaper to compare on the per-request path.
OPEN = int(DrainState.NOT_DRAINING)
DRAINING = int(DrainState.DRAINING)
CLOSING = int(DrainState.CLOSING)
# How long a drained connection must stay idle before it is closed (see `Http1Lifecycle.drain`).
IDLE_CLOSE_GRACE_S = 0.05


class RequestProgress(Protocol):
    """The request reader, as the lifecycle sees it."""

    in_request: bool
    headers_done: bool
    request_started: float  # 0.0: no request timeout running
    last_rx: float
    answered_at: float  # when a request was last answered locally
    out: list[bytes]

    def reply_error(self, response: LocalResponse) -> None: ...

    def write_out_now(self) -> None: ...


class PendingResponses(Protocol):
    entries: Sized


class LifecycleHost(Protocol):
    """The connection, as its lifecycle sees it."""

    transport: asyncio.Transport | None
    reader: RequestProgress
    responses: PendingResponses

    @property
    def is_idle(self) -> bool: ...

    def reset_forwards(self) -> None: ...


class Http1Lifecycle:
    """Drain state, the connection timer (idle and request timeouts), the lingering close."""

    __slots__ = (
        "_close_timer",
        "_config",
        "_connection",
        "_ctx",
        "_drain_counted",
        "_idle_since",
        "_loop",
        "_timer",
        "_timer_at",
        "no_more_requests",
        "state",
    )

    def __init__(self, connection: LifecycleHost, config: HcmConfig, ctx: FilterChainContext):
        self._connection = connection
        self._config = config
        self._ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state = OPEN
        self.no_more_requests = False  # the connection closes once the responses owed are out
        self._drain_counted = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Idle since (besides the reader's `answered_at`): connected, or the last queued
        # response written.
        self._idle_since = 0.0
        self._close_timer: asyncio.TimerHandle | None = None

    # -- from the connection ---------------------------------------------------------------

    def connected(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        idle = self._config.idle_timeout_s
        if idle:
            self._idle_since = loop.time()
            self._arm_timer(self._idle_since + idle)

    def disconnected(self) -> None:
        """The transport is gone: no timer may fire any more."""
        for timer in (self._close_timer, self._timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = self._timer = None

    def handed_over(self) -> None:
        """The transport went to another protocol (HTTP/2): this connection is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = CLOSING

    def end_after_responses(self) -> None:
        """A response that ends the connection was decided: read no further request."""
        self.no_more_requests = True

    # -- from the other parts --------------------------------------------------------------

    def wants_drain_close(self) -> bool:
        """Must the response being written now carry `connection: close` for a drain?"""
        if self.state == DRAINING or self._ctx.drain_decision.drain_close():
            self._count_drain_close()
            return True
        return False

    def _count_drain_close(self) -> None:
        if not self._drain_counted:
            self._drain_counted = True
            self._config.stats.cx_drain_close.value += 1

    def responses_out(self) -> None:
        """Every response owed has been written: the connection is idle from now."""
        if self._timer is not None and self._loop is not None:
            self._idle_since = self._loop.time()

    def request_progressed(self) -> None:
        """The request being read is still incomplete after a read (the rare path): its
        timeouts start or move."""
        deadline = self._request_deadline(self._connection.reader)
        if deadline is not None:
            self._arm_timer(deadline)

    # -- the connection timer --------------------------------------------------------------

    def _request_deadline(self, request: RequestProgress) -> float | None:
        config = self._config
        deadlines = []
        if config.request_headers_timeout_s and not request.headers_done:
            deadlines.append(request.request_started + config.request_headers_timeout_s)
        if config.request_timeout_s:
            deadlines.append(request.request_started + config.request_timeout_s)
        if config.stream_idle_timeout_s:
            deadlines.append(request.last_rx + config.stream_idle_timeout_s)
        return min(deadlines) if deadlines else None

    def _arm_timer(self, when: float) -> None:
        """One timer per connection, moved only when a deadline comes earlier than it."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        self._timer = None
        connection = self._connection
        if connection.transport is None or self.state == CLOSING:
            return
        config = self._config
        now = self._loop.time()  # type: ignore[union-attr]
        reader = connection.reader
        if reader.in_request and reader.request_started:
            stats = config.stats
            started = reader.request_started
            if (
                config.request_headers_timeout_s
                and not reader.headers_done
                and now >= started + config.request_headers_timeout_s
            ):
                stats.rq_header_timeout.value += 1
                self._time_out(config.request_header_timeout_reply)
                return
            if config.request_timeout_s and now >= started + config.request_timeout_s:
                stats.rq_timeout.value += 1
                self._time_out(config.request_timeout_reply)
                return
            if (
                config.stream_idle_timeout_s
                and now >= reader.last_rx + config.stream_idle_timeout_s
            ):
                stats.rq_idle_timeout.value += 1
                self._time_out(config.stream_timeout_reply)
                return
            deadline = self._request_deadline(reader)
            if deadline is not None:
                self._arm_timer(deadline)
                return
        idle = config.idle_timeout_s
        if not idle:
            return
        if reader.in_request or connection.responses.entries:
            self._arm_timer(now + idle)  # a request or a forwarded response in flight
            return
        # The latest of the two stamps (each has its own writer): when the connection went idle.
        idle_since = max(self._idle_since, reader.answered_at)
        if now < idle_since + idle:
            self._arm_timer(idle_since + idle)
            return
        config.stats.cx_idle_timeout.value += 1
        self.begin_close()

    def _time_out(self, response: LocalResponse) -> None:
        reader = self._connection.reader
        reader.reply_error(response)
        reader.write_out_now()
        self.begin_close()

    # -- closing ---------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Half-close once flushed, then wait for the client's FIN (lingering close)."""
        transport = self._connection.transport
        if transport is None or self.state == CLOSING:
            return
        self.state = CLOSING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        delay = self._config.delayed_close_timeout_s
        if delay <= 0 or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._close_timer = self._loop.call_later(delay, self._on_delayed_close_timeout)  # type: ignore[union-attr]

    def _on_delayed_close_timeout(self) -> None:
        self._close_timer = None
        close_after_delayed_close_timeout(self._connection.transport, self._config.stats)

    def close_now(self) -> None:
        """Close without waiting for anything more (what is written is still flushed)."""
        transport = self._connection.transport
        if transport is not None:
            self.state = CLOSING
            transport.close()

    # -- drains (DrainableConnection, through the connection) ------------------------------

    def drain(self) -> None:
        """Told to leave: the next response carries `connection: close`; an idle connection is
        closed with a FIN once it has stayed idle for IDLE_CLOSE_GRACE_S more. A busy client
        is idle only between a response and its next request: closing at once would cross that
        request on the wire (the client sees EOF and must retry); within the grace it arrives
        and is answered with `connection: close` instead."""
        connection = self._connection
        if self.state != OPEN or connection.transport is None:
            return
        self.state = DRAINING
        if connection.is_idle and not connection.reader.out:
            self._loop.call_later(IDLE_CLOSE_GRACE_S, self._close_if_still_idle)  # type: ignore[union-attr]

    def _close_if_still_idle(self) -> None:
        connection = self._connection
        transport = connection.transport
        if (
            transport is not None
            and self.state == DRAINING
            and connection.is_idle
            and not connection.reader.out
            and not _request_bytes_waiting(transport)
        ):
            self._count_drain_close()
            self.begin_close()

    def close_at_deadline(self) -> None:
        """The drain window ended: flush what was already produced, then close."""
        connection = self._connection
        if connection.transport is None:
            return
        connection.reader.write_out_now()
        connection.reset_forwards()
        self.close_now()


def _request_bytes_waiting(transport: asyncio.BaseTransport) -> bool:
    """Has the client already sent bytes that the event loop has not read yet? Closing then
    would lose a request that is on its way; it is answered with `connection: close` instead."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as peek:
            return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, OSError):
        return False
