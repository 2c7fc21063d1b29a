"""What one HTTP/2 stream keeps until its response is complete, and the constants the parts
of `Http2Connection` share (`http2.py`, `http2_replies.py`, `http2_lifecycle.py`,
`http2_forward.py`)."""

from __future__ import annotations

import h2.config

from xds_proxy.access_log.record import LogRecord
from xds_proxy.http.conn_manager import DrainState
from xds_proxy.http.router import RouteTable
from xds_proxy.upstream.forward import Exchange

MAX_STREAM_ID = 2**31 - 1
# The protocol's initial windows, before SETTINGS and WINDOW_UPDATE change them.
DEFAULT_WINDOW = 65535
# Rapid reset (CVE-2023-44487): once this many streams have closed on a connection, a
# connection where at least half of them were reset by the client before their response
# completed is closed (Envoy's premature-reset rule, same ratio).
PREMATURE_RESET_MIN_STREAMS = 200
# SETTINGS / PING floods: control frames we must acknowledge, per connection.
CONTROL_FRAMES_PER_SECOND = 2000  # a reading client that pings without end
CONTROL_FRAMES_UNREAD = 1000  # acknowledgements piling up unread in our write buffer

OPEN = int(DrainState.NOT_DRAINING)
DRAINING = int(DrainState.DRAINING)  # first GOAWAY sent, new streams still served
CLOSING = int(DrainState.CLOSING)  # final GOAWAY sent, close once no stream is active

NO_BODY_STATUSES = frozenset({204, 304})
# Inbound headers are validated by h2; outbound ones are ours (built from validated input),
# and skipping their validation saves about a tenth of the per-request cost.
H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


NOT_ROUTED = object()
ANSWERED = object()  # a whole request answered without h2
LEARN = object()  # a whole request whose header block h2 must decode first
# A forwarded response body buffered beyond this (the client's windows are closed) pauses
# the upstream until it drains.
RESPONSE_BUFFER_LIMIT = 1 << 20
# One read can hold thousands of HEADERS frames: the connection is fed this much at a time,
# and no more while the client's socket is full (the rest waits, unparsed, as in http1.py).
PARSE_SLICE = 4 * 1024
# What a stream whose response waits for the client's flow-control windows is charged against
# the connection's buffer limit: its state here and in h2 (a local reply's body is shared by
# all its streams; a forwarded one pauses its upstream at RESPONSE_BUFFER_LIMIT).
BLOCKED_STREAM_COST = 4 * 1024

LocalReply = tuple[int, bytes, tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...]]


class Http2Stream:
    """What we keep of a request until its response is complete."""

    __slots__ = (
        "action",
        "authority",
        "body_complete",
        "exchange",
        "headers",
        "last_rx",
        "method",
        "path",
        "paused",
        "pending",
        "record",
        "responded",
        "response_paused",
        "routes",
        "started",
        "trailers",
        "withheld",
    )

    def __init__(
        self, method: bytes, authority: bytes, path: bytes, headers: list, routes: RouteTable
    ) -> None:
        self.method = method
        self.authority = authority
        self.path = path
        self.headers = headers
        self.action: object = NOT_ROUTED
        self.pending = b""  # response body not yet allowed by flow control
        self.body_complete = True  # the response body ends with `pending` (local replies)
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after `pending`
        self.responded = False  # response headers sent
        self.exchange: Exchange | None = None  # set when the request is forwarded upstream
        self.paused = False  # the upstream does not take the request body fast enough
        self.withheld = 0  # flow-control credit held back from the client while paused
        self.response_paused = False  # the upstream was asked to pause the response
        self.started = 0.0  # loop time of the request headers (request_timeout)
        self.last_rx = 0.0  # loop time of the latest request frame (stream_idle_timeout)
        self.routes = routes  # the table this request is routed with (read once)
        self.record: LogRecord | None = None  # the access-log record (http2_log.py)
