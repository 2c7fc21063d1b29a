"""Listener filters: read the first bytes of a connection to learn what it speaks.

`envoy.filters.listener.tls_inspector` parses a TLS ClientHello (server name, ALPN) and
`envoy.filters.listener.http_inspector` recognises HTTP/1.0, HTTP/1.1 and the HTTP/2 preface
in plaintext; the filter chain is matched on what they found. Python's `ssl` reveals the
server name only during the handshake, too late to pick a chain (whose certificate runs the
handshake), so the ClientHello is parsed here from the bytes themselves.

The bytes read while inspecting are not lost: `Inspection` keeps them and hands them to
whatever serves the connection (the chain's protocol, or the TLS layer of its transport socket).
The parsers are pure functions of the bytes so far: they answer "need more", or a verdict.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from google.protobuf.message import DecodeError

from xds_proxy.config.tls import DownstreamTls
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.tls import (
    HANDSHAKE_TIMEOUT,
    PEER_CLOSED,
    TlsTransport,
    start_tls_server,
)

log = logging.getLogger("xds_proxy.listener")

TLS_INSPECTOR_TYPE = "type.googleapis.com/" + tls_inspector_pb2.TlsInspector.DESCRIPTOR.full_name
HTTP_INSPECTOR_TYPE = "type.googleapis.com/" + http_inspector_pb2.HttpInspector.DESCRIPTOR.full_name
DEFAULT_MAX_CLIENT_HELLO = 16384  # Envoy's TLS_MAX_CLIENT_HELLO
HTTP_MAX_INSPECT = 8192  # Envoy's http_inspector MAX_INSPECT_SIZE
DEFAULT_TIMEOUT_S = 15.0  # listener_filters_timeout


class Need(enum.Enum):
    MORE = "more"


NEED_MORE = Need.MORE


# -- TLS ClientHello --------------------------------------------------------------------------


class TlsVerdict(enum.Enum):
    NOT_TLS = "not_tls"
    MALFORMED = "malformed"  # starts like a TLS handshake, but is not a valid ClientHello
    TOO_LARGE = "too_large"


@dataclass(frozen=True)
class ClientHello:
    server_name: str  # "" without the server_name extension
    alpn: tuple[str, ...]


_HANDSHAKE_RECORD = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class _Truncated(Exception):
    """The bytes end inside a length-prefixed field of the ClientHello."""


class _Reader:
    """Bounds-checked reads of big-endian, length-prefixed TLS fields."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | memoryview, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def take(self, count: int) -> bytes:
        if self.pos + count > self.end:
            raise _Truncated
        chunk = bytes(self.data[self.pos : self.pos + count])
        self.pos += count
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        length = self.number(length_size)
        if self.pos + length > self.end:
            raise _Truncated
        inner = _Reader(self.data, self.pos, self.pos + length)
        self.pos += length
        return inner

    def done(self) -> bool:
        return self.pos >= self.end


def _handshake_bytes(data: bytes, limit: int) -> bytes | Need | TlsVerdict:
    """The handshake message carried by the leading TLS records (a ClientHello may be split
    over several records); NEED_MORE until all of it is there."""
    message = bytearray()
    pos = 0
    needed: int | None = None
    while True:
        if len(data) < pos + 1:
            return NEED_MORE
        if data[pos] != _HANDSHAKE_RECORD:
            return TlsVerdict.NOT_TLS if pos == 0 else TlsVerdict.MALFORMED
        if len(data) < pos + 2:
            return NEED_MORE
        if data[pos + 1] != 0x03:
            return TlsVerdict.NOT_TLS if pos == 0 else TlsVerdict.MALFORMED
        if len(data) < pos + 5:
            return NEED_MORE
        record_length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if record_length == 0:
            return TlsVerdict.MALFORMED
        record_end = pos + 5 + record_length
        message += data[pos + 5 : record_end]
        if needed is None and len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return TlsVerdict.MALFORMED
            needed = 4 + int.from_bytes(message[1:4], "big")
            if needed > limit:
                return TlsVerdict.TOO_LARGE
        if needed is not None and len(message) >= needed:
            return bytes(message[:needed])
        if len(data) < record_end:
            return NEED_MORE
        pos = record_end


