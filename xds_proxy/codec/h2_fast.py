"""HTTP/2 and HPACK pieces of the common request path, where h2 is generic and slow.

- `encode_header_block`: response header blocks made only of static-table indexed fields and
  literals *without indexing*, so they never touch the peer's dynamic table and one encoded
  block serves every stream and connection (h2's encoder, which indexes, stays in step with
  the peer for whatever h2 itself still encodes).
- `ResponseFrames`: a whole local reply (HEADERS, then DATA with END_STREAM) as bytes, built
  once per reply and date and completed per stream with its id.
- `CountingHeaderTable`: hpack's decoder table with an `epoch` that moves on every insertion
  and size change; a decoded header block can be reused while the epoch (and the decoder's
  limits) are unchanged, since a block's meaning depends only on its bytes and that table.

Pure: bytes in, bytes out; imports nothing of ours.
"""

from __future__ import annotations

import struct

from hpack.table import HeaderTable

DATA_TYPE = 0x0
HEADERS_TYPE = 0x1
END_STREAM = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20
FRAME_HEADER_SIZE = 9

_FRAME_HEAD = struct.Struct(">BHBB")  # length (24 bits), type, flags; the stream id follows

_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)


def frame_head(length: int, frame_type: int, flags: int) -> bytes:
    """The first 5 bytes of a frame header (the 4-byte stream id follows)."""
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, frame_type, flags)


def hpack_integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """RFC 7541 section 5.1: `value` in a `prefix_bits` prefix whose other bits are
    `first_byte`'s."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes) -> bytes:
    return hpack_integer(len(data), 7) + data  # not Huffman-coded


def encode_field(name: bytes, value: bytes) -> bytes:
    """One header field: indexed if the static table holds it whole, else a literal without
    indexing (with the static table's index for its name when there is one)."""
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return hpack_integer(index, 7, 0x80)
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        return hpack_integer(name_index, 4) + _string(value)
    return b"\x00" + _string(name) + _string(value)


def encode_header_block(
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
) -> bytes:
    """A header block any HPACK decoder reads as `headers`, whatever its dynamic table holds,
    and that leaves that table unchanged."""
    return b"".join([encode_field(name, value) for name, value in headers])


class ResponseFrames:
    """One local reply as frames: HEADERS (the fields before `date`, `date`, the fields after
    it), then the body in one DATA frame with END_STREAM, or HEADERS with END_STREAM alone
    for HEAD and empty bodies. The body must fit one frame (at most 16,384 bytes)."""

    __slots__ = ("_after", "_before", "_date", "_with_body", "_without_body", "body", "status")

    def __init__(
        self,
        before: tuple[tuple[bytes, bytes], ...],
        after: tuple[tuple[bytes, bytes], ...],
        body: bytes,
        status: int,
    ) -> None:
        self._before = encode_header_block(before)
        self._after = encode_header_block(after)
        self.body = body
        self.status = status
        self._date = b""
        self._with_body: tuple[bytes, bytes] = (b"", b"")
        self._without_body: tuple[bytes, bytes] = (b"", b"")

    def frames(self, stream_id: int, date: bytes, head_only: bool) -> bytes:
        if date is not self._date and date != self._date:
            self._render(date)
        sid = stream_id.to_bytes(4, "big")
        body = self.body
        if head_only or not body:
            first, block = self._without_body
            return first + sid + block
        first, rest = self._with_body
        return b"".join((first, sid, rest, sid, body))

    def _render(self, date: bytes) -> None:
        self._date = date
        block = self._before + encode_field(b"date", date) + self._after
        self._without_body = (frame_head(len(block), HEADERS_TYPE, END_HEADERS | END_STREAM), block)
        data_head = frame_head(len(self.body), DATA_TYPE, END_STREAM)
        self._with_body = (frame_head(len(block), HEADERS_TYPE, END_HEADERS), block + data_head)


class CountingHeaderTable(HeaderTable):
    """hpack's header table, counting the changes that alter what a block decodes to."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.epoch += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.epoch += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]
