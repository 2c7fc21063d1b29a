"""Pacing slots shared by worker processes (`listener/shared_pacing.py`): every worker books
on one grid, no slot is given twice, and a paced drain tells at most R a second in all."""

from __future__ import annotations

import os

from xds_proxy.listener.drain import Pacer
from xds_proxy.listener.shared_pacing import ENTRIES, SharedPacing, drain_key

KEY = drain_key("listener", "web", "v1", None, "lds_update", "all")


def shared_pacer(table: SharedPacing, rate: float, start: float, deadline: float) -> Pacer:
    pacer = Pacer(rate / 2, start, deadline)  # a worker's share, until it joins the table
    found = table.slots(KEY, start, deadline)
    assert found is not None
    pacer.share(found[0], found[1], rate)
    return pacer


def test_two_workers_book_on_one_grid_and_never_the_same_slot() -> None:
    table = SharedPacing.create()
    first = shared_pacer(SharedPacing(table.fd), 10.0, 100.0, 110.0)
    # The second worker started its drain a little later: it books on the first one's grid.
    second = shared_pacer(SharedPacing(table.fd), 10.0, 100.04, 110.04)
    assert second.start == 100.0
    told = [first.book(100.0), second.book(100.0), first.book(100.0), second.book(100.25)]
    assert told == [100.0, 100.1, 100.2, 100.3]
    # A response now may close only if the slots around now are free, in any worker.
    assert not second.take_now(100.15)  # 100.1 and 100.2 are taken
    assert first.take_now(100.45) and not second.take_now(100.45)
    assert first.granted + second.granted == 5


def test_the_workers_together_tell_at_most_r_a_second() -> None:
    table = SharedPacing.create()
    workers = [shared_pacer(SharedPacing(table.fd), 50.0, 0.0, 10.0) for _ in range(2)]
    times = sorted(workers[i % 2].book(0.0) for i in range(300))
    for index, at in enumerate(times):
        assert sum(1 for t in times[index:] if t < at + 1.0 - 1e-9) <= 50
    assert times[-1] < 10.0  # 300 tells fit before the deadline at 50 a second
    assert workers[0].book(0.0) < 10.0  # and the 301st too (slot 300 is at 6 s)


def test_a_drain_past_its_deadline_frees_its_entry() -> None:
    table = SharedPacing.create()
    for index in range(ENTRIES):
        assert table.slots(drain_key("drain", index), 0.0, 1.0) is not None  # long over
    assert table.slots(KEY, 5.0, 10.0) is not None


def test_processes_exclude_each_other() -> None:
    table = SharedPacing.create()
    read, write = os.pipe()
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # a worker: book 2,000 tells as fast as it can
            mine = shared_pacer(SharedPacing(table.fd), 1000.0, 0.0, 100.0)
            slots = [round(mine.book(0.0) * 1000) for _ in range(2000)]
            os.write(write, (",".join(map(str, slots)) + "\n").encode())
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    os.close(write)
    with os.fdopen(read) as lines:
        booked = [int(slot) for line in lines for slot in line.strip().split(",")]
    assert sorted(booked) == list(range(4000))  # every slot once, none twice