def parse_client_hello(
    data: bytes, limit: int = DEFAULT_MAX_CLIENT_HELLO
) -> ClientHello | Need | TlsVerdict:
    """What the first bytes of a connection say as a TLS ClientHello."""
    found = _handshake_bytes(data, limit)
    if not isinstance(found, bytes):
        return found
    try:
        return _client_hello_fields(found)
    except _Truncated:
        return TlsVerdict.MALFORMED


def _client_hello_fields(message: bytes) -> ClientHello:
    reader = _Reader(message, 4)
    reader.take(2 + 32)  # legacy_version, random
    reader.vector(1)  # legacy_session_id
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # legacy_compression_methods
    server_name = ""
    alpn: tuple[str, ...] = ()
    if reader.done():
        return ClientHello(server_name, alpn)  # no extensions at all (TLS 1.0 style)
    extensions = reader.vector(2)
    while not extensions.done():
        kind = extensions.number(2)
        body = extensions.vector(2)
        if kind == _EXT_SERVER_NAME:
            names = body.vector(2)
            while not names.done():
                name_type = names.number(1)
                name = names.vector(2)
                if name_type == 0 and not server_name:
                    server_name = name.take(name.end - name.pos).decode("ascii", "replace")
        elif kind == _EXT_ALPN:
            protocols = body.vector(2)
            found = []
            while not protocols.done():
                protocol = protocols.vector(1)
                found.append(protocol.take(protocol.end - protocol.pos).decode("ascii", "replace"))
            alpn = tuple(found)
    if not reader.done():
        raise _Truncated  # bytes after the extensions
    return ClientHello(server_name.lower(), alpn)


# -- HTTP -------------------------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/1\.([01])\r?\n")
# What a request line can look like before its end has arrived.
_PARTIAL_REQUEST_LINE = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*( [^ \r\n]*( (H(T(T(P(/(1(\.([01]\r?)?)?)?)?)?)?)?)?)?)?"
)


def sniff_http(data: bytes) -> str | Need | None:
    """`h2c`, `http/1.1` or `http/1.0` for plaintext that starts like that, None for anything
    else, NEED_MORE while the first line is incomplete (Envoy's http_inspector)."""
    if data.startswith(H2_PREFACE):
        return "h2c"
    if H2_PREFACE.startswith(data[: len(H2_PREFACE)]):
        return NEED_MORE
    head = data[:HTTP_MAX_INSPECT]
    line_end = head.find(b"\n")
    if line_end < 0:
        if len(head) >= HTTP_MAX_INSPECT or not _PARTIAL_REQUEST_LINE.fullmatch(head):
            return None
        return NEED_MORE
    found = _REQUEST_LINE.match(head[: line_end + 1])
    if found is None:
        return None
    return "http/1.1" if found.group(1) == b"1" else "http/1.0"


# -- listener_filters config ------------------------------------------------------------------


@dataclass(frozen=True)
class TlsInspector:
    max_client_hello_size: int = DEFAULT_MAX_CLIENT_HELLO
    close_on_parse_error: bool = False


@dataclass(frozen=True)
class HttpInspector:
    pass


Inspector = TlsInspector | HttpInspector


@dataclass(frozen=True)
class ListenerFilters:
    inspectors: tuple[Inspector, ...]
    timeout_s: float  # 0: wait forever
    continue_on_timeout: bool


