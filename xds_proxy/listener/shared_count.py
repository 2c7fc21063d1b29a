"""A count that every process of `--concurrency N` adds to: the global connection limit
counts connections across all workers, as Envoy's does across its worker threads.

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
