"""Consistent-hashing load balancers: Envoy's `RING_HASH` (ketama ring) and `MAGLEV` (lookup
table). Pure; randomness injected.

Both are built as Envoy builds them, so that the same hosts and the same request hash pick the
same host on Envoy and on us:

- a host's key is its address as Envoy prints it (`127.0.0.1:8080`, `[::1]:8080`);
- host weights are normalised to sum 1 (`weight / sum`, in doubles, as Envoy);
- the ring holds `scale * weight` entries per host, `scale = min(ceil(min_weight *
  minimum_ring_size) / min_weight, maximum_ring_size)`, each the xxHash64 (or MurmurHash2) of
  `KEY_i`; a hash picks the first entry at or above it, wrapping to the first;
- the Maglev table (prime size, 65537 by default) is filled in turns by hosts sorted by key,
  each at `(offset + skip * next) % size` with `offset = xxHash64(key) % size` and `skip =
  xxHash64(key, seed=1) % (size - 1) + 1`; a host of lower weight takes a turn less often;
  a hash picks `table[hash % size]`.

A request without a hash key gets a random 64-bit hash (Envoy: the balancer then acts as
random). The ring or table is rebuilt lazily on the first pick after the host list changed:
the cluster replaces its list of routable hosts on every change, so a new list is the sign
(one with the same hosts, in the same order and with the same weights, is not rebuilt). Each
build sets Envoy's gauges (`ring_hash_lb.size`, `.min_hashes_per_host`,
`.max_hashes_per_host`; `maglev_lb.min_entries_per_host`, `.max_entries_per_host`).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Protocol, TypeVar

from xds_proxy.config.cluster import (
    DEFAULT_MAGLEV_TABLE_SIZE,
    DEFAULT_MAX_RING_SIZE,
    DEFAULT_MIN_RING_SIZE,
)
from xds_proxy.stats import Gauge
from xds_proxy.xxhash64 import xxhash64

_MASK = (1 << 64) - 1
_MURMUR_MUL = 0xC6A4A7935BD1E995
# libstdc++'s std::hash<std::string> seed, which Envoy's MURMUR_HASH_2 reproduces.
_MURMUR_SEED = 0xC70F6907


class HashedHost(Protocol):
    @property
    def address(self) -> tuple[str, int]: ...

    @property
    def weight(self) -> int: ...


H = TypeVar("H", bound=HashedHost)


def host_key(host: HashedHost) -> str:
    """The host's hash key: its address as Envoy's `asString()` writes it."""
    ip, port = host.address
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def murmur_hash2(data: bytes, seed: int = _MURMUR_SEED) -> int:
    """64-bit MurmurHash2 as libstdc++'s `_Hash_bytes` (Envoy's `MurmurHash::murmurHash2`)."""
    length = len(data)
    aligned = length & ~7
    value = (seed ^ (length * _MURMUR_MUL)) & _MASK
    for offset in range(0, aligned, 8):
        block = (int.from_bytes(data[offset : offset + 8], "little") * _MURMUR_MUL) & _MASK
        block = ((block ^ (block >> 47)) * _MURMUR_MUL) & _MASK
        value = ((value ^ block) * _MURMUR_MUL) & _MASK
    if length & 7:
        value = ((value ^ int.from_bytes(data[aligned:], "little")) * _MURMUR_MUL) & _MASK
    value = ((value ^ (value >> 47)) * _MURMUR_MUL) & _MASK
    return value ^ (value >> 47)


class _BuiltFor:
    """The host list a ring or table was built for: a new list with the same hosts (same
    objects, order and weights) needs no rebuild."""

    __slots__ = ("_hosts", "_snapshot")

    def __init__(self) -> None:
        self._hosts: Sequence[HashedHost] | None = None
        self._snapshot: list[tuple[HashedHost, int]] = []

    def same(self, hosts: Sequence[HashedHost]) -> bool:
        if hosts is self._hosts:
            return True
        snapshot = self._snapshot
        if len(hosts) != len(snapshot) or any(
            host is not old or host.weight != weight
            for host, (old, weight) in zip(hosts, snapshot, strict=True)
        ):
            return False
        self._hosts = hosts
        return True

    def built(self, hosts: Sequence[HashedHost]) -> None:
        self._hosts = hosts
        self._snapshot = [(host, host.weight) for host in hosts]


def _normalized(hosts: Sequence[H]) -> list[tuple[H, float]]:
    total = sum(host.weight for host in hosts)
    return [(host, host.weight * 1.0 / total) for host in hosts]


class RingHash:
    """Envoy's ring hash (`ring_hash_lb.cc`)."""

    __slots__ = (
        "_built_for",
        "_gauges",
        "_hashes",
        "_max_size",
        "_min_size",
        "_murmur",
        "_owners",
        "_rng",
    )

    def __init__(
        self,
        minimum_ring_size: int = DEFAULT_MIN_RING_SIZE,
        maximum_ring_size: int = DEFAULT_MAX_RING_SIZE,
        murmur: bool = False,
        rng: random.Random | None = None,
        gauges: tuple[Gauge, Gauge, Gauge] | None = None,  # size, min and max per host
    ) -> None:
        self._gauges = gauges
        self._min_size = minimum_ring_size
        self._max_size = maximum_ring_size
        self._murmur = murmur
        self._rng = rng or random.Random()
        self._built_for = _BuiltFor()
        self._hashes: list[int] = []
        self._owners: list[HashedHost] = []

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        if not self._built_for.same(hosts):
            self._build(hosts)
        if hash_key is None:
            hash_key = self._rng.getrandbits(64)
        index = bisect.bisect_left(self._hashes, hash_key)
        if index == len(self._hashes):
            index = 0
        return self._owners[index]  # type: ignore[return-value]

    def ring(self, hosts: Sequence[H]) -> list[tuple[int, H]]:
        """The ring for `hosts`, as (hash, host) sorted by hash (for tests and stats)."""
        if not self._built_for.same(hosts):
            self._build(hosts)
        return list(zip(self._hashes, self._owners, strict=True))  # type: ignore[arg-type]

    def _build(self, hosts: Sequence[HashedHost]) -> None:
        weights = _normalized(hosts)
        min_weight = min(weight for _, weight in weights)
        scale = min(math.ceil(min_weight * self._min_size) / min_weight, float(self._max_size))
        entries: list[tuple[int, int, HashedHost]] = []
        current = 0.0
        target = 0.0
        hash_of = murmur_hash2 if self._murmur else xxhash64
        per_host: list[int] = []
        for order, (host, weight) in enumerate(weights):
            prefix = host_key(host) + "_"
            target += scale * weight
            index = 0
            while current < target:
                entries.append((hash_of(f"{prefix}{index}".encode()), order, host))
                index += 1
                current += 1
            per_host.append(index)
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        self._hashes = [entry[0] for entry in entries]
        self._owners = [entry[2] for entry in entries]
        self._built_for.built(hosts)
        if self._gauges is not None:
            size, fewest, most = self._gauges
            size.set(math.ceil(scale))
            fewest.set(min(per_host))
            most.set(max(per_host))


