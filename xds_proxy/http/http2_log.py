"""Access-log records of HTTP/2 streams (only with an access_log configured): begun at the
request headers, completed by the stream's exchange when it is forwarded, else here when the
stream ends (a local reply: 404, direct response, redirect, timeout)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xds_proxy.access_log.record import Downstream, LogRecord
from xds_proxy.http.router import DirectResponseAction

if TYPE_CHECKING:
    from xds_proxy.http.conn_manager import HcmConfig


def downstream(transport: Any) -> Downstream:
    """The connection's addresses, as its records print them (made once per connection)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    local = transport.get_extra_info("sockname") if transport is not None else None
    return Downstream(peer, local)


def begin(
    config: HcmConfig,
    downstream: Downstream,
    headers: Sequence[tuple[bytes, bytes]],
    ended: bool,
) -> LogRecord:
    """A stream's record from its request headers."""
    record = LogRecord(downstream)  # (it reads the clocks)
    record.took_headers(headers, "HTTP/2", b"http", config.proxy_policy)
    if ended:
        record.request_end = record.start
    return record


def received(record: LogRecord, size: int, ended: bool) -> None:
    record.bytes_received += size
    if ended:
        record.request_end = time.monotonic()


def timed_out(record: LogRecord, status: int, body: bytes, server: bytes, idle: bool) -> None:
    record.local_reply(status, len(body), server)
    record.bytes_sent = len(body)
    if idle:
        record.flags, record.details = "SI", "stream_idle_timeout"
    else:
        record.details = "request_overall_timeout"


def local_done(config: HcmConfig, record: LogRecord, action: object, head_only: bool) -> None:
    """A stream answered here has ended: log it."""
    if record.status:  # (a timeout's reply: timed_out)
        record.end = time.monotonic()
    else:
        route_name = None
        if type(action) is DirectResponseAction:
            status, body = action.response.status, len(action.response.body)
            details, route_name = "direct_response", action.route_name
        elif action is None:
            status, body, details = 404, 0, "route_not_found"
            record.flags = "NR"
        else:
            status, body, details = action.status, 0, "direct_response"  # type: ignore[attr-defined]
            route_name = action.route_name  # type: ignore[attr-defined]
        sent = 0 if head_only else body
        record.answered_here(status, body, record.server, details, route_name, sent, False)
    config.access_log.log(record)  # type: ignore[union-attr]


def reset(config: HcmConfig, record: LogRecord) -> None:
    """The client reset (RST_STREAM) a stream answered here before its response was out:
    Envoy 1.40 logs it with no flag and no details."""
    record.end = time.monotonic()
    config.access_log.log(record)  # type: ignore[union-attr]


def gone(config: HcmConfig, record: LogRecord) -> None:
    """The connection closed under a stream answered here before its response was out."""
    record.flags, record.details = "DC", "downstream_remote_disconnect"
    record.end = time.monotonic()
    config.access_log.log(record)  # type: ignore[union-attr]
