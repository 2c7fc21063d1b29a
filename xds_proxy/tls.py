"""The server side of TLS on an accepted connection (the SSL context comes from a filter
chain's `DownstreamTlsContext`, built by config/tls.py).

`start_tls_server()` runs TLS over an accepted connection with `ssl.MemoryBIO`s instead of
`loop.start_tls()`: the listener filters (tls_inspector) have already read the ClientHello
from the socket, and start_tls cannot be given bytes that were read before it (uvloop also
starts reading right after `connection_made`, so they cannot be left unread and peeked at).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

# -- the server side of TLS on an accepted connection ------------------------------------------

_READ_SIZE = 65536
# Reasons given to `on_failed` besides TLS errors (Envoy counts those three apart).
HANDSHAKE_TIMEOUT = "handshake timeout"
PEER_CLOSED = "connection closed during the handshake"


class TlsTransport(asyncio.Transport):
    """The plaintext side that a filter chain's protocol sees; ciphertext goes through the
    accepted TCP transport underneath (`raw`)."""

    def __init__(
        self,
        raw: asyncio.Transport,
        context: ssl.SSLContext,
        on_ready: Callable[[TlsTransport], None],
        on_failed: Callable[[str], None],
    ) -> None:
        super().__init__()
        self._raw = raw
        self._context = context
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._on_ready = on_ready
        self._on_failed = on_failed
        self._app: asyncio.BaseProtocol | None = None
        self._handshake_done = False
        self._closing = False
        self._reading = True
        self._eof_delivered = False
        self._timer: asyncio.TimerHandle | None = None

    # -- what the filter chain's protocol calls -------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "compression":
            return self._ssl.compression()
        return self._raw.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._app is not None
        return self._app

    def is_closing(self) -> bool:
        return self._closing or self._raw.is_closing()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._raw.resume_reading()
        asyncio.get_running_loop().call_soon(self._read)  # what the BIO already holds

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        view = memoryview(data)
        try:
            while view:
                written = self._ssl.write(view)
                view = view[written:]
        except ssl.SSLError:
            self._flush()
            self.abort()
            return
        self._flush()

    def can_write_eof(self) -> bool:
        return False  # TLS has close_notify, not a half-close the peer would read as FIN

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def close(self) -> None:
        """close_notify, then close the TCP connection once what was written is flushed."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        if self._handshake_done:
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()  # writes close_notify; the peer's is not awaited
            self._flush()
        self._raw.close()

    def abort(self) -> None:
        self._closing = True
        self._cancel_timer()
        self._raw.abort()

    # -- what the TCP transport underneath delivers (through _RawSide) ---------------------

    def _data_received(self, data: bytes) -> None:
        if self._raw.is_closing():
            return
        self._incoming.write(data)
        if not self._handshake_done:
            self._handshake()
        if self._handshake_done:
            self._read()

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as error:
            self._flush()  # the alert
            self._fail(getattr(error, "reason", None) or str(error))
            return
        self._flush()  # Finished, session tickets
        self._handshake_done = True
        self._cancel_timer()
        self._on_ready(self)

    def _read(self) -> None:
        while self._reading and not self._closing and self._app is not None:
            try:
                chunk = self._ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the peer sends no more
                self._deliver_eof()
                break
            except ssl.SSLError:
                self._flush()
                self.abort()
                return
            if not chunk:  # close_notify as well (SSLObject.read says so with b"")
                self._deliver_eof()
                break
            self._app.data_received(chunk)  # type: ignore[attr-defined]
        self._flush()  # key updates and the like

    def _deliver_eof(self) -> None:
        if self._eof_delivered or self._closing:
            return
        self._eof_delivered = True
        keep_open = self._app.eof_received() if self._app is not None else False  # type: ignore[attr-defined]
        if not keep_open:
            self.close()

    def _eof_received(self) -> None:
        if not self._handshake_done:
            self._fail(PEER_CLOSED)
            return
        self._deliver_eof()

    def _connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._closing = True
        if self._app is not None:
            self._app.connection_lost(exc)
            self._app = None
        elif not self._handshake_done:
            self._fail(PEER_CLOSED)

    def _fail(self, reason: str) -> None:
        self._cancel_timer()
        if not self._closing:
            self._closing = True
            self._raw.close()
        callback, self._on_failed = self._on_failed, _ignore
        callback(reason)

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending and not self._raw.is_closing():
            self._raw.write(pending)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _ignore(reason: str) -> None:
    pass


class _RawSide(asyncio.Protocol):
    """The accepted TCP transport's protocol while TLS runs over it."""

    __slots__ = ("tls",)

    def __init__(self, tls: TlsTransport) -> None:
        self.tls = tls

    def data_received(self, data: bytes) -> None:
        self.tls._data_received(data)

    def eof_received(self) -> bool:
        self.tls._eof_received()
        return True  # the TLS side decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls._connection_lost(exc)

    def pause_writing(self) -> None:
        app = self.tls._app
        if app is not None:
            app.pause_writing()

    def resume_writing(self) -> None:
        app = self.tls._app
        if app is not None:
            app.resume_writing()


def start_tls_server(
    raw: asyncio.Transport,
    context: ssl.SSLContext,
    already_read: bytes,
    on_ready: Callable[[TlsTransport], None],
    on_failed: Callable[[str], None],
    handshake_timeout: float | None = None,
) -> TlsTransport:
    """Run the server handshake on `raw` (whose protocol this replaces), starting with the
    bytes the listener filters already read. `on_ready(tls)` once the handshake is done: it
    sets the plaintext protocol (`tls.set_protocol(p); p.connection_made(tls)`); after that,
    decrypted data flows to it. `on_failed(reason)` when the handshake fails, times out or the
    peer goes away first; the connection is then closed."""
    tls = TlsTransport(raw, context, on_ready, on_failed)
    raw.set_protocol(_RawSide(tls))
    if handshake_timeout:
        tls._timer = asyncio.get_running_loop().call_later(
            handshake_timeout, tls._fail, HANDSHAKE_TIMEOUT
        )
    if already_read:
        tls._data_received(already_read)
    return tls
