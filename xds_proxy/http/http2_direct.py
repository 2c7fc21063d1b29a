"""Request header blocks that h2 has already decoded and validated once on a connection.

Clients repeat their header blocks: after the first request, h2load's (and most browsers')
next requests are a few bytes of indexed fields that leave the HPACK table as it was. Such a
block means the same headers for as long as the decoder's table (and limits) stay as they
were, so its headers, as h2 decoded and validated them for a HEADERS frame with END_STREAM,
are kept under its bytes and the decoder's token (`BoundedH2Connection.decode_token`); a
later HEADERS frame with END_STREAM and the same block opens a stream with the same headers,
and `Http2Connection` answers it without h2.
"""

from __future__ import annotations

from collections.abc import Sequence

from xds_proxy.http.path_normalization import FRAGMENT_MARK

MAX_KNOWN_BLOCKS = 64


class KnownRequest:
    """What `Http2Connection._on_request` reads from a request's headers."""

    __slots__ = ("authority", "fragment", "headers", "method", "oversized", "path")

    def __init__(
        self, headers: Sequence[tuple[bytes, bytes]], max_bytes: int, max_count: int
    ) -> None:
        method = authority = path = b""
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            elif name == b"host" and not authority:
                authority = value
        self.headers = headers
        self.method = method
        self.authority = authority
        self.path = path
        self.oversized = size > max_bytes or len(headers) > max_count
        self.fragment = FRAGMENT_MARK in path  # refused (400) by the general path


class KnownRequests:
    """Header block bytes -> the `KnownRequest` h2 made of them, for one decoder token."""

    __slots__ = ("_blocks", "_max_bytes", "_max_count", "_token")

    def __init__(self, max_bytes: int, max_count: int) -> None:
        self._blocks: dict[bytes, KnownRequest] = {}
        self._token: object = None
        self._max_bytes = max_bytes
        self._max_count = max_count

    def get(self, block: bytes, token: object) -> KnownRequest | None:
        if token != self._token:
            self._blocks.clear()
            self._token = token
            return None
        return self._blocks.get(block)

    def remember(self, block: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """`block` decoded to `headers` under the token of the latest `get`."""
        if len(self._blocks) < MAX_KNOWN_BLOCKS:
            self._blocks[block] = KnownRequest(headers, self._max_bytes, self._max_count)
