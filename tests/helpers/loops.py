"""Run a test module on both event loops: the proxy runs on uvloop, whose transports differ
from asyncio's in ways that matter (when reading starts, what `get_extra_info` returns).

    from tests.helpers.loops import event_loop_policy  # noqa: F401 - a fixture

pytest-asyncio 1.x deprecates overriding `event_loop_policy`; its replacement hook would
parametrize every async test of the suite, so the modules that want both loops ask here.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop


@pytest.fixture(
    scope="module",
    params=[asyncio.DefaultEventLoopPolicy, uvloop.EventLoopPolicy],
    ids=["asyncio", "uvloop"],
)
def event_loop_policy(request):
    return request.param()
