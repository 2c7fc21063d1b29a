"""The health checker's state machine against a real local server whose answer we switch:
the first success counts at once, a non-expected status ejects at once, recovery needs
`healthy_threshold` successes, and network failures need `unhealthy_threshold` in a row."""

from __future__ import annotations

import asyncio
import random

from tests.helpers.waiting import wait_until
from xds_proxy.config.health_check import HealthCheckConfig, HttpCheck
from xds_proxy.stats import Stats
from xds_proxy.upstream.health_check import HealthChecker
from xds_proxy.upstream.host import Host


class SwitchableServer:
    """Answers each request with `status`; `refuse()` closes the listening socket."""

    def __init__(self) -> None:
        self.status = 200
        self.requests = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        return self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.status)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def refuse(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


def _config(**overrides: object) -> HealthCheckConfig:
    values: dict = {
        "timeout_s": 1.0,
        "interval_s": 0.02,
        "initial_jitter_s": 0.0,
        "interval_jitter_s": 0.0,
        "interval_jitter_percent": 0,
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
        "no_traffic_interval_s": 0.02,
        "no_traffic_healthy_interval_s": 0.02,
        "unhealthy_interval_s": 0.02,
        "unhealthy_edge_interval_s": 0.02,
        "healthy_edge_interval_s": 0.02,
        "reuse_connection": True,
        "check": HttpCheck("c", "/healthz", ((200, 201),), ()),
    }
    values.update(overrides)
    return HealthCheckConfig(**values)


async def test_thresholds_and_first_check() -> None:
    server = SwitchableServer()
    port = await server.start()
    stats = Stats()
    changes: list[bool] = []
    host = Host(("127.0.0.1", port), health_checked=True)
    checker = HealthChecker(
        "c",
        _config(),
        stats,
        None,
        had_traffic=lambda: True,
        on_change=lambda: changes.append(host.failed_active_hc),
        rng=random.Random(1),
    )
    assert host.health_flags() == "/failed_active_hc/pending_active_hc"
    checker.add_hosts([host])
    try:
        await checker.first_round()
        assert host.health_flags() == "healthy"  # one success, though the threshold is 2
        assert stats.value("cluster.c.health_check.healthy") == 1

        server.status = 503  # neither expected nor retriable: ejected at the next check
        seen = server.requests
        await wait_until(lambda: host.failed_active_hc, 2, "ejected on a 503")
        assert server.requests == seen + 1

        server.status = 200
        seen = server.requests
        await wait_until(lambda: not host.failed_active_hc, 2, "healthy again")
        assert server.requests - seen == 2  # healthy_threshold successes in a row

        await server.refuse()
        failures = stats.value("cluster.c.health_check.network_failure")
        await wait_until(lambda: host.failed_active_hc, 2, "ejected after network failures")
        assert stats.value("cluster.c.health_check.network_failure") - failures == 2
        assert changes == [False, True, False, True]
        assert stats.value("cluster.c.health_check.healthy") == 0
    finally:
        checker.stop()
