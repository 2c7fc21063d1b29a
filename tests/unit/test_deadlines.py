"""Route timeouts sharing one loop timer per duration (upstream/deadlines.py), on a real loop."""

from __future__ import annotations

import asyncio

from tests.helpers.waiting import wait_until
from xds_proxy.upstream.deadlines import DeadlineQueue, Deadlines


def test_each_armed_entry_fires_once_at_its_deadline_and_cancelled_ones_never() -> None:
    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        queue = DeadlineQueue(loop, 0.05)
        armed_at = {}
        for name in ("a", "b", "c"):
            armed_at[name] = loop.time()
            queue.add(lambda name=name: fired.append((name, loop.time() - armed_at[name])))
            await asyncio.sleep(0.01)
        cancelled = queue.add(lambda: fired.append(("cancelled", 0.0)))
        cancelled.cancel()
        armed_at["d"] = loop.time()
        queue.add(lambda: fired.append(("d", loop.time() - armed_at["d"])))
        # The last one armed: any entry that fires at all has fired before it.
        await wait_until(lambda: any(name == "d" for name, _ in fired), what="d fired")
        return fired

    fired = asyncio.run(scenario())
    assert [name for name, _ in fired] == ["a", "b", "c", "d"]
    for _, waited in fired:
        assert waited >= 0.05 - 0.002  # (the loop's clock has millisecond timers)


def test_a_cancelled_head_is_skipped_and_the_next_entry_still_fires() -> None:
    async def scenario() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        fired: list[str] = []
        queue = DeadlineQueue(loop, 0.03)
        first = queue.add(lambda: fired.append("first"))
        await asyncio.sleep(0.01)
        second_armed = loop.time()
        second_fired = []
        queue.add(lambda: (fired.append("second"), second_fired.append(loop.time())))
        first.cancel()  # the loop timer stays at the first deadline, then moves on
        await wait_until(lambda: second_fired, what="the second fired")
        return fired, second_fired[0] - second_armed

    fired, waited = asyncio.run(scenario())
    assert fired == ["second"]
    assert waited >= 0.03 - 0.002


def test_cancelled_entries_at_the_head_are_dropped_as_new_ones_come() -> None:
    async def scenario() -> int:
        queue = DeadlineQueue(asyncio.get_running_loop(), 10.0)
        for _ in range(1000):
            queue.add(lambda: None).cancel()
        return len(queue)

    assert asyncio.run(scenario()) == 1  # only the last one, cancelled after it was added


def test_a_callback_that_arms_again_gets_a_timer() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        queue = DeadlineQueue(loop, 0.02)

        def again(round_: int) -> None:
            fired.append(round_)
            if round_ < 3:
                queue.add(lambda: again(round_ + 1))

        queue.add(lambda: again(1))
        await wait_until(lambda: len(fired) == 3, what="three rounds")
        return fired

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_deadlines_keep_one_queue_per_duration_and_start_over_on_another_loop() -> None:
    deadlines = Deadlines()

    async def scenario() -> list[str]:
        fired: list[str] = []
        deadlines.arm(0.04, lambda: fired.append("slow"))
        deadlines.arm(0.01, lambda: fired.append("fast"))
        await wait_until(lambda: len(fired) == 2, what="both fired")
        return fired

    assert asyncio.run(scenario()) == ["fast", "slow"]
    assert asyncio.run(scenario()) == ["fast", "slow"]  # a new loop, new queues
