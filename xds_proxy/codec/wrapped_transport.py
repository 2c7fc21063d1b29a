"""A transport that stands in front of another, and the protocol that stays the raw
transport's own: everything is passed through unless a subclass says otherwise. The global
connection limit (listener/limits.py) and the listener access log (access_log/connection.py)
wrap accepted connections this way."""

from __future__ import annotations

import asyncio
from typing import Any


class WrappedTransport(asyncio.Transport):
    __slots__ = ("_raw",)

    def __init__(self, raw: asyncio.Transport) -> None:
        super().__init__()
        self._raw = raw

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._raw.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._raw.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._raw.writelines(list_of_data)

    def write_eof(self) -> None:
        self._raw.write_eof()

    def can_write_eof(self) -> bool:
        return self._raw.can_write_eof()

    def close(self) -> None:
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()


class ForwardingProtocol(asyncio.Protocol):
    """The raw transport's protocol for the connection's whole life: forwards every callback
    to `inner`, the protocol the rest of the proxy set (through the wrapped transport)."""

    __slots__ = ("inner",)

    def __init__(self) -> None:
        self.inner: asyncio.BaseProtocol | None = None

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.data_received(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        inner = self.inner
        return inner.eof_received() if inner is not None else False  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)
