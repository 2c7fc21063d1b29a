"""`running_loop()` answers as `asyncio.get_running_loop()`: inside one loop, in the next
loop run after it, and (raising) outside any loop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from xds_proxy.upstream.running_loop import running_loop


async def _both() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
    first = running_loop()
    await asyncio.sleep(0)
    second = running_loop()
    assert first is second is asyncio.get_running_loop()
    return first, second


def test_the_running_loop_then_the_next_one() -> None:
    seen = []
    for run in (asyncio.run, uvloop.run, asyncio.run):
        first, second = run(_both())
        assert first is second
        seen.append(first)
    assert seen[0] is not seen[1] and seen[1] is not seen[2]


def test_outside_a_loop_raises_as_asyncio() -> None:
    asyncio.run(_both())  # a loop found, then closed
    with pytest.raises(RuntimeError):
        running_loop()