class Maglev:
    """Envoy's Maglev table (`maglev_lb.cc`); `table_size` is prime (the config checks)."""

    __slots__ = ("_built_for", "_gauges", "_rng", "_size", "_table")

    def __init__(
        self,
        table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
        rng: random.Random | None = None,
        gauges: tuple[Gauge, Gauge] | None = None,  # min and max entries per host
    ) -> None:
        self._gauges = gauges
        self._size = table_size
        self._rng = rng or random.Random()
        self._built_for = _BuiltFor()
        self._table: list[HashedHost] = []

    def pick(self, hosts: Sequence[H], hash_key: int | None = None) -> H | None:
        if not hosts:
            return None
        if not self._built_for.same(hosts):
            self._build(hosts)
        if hash_key is None:
            hash_key = self._rng.getrandbits(64)
        return self._table[hash_key % self._size]  # type: ignore[return-value]

    def table(self, hosts: Sequence[H]) -> list[H]:
        """The lookup table for `hosts` (for tests)."""
        if not self._built_for.same(hosts):
            self._build(hosts)
        return list(self._table)  # type: ignore[arg-type]

    def _build(self, hosts: Sequence[HashedHost]) -> None:
        size = self._size
        weights = _normalized(hosts)
        max_weight = max(weight for _, weight in weights)
        keyed = sorted(((host_key(host), order) for order, (host, _) in enumerate(weights)))
        count = len(keyed)
        owners = [weights[order][0] for _, order in keyed]
        own_weights = [weights[order][1] for _, order in keyed]
        # Each host's next slot of its permutation, `(offset + skip * next) % size`, kept as
        # a running position (one addition per step instead of a multiplication).
        positions = [xxhash64(key) % size for key, _ in keyed]
        skips = [xxhash64(key, 1) % (size - 1) + 1 for key, _ in keyed]
        targets = [0.0] * count
        slots: list[int] = [-1] * size
        filled = 0
        iteration = 1
        while filled < size:
            for i in range(count):
                if filled >= size:
                    break
                if iteration * own_weights[i] < targets[i]:
                    continue
                targets[i] += max_weight
                skip = skips[i]
                slot = positions[i]
                while slots[slot] != -1:
                    slot += skip
                    if slot >= size:
                        slot -= size
                slots[slot] = i
                slot += skip
                positions[i] = slot - size if slot >= size else slot
                filled += 1
            iteration += 1
        self._table = [owners[i] for i in slots]
        self._built_for.built(hosts)
        if self._gauges is not None:
            counts = Counter(slots)
            fewest, most = self._gauges
            fewest.set(min(counts.get(i, 0) for i in range(count)))
            most.set(max(counts.values()))
