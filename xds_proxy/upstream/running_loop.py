"""The running event loop, without a system call per request.

`asyncio.get_running_loop()` checks the process id on every call (a `getpid` system call,
which glibc does not cache): two to three per proxied request. `running_loop()` keeps the
loop it last found and trusts it while that loop is running; it asks asyncio again when that
loop stopped (tests run one loop after another) and after a fork. One process runs one loop
at a time (workers are processes; worker threads run no loop).
"""

from __future__ import annotations

import asyncio
import os

_last: asyncio.AbstractEventLoop | None = None


def running_loop() -> asyncio.AbstractEventLoop:
    """What `asyncio.get_running_loop()` returns (and raises the same outside a loop)."""
    loop = _last
    if loop is not None and loop.is_running():
        return loop
    return _find()


def _find() -> asyncio.AbstractEventLoop:
    global _last
    _last = asyncio.get_running_loop()
    return _last


def _forget() -> None:
    global _last
    _last = None


os.register_at_fork(after_in_child=_forget)