def listener_filters(listener: listener_pb2.Listener, path: str = "") -> ListenerFilters | None:
    """The listener's inspectors in order; None when it has no listener filters. Raises
    ConfigError for what we do not run."""
    if not listener.listener_filters:
        return None
    prefix = f"{path}." if path else ""
    inspectors: list[Inspector] = []
    for index, entry in enumerate(listener.listener_filters):
        entry_path = f"{prefix}listener_filters[{index}]"
        type_url = entry.typed_config.type_url
        if type_url == TLS_INSPECTOR_TYPE:
            config = tls_inspector_pb2.TlsInspector()
            _unpack(entry.typed_config.value, config, f"{entry_path}.typed_config")
            inspectors.append(
                TlsInspector(
                    max_client_hello_size=config.max_client_hello_size.value
                    if config.HasField("max_client_hello_size")
                    else DEFAULT_MAX_CLIENT_HELLO,
                    close_on_parse_error=config.close_connection_on_client_hello_parsing_errors,
                )
            )
        elif type_url == HTTP_INSPECTOR_TYPE:
            inspectors.append(HttpInspector())
        else:
            raise ConfigError(f"{entry_path}.typed_config: @type '{type_url}' not supported")
    timeout = DEFAULT_TIMEOUT_S
    if listener.HasField("listener_filters_timeout"):
        timeout = listener.listener_filters_timeout.ToNanoseconds() / 1e9
    return ListenerFilters(
        inspectors=tuple(inspectors),
        timeout_s=timeout,
        continue_on_timeout=listener.continue_on_listener_filters_timeout,
    )


def _unpack(value: bytes, config, path: str) -> None:
    try:
        config.ParseFromString(value)
    except DecodeError:
        raise ConfigError(f"{path}: cannot decode {config.DESCRIPTOR.full_name}") from None


# -- running the inspectors on a connection ---------------------------------------------------


@dataclass(frozen=True)
class Detected:
    """What the listener filters learned; the filter chain is matched on it."""

    server_name: str = ""
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()


NOTHING_DETECTED = Detected()


class _Outcome(enum.Enum):
    CONTINUE = "continue"
    CLOSE = "close"


def _run_tls(
    inspector: TlsInspector, data: bytes, stats: Stats
) -> tuple[Detected | None, _Outcome] | Need:
    hello = parse_client_hello(data, inspector.max_client_hello_size)
    if hello is NEED_MORE:
        return NEED_MORE
    if isinstance(hello, ClientHello):
        stats.counter("tls_inspector.tls_found").inc()
        stats.counter(
            "tls_inspector.sni_found" if hello.server_name else "tls_inspector.sni_not_found"
        ).inc()
        stats.counter(
            "tls_inspector.alpn_found" if hello.alpn else "tls_inspector.alpn_not_found"
        ).inc()
        return Detected(hello.server_name, "tls", hello.alpn), _Outcome.CONTINUE
    if hello is TlsVerdict.TOO_LARGE:
        stats.counter("tls_inspector.client_hello_too_large").inc()
        return None, _Outcome.CLOSE
    stats.counter("tls_inspector.tls_not_found").inc()
    if hello is TlsVerdict.MALFORMED and inspector.close_on_parse_error:
        return None, _Outcome.CLOSE
    return None, _Outcome.CONTINUE


_HTTP_STATS = {"h2c": "http2_found", "http/1.1": "http11_found", "http/1.0": "http10_found"}


def _run_http(data: bytes, stats: Stats) -> tuple[Detected | None, _Outcome] | Need:
    protocol = sniff_http(data)
    if protocol is NEED_MORE:
        return NEED_MORE
    if protocol is None:
        stats.counter("http_inspector.http_not_found").inc()
        return None, _Outcome.CONTINUE
    stats.counter("http_inspector." + _HTTP_STATS[protocol]).inc()
    return Detected(application_protocols=(protocol,)), _Outcome.CONTINUE


Finished = Callable[[asyncio.Transport, Detected, bytes], None]


