"""Where one downstream HTTP/2 connection is in its life: drain (the two raw GOAWAY frames,
docs/draining.md), the lingering close, the idle and per-stream timeouts, the client's GOAWAY,
protocol errors and control-frame floods, and the raw writes around h2
(docs/architecture.md#known-traps). A part of `Http2Connection` (http2.py), on the same
object: it reads the connection's streams, h2 connection and transport."""

from __future__ import annotations

import time

import h2.connection
import h2.errors
import h2.exceptions
from hyperframe.frame import GoAwayFrame

from xds_proxy.http.conn_manager import close_after_delayed_close_timeout
from xds_proxy.http.http2_stream import (
    CLOSING,
    CONTROL_FRAMES_PER_SECOND,
    CONTROL_FRAMES_UNREAD,
    DRAINING,
    MAX_STREAM_ID,
    OPEN,
    Http2Stream,
)


def goaway_frame(last_stream_id: int, error_code: int = 0) -> bytes:
    """A GOAWAY frame written around h2 (which would end in-flight streams)."""
    return GoAwayFrame(
        stream_id=0, last_stream_id=last_stream_id, error_code=error_code
    ).serialize()


class Http2Lifecycle:
    """Drain, close, timeouts, floods and raw output of `Http2Connection` (a base class of
    it: the methods below run on the connection)."""

    # -- drain (DrainableConnection) -------------------------------------------------------

    def on_drain(self) -> None:
        """Told on the idle schedule: active or idle, the client gets the first GOAWAY now."""
        if self._state == OPEN and self.transport is not None:
            self._start_drain()
            self._flush()

    def close_at_deadline(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._state != CLOSING:
            self._final_goaway()
        self._flush()
        transport.close()

    def _start_drain(self) -> None:
        """GOAWAY(2^31-1, NO_ERROR) now; the final GOAWAY exactly `drain_timeout` later."""
        self._state = DRAINING
        self._config.stats.cx_drain_close.value += 1
        self._write_raw(goaway_frame(MAX_STREAM_ID))
        self._drain_timer = self._loop.call_later(  # type: ignore[union-attr]
            self._config.drain_timeout_s, self._on_drain_timeout
        )

    def _on_drain_timeout(self) -> None:
        self._drain_timer = None
        if self.transport is None or self._state == CLOSING:
            return
        self._final_goaway()
        if not self._streams:
            self._schedule_close()

    def _final_goaway(self) -> None:
        self._state = CLOSING
        self._last_stream_id = self._h2.highest_inbound_stream_id
        self._write_raw(goaway_frame(self._last_stream_id))
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _schedule_close(self) -> None:
        """No stream is active after the final GOAWAY: close after `delayed_close_timeout`
        unless the client closes first (Envoy's FlushWriteAndDelay)."""
        if self._close_timer is not None or self.transport is None:
            return
        delay = self._config.delayed_close_timeout_s
        if delay <= 0:
            self._flush()
            self.transport.close()
            return
        self._close_timer = self._loop.call_later(delay, self._on_delayed_close)  # type: ignore[union-attr]

    def _on_delayed_close(self) -> None:
        self._close_timer = None
        close_after_delayed_close_timeout(self.transport, self._config.stats)

    # -- stream timeouts -------------------------------------------------------------------

    def _stream_deadline(self, stream: Http2Stream) -> float | None:
        config = self._config
        deadlines = []
        if config.stream_idle_timeout_s:
            deadlines.append(stream.last_rx + config.stream_idle_timeout_s)
        if config.request_timeout_s:
            deadlines.append(stream.started + config.request_timeout_s)
        return min(deadlines) if deadlines else None

    def _arm_stream_timer(self) -> None:
        """One timer per connection for `stream_idle_timeout` and `request_timeout` of
        requests still being received (answered ones and forwarded ones are not timed here;
        an exchange has its route timeout)."""
        config = self._config
        timeouts = [t for t in (config.stream_idle_timeout_s, config.request_timeout_s) if t]
        if not timeouts:
            return
        first = min(timeouts)
        self._stream_timer = self._loop.call_later(first, self._on_stream_timer)  # type: ignore[union-attr]

    def _on_stream_timer(self) -> None:
        self._stream_timer = None
        if self.transport is None:
            return
        now = self._loop.time()  # type: ignore[union-attr]
        config = self._config
        earliest: float | None = None
        for stream_id, stream in list(self._streams.items()):
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
            self._timeout_reply(stream_id, stream, reply.status, reply.body)
        if earliest is not None:
            self._stream_timer = self._loop.call_at(earliest, self._on_stream_timer)  # type: ignore[union-attr]
        self._flush()

    # -- idle timeout ----------------------------------------------------------------------

    def _start_idle_timer(self) -> None:
        idle = self._config.idle_timeout_s
        if idle:
            self._idle_since = self._loop.time()  # type: ignore[union-attr]
            self._idle_timer = self._loop.call_later(idle, self._on_idle_timer)  # type: ignore[union-attr]

    def _on_idle_timer(self) -> None:
        """Envoy's idle_timeout on a codec connection runs the drain sequence."""
        self._idle_timer = None
        idle = self._config.idle_timeout_s
        if self.transport is None or not idle or self._state == CLOSING:
            return
        now = self._loop.time()  # type: ignore[union-attr]
        if self._streams or not self._idle_since or now < self._idle_since + idle:
            since = self._idle_since if self._idle_since and not self._streams else now
            self._idle_timer = self._loop.call_at(since + idle, self._on_idle_timer)  # type: ignore[union-attr]
            return
        self._config.stats.cx_idle_timeout.value += 1
        if self._state == OPEN:
            self._start_drain()
        self._final_goaway()
        self._flush()
        self._schedule_close()

    def _on_client_goaway(self, error_code: int) -> None:
        """The client opens no more streams: those it has still get their responses (with
        NO_ERROR), then the connection closes; an error GOAWAY ends it at once."""
        if error_code or not self._streams:
            self._flush()
            self._close_now()
        else:
            self._client_gone = True

    # -- errors and floods -----------------------------------------------------------------

    def _protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        self._config.stats.cx_protocol_error.value += 1
        if self._h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
            # h2 queued its own GOAWAY for this one (frame size, padding errors).
            self._flush()
            self._close_now()
            return
        code = getattr(error, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._abort(code)

    def _control_frame_flood(self, count: int) -> bool:
        """Count PING / SETTINGS frames (each needs an ACK from us) before h2 answers them;
        True if this is a flood and the connection is being closed."""
        transport = self.transport
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
            self._count("http2.inbound_control_flood")
            self._abort(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        return False

    def _abort(self, error_code: int) -> None:
        """End the connection now with GOAWAY(error_code); only this connection suffers."""
        transport = self.transport
        if transport is None:
            return
        self._flush()
        transport.write(goaway_frame(self._h2.highest_inbound_stream_id, int(error_code)))
        self._close_now()

    def _close_now(self) -> None:
        transport = self.transport
        if transport is not None:
            self._state = CLOSING
            transport.close()

    def _count(self, name: str) -> None:
        """A rare-path counter `http.<stat_prefix>.<name>`."""
        self._ctx.stats.counter(f"http.{self._config.stat_prefix}.{name}").value += 1

    # -- output ----------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _write_raw(self, frame: bytes) -> None:
        """A frame of ours, after everything h2 has queued so far."""
        if self.transport is None:
            return
        data = self._h2.data_to_send()
        self.transport.write(data + frame if data else frame)
