"""What each command operator reads from a finished record, as a Python value (str, int or
None): the JSON formats use these getters, and so does a text format for the operators it
does not write inline (text.py). Header values are decoded latin-1 (the bytes as they came).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from xds_proxy.access_log.record import PIPE_PORT, LogRecord, request_id
from xds_proxy.access_log.times import time_text
from xds_proxy.codec.forwarded_for import last_xff_address
from xds_proxy.config.access_log import Command

Getter = Callable[[LogRecord], "str | int | None"]

NUMERIC = frozenset(
    {
        "RESPONSE_CODE",
        "BYTES_RECEIVED",
        "BYTES_SENT",
        "DURATION",
        "REQUEST_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
        "DOWNSTREAM_REMOTE_PORT",
        "DOWNSTREAM_LOCAL_PORT",
    }
)


# -- request and response headers ------------------------------------------------------------


def request_header(record: LogRecord, name: bytes) -> bytes | None:
    """REQ(name): a pseudo-header, the first header of that name, or the request id (made
    here when the HCM makes ids)."""
    if name[:1] == b":":
        if name == b":method":
            return record.method
        if name == b":path":
            return record.path
        if name == b":authority":
            return record.authority
        if name == b":scheme":
            return record.scheme
        return None
    if name == b"host":
        return record.authority
    for header, value in record.request_headers:
        if header == name:
            return value
    if name == b"x-request-id":
        if record.request_id is None and record.generate_id:
            record.request_id = request_id()
        return record.request_id
    if name == b"x-forwarded-proto":
        return record.scheme
    return None


def _request_getter(command: Command) -> Getter:
    main = command.main.encode("latin-1")
    alternative = command.alternative.encode("latin-1") if command.alternative else None

    def get(record: LogRecord) -> str | None:
        value = request_header(record, main)
        if value is None and alternative is not None:
            value = request_header(record, alternative)
        return None if value is None else value.decode("latin-1")

    return get


def _header_in(headers: list[tuple[bytes, bytes]] | None, name: bytes) -> bytes | None:
    if headers:
        for header, value in headers:
            if header == name:
                return value
    return None


def response_bytes(command: Command) -> Callable[[LogRecord], bytes | None]:
    """RESP(X?Y) / TRAILER(X?Y) as the bytes the response had, or None."""
    main = command.main.encode("latin-1")
    alternative = command.alternative.encode("latin-1") if command.alternative else None
    if command.name == "TRAILER":

        def trailer(record: LogRecord) -> bytes | None:
            value = _header_in(record.trailers, main)
            if value is None and alternative is not None:
                value = _header_in(record.trailers, alternative)
            return value

        return trailer

    def get(record: LogRecord) -> bytes | None:
        value = record.response_header(main)
        if value is None and alternative is not None:
            value = record.response_header(alternative)
        return value

    return get


def _response_getter(command: Command) -> Getter:
    read = response_bytes(command)

    def get(record: LogRecord) -> str | None:
        value = read(record)
        return None if value is None else value.decode("latin-1")

    return get


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return int((end - start) * 1000)


# -- addresses ---------------------------------------------------------------------------------


def _remote(record: LogRecord) -> tuple[str | None, int | None]:
    """The downstream remote address: with use_remote_address off, Envoy takes the last
    `x-forwarded-for` entry (port 0) when there is one, `xff_num_trusted_hops` entries back;
    with it on and trusted hops, the entry that many hops back."""
    if record.remote_from_xff:
        # Envoy's header map joins repeated x-forwarded-for headers.
        forwarded = b",".join(
            value for name, value in record.request_headers if name == b"x-forwarded-for"
        )
        if forwarded:
            found = last_xff_address(forwarded, record.xff_skip)
            if found is not None:
                return found, 0
    downstream = record.downstream
    return downstream.remote_ip, downstream.remote_port


def _with_port(ip: str | None, port: int | str | None) -> str | None:
    if ip is None:
        return None
    if port == PIPE_PORT:
        return ip  # a pipe's path
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _plain_getter(name: str) -> Getter:
    # An empty text is no value (`-`), as for an unset one; a pipe's port is "" (printed).
    getters: dict[str, Getter] = {
        "PROTOCOL": lambda r: r.protocol or None,
        "RESPONSE_CODE": lambda r: r.status,
        "RESPONSE_FLAGS": lambda r: r.flags or "-",  # never empty, even in JSON (as Envoy)
        "RESPONSE_CODE_DETAILS": lambda r: r.details or None,
        "BYTES_RECEIVED": lambda r: r.bytes_received,
        "BYTES_SENT": lambda r: r.bytes_sent,
        "DURATION": lambda r: _ms(r.start, r.end),
        "REQUEST_DURATION": lambda r: _ms(r.start, r.request_end),
        "RESPONSE_DURATION": lambda r: _ms(r.start, r.first_upstream_rx),
        "RESPONSE_TX_DURATION": lambda r: _ms(r.first_upstream_rx, r.end),
        "UPSTREAM_HOST": lambda r: r.upstream_host or None,
        "UPSTREAM_REMOTE_ADDRESS": lambda r: r.upstream_remote or None,
        "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster or None,
        "UPSTREAM_LOCAL_ADDRESS": lambda r: r.upstream_local or None,
        "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: r.upstream_failure or None,
        "DOWNSTREAM_REMOTE_ADDRESS": lambda r: _with_port(*_remote(r)),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: _remote(r)[0],
        "DOWNSTREAM_REMOTE_PORT": lambda r: _remote(r)[1],
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda r: r.downstream.remote,
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda r: r.downstream.remote_ip,
        "DOWNSTREAM_LOCAL_ADDRESS": lambda r: r.downstream.local,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda r: r.downstream.local_ip,
        "DOWNSTREAM_LOCAL_PORT": lambda r: r.downstream.local_port,
        "CONNECTION_TERMINATION_DETAILS": lambda r: r.termination or None,
        "ROUTE_NAME": lambda r: r.route_name or None,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT": lambda r: r.attempt_count,
    }
    if name == "HOSTNAME":
        hostname = socket.gethostname()
        return lambda r: hostname
    return getters[name]


def getter(command: Command) -> Getter:
    name = command.name
    if name == "REQ":
        return _request_getter(command)
    if name in ("RESP", "TRAILER"):
        return _response_getter(command)
    if name == "START_TIME":
        text = time_text(command.main)
        return lambda record: text(record.start_wall)
    return _plain_getter(name)
