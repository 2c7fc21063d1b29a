"""Route timeouts without a loop timer per request.

A forwarded request's route timeout runs from the moment the request is complete; nearly
every one is disarmed, long before it would fire, when the response ends. A loop timer per
request (`call_later`, then `cancel`) costs a timer handle made, started, stopped and freed
each time. Timeouts of one duration expire in the order they were armed, so one FIFO per
duration and one loop timer (at its earliest entry) serve them all: arming is an append,
disarming clears the entry (and with it the reference to the exchange), and the timer calls
each entry that is still armed once the loop's clock reaches its deadline, as its own
`call_later` would have.

Entries disarmed behind one still armed wait in the FIFO until it goes, at most one duration.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from xds_proxy.upstream.running_loop import running_loop


class Deadline:
    """One armed timeout; `cancel()` disarms it."""

    __slots__ = ("at", "callback")

    def __init__(self, at: float, callback: Callable[[], object]) -> None:
        self.at = at
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        self.callback = None


class DeadlineQueue:
    """The armed timeouts of one duration on one loop, earliest first."""

    __slots__ = ("_duration", "_entries", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, duration: float) -> None:
        self._loop = loop
        self._duration = duration
        self._entries: collections.deque[Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, callback: Callable[[], object]) -> Deadline:
        """Call `callback` one duration from now, unless the returned entry is cancelled."""
        entries = self._entries
        while entries and entries[0].callback is None:
            entries.popleft()
        entry = Deadline(self._loop.time() + self._duration, callback)
        entries.append(entry)
        if self._timer is None:
            self._timer = self._loop.call_at(entry.at, self._expire)
        return entry

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        entries = self._entries
        now = loop.time()
        while entries:
            entry = entries[0]
            callback = entry.callback
            if callback is None:
                entries.popleft()
                continue
            if entry.at > now:
                if self._timer is None:  # (a callback may have armed it already)
                    self._timer = loop.call_at(entry.at, self._expire)
                return
            entries.popleft()
            entry.callback = None
            callback()


class Deadlines:
    """The queues of the running loop, one per duration."""

    __slots__ = ("_loop", "_queues")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[float, DeadlineQueue] = {}

    def arm(self, duration: float, callback: Callable[[], object]) -> Deadline:
        loop = running_loop()
        if loop is not self._loop:
            # Another loop (tests run several, one after the other): the old queues keep
            # their own loop and timers.
            self._loop = loop
            self._queues = {}
        queue = self._queues.get(duration)
        if queue is None:
            queue = self._queues[duration] = DeadlineQueue(loop, duration)
        return queue.add(callback)


def recheck_idle(
    busy: bool, idle_since: float, timeout: float, fire: Callable[[float], None]
) -> asyncio.TimerHandle | None:
    """An upstream connection's idle timer (armed once, not per request) has fired: armed
    again, and returned, while the connection is busy or was busy less than `timeout` ago;
    None once it has been idle `timeout` (the caller closes it)."""
    loop = running_loop()
    if busy:
        return loop.call_later(timeout, fire, timeout)
    remaining = idle_since + timeout - loop.time()
    if remaining > 0:
        return loop.call_later(remaining, fire, timeout)
    return None
