"""Pacing slots shared by the worker processes of `--concurrency N`: a paced drain
(`max_closes_per_second` R) tells at most R connections a second in all, whichever worker
holds them.

The main process creates a shared memory file (memfd) with a small table; each entry holds
one running paced drain, found by a key the workers compute alike from the drain's identity
(kind, listener, version, chain, trigger, direction): the first worker to start the drain
claims an entry and writes its start and deadline, the others use that start, so all book on
one grid of 1/R seconds; the taken slots are a bitmap. Every call holds a POSIX record lock
(`lockf`, owned per process) for its check-and-take. An entry whose deadline has passed may be
claimed again. When every entry is in use, or a drain needs more slots than an entry holds, a
worker falls back to its own slots at its share (R / N) of the rate.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import time

from xds_proxy.listener.drain import Slots
from xds_proxy.listener.shared_count import ProcessLock

ENTRIES = 32
SLOTS = 1 << 20  # per drain: R x DT up to about a million tells
_HEADER = struct.Struct("Qdd")  # key, start, deadline (monotonic seconds)
_BITMAP = SLOTS // 8
_ENTRY = _HEADER.size + _BITMAP
_NOT_FULL = re.compile(rb"[^\xff]")


def drain_key(*identity: object) -> int:
    """A drain's key, the same in every process (never 0: 0 marks a free entry)."""
    digest = hashlib.blake2b(repr(identity).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


class SharedPacing:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, ENTRIES * _ENTRY)

    @classmethod
    def create(cls) -> SharedPacing:
        fd = os.memfd_create("xds-proxy-pacing", 0)
        os.ftruncate(fd, ENTRIES * _ENTRY)  # pages are allocated as slots are taken
        return cls(fd)

    def slots(self, key: int, start: float, deadline: float) -> tuple[Slots, float] | None:
        """The shared slots of the drain `key` and the start of their grid; None when the
        table is full."""
        with ProcessLock(self.fd):
            free = None
            for entry in range(ENTRIES):
                held_key, held_start, held_deadline = _HEADER.unpack_from(self._map, entry * _ENTRY)
                if held_key == key:
                    return _SharedSlots(self, entry), held_start
                if free is None and (held_key == 0 or held_deadline < time.monotonic() - 1.0):
                    free = entry
            if free is None:
                return None
            base = free * _ENTRY
            _HEADER.pack_into(self._map, base, key, start, deadline)
            self._map[base + _HEADER.size : base + _ENTRY] = bytes(_BITMAP)
            return _SharedSlots(self, free), start

    # -- the bitmap of one entry (called under the lock) ---------------------------------------

    def _bitmap(self, entry: int) -> int:
        return entry * _ENTRY + _HEADER.size

    def _taken(self, base: int, slot: int) -> bool:
        return bool(self._map[base + slot // 8] & (1 << (slot % 8)))

    def _take(self, base: int, slot: int) -> None:
        self._map[base + slot // 8] |= 1 << (slot % 8)

    def _first_free(self, base: int, slot: int, limit: int) -> int | None:
        limit = min(limit, SLOTS)
        while slot < limit:
            if not self._taken(base, slot):
                return slot
            if slot % 8 == 7:  # at a byte boundary: skip full bytes at C speed
                found = _NOT_FULL.search(self._map, base + slot // 8 + 1, base + _BITMAP)
                if found is None:
                    return None
                slot = (found.start() - base) * 8
                continue
            slot += 1
        return None


class _SharedSlots:
    """One drain's slots in the shared table (the `Slots` port of `drain.py`)."""

    def __init__(self, table: SharedPacing, entry: int) -> None:
        self._table = table
        self._base = table._bitmap(entry)

    def take_first_free(self, slot: int, limit: int) -> int | None:
        with ProcessLock(self._table.fd):
            found = self._table._first_free(self._base, max(slot, 0), limit)
            if found is not None:
                self._table._take(self._base, found)
            return found

    def take_all(self, slots: tuple[int, ...]) -> bool:
        if any(slot < 0 or slot >= SLOTS for slot in slots):
            return False
        with ProcessLock(self._table.fd):
            if any(self._table._taken(self._base, slot) for slot in slots):
                return False
            for slot in slots:
                self._table._take(self._base, slot)
            return True
