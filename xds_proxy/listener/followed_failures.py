"""A worker process of `--concurrency N` runs no initial fetch timers for its route
configurations and secrets: a name fails there when the main process says its copy failed
(NACK, initial fetch timeout), so that a warming listener goes on at the same moment in every
process. The route registry and the secret store share this bookkeeping (pure: no I/O).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from xds_proxy.listener.actions import RouteState


class _Entry(Protocol):
    state: RouteState


class FollowedFailures:
    def __init__(self, entries: Mapping[str, _Entry], failed: Callable[[str], None]) -> None:
        """`entries`: the owner's subscribed names; `failed(name)`: emit its failure event."""
        self._entries = entries
        self._failed = failed
        self._before_watched: set[str] = set()  # failed in main before any user here

    def state(self, name: str) -> RouteState:
        """The listener manager's read port: a name nobody watches yet is PENDING, unless
        the main process already failed it."""
        entry = self._entries.get(name)
        if entry is None:
            return RouteState.FAILED if name in self._before_watched else RouteState.PENDING
        return entry.state

    def fail(self, name: str) -> None:
        """The main process's copy of `name` failed: the versions waiting for it here go on
        as they did there."""
        entry = self._entries.get(name)
        if entry is None:
            self._before_watched.add(name)
        elif entry.state is RouteState.PENDING:
            entry.state = RouteState.FAILED
            self._failed(name)

    def watched(self, name: str, entry: _Entry) -> None:
        """A new entry for `name`: FAILED if the main process failed it before."""
        if name in self._before_watched:
            self._before_watched.discard(name)
            entry.state = RouteState.FAILED
