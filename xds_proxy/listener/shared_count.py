"""Counts that every process of `--concurrency N` adds to: the global connection limit and
the `connection_limit` filter count connections across all workers, as Envoy's do across
its worker threads.

The count lives in a small shared memory file (a memfd the main process creates and passes to
each worker): one cell per worker, changed under an exclusive lock, so that a worker's
check-and-add is exact against the total of all cells, and a worker that dies (its
connections gone with it) can have its cell emptied by the main process. The lock is a POSIX
record lock (`lockf`): owned by a process, so the processes exclude each other although they
share one open file description.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

_CELL = struct.Struct("q")


class SharedCount:
    def __init__(self, fd: int, cells: int, mine: int = -1) -> None:
        """`fd`: the shared file; `mine`: this worker's cell (-1: the main process)."""
        self.fd = fd
        self._cells = cells
        self._mine = mine
        self._map = mmap.mmap(fd, cells * _CELL.size)

    @classmethod
    def create(cls, cells: int) -> SharedCount:
        fd = os.memfd_create("xds-proxy-connections", 0)  # inherited only through pass_fds
        os.ftruncate(fd, cells * _CELL.size)
        return cls(fd, cells)

    def total(self) -> int:
        with self._locked():
            return self._total()

    def try_add(self, limit: int) -> bool:
        """Add one to this worker's cell unless the total is already `limit`."""
        with self._locked():
            if self._total() >= limit:
                return False
            self._add(self._mine, 1)
            return True

    def subtract(self) -> bool:
        """Take one from this worker's cell; False if it holds none."""
        with self._locked():
            if self._get(self._mine) <= 0:
                return False
            self._add(self._mine, -1)
            return True

    def clear(self, cell: int) -> None:
        """A worker died: what it counted is gone."""
        with self._locked():
            _CELL.pack_into(self._map, cell * _CELL.size, 0)

    def _total(self) -> int:
        return sum(self._get(cell) for cell in range(self._cells))

    def _get(self, cell: int) -> int:
        return _CELL.unpack_from(self._map, cell * _CELL.size)[0]

    def _add(self, cell: int, amount: int) -> None:
        _CELL.pack_into(self._map, cell * _CELL.size, self._get(cell) + amount)

    def _locked(self) -> ProcessLock:
        return ProcessLock(self.fd)


class ProcessLock:
    """An exclusive POSIX record lock on a shared file, held for a `with` block."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


_KEY = struct.Struct("Q")
TABLE_ROWS = 256


class SharedCounts:
    """Counts by key across the workers (the `connection_limit` filter's, one key per filter
    instance): a table of rows, each a key and one cell per worker. A row whose cells are all
    0 counts nothing and may be taken by another key; a dead worker's cells are emptied."""

    def __init__(self, fd: int, cells: int, mine: int = -1) -> None:
        self.fd = fd
        self._cells = cells
        self._mine = mine
        self._row = _KEY.size + cells * _CELL.size
        self._map = mmap.mmap(fd, TABLE_ROWS * self._row)

    @classmethod
    def create(cls, cells: int) -> SharedCounts:
        fd = os.memfd_create("xds-proxy-limits", 0)
        os.ftruncate(fd, TABLE_ROWS * (_KEY.size + cells * _CELL.size))
        return cls(fd, cells)

    def admit(self, key: int, limit: int) -> bool | None:
        """Count one more connection under `key` in this worker; whether the total before
        it was under `limit` (None: the table is full, the caller counts alone)."""
        with ProcessLock(self.fd):
            row = self._find(key, claim=True)
            if row is None:
                return None
            total = self._total(row)
            self._add(row, 1)
            return total < limit

    def add(self, key: int, amount: int) -> None:
        with ProcessLock(self.fd):
            row = self._find(key, claim=amount > 0)
            if row is not None:
                self._add(row, amount)

    def clear(self, cell: int) -> None:
        with ProcessLock(self.fd):
            for row in range(TABLE_ROWS):
                _CELL.pack_into(self._map, self._cell_at(row, cell), 0)

    def _find(self, key: int, claim: bool) -> int | None:
        free = None
        for row in range(TABLE_ROWS):
            if _KEY.unpack_from(self._map, row * self._row)[0] == key:
                return row
            if free is None and claim and self._total(row) == 0:
                free = row
        if free is not None:
            _KEY.pack_into(self._map, free * self._row, key)
        return free

    def _cell_at(self, row: int, cell: int) -> int:
        return row * self._row + _KEY.size + cell * _CELL.size

    def _total(self, row: int) -> int:
        return sum(
            _CELL.unpack_from(self._map, self._cell_at(row, cell))[0] for cell in range(self._cells)
        )

    def _add(self, row: int, amount: int) -> None:
        at = self._cell_at(row, self._mine)
        value = _CELL.unpack_from(self._map, at)[0] + amount
        _CELL.pack_into(self._map, at, max(value, 0))
