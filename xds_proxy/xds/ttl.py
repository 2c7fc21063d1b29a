"""Resource TTL bookkeeping (`Resource.ttl`), pure: the caller passes the clock's readings.

A resource that arrives with a TTL must be refreshed (sent again, or as a heartbeat: the
`Resource` without its body) before the TTL runs out; otherwise Envoy removes it as if the
control plane had deleted it. A resource that arrives without a TTL clears its deadline. The
transport arms one timer for `next_deadline()` and calls `pop_expired()` when it fires.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import duration_pb2


def ttl_seconds(resource_ttl: duration_pb2.Duration) -> float:
    return resource_ttl.ToNanoseconds() / 1e9


class TtlTracker:
    """Deadlines (in the caller's clock, seconds) of the resources that carry a TTL."""

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._deadlines

    def __len__(self) -> int:
        return len(self._deadlines)

    def deadline(self, name: str) -> float | None:
        return self._deadlines.get(name)

    def refresh(self, name: str, ttl_s: float | None, now: float) -> None:
        """The resource arrived: with a TTL its deadline moves to now + ttl, without one it
        no longer expires."""
        if ttl_s is None:
            self._deadlines.pop(name, None)
        else:
            self._deadlines[name] = now + ttl_s

    def clear(self, names: Iterable[str]) -> None:
        """The resources are gone (removed by the server, or expired)."""
        for name in names:
            self._deadlines.pop(name, None)

    def clear_all(self) -> None:
        self._deadlines.clear()

    def next_deadline(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def pop_expired(self, now: float) -> list[str]:
        """The names whose deadline has passed (sorted), forgotten here."""
        expired = sorted(name for name, due in self._deadlines.items() if due <= now)
        self.clear(expired)
        return expired
