"""`CachingEncoder.encode_request` (one pass over a request's fields) against building the
field list and encoding it with `CachingEncoder.encode` (as the direct path did): the same
bytes; hpack's `Decoder` reads them as the list, and hpack's `Encoder` given the list ends
with the same dynamic table; over many requests on one connection."""

from __future__ import annotations

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from xds_proxy.codec.hpack_cache import CachingEncoder

_DROPPED = frozenset({b"connection", b"host", b"upgrade", b"transfer-encoding"})
_UNINDEXED = b"x-request-id"

_names = st.sampled_from(
    [b"accept", b"host", b"connection", b"te", b"x-request-id", b"x-forwarded-proto", b"x-a"]
)
_values = st.sampled_from([b"", b"trailers", b"gzip", b"http", b"v" * 130, b"\xff\x00"])
_fields = st.lists(st.tuples(_names, _values), max_size=8)
_pseudo = st.tuples(
    st.sampled_from([b"a.example", b"b"]), st.sampled_from([b"/", b"/x" * 70]), st.just(b"GET")
)
_requests = st.lists(st.tuples(_pseudo, _fields), min_size=1, max_size=12)


def _reference_list(pseudo: tuple, headers: list, marked: bool = False) -> list:
    out: list = list(pseudo)
    for name, value in headers:
        if name in _DROPPED or (name == b"te" and value != b"trailers"):
            continue
        if name == _UNINDEXED:
            never = (name, value, True) if marked else NeverIndexedHeaderTuple(name, value)
            out.append(never)
        else:
            out.append((name, value))
    return out


@settings(max_examples=400, deadline=None)
@given(_requests, st.sampled_from([None, 64, 256]))
def test_same_bytes_and_table_as_hpack(requests: list, table_size: int | None) -> None:
    ours, previous, reference = CachingEncoder(), CachingEncoder(), Encoder()
    decoder = Decoder()
    if table_size is not None:
        ours.header_table_size = table_size
        previous.header_table_size = reference.header_table_size = table_size
    for (authority, path, method), headers in requests:
        pseudo = (
            (b":authority", authority),
            (b":path", path),
            (b":method", method),
            (b":scheme", b"http"),
        )
        fields = _reference_list(pseudo, headers)
        expected = previous.encode(_reference_list(pseudo, headers, marked=True))
        reference.encode(fields)
        block = ours.encode_request(pseudo, headers, _DROPPED, _UNINDEXED)
        if block is None:  # a table size update pending: hpack encodes
            block = ours.encode(fields)
        assert block == expected
        assert decoder.decode(block, raw=True) == [(name, value) for name, value in fields]
        assert ours.header_table.dynamic_entries == reference.header_table.dynamic_entries
