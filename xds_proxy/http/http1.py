"""HTTP/1.1 server connection (httptools) for the HTTP connection manager.

Requests are answered when they are complete, in order, so pipelined requests get their
responses in sequence; responses produced while one read chunk is parsed go out in one write.
Drain behaviour follows docs/draining.md: a response that tells the client to go
away carries `connection: close`, then our side is half-closed once flushed and we linger up
to `delayed_close_timeout` for the client's FIN.

The per-request path is kept short on purpose (`make bench` compares it with Envoy): no
per-request timers (one lazy timer per connection covers the idle and request timeouts),
cached routing by raw host and URL, pre-rendered responses, plain attribute counters.

Requests routed to clusters (`route` actions) are matched when their headers are complete
and forwarded through an `Exchange` (xds_proxy/upstream/forward.py) whose body streams both
ways with back-pressure; their responses (`Http1ForwardSink`) keep request order with the
local ones through a small output queue, and no pipelined request is parsed before a pending
forwarded response is out.

`Http1Connection` is the asyncio protocol; it ties together the parts that own the state:

- `Http1RequestReader` (http1_reader.py): the httptools callbacks, the request being read,
  routing and local responses;
- `Http1ResponseQueue` (http1_response_queue.py): request order while a forwarded response
  is in flight;
- `Http1Backpressure` (http1_backpressure.py): why reading is paused, the input held unparsed;
- `Http1Lifecycle` (http1_lifecycle.py): drain state, the idle and request timers, the
  lingering close;
- `PrefaceSniffer` (http1_h2c.py): codec AUTO's hand-over to HTTP/2.
"""

from __future__ import annotations

import asyncio

from xds_proxy.access_log.record import LogRecord
from xds_proxy.config.hcm import Codec
from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.http.http1_backpressure import PARSE_SLICE, PAUSE_WRITING, Http1Backpressure
from xds_proxy.http.http1_h2c import PrefaceSniffer, is_http2, start_http2
from xds_proxy.http.http1_lifecycle import CLOSING, Http1Lifecycle
from xds_proxy.http.http1_reader import Http1RequestReader
from xds_proxy.http.http1_response_queue import Http1ResponseQueue
from xds_proxy.http.http1_upgrade import UpgradeSink, start_tunnel
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.upstream.forward import Exchange
from xds_proxy.upstream.http1_response import Http1ForwardSink


