"""Connection-level access logs (a listener's `access_log`): one line per downstream
connection when it closes, with its wire bytes both ways, its duration and, as in Envoy, what
the network filter put in the connection's record (tcp_proxy shares it; the HCM names the
protocol).

The accepted transport is wrapped (as the global connection limit wraps it): the wrapper
stays the raw transport's protocol for the connection's whole life, forwards every callback
to the protocol the rest of the proxy sets, counts the bytes, and logs when the socket
closes. Only listeners with an `access_log` pay for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from xds_proxy.access_log import AccessLog
from xds_proxy.access_log.record import Downstream, LogRecord
from xds_proxy.codec.wrapped_transport import ForwardingProtocol, WrappedTransport

# get_extra_info(CONNECTION_RECORD) on a logged connection's transport: its record, for the
# network filter to fill in (tcp_proxy logs the same record).
CONNECTION_RECORD = "xds_proxy.access_log.connection_record"


class _LoggedProtocol(ForwardingProtocol):
    __slots__ = ("_access_log", "record")

    def __init__(self, record: LogRecord, access_log: AccessLog) -> None:
        super().__init__()
        self.record = record
        self._access_log = access_log

    def data_received(self, data: bytes) -> None:
        self.record.bytes_received += len(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        record = self.record
        record.end = time.monotonic()
        self._access_log.log(record)


class LoggedTransport(WrappedTransport):
    """What the proxy sees of a logged connection: the raw transport, except that setting a
    protocol goes to the logging protocol, and writes are counted."""

    __slots__ = ("_logged",)

    def __init__(self, raw: asyncio.Transport, logged: _LoggedProtocol) -> None:
        super().__init__(raw)
        self._logged = logged

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._logged.inner = protocol
        # The HCM's codecs name their protocol (HTTP/1.1, HTTP/2), as Envoy's connection
        # manager does on the connection's stream info.
        named = getattr(protocol, "ACCESS_LOG_PROTOCOL", None)
        if named is not None:
            self._logged.record.protocol = named

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._logged.inner  # type: ignore[return-value]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == CONNECTION_RECORD:
            return self._logged.record
        return self._raw.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._logged.record.bytes_sent += len(data)
        self._raw.write(data)

    def writelines(self, list_of_data: Any) -> None:
        pieces = list(list_of_data)
        self._logged.record.bytes_sent += sum(len(piece) for piece in pieces)
        self._raw.writelines(pieces)


def log_connection(transport: asyncio.Transport, access_log: AccessLog) -> LoggedTransport:
    """Wrap a just-accepted transport so that its connection is logged when it closes."""
    record = LogRecord(
        Downstream(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
    )
    record.protocol = None
    logged = _LoggedProtocol(record, access_log)
    transport.set_protocol(logged)
    return LoggedTransport(transport, logged)


def no_filter_chain(transport: asyncio.BaseTransport) -> None:
    """The connection matched no filter chain (it is closed): Envoy 1.40's flag (NR, not
    NFCF) and details."""
    record = transport.get_extra_info(CONNECTION_RECORD)
    if record is not None:
        record.flags, record.details = "NR", "filter_chain_not_found"
