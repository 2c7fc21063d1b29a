"""Codec AUTO: an HTTP/1.1 connection whose first bytes are the HTTP/2 preface (prior
knowledge) becomes an `Http2Connection`. The HTTP/2 codec is imported by the first such
connection of the process (xds_proxy/lazy.py): most AUTO listeners only ever see HTTP/1.1."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from xds_proxy.http.conn_manager import HcmConfig
from xds_proxy.lazy import lazy_import
from xds_proxy.listener.context import FilterChainContext

if TYPE_CHECKING:
    from xds_proxy.http import http2
else:
    http2 = lazy_import("xds_proxy.http.http2")

H2_PREFACE_START = b"PRI * HTTP/2.0\r\n"


class PrefaceSniffer:
    """Collects a connection's first bytes until they tell whether it speaks HTTP/2."""

    __slots__ = ("_buffered",)

    def __init__(self) -> None:
        self._buffered = b""

    def feed(self, data: bytes) -> bytes | None:
        """Every byte received so far once they tell (see `is_http2`); None to wait for more."""
        buffered = self._buffered + data if self._buffered else data
        if len(buffered) < len(H2_PREFACE_START) and H2_PREFACE_START.startswith(buffered):
            self._buffered = buffered
            return None
        self._buffered = b""
        return buffered


def is_http2(first_bytes: bytes) -> bool:
    return first_bytes.startswith(H2_PREFACE_START)


def start_http2(
    config: HcmConfig, ctx: FilterChainContext, transport: asyncio.Transport
) -> http2.Http2Connection:
    """Move the transport to a new `Http2Connection`, which counts and registers itself; the
    caller then unregisters its HTTP/1.1 connection (so that a draining chain never looks
    empty meanwhile) and passes it the bytes read so far."""
    successor = http2.Http2Connection(config, ctx)
    transport.set_protocol(successor)
    successor.connection_made(transport)
    return successor