class Http1Connection(asyncio.Protocol):
    """One downstream HTTP/1.1 connection. The transport is its own; the parts reach it
    through here."""

    ACCESS_LOG_PROTOCOL = "HTTP/1.1"  # PROTOCOL in a listener's connection-level access log

    __slots__ = (
        "_config",
        "_ctx",
        "_sniffer",
        "backpressure",
        "lifecycle",
        "reader",
        "responses",
        "transport",
    )

    def __init__(self, config: HcmConfig, ctx: FilterChainContext) -> None:
        self._config = config
        self._ctx = ctx
        self.transport: asyncio.Transport | None = None
        # Codec AUTO: set until the first bytes tell HTTP/1.1 from HTTP/2.
        self._sniffer = PrefaceSniffer() if config.codec is Codec.AUTO else None
        self.backpressure = Http1Backpressure(self)
        self.lifecycle = Http1Lifecycle(self, config, ctx)
        self.responses = Http1ResponseQueue(
            self, config.stats, config.server_name, self.lifecycle, self.backpressure
        )
        self.reader = Http1RequestReader(
            self, config, ctx, self.lifecycle, self.responses, self.backpressure, self._upgraded
        )

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self._config.stats
        stats.cx_total.value += 1
        stats.cx_active.value += 1
        stats.cx_http1_total.value += 1
        stats.cx_http1_active.value += 1
        loop = asyncio.get_running_loop()
        self._ctx.register(self)
        self.reader.connected(loop)
        self.lifecycle.connected(loop)

    def data_received(self, data: bytes) -> None:
        lifecycle = self.lifecycle
        if lifecycle.state == CLOSING:
            return  # lingering close: discard what the client still sends
        backpressure = self.backpressure
        if backpressure.held is not None:
            # A forwarded response is pending, or the client is not reading our answers:
            # pipelined bytes wait (reading goes on, so a client that goes away is still
            # noticed, up to a bound).
            backpressure.hold(data)
            return
        if self._sniffer is not None:
            sniffed = self._sniffer.feed(data)
            if sniffed is None:
                return
            self._sniffer = None
            if is_http2(sniffed):
                self._hand_over_to_http2(sniffed)
                return
            data = sniffed
        if backpressure.write_paused:
            backpressure.hold(data)
            return
        reader = self.reader
        if len(data) <= PARSE_SLICE:
            reader.feed(data)
            return
        view = memoryview(data)
        reader.feed(view[:PARSE_SLICE])
        for start in range(PARSE_SLICE, len(data), PARSE_SLICE):
            if lifecycle.state == CLOSING or self.transport is None or lifecycle.no_more_requests:
                if reader.upgrade is not None and self.transport is not None:
                    # An upgrade: what follows is its bytes, for the tunnel now reading.
                    self.transport.get_protocol().data_received(data[start:])
                return  # the parser has stopped: what follows is never read
            if backpressure.held is not None or backpressure.write_paused:
                backpressure.hold(data[start:])
                return
            reader.feed(view[start : start + PARSE_SLICE])

    def eof_received(self) -> bool:
        # Every complete request has been answered in data_received; a half-closed client
        # sends nothing more, so close once our writes are flushed.
        return False

    def pause_writing(self) -> None:
        self.backpressure.writing_paused()
        self.responses.pause_head()

    def resume_writing(self) -> None:
        backpressure = self.backpressure
        backpressure.write_paused = False
        closing = self.lifecycle.state == CLOSING
        if backpressure.held is not None and not self.responses.entries and not closing:
            self.release_held()  # may fill the client's socket (and pause writing) again
        if self.lifecycle.state != CLOSING and not backpressure.write_paused:
            backpressure.resume_reading(PAUSE_WRITING)
        if not backpressure.write_paused:
            self.responses.resume_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lifecycle.disconnected()
        stats = self._config.stats
        stats.cx_active.value -= 1
        stats.cx_http1_active.value -= 1
        stats.cx_destroy.value += 1
        self.reader.connection_lost()
        self.reset_forwards()
        self._ctx.unregister(self)
        self.transport = None

    # -- drain hooks (DrainableConnection) -------------------------------------------------

    @property
    def is_idle(self) -> bool:
        """Between requests of a keep-alive connection: a drain may close it at once.

        A connection that has not sent its first request yet is not idle: its client has just
        connected and is about to send, and closing it would lose that request; it is answered
        with `connection: close` instead."""
        reader = self.reader
        return (
            reader.answered
            and not reader.in_request
            and not self.responses.entries
            and self.backpressure.held is None  # requests read but not parsed yet are not idle
            and self.lifecycle.state != CLOSING
        )

    def on_drain(self) -> None:
        self.lifecycle.drain()

    def close_at_deadline(self) -> None:
        self.lifecycle.close_at_deadline()

    # -- between the parts -----------------------------------------------------------------

    def release_held(self) -> None:
        """Parse what was held back (it may be held again at once)."""
        held = self.backpressure.take_held()
        if held:
            self.data_received(held)

    def reset_forwards(self, except_sink: Http1ForwardSink | None = None) -> None:
        """The connection is going away: cancel every forwarded request still in flight."""
        self.reader.reset_exchange()
        self.responses.reset(except_sink)

    def _upgraded(
        self, exchange: Exchange, sink: UpgradeSink, record: LogRecord | None, tail: bytes
    ) -> None:
        """An allowed upgrade's head is parsed: a tunnel takes the transport over."""
        start_tunnel(self, exchange, sink, self._config, record, tail)

    def _hand_over_to_http2(self, data: bytes) -> None:
        """The transport moves to an `Http2Connection`, which counts and registers itself
        (before this one unregisters, so a draining chain never looks empty meanwhile)."""
        stats = self._config.stats
        stats.cx_total.value -= 1
        stats.cx_active.value -= 1
        stats.cx_http1_total.value -= 1
        stats.cx_http1_active.value -= 1
        self.lifecycle.handed_over()
        transport = self.transport
        assert transport is not None
        self.transport = None
        successor = start_http2(self._config, self._ctx, transport)
        self._ctx.unregister(self)
        self._ctx.handed_over()
        successor.data_received(data)
