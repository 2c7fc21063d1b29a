"""The stub's servers in this test's own event loop, so its tasks can be counted."""

from __future__ import annotations

import asyncio

from control_plane_stub.probe import XdsProbe
from control_plane_stub.resources import LISTENER_TYPE
from control_plane_stub.server import StubServer
from tests.helpers.waiting import wait_until


async def test_disconnecting_clients_leave_no_tasks_or_streams() -> None:
    server = StubServer("127.0.0.1:0", "127.0.0.1:0")
    bound = await server.start()
    try:
        baseline = len(asyncio.all_tasks())
        for round_number in range(3):
            probes = []
            for index in range(10):
                mode = ("sotw", "delta")[index % 2]
                probe = await XdsProbe(
                    bound["xds"], f"n{round_number}-{index}", mode=mode, ads=index % 3 == 0
                ).start()
                probe.subscribe(LISTENER_TYPE)
                probes.append(probe)
            for probe in probes:
                await probe.next()
            assert server.hub.open_streams() == 10
            # Every client leaves with a push it has not read yet.
            server.hub.set_resources({"listeners": [], "clusters": None}, version="x")
            for probe in probes:
                await probe.close()
            await wait_until(lambda: server.hub.open_streams() == 0)
            await wait_until(lambda: len(asyncio.all_tasks()) <= baseline)
        assert server.hub.cache.stream_count() == 0
        assert server.hub.cache.status() == {"nodes": []}
    finally:
        await server.stop(None)
