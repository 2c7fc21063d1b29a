"""HPACK encoder and decoder that remember what they did while the dynamic table stands still.

A connection to one upstream sends nearly the same request header fields again and again and
gets nearly the same response header blocks back. hpack encodes each field anew (a table
search, logging, often Huffman) and decodes each block anew; both results depend only on the
field (or block) and the dynamic table, so they are kept until the table changes:

- `CachingEncoder`: the bytes hpack's `Encoder` produces for one field, kept per field while
  encoding it leaves the table unchanged (an indexed field); any change to the table (an
  insertion, an eviction, a resize) forgets them all, since indices move. A field marked
  never-indexed is written as hpack would write it without Huffman coding and never cached.
  A pending table size update is left to hpack (it must open the next block).
- `CachingDecoder`: the header list of a block, kept per block bytes and decoder limits while
  decoding it left the table unchanged (epoch of `CountingHeaderTable`).

Both stay byte-compatible with a peer's hpack state: they produce (or accept) exactly what
hpack would; fuzzed against hpack in tests/unit/test_hpack_cache.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple
from hpack.table import HeaderTable

from xds_proxy.codec.h2_fast import CountingHeaderTable, hpack_integer

_MAX_CACHED = 512  # entries per cache; past that it starts over
_NEVER_INDEXED = 0x10

_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_NAMES.setdefault(_name, _index)


_NAME_PARTS: dict[bytes, bytes] = {}  # a never-indexed field's bytes before its value's


_SHORT_LENGTHS = [bytes((size,)) for size in range(0x7F)]  # a string length in one byte


def _never_indexed_name(name: bytes) -> bytes:
    """A never-indexed literal's bytes before its value's."""
    name_part = _NAME_PARTS.get(name)
    if name_part is None:
        name_index = _STATIC_NAMES.get(name)
        if name_index is not None:
            name_part = hpack_integer(name_index, 4, _NEVER_INDEXED)
        else:
            name_part = b"\x10" + hpack_integer(len(name), 7) + name
        if len(_NAME_PARTS) < _MAX_CACHED:
            _NAME_PARTS[name] = name_part
    return name_part


def _never_indexed(name: bytes, value: bytes) -> bytes:
    """A never-indexed literal (RFC 7541 section 6.2.3), name from the static table when it
    holds it, strings not Huffman-coded."""
    name_part = _never_indexed_name(name)
    size = len(value)
    if size < 0x7F:
        return name_part + bytes((size,)) + value
    return name_part + hpack_integer(size, 7) + value


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


class CachingEncoder(Encoder):
    def __init__(self) -> None:
        super().__init__()
        self.header_table = CountingHeaderTable()
        self._fields: dict[tuple[Any, Any], bytes] = {}
        self._epoch = 0

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        table = self.header_table
        if table.resized or not huffman or isinstance(headers, dict):
            self._fields.clear()
            return super().encode(headers, huffman)
        fields = self._fields
        if table.epoch != self._epoch:  # type: ignore[attr-defined]
            fields.clear()
            self._epoch = table.epoch  # type: ignore[attr-defined]
        out = []
        for header in headers:
            # Plain 2-tuples only: a HeaderTuple equals the plain tuple of its fields.
            if type(header) is tuple:
                if len(header) == 2:
                    encoded = fields.get(header)
                    if encoded is None:
                        encoded = self._encode_new(header)
                    out.append(encoded)
                elif len(header) > 2 and header[2]:
                    name, value = header[0], header[1]
                    if type(name) is not bytes or type(value) is not bytes:
                        name, value = _as_bytes(name), _as_bytes(value)
                    out.append(_never_indexed(name, value))
                else:
                    out.append(self._encode_new((header[0], header[1])))
            elif isinstance(header, HeaderTuple):
                if header.indexable:
                    out.append(self._encode_new(tuple(header)))
                else:
                    out.append(_never_indexed(_as_bytes(header[0]), _as_bytes(header[1])))
            elif len(header) > 2 and header[2]:
                out.append(_never_indexed(_as_bytes(header[0]), _as_bytes(header[1])))
            else:
                out.append(self._encode_new((header[0], header[1])))
        return b"".join(out)

    def encode_request(
        self,
        pseudo: tuple[tuple[bytes, bytes], ...],
        headers: Iterable[Any],
        dropped: frozenset[bytes],
        unindexed: bytes,
    ) -> bytes | None:
        """`encode` of `pseudo` then `headers` (pairs) without the fields named in `dropped`,
        a `te` other than `trailers`, and with the field named `unindexed` never indexed: the
        same bytes as building that list and encoding it, in one pass. None when hpack must
        encode (a table size update is pending)."""
        table = self.header_table
        if table.resized:
            return None
        fields = self._fields
        if table.epoch != self._epoch:  # type: ignore[attr-defined]
            fields.clear()
            self._epoch = table.epoch  # type: ignore[attr-defined]
        out = []
        for header in pseudo:
            encoded = fields.get(header)
            if encoded is None:
                encoded = self._encode_new(header)
            out.append(encoded)
        for header in headers:
            name = header[0]
            if name in dropped or (name == b"te" and header[1] != b"trailers"):
                continue
            if type(header) is not tuple or len(header) != 2:
                header = (name, header[1])
            if name == unindexed:
                value = header[1]
                if type(name) is not bytes or type(value) is not bytes:
                    name, value = _as_bytes(name), _as_bytes(value)
                if len(value) < 0x7F:  # (`_never_indexed`, inline)
                    name_part = _NAME_PARTS.get(name) or _never_indexed_name(name)
                    out += (name_part, _SHORT_LENGTHS[len(value)], value)
                else:
                    out.append(_never_indexed(name, value))
                continue
            encoded = fields.get(header)
            if encoded is None:
                encoded = self._encode_new(header)
            out.append(encoded)
        return b"".join(out)

    def _encode_new(self, header: tuple[Any, Any]) -> bytes:
        """hpack's encoding of one field, kept if it left the table as it was."""
        encoded = self.add((_as_bytes(header[0]), _as_bytes(header[1])), False, True)
        fields = self._fields
        if self.header_table.epoch != self._epoch:  # type: ignore[attr-defined]
            fields.clear()
            self._epoch = self.header_table.epoch  # type: ignore[attr-defined]
        else:
            if len(fields) >= _MAX_CACHED:
                fields.clear()
            fields[header] = encoded
        return encoded


class CachingDecoder(Decoder):
    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.header_table = CountingHeaderTable()
        self._blocks: dict[bytes, tuple[int, int, int, list[HeaderTuple]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        key = bytes(data)
        epoch = table.epoch  # type: ignore[attr-defined]
        known = self._blocks.get(key)
        if (
            raw
            and known is not None
            and known[0] == epoch
            and known[1] == self.max_allowed_table_size
            and known[2] == self.max_header_list_size
        ):
            return list(known[3])
        headers = super().decode(data, raw)
        if raw and table.epoch == epoch:  # type: ignore[attr-defined]
            blocks = self._blocks
            if len(blocks) >= _MAX_CACHED:
                blocks.clear()
            blocks[key] = (
                epoch,
                self.max_allowed_table_size,
                self.max_header_list_size,
                list(headers),
            )
        return headers
