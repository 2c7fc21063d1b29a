"""Clocks a test moves by hand, for code that takes its clock from outside.

`ManualClock` is for code that accepts a `clock=` callable (e.g. `LdsClient`'s TTL clock): it
stands still until the test calls `advance()`, and counts its readings, so a test can wait
until the code under test has looked at the time (`await clock.looked_at()`), instead of
sleeping and hoping a timer fired.

`JumpClockLoop` is for code that reads the event loop's own clock (`loop.time()`,
`call_at`, `call_later`, e.g. the HTTP connections' timeouts): an asyncio loop whose clock
runs as usual and can also jump forward, so a 30 s timeout is reached at once, and real
scheduling delays (a loaded machine) stay far below the test's margins. It needs the pure
asyncio loop (uvloop's timers do not go through `time()`). Jump only while nothing awaits a
timeout of its own: a jump expires every timer that it passes.
"""

from __future__ import annotations

import asyncio

from tests.helpers.waiting import wait_until


class ManualClock:
    """Seconds that only move when the test says; starts at an arbitrary reading."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def looked_at(self, timeout: float = 5.0) -> None:
        """Wait until the code reads this clock again (e.g. its timer fired and compared
        deadlines with the current reading). Call it right after `advance()`."""
        seen = self.reads
        await wait_until(lambda: self.reads > seen, timeout, what="the clock to be read")


class JumpClockLoop(asyncio.SelectorEventLoop):
    """The asyncio loop, whose `time()` can be moved forward by `jump()`."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


class JumpClockPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return JumpClockLoop()


async def settle(iterations: int = 5) -> None:
    """Let the loop run a few rounds, so timers that a jump made due have fired."""
    for _ in range(iterations):
        await asyncio.sleep(0)
