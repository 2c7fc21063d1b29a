"""The asyncio side of the cache: per-stream outboxes and status-change notification.

The cache decides what to send; the hub puts each response in its stream's outbox and
wakes status watchers whenever the ledger changed. Everything runs on one event loop, so
no locks are needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from envoy.service.discovery.v3 import discovery_pb2

from control_plane_stub.cache import Mode, Response, XdsCache
from control_plane_stub.resources import NamedResource

log = logging.getLogger("control_plane_stub")

CLOSE = None  # the outbox sentinel that ends a stream


class StubHub:
    def __init__(self, cache: XdsCache | None = None):
        self.cache = cache or XdsCache()
        self._outboxes: dict[int, asyncio.Queue[Response | None]] = {}
        self._changed = asyncio.Event()
        self._seen_revision = self.cache.revision

    # ------------------------------------------------------------ streams

    def open_stream(self, mode: Mode, fixed_type: str | None) -> tuple[int, asyncio.Queue]:
        stream_id = self.cache.open_stream(mode, fixed_type)
        outbox: asyncio.Queue[Response | None] = asyncio.Queue()
        self._outboxes[stream_id] = outbox
        return stream_id, outbox

    def close_stream(self, stream_id: int) -> None:
        self._outboxes.pop(stream_id, None)
        self.cache.close_stream(stream_id)
        self._notify()

    def open_streams(self) -> int:
        return len(self._outboxes)

    def handle_request(self, stream_id: int, request) -> None:
        if isinstance(request, discovery_pb2.DeltaDiscoveryRequest):
            responses = self.cache.handle_delta_request(stream_id, request)
        else:
            responses = self.cache.handle_sotw_request(stream_id, request)
        outbox = self._outboxes.get(stream_id)
        if outbox is not None:
            for response in responses:
                outbox.put_nowait(response)
        for event in self.cache.drain_events():
            log.info("stream %d: %s", stream_id, event)
        self._notify()

    # ------------------------------------------------------------ pushes

    def set_resources(
        self,
        sections: dict[str, Sequence[NamedResource] | None],
        node: str | None = None,
        version: str | None = None,
    ) -> dict[str, str]:
        versions, outgoing = self.cache.set_resources(sections, node=node, version=version)
        for stream_id, response in outgoing:
            outbox = self._outboxes.get(stream_id)
            if outbox is not None:
                outbox.put_nowait(response)
        log.info(
            "push%s: %s",
            f" for node {node!r}" if node else "",
            ", ".join(f"{section} {version}" for section, version in versions.items()),
        )
        self._notify()
        return versions

    # ------------------------------------------------------------ status

    def _notify(self) -> None:
        if self.cache.revision == self._seen_revision:
            return
        self._seen_revision = self.cache.revision
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def watch_status(self) -> AsyncIterator[dict]:
        """The status document now, then after every change (coalesced while the
        consumer is busy)."""
        while True:
            changed = self._changed
            yield self.cache.status()
            await changed.wait()
