"""Text access-log formats, compiled once per config into a program that the compiled core
(native.pyx `TextLine`) runs per request: a request pays only for the operators its format
names and nothing per operator that can be done at config time.

Each operator prints what its getter gives, as bytes (header values as they came, text as
UTF-8; `-` or, with omit_empty_values, nothing for no value; `max_length` cuts the bytes, as
Envoy cuts its string): tests/unit/test_access_log_compiled.py checks that against a plain
renderer made from the getters, over random records.

Operators read straight from the record: REQ (pseudo-headers from the record, the other names
found in one pass over the request's headers; x-request-id made when the HCM makes ids,
x-forwarded-proto falling back to the scheme), the numbers, the texts, the durations and
START_TIME (its text kept per tick: a millisecond by default). The others go through their
getter (getters.py).
"""

from __future__ import annotations

from collections.abc import Callable

from xds_proxy.access_log.getters import getter, response_bytes
from xds_proxy.access_log.native import LOCAL_REPLY_HEADERS, LogRecord, TextLine
from xds_proxy.access_log.times import time_bytes
from xds_proxy.access_log.writer import LogFile
from xds_proxy.config.access_log import Command, Template

Line = Callable[[LogRecord], bytes]
Log = Callable[[LogRecord], None]
Step = tuple[str, object, object, "int | None"]

# Operators read straight from a record field: a number (always set), a text (None or ""
# print the empty marker; RESPONSE_FLAGS prints `-` even with omit_empty_values), a duration
# in ms between two monotonic times.
_NUMBERS = {
    "RESPONSE_CODE": "status",
    "BYTES_RECEIVED": "bytes_received",
    "BYTES_SENT": "bytes_sent",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": "attempt_count",
}
_TEXTS = {
    "PROTOCOL": "protocol",
    "RESPONSE_CODE_DETAILS": "details",
    "UPSTREAM_HOST": "upstream_host",
    "UPSTREAM_REMOTE_ADDRESS": "upstream_remote",
    "UPSTREAM_CLUSTER": "upstream_cluster",
    "UPSTREAM_LOCAL_ADDRESS": "upstream_local",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": "upstream_failure",
    "CONNECTION_TERMINATION_DETAILS": "termination",
    "ROUTE_NAME": "route_name",
}
_DURATIONS = {
    "DURATION": ("start", "end"),
    "REQUEST_DURATION": ("start", "request_end"),
    "RESPONSE_DURATION": ("start", "first_upstream_rx"),
    "RESPONSE_TX_DURATION": ("first_upstream_rx", "end"),
}


def _step(command: Command, empty: bytes) -> Step:
    name, limit = command.name, command.max_length
    if name == "REQ":
        alternative = command.alternative.encode("latin-1") if command.alternative else None
        return ("request", command.main.encode("latin-1"), alternative, limit)
    if name in _NUMBERS:
        return ("number", _NUMBERS[name], None, limit)
    if name == "RESPONSE_FLAGS":
        return ("flags", None, None, limit)
    if name in _TEXTS:
        return ("text", _TEXTS[name], None, limit)
    if name in _DURATIONS:
        start, end = _DURATIONS[name]
        return ("duration", start, end, limit)
    if name == "START_TIME":
        text, scale = time_bytes(command.main)
        return ("time", text, scale, limit)
    if name == "RESP":
        names = {command.main.encode("latin-1"), command.alternative.encode("latin-1")} - {b""}
        # Not a header of a local reply: without response headers, nothing to look for.
        return ("response", response_bytes(command), bool(names & LOCAL_REPLY_HEADERS), limit)
    if name == "TRAILER":
        return ("response", response_bytes(command), True, limit)
    return ("call", _bytes_getter(command, empty), None, limit)


def _bytes_getter(command: Command, empty: bytes) -> Line:
    """An operator without a fast form, through its getter: the value's text as UTF-8, or
    the empty marker."""
    get = getter(command)

    def value(record: LogRecord) -> bytes:
        found = get(record)
        if found is None:
            return empty
        return (found if type(found) is str else str(found)).encode()

    return value


def _text_line(template: Template, omit_empty: bool, sink: LogFile | None) -> TextLine:
    empty = b"" if omit_empty else b"-"
    program = [
        ("literal", piece.encode(), None, None) if isinstance(piece, str) else _step(piece, empty)
        for piece in template
    ]
    return TextLine(program, empty, sink)


def compile_text(template: Template, omit_empty: bool = False) -> Line:
    """A text template as a function returning the line as bytes."""
    return _text_line(template, omit_empty, None).line


def compile_text_logger(template: Template, omit_empty: bool, sink: LogFile) -> Log:
    """A text template as a function writing the line to `sink` (its buffer, then its
    trigger: writer.py)."""
    return _text_line(template, omit_empty, sink).log
