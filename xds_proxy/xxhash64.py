"""XXH64, the hash Envoy puts in `*.version` subscription gauges and uses for consistent
hashing (route `hash_policy`, the ring hash ring and the Maglev table).

Envoy sets `listener_manager.lds.version` to `HashUtil::xxHash64(version_info)`; computing the
same function keeps that gauge identical between Envoy and us for the same control plane, and
makes a hashing balancer pick the host Envoy picks for the same key. The `xxhash` package is
not a dependency, and the strings are short (versions, header values, host keys; a ring of
1,024 entries costs a few milliseconds to build), so a plain implementation of the published
algorithm is fast enough.
"""

from __future__ import annotations

_MASK = (1 << 64) - 1
_PRIME1 = 0x9E3779B185EBCA87
_PRIME2 = 0xC2B2AE3D27D4EB4F
_PRIME3 = 0x165667B19E3779F9
_PRIME4 = 0x85EBCA77C2B2AE63
_PRIME5 = 0x27D4EB2F165667C5


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _PRIME2) & _MASK
    return (_rotl(acc, 31) * _PRIME1) & _MASK


def _merge_round(acc: int, value: int) -> int:
    acc ^= _round(0, value)
    return (acc * _PRIME1 + _PRIME4) & _MASK


def _lane(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def xxhash64(data: bytes | str, seed: int = 0) -> int:
    """The XXH64 digest of `data` (str is hashed as UTF-8) as an unsigned 64-bit integer."""
    if isinstance(data, str):
        data = data.encode()
    length = len(data)
    offset = 0
    if length >= 32:
        v1 = (seed + _PRIME1 + _PRIME2) & _MASK
        v2 = (seed + _PRIME2) & _MASK
        v3 = seed & _MASK
        v4 = (seed - _PRIME1) & _MASK
        while offset + 32 <= length:
            v1 = _round(v1, _lane(data, offset, 8))
            v2 = _round(v2, _lane(data, offset + 8, 8))
            v3 = _round(v3, _lane(data, offset + 16, 8))
            v4 = _round(v4, _lane(data, offset + 24, 8))
            offset += 32
        acc = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for value in (v1, v2, v3, v4):
            acc = _merge_round(acc, value)
    else:
        acc = (seed + _PRIME5) & _MASK
    acc = (acc + length) & _MASK
    while offset + 8 <= length:
        acc ^= _round(0, _lane(data, offset, 8))
        acc = (_rotl(acc, 27) * _PRIME1 + _PRIME4) & _MASK
        offset += 8
    if offset + 4 <= length:
        acc ^= (_lane(data, offset, 4) * _PRIME1) & _MASK
        acc = (_rotl(acc, 23) * _PRIME2 + _PRIME3) & _MASK
        offset += 4
    while offset < length:
        acc ^= (data[offset] * _PRIME5) & _MASK
        acc = (_rotl(acc, 11) * _PRIME1) & _MASK
        offset += 1
    acc ^= acc >> 33
    acc = (acc * _PRIME2) & _MASK
    acc ^= acc >> 29
    acc = (acc * _PRIME3) & _MASK
    acc ^= acc >> 32
    return acc
