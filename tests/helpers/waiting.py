"""Wait for a condition inside the test's event loop, up to a deadline that fails clearly.

    await wait_until(lambda: stats.value("x") == 1, what="x counted")

The synchronous twin, for tests that drive real processes, is `tests.helpers.procs.wait_for`.
Every poll in the tests goes through one of the two: a condition that never comes true fails
the test with its name instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

DEFAULT_TIMEOUT_S = 5.0


async def wait_until(
    condition: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "",
    interval: float = 0.005,
) -> None:
    """Poll `condition` (checked at once, then every `interval` seconds) until it is truthy;
    raise TimeoutError naming `what` after `timeout` seconds of the loop's clock.
    `interval=0` yields to the loop between checks without sleeping."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(interval)
