"""The main process's control client of a worker (xds_proxy/workers/channel.py) over a real
UNIX socket pair: an answer that comes after its ask timed out is not taken as the answer to
the next ask (a worker still starting, or busy, answers late)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from xds_proxy.workers.channel import ControlClient, encode


async def _late_first_answer() -> list[object]:
    ours, theirs = socket.socketpair()
    client = await ControlClient.open(ours)
    reader, writer = await asyncio.open_unix_connection(sock=theirs)
    release = asyncio.Event()

    async def worker() -> None:  # answers in order, the first one only once released
        while line := await reader.readline():
            request = json.loads(line)
            if request["n"] == 1:
                await release.wait()
            answer = {"answer_to": request["n"]}
            writer.write(encode({"id": request["id"], "answer": answer}))  # as xds_proxy/worker.py

    serving = asyncio.create_task(worker())
    answers: list[object] = []
    with pytest.raises(TimeoutError):
        await client.ask({"n": 1}, timeout_s=0.05)
    release.set()
    answers.append(await client.ask({"n": 2}, timeout_s=5))
    answers.append(await client.ask({"n": 3}, timeout_s=5))
    client.close()
    writer.close()
    serving.cancel()
    return answers


def test_an_answer_after_its_timeout_is_not_the_next_asks_answer() -> None:
    assert asyncio.run(_late_first_answer()) == [{"answer_to": 2}, {"answer_to": 3}]
