"""Counts kept across worker processes (`listener/shared_count.py`): the global connection
limit's cells and the `connection_limit` filters' keyed table."""

from __future__ import annotations

import os

from xds_proxy.listener.shared_count import TABLE_ROWS, SharedCount, SharedCounts


def test_a_filter_count_is_shared_by_the_workers_and_a_dead_workers_cells_empty() -> None:
    table = SharedCounts.create(2)
    first, second = SharedCounts(table.fd, 2, 0), SharedCounts(table.fd, 2, 1)
    assert first.admit(7, 2) is True
    assert second.admit(7, 2) is True
    assert second.admit(7, 2) is False  # over the limit, and still counted until it closes
    second.add(7, -1)
    assert first.admit(7, 2) is False  # 2 held: worker 0's one and worker 1's one
    assert second.admit(8, 2) is True  # another filter counts apart
    table.clear(1)  # worker 1 died
    assert first.admit(7, 3) is True  # only worker 0's 2 are left
    first.add(7, -1)


def test_a_row_counting_nothing_is_taken_by_another_key() -> None:
    table = SharedCounts.create(1)
    worker = SharedCounts(table.fd, 1, 0)
    for key in range(1, TABLE_ROWS + 1):
        assert worker.admit(key, 5) is True
    assert worker.admit(TABLE_ROWS + 1, 5) is None  # full: the caller counts alone
    worker.add(3, -1)  # key 3 counts nothing now
    assert worker.admit(TABLE_ROWS + 1, 5) is True


def test_the_global_cells_exclude_each_other_across_processes() -> None:
    count = SharedCount.create(2)
    children = []
    for mine in range(2):
        pid = os.fork()
        if pid == 0:
            worker = SharedCount(count.fd, 2, mine)
            granted = sum(worker.try_add(3000) for _ in range(2500))
            os._exit(0 if granted <= 2500 else 1)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert count.total() == 3000  # never more than the limit, however the adds interleave
