"""What an HTTP/2 request goes through before routing when its HCM asks for it (only then:
`HcmConfig.checks_requests`): `headers_with_underscores_action` (DROP_HEADER drops such
headers, REJECT_REQUEST resets the stream with INTERNAL_ERROR, as Envoy's HTTP/2 codec does)
and the path rules (http/path_normalization.py: a 400 or a 307 answered at once, with
Envoy's headers for them: no `content-length`)."""

from __future__ import annotations

import time
from typing import Any

import h2.connection
import h2.errors

from xds_proxy.access_log.record import LogRecord
from xds_proxy.codec.responses import HTTP_DATE
from xds_proxy.config.hcm import Underscores
from xds_proxy.http import http2_log
from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.http.path_normalization import (
    FRAGMENT_MARK,
    PATH_NORMALIZATION_FAILED,
    PathOutcome,
)

Headers = list[tuple[bytes, bytes]]


def checked_request(
    config: HcmConfig,
    conn: h2.connection.H2Connection,
    transport: Any,
    stream_id: int,
    headers: Headers,
    path: bytes,
    ended: bool,
) -> tuple[Headers, bytes] | None:
    """The request's headers and path as routing sees them, or None when it was answered
    (or reset) here."""
    if config.underscores is not None and any(b"_" in name for name, _ in headers):
        stats = config.stats
        if config.underscores is Underscores.DROP_HEADER:
            kept = [(name, value) for name, value in headers if b"_" not in name]
            stats.h2_underscores_dropped.value += len(headers) - len(kept)  # type: ignore[union-attr]
            headers = kept
        else:
            stats.h2_underscores_rejected.value += 1  # type: ignore[union-attr]
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            if config.access_log is not None:
                _log_refused(config, transport)
            return None
    if FRAGMENT_MARK in path:
        _path_reply(config, conn, transport, stream_id, headers, path, PathOutcome.REJECT, ended)
        return None
    rules = config.path_rules
    if rules is not None:
        outcome, path = rules.apply(path)
        if outcome is not PathOutcome.CONTINUE:
            _path_reply(config, conn, transport, stream_id, headers, path, outcome, ended)
            return None
    return headers, path


def _path_reply(
    config: HcmConfig,
    conn: h2.connection.H2Connection,
    transport: Any,
    stream_id: int,
    headers: Headers,
    path: bytes,
    outcome: PathOutcome,
    ended: bool,
) -> None:
    stats = config.stats
    if outcome is PathOutcome.REDIRECT:
        status = 307
        stats.rq_redirected_with_normalized_path.value += 1
        out = [(b":status", b"307"), (b"location", path)]
    else:
        status = 400
        stats.rq_failed_path_normalization.value += 1
        out = [(b":status", b"400")]
    out.append((b"date", HTTP_DATE.now()))
    if config.server_name:
        out.append((b"server", config.server_name.encode("latin-1")))
    stats.rq_by_class[status // 100].value += 1
    conn.send_headers(stream_id, out, end_stream=True)
    if config.access_log is not None:
        record = http2_log.begin(config, http2_log.downstream(transport), headers, ended)
        record.path = path
        record.details = PATH_NORMALIZATION_FAILED
        record.local_reply(status, 0, record.server)
        record.end = time.monotonic()
        config.access_log.log(record)


def _log_refused(config: HcmConfig, transport: Any) -> None:
    """A stream the codec refused: no request fields, flag DR, as Envoy logs it."""
    record = LogRecord(http2_log.downstream(transport))
    record.protocol = "HTTP/2"
    record.flags, record.details = "DR", "http2.unexpected_underscore"
    record.end = record.start
    config.access_log.log(record)  # type: ignore[union-attr]
