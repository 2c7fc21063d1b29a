"""Exit when drained (`POST /drain_and_exit`, SIGTERM with `--drain-on-sigterm`): when may the
process exit? Pure: the time and the connection count are arguments.

It exits as soon as no downstream connection is left (`server.total_connections` is 0), never
before `--min-drain-time-s` has passed, and never after the longest drain deadline among the
listeners (the global drain time, or a listener's own with `applies_to_server_drain`, or an
LDS drain already running): then whatever is left is logged and closed by the exit. A
`--min-drain-time-s` longer than that deadline wins.
"""

from __future__ import annotations

from dataclasses import dataclass

DRAINED = "no connection left"
DEADLINE = "drain deadline"


@dataclass(frozen=True)
class DrainExit:
    started_at: float  # monotonic seconds
    min_drain_s: float
    deadline: float  # monotonic: the longest drain deadline among the listeners

    def decide(self, now: float, connections: int) -> str | None:
        """Why the process exits now, or None to keep waiting."""
        if now < self.started_at + self.min_drain_s:
            return None
        if connections <= 0:
            return DRAINED
        if now >= self.deadline:
            return DEADLINE
        return None

    def next_check_s(self, now: float, poll_s: float) -> float:
        """How long to wait before asking again (at most `poll_s`, not past a boundary)."""
        boundaries = [self.started_at + self.min_drain_s, self.deadline]
        ahead = [moment - now for moment in boundaries if moment > now]
        return max(0.0, min([poll_s, *ahead]))