class Inspection(asyncio.Protocol):
    """The connection's protocol while its listener filters run: reads and keeps the first
    bytes until every inspector has decided, then calls `finished(transport, detected,
    bytes_read)`, which picks the filter chain and hands the connection (and the bytes) on.

    Like Envoy: a connection whose filters do not finish within `listener_filters_timeout`
    is closed (`downstream_pre_cx_timeout`), or matched with what is known so far when
    `continue_on_listener_filters_timeout` is set; one that closes first is dropped."""

    def __init__(
        self, config: ListenerFilters, stats: Stats, stat_prefix: str, finished: Finished
    ) -> None:
        self._config = config
        self._stats = stats
        self._stat_prefix = stat_prefix
        self._finished = finished
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._next = 0  # index of the inspector that runs next
        self._detected = NOTHING_DETECTED
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._stats.gauge(self._stat_prefix + "downstream_pre_cx_active").inc()
        if self._config.timeout_s > 0:
            self._timer = asyncio.get_running_loop().call_later(
                self._config.timeout_s, self._timed_out
            )
        self._advance()  # inspectors that need no bytes (none today) finish at once

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._buffer += data
        self._advance()

    def eof_received(self) -> bool:
        # The peer closed before the filters could decide: no connection is created.
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._end()
            self._transport = None

    def _advance(self) -> None:
        inspectors: Sequence[Inspector] = self._config.inspectors
        data = bytes(self._buffer)
        while self._next < len(inspectors):
            if not data:
                return  # every inspector needs at least one byte
            result = self._run(inspectors[self._next], data)
            if result is NEED_MORE:
                return
            detected, outcome = result  # type: ignore[misc]
            if outcome is _Outcome.CLOSE:
                self._close()
                return
            if detected is not None:
                self._detected = _merge(self._detected, detected)
            self._next += 1
        self._hand_over()

    def _run(self, inspector: Inspector, data: bytes):
        if isinstance(inspector, TlsInspector):
            return _run_tls(inspector, data, self._stats)
        if self._detected.transport_protocol != "raw_buffer":
            return None, _Outcome.CONTINUE  # http_inspector looks at plaintext only
        return _run_http(data, self._stats)

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        self._stats.counter(self._stat_prefix + "downstream_pre_cx_timeout").inc()
        if self._config.continue_on_timeout:
            self._hand_over()
        else:
            self._close()

    def _hand_over(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._end()
        self._transport = None
        self._finished(transport, self._detected, bytes(self._buffer))

    def _close(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._end()
        self._transport = None
        transport.close()

    def _end(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stats.gauge(self._stat_prefix + "downstream_pre_cx_active").dec()


def _merge(known: Detected, found: Detected) -> Detected:
    return Detected(
        server_name=found.server_name or known.server_name,
        transport_protocol=found.transport_protocol
        if found.transport_protocol != "raw_buffer"
        else known.transport_protocol,
        application_protocols=found.application_protocols or known.application_protocols,
    )


# -- handing the connection to its filter chain -----------------------------------------------


def hand_over(
    transport: asyncio.Transport,
    already_read: bytes,
    factory: Callable[[], asyncio.Protocol],
    tls: DownstreamTls | None,
    stats: Stats,
    stat_prefix: str,
    handshake_timeout_s: float | None = None,
) -> None:
    """Give an accepted connection to a filter chain's protocol, with the bytes the listener
    filters read; through a TLS handshake first when the chain has a TLS transport socket."""
    if tls is None:
        protocol = factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if already_read and not transport.is_closing():
            protocol.data_received(already_read)
        return

    def ready(secure: TlsTransport) -> None:
        stats.counter(stat_prefix + "ssl.handshake").inc()
        if secure.get_extra_info("peercert") is None:
            stats.counter(stat_prefix + "ssl.no_certificate").inc()
        cipher = secure.get_extra_info("cipher")
        if cipher:
            stats.counter(f"{stat_prefix}ssl.ciphers.{cipher[0]}").inc()
            stats.counter(f"{stat_prefix}ssl.versions.{cipher[1]}").inc()
        protocol = factory()
        secure.set_protocol(protocol)
        protocol.connection_made(secure)

    def failed(reason: str) -> None:
        if reason == HANDSHAKE_TIMEOUT:  # transport_socket_connect_timeout
            stats.counter(stat_prefix + "downstream_cx_transport_socket_connect_timeout").inc()
        elif reason != PEER_CLOSED:
            stats.counter(stat_prefix + "ssl.connection_error").inc()
        log.debug("TLS handshake failed: %s", reason)

    if tls.context is None:  # a secret from SDS has not arrived: closed at once, as Envoy's
        stats.counter(
            stat_prefix + "server_ssl_socket_factory.downstream_context_secrets_not_ready"
        ).inc()
        transport.abort()
        return
    start_tls_server(transport, tls.context, already_read, ready, failed, handshake_timeout_s)
