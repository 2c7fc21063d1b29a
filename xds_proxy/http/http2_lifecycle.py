"""Where one downstream HTTP/2 connection is in its life: drain (the two raw GOAWAY frames,
docs/draining.md), the lingering close, the idle and per-stream timeouts, the client's GOAWAY,
protocol errors and control-frame floods (docs/architecture.md#known-traps: the drain GOAWAYs
are raw frames written around h2). Held by `Http2Connection` (http2.py), which it sees through
`LifecycleHost`."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import h2.connection
import h2.errors
import h2.exceptions
from hyperframe.frame import GoAwayFrame

from xds_proxy.codec.h2_connection import BoundedH2Connection
from xds_proxy.http.conn_manager import HcmConfig, close_after_delayed_close_timeout
from xds_proxy.http.http2_stream import (
    CLOSING,
    CONTROL_FRAMES_PER_SECOND,
    CONTROL_FRAMES_UNREAD,
    DRAINING,
    MAX_STREAM_ID,
    OPEN,
    Http2Stream,
)
from xds_proxy.listener.context import FilterChainContext


def goaway_frame(last_stream_id: int, error_code: int = 0) -> bytes:
    """A GOAWAY frame written around h2 (which would end in-flight streams)."""
    return GoAwayFrame(
        stream_id=0, last_stream_id=last_stream_id, error_code=error_code
    ).serialize()


class LifecycleHost(Protocol):
    """The connection, as its lifecycle sees it."""

    transport: asyncio.Transport | None
    _streams: dict[int, Http2Stream]
    _h2: BoundedH2Connection

    def _flush(self) -> None: ...

    def _write_raw(self, frame: bytes) -> None: ...

    def _timeout_reply(
        self, stream_id: int, stream: Http2Stream, status: int, body: bytes
    ) -> None: ...


class Http2Lifecycle:
    """Drain state, the connection's timers (drain, lingering close, idle, stream timeouts),
    the client's GOAWAY, protocol errors and control-frame floods of one `Http2Connection`."""

    __slots__ = (
        "_close_timer",
        "_config",
        "_control_frames",
        "_control_unread",
        "_control_window_start",
        "_ctx",
        "_drain_timer",
        "_host",
        "client_gone",
        "idle_since",
        "idle_timer",
        "last_stream_id",
        "loop",
        "state",
        "stream_timer",
    )

    def __init__(self, host: LifecycleHost, config: HcmConfig, ctx: FilterChainContext) -> None:
        self._host = host
        self._config = config
        self._ctx = ctx
        self.loop: asyncio.AbstractEventLoop | None = None
        self.state = OPEN
        self.last_stream_id = MAX_STREAM_ID  # what the latest GOAWAY promised to process
        self._drain_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.stream_timer: asyncio.TimerHandle | None = None
        self._control_window_start = 0.0
        self._control_frames = 0
        self._control_unread = 0
        self.client_gone = False  # the client sent GOAWAY: close once its streams are done

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.start_idle_timer()

    def stop(self) -> None:
        for timer in (self._drain_timer, self._close_timer, self.idle_timer, self.stream_timer):
            if timer is not None:
                timer.cancel()
        self._drain_timer = self._close_timer = self.idle_timer = self.stream_timer = None

    # -- drain (DrainableConnection) -------------------------------------------------------

    def on_drain(self) -> None:
        """Told on the idle schedule: active or idle, the client gets the first GOAWAY now."""
        if self.state == OPEN and self._host.transport is not None:
            self.start_drain()
            self._host._flush()

    def close_at_deadline(self) -> None:
        transport = self._host.transport
        if transport is None:
            return
        if self.state != CLOSING:
            self._final_goaway()
        self._host._flush()
        transport.close()

    def start_drain(self) -> None:
        """GOAWAY(2^31-1, NO_ERROR) now; the final GOAWAY exactly `drain_timeout` later."""
        self.state = DRAINING
        self._config.stats.cx_drain_close.value += 1
        self._host._write_raw(goaway_frame(MAX_STREAM_ID))
        self._drain_timer = self.loop.call_later(  # type: ignore[union-attr]
            self._config.drain_timeout_s, self._on_drain_timeout
        )

    def _on_drain_timeout(self) -> None:
        self._drain_timer = None
        if self._host.transport is None or self.state == CLOSING:
            return
        self._final_goaway()
        if not self._host._streams:
            self.schedule_close()

    def _final_goaway(self) -> None:
        self.state = CLOSING
        self.last_stream_id = self._host._h2.highest_inbound_stream_id
        self._host._write_raw(goaway_frame(self.last_stream_id))
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def schedule_close(self) -> None:
        """No stream is active after the final GOAWAY: close after `delayed_close_timeout`
        unless the client closes first (Envoy's FlushWriteAndDelay)."""
        if self._close_timer is not None or self._host.transport is None:
            return
        delay = self._config.delayed_close_timeout_s
        if delay <= 0:
            self._host._flush()
            self._host.transport.close()
            return
        self._close_timer = self.loop.call_later(delay, self._on_delayed_close)  # type: ignore[union-attr]

    def _on_delayed_close(self) -> None:
        self._close_timer = None
        close_after_delayed_close_timeout(self._host.transport, self._config.stats)

    # -- stream timeouts -------------------------------------------------------------------

    def _stream_deadline(self, stream: Http2Stream) -> float | None:
        config = self._config
        deadlines = []
        if config.stream_idle_timeout_s:
            deadlines.append(stream.last_rx + config.stream_idle_timeout_s)
        if config.request_timeout_s:
            deadlines.append(stream.started + config.request_timeout_s)
        return min(deadlines) if deadlines else None

    def arm_stream_timer(self) -> None:
        """One timer per connection for `stream_idle_timeout` and `request_timeout` of
        requests still being received (answered ones and forwarded ones are not timed here;
        an exchange has its route timeout)."""
        config = self._config
        timeouts = [t for t in (config.stream_idle_timeout_s, config.request_timeout_s) if t]
        if not timeouts:
            return
        first = min(timeouts)
        self.stream_timer = self.loop.call_later(first, self._on_stream_timer)  # type: ignore[union-attr]

    def _on_stream_timer(self) -> None:
        self.stream_timer = None
        if self._host.transport is None:
            return
        now = self.loop.time()  # type: ignore[union-attr]
        config = self._config
        earliest: float | None = None
        for stream_id, stream in list(self._host._streams.items()):
            if stream.responded or stream.exchange is not None:
                continue
            deadline = self._stream_deadline(stream)
            if deadline is None:
                continue
            if deadline > now:
                earliest = deadline if earliest is None else min(earliest, deadline)
                continue
            idle = config.stream_idle_timeout_s
            if idle and now >= stream.last_rx + idle:
                config.stats.rq_idle_timeout.value += 1
                reply = config.stream_timeout_reply
            else:
                config.stats.rq_timeout.value += 1
                reply = config.request_timeout_reply
            self._host._timeout_reply(stream_id, stream, reply.status, reply.body)
        if earliest is not None:
            self.stream_timer = self.loop.call_at(earliest, self._on_stream_timer)  # type: ignore[union-attr]
        self._host._flush()

    # -- idle timeout ----------------------------------------------------------------------

    def start_idle_timer(self) -> None:
        idle = self._config.idle_timeout_s
        if idle:
            self.idle_since = self.loop.time()  # type: ignore[union-attr]
            self.idle_timer = self.loop.call_later(idle, self._on_idle_timer)  # type: ignore[union-attr]

    def _on_idle_timer(self) -> None:
        """Envoy's idle_timeout on a codec connection runs the drain sequence."""
        self.idle_timer = None
        idle = self._config.idle_timeout_s
        if self._host.transport is None or not idle or self.state == CLOSING:
            return
        now = self.loop.time()  # type: ignore[union-attr]
        if self._host._streams or not self.idle_since or now < self.idle_since + idle:
            since = self.idle_since if self.idle_since and not self._host._streams else now
            self.idle_timer = self.loop.call_at(since + idle, self._on_idle_timer)  # type: ignore[union-attr]
            return
        self._config.stats.cx_idle_timeout.value += 1
        if self.state == OPEN:
            self.start_drain()
        self._final_goaway()
        self._host._flush()
        self.schedule_close()

    def on_client_goaway(self, error_code: int) -> None:
        """The client opens no more streams: those it has still get their responses (with
        NO_ERROR), then the connection closes; an error GOAWAY ends it at once."""
        if error_code or not self._host._streams:
            self._host._flush()
            self.close_now()
        else:
            self.client_gone = True

    # -- errors and floods -----------------------------------------------------------------

    def protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        self._config.stats.cx_protocol_error.value += 1
        if self._host._h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
            # h2 queued its own GOAWAY for this one (frame size, padding errors).
            self._host._flush()
            self.close_now()
            return
        code = getattr(error, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.abort(code)

    def control_frame_flood(self, count: int) -> bool:
        """Count PING / SETTINGS frames (each needs an ACK from us) before h2 answers them;
        True if this is a flood and the connection is being closed."""
        transport = self._host.transport
        if transport is None:
            return True
        now = time.monotonic()
        if now - self._control_window_start >= 1.0:
            self._control_window_start = now
            self._control_frames = 0
        self._control_frames += count
        if transport.get_write_buffer_size():
            self._control_unread += count  # our earlier ACKs are not read yet
        else:
            self._control_unread = 0
        if (
            self._control_frames > CONTROL_FRAMES_PER_SECOND
            or self._control_unread > CONTROL_FRAMES_UNREAD
        ):
            self.count("http2.inbound_control_flood")
            self.abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        return False

    def abort(self, error_code: int) -> None:
        """End the connection now with GOAWAY(error_code); only this connection suffers."""
        transport = self._host.transport
        if transport is None:
            return
        self._host._flush()
        transport.write(goaway_frame(self._host._h2.highest_inbound_stream_id, int(error_code)))
        self.close_now()

    def close_now(self) -> None:
        transport = self._host.transport
        if transport is not None:
            self.state = CLOSING
            transport.close()

    def count(self, name: str) -> None:
        """A rare-path counter `http.<stat_prefix>.<name>`."""
        self._ctx.stats.counter(f"http.{self._config.stat_prefix}.{name}").value += 1
