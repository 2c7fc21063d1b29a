"""A least-recently-used cache bounded in entries and in the bytes its keys hold, and the
relative paths that let one cached check serve every place the same bytes appear.

Compiling a listener repeats work for every chain that carries the same bytes (10,000 chains
with one HCM are common): results keyed by those bytes are computed once and kept across
updates, within bounds, since a control plane may send endless distinct configs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-used map bounded in entries and in the bytes its keys hold."""

    @classmethod
    def for_config_bytes(cls) -> BoundedCache:
        """The bounds every compile cache uses: 256 distinct contents, keys of 8 MiB in all.
        Enough for the chains of one update and the next; small enough that endless distinct
        pushes cannot grow the process by more than a few MiB per cache."""
        return cls(max_entries=256, max_bytes=8 * 1024 * 1024)

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, size: int) -> None:
        """`size`: the bytes the key holds (a key larger than the whole budget is not kept)."""
        if size > self.max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= previous[1]
        self._entries[key] = (value, size)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


# Paths inside a cached result start with this marker, replaced by the real path on use.
RELATIVE_ROOT = "\x00"


def relocate(lines: tuple[str, ...], path: str) -> list[str]:
    """Lines computed under RELATIVE_ROOT, as if computed under `path` (not empty)."""
    return [path + line[1:] for line in lines]


def cached(cache: BoundedCache[K, V], key: K, size: int, compute: Callable[[], V]) -> V:
    """`cache[key]`, computed (and kept, `size` bytes) on a miss."""
    found = cache.get(key)
    if found is None:
        found = compute()
        cache.put(key, found, size)
    return found
