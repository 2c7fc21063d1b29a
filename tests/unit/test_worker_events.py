"""The *events* pair (xds_proxy/workers/channel.py `Events`) over a real UNIX socket pair:
messages cross both ways, a message split over many reads and many messages in one read are
each taken once and whole, and a message that cannot be taken does not stop the ones after it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tests.helpers.waiting import wait_until
from xds_proxy.workers.channel import Events, encode


async def test_messages_cross_both_ways_whole_and_in_order() -> None:
    ours, theirs = socket.socketpair()
    main_got: list[Any] = []
    worker_got: list[Any] = []
    main, worker = Events(main_got.append), Events(worker_got.append)
    await main.attach(ours)
    await worker.attach(theirs)
    big = {"health": {"v": {f"10.0.0.{i}:80": i % 16 for i in range(5000)}}}
    main.send(big)
    main.send({"gone": ["v"]})
    worker.send({"outcomes": {"v": {"10.0.0.1:80": [503, 200, -1]}}})
    await wait_until(lambda: len(worker_got) == 2 and len(main_got) == 1)
    assert worker_got == [big, {"gone": ["v"]}]
    assert main_got == [{"outcomes": {"v": {"10.0.0.1:80": [503, 200, -1]}}}]
    main.close()
    worker.close()


async def test_a_bad_message_is_skipped_and_split_reads_are_joined() -> None:
    ours, theirs = socket.socketpair()
    got: list[Any] = []

    def take(message: Any) -> None:
        if message == "explode":
            raise ValueError("cannot take it")
        got.append(message)

    events = Events(take)
    await events.attach(ours)
    theirs.setblocking(True)
    data = b"not json\n" + encode("explode") + encode({"a": 1}) + encode({"b": 2})
    for i in range(0, len(data), 3):  # three bytes a write
        theirs.sendall(data[i : i + 3])
        await asyncio.sleep(0)
    await wait_until(lambda: len(got) == 2)
    assert got == [{"a": 1}, {"b": 2}]
    events.close()
    theirs.close()
