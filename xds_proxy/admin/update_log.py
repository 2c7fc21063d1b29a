"""The last LDS update outcomes, for the admin page: what was pushed, ACK or NACK, and why."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

UPDATE_LOG_SIZE = 32


class LdsUpdateLog:
    """The last `size` LDS update outcomes, newest last (a ring buffer: old ones fall off)."""

    def __init__(self, size: int = UPDATE_LOG_SIZE, clock: Callable[[], float] = time.time):
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._clock = clock

    def record(
        self,
        kind: str,
        version_info: str,
        error: str | None,
        updated: int,
        removed: int = 0,
    ) -> None:
        """One applied response: `kind` is "sotw", "delta" or "ttl" (a local TTL expiry)."""
        self._entries.append(
            {
                "at": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds"),
                "kind": kind,
                "version_info": version_info,
                "outcome": "ACK" if error is None else "NACK",
                "error": (error or "").strip(),
                "updated": updated,
                "removed": removed,
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)
