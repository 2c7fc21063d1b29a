"""Where access-log lines go: one buffered sink per path (a file, /dev/stdout, /dev/stderr),
shared by every logger writing there. Lines are buffered on the event loop and written by one
background thread, so writing never blocks the loop; a buffer is flushed when it reaches 64
KiB, at least every `flush_interval_s` (`--file-flush-interval-msec`, as Envoy), and at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

FLUSH_SIZE = 64 * 1024
_STANDARD_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}
DEFAULT_FLUSH_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


class LogFile:
    """One path's buffer. The file is opened (append) by the writer thread on first use.

    Lines are added to `buffer` (the bytearray is never replaced); `written()` runs after a
    line that starts the buffer (it arms the flush timer) or that makes it FLUSH_SIZE bytes or
    more (it flushes). A compiled text logger (native.pyx) adds its lines and makes that check
    itself, without a call per line."""

    __slots__ = ("_fd", "_timer", "buffer", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._fd: int | None = fd

    def write(self, line: bytes) -> None:
        buffer = self.buffer
        buffer += line
        if len(buffer) == len(line) or len(buffer) >= FLUSH_SIZE:
            self.written()

    def written(self) -> None:
        """A line started the buffer, or filled it to FLUSH_SIZE."""
        if len(self.buffer) >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FILES.flush_interval_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.buffer:
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        FILES.submit(self._write, data)

    def _write(self, data: bytes) -> None:
        """On the writer thread."""
        try:
            if self._fd is None:  # closed at exit, then written again
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            log.error("access log %s: %s", self.path, error)

    def close(self) -> None:
        """On the writer thread, after the last write."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class AccessLogFiles:
    """Every sink of the process, by path; the server sets the flush interval at start and
    closes (flushes) them all at exit."""

    def __init__(self) -> None:
        self.flush_interval_s = DEFAULT_FLUSH_INTERVAL_S
        self._files: dict[str, LogFile] = {}
        self._executor: ThreadPoolExecutor | None = None

    def get(self, path: str) -> LogFile:
        """The sink of `path`, opened (append, created) the first time, as Envoy does when it
        loads the config; OSError when it cannot be opened."""
        found = self._files.get(path)
        if found is None:
            standard = _STANDARD_STREAMS.get(path)
            if standard is not None:  # the process's own stdout / stderr, whatever they are
                fd = os.dup(standard)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            found = self._files[path] = LogFile(path, fd)
        return found

    def submit(self, write, data: bytes) -> None:  # type: ignore[no-untyped-def]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="access-log")
        self._executor.submit(write, data)

    def flush_all(self) -> None:
        for sink in self._files.values():
            sink.flush()

    def close(self) -> None:
        """Flush every buffer and wait until the writer thread has written them."""
        self.flush_all()
        executor, self._executor = self._executor, None
        if executor is not None:
            for sink in self._files.values():
                executor.submit(sink.close)
            executor.shutdown(wait=True)


# The process's sinks (one per path, shared by every listener's loggers).
FILES = AccessLogFiles()
