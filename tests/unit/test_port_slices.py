"""tests/helpers/procs: each pytest-xdist worker hands out ports from its own slice, so two
workers never give the same port to listeners that have not bound it yet."""

from __future__ import annotations

from tests.helpers.procs import worker_slice


def test_outside_xdist_the_whole_range() -> None:
    assert worker_slice(10000, 32768, {}) == (10000, 32768)
    assert worker_slice(10000, 32768, {"PYTEST_XDIST_WORKER": "gw0"}) == (10000, 32768)


def test_one_worker_gets_the_whole_range() -> None:
    environ = {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"}
    assert worker_slice(10000, 32768, environ) == (10000, 32768)


def test_workers_get_disjoint_slices_inside_the_range() -> None:
    slices = [
        worker_slice(
            10000, 32768, {"PYTEST_XDIST_WORKER": f"gw{i}", "PYTEST_XDIST_WORKER_COUNT": "3"}
        )
        for i in range(3)
    ]
    assert slices == [(10000, 17589), (17589, 25178), (25178, 32767)]  # end-exclusive
