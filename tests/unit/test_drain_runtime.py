"""How the listener runtime carries out the drain manager's drains, with an injected clock
and random source and fake connections: which drains cover a chain, the idle schedule of
pushes, finalisation on last close or at the deadline, `/drain_status` records and the
`drain complete` log line. No sockets are bound."""

from __future__ import annotations

import asyncio
import json
import logging
import random

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2

from tests.helpers.waiting import wait_until
from tests.unit.listener_fixtures import WiredListeners, listener, wired_listeners
from xds_proxy.listener.drain_manager import HEALTH_SCOPE
from xds_proxy.listener.instance import ChainRuntime, ListenerInstance
from xds_proxy.listener.manager import DrainListener, DrainTrigger


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class FixedDraw(random.Random):
    """`random()` (and so `uniform(a, b)` = a + (b - a) * random()) always the same draw."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class FakeConnection:
    """Records what the runtime pushes to it, and when (event-loop time)."""

    def __init__(self, chain: ChainRuntime) -> None:
        self.chain = chain
        self.told_at: float | None = None
        self.cut_at_deadline = False

    def on_drain(self) -> None:
        self.told_at = asyncio.get_running_loop().time()

    def close_at_deadline(self) -> None:
        self.cut_at_deadline = True

    def open(self) -> FakeConnection:
        self.chain._register(self)
        return self

    def close(self) -> None:
        self.chain._unregister(self)


class Runtime:
    """The wired listener parts, with the few calls these tests make."""

    def __init__(self, wired: WiredListeners, rng: FixedDraw) -> None:
        self.wired = wired
        self.drains = wired.drains
        self.instances = wired.runtime.instances
        self.rng = rng

    async def execute(self, actions) -> None:
        await self.wired.runtime.execute(actions)

    def drain_report(self) -> list[dict]:
        return self.wired.runtime.drain_report()

    def set_health(self, failed: bool) -> None:
        """As the server: the drain manager decides, the runtime counts the connections."""
        self.drains.set_health(failed, self.wired.runtime.connections(HEALTH_SCOPE))

    async def start_admin_drain(self, inbound_only: bool) -> bool:
        actions = self.drains.start_admin_drain(inbound_only, stop_listeners=False)
        await self.execute(actions)
        return bool(actions)


def make_runtime(
    strategy: str = "immediate", drain_time_s: float = 10.0, draw: float = 0.5
) -> tuple[Runtime, FakeClock]:
    clock, rng = FakeClock(), FixedDraw(draw)
    wired = wired_listeners(strategy, drain_time_s, clock=clock, rng=rng)
    return Runtime(wired, rng), clock


def add_instance(
    runtime: Runtime, version_id: int, name: str = "web", **fields
) -> ListenerInstance:
    compiler = runtime.wired.compiler
    compiler.compile(version_id, listener(name, 10000 + version_id, **fields))
    instance = compiler.take(version_id)
    assert instance is not None
    instance.version_info = f"v{version_id}"
    runtime.instances[version_id] = instance
    return instance


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


# -- which drains cover a chain --------------------------------------------------------------


async def test_nothing_draining_never_closes() -> None:
    runtime, _ = make_runtime()
    instance = add_instance(runtime, 1)
    assert instance.chains[0].drain_close() is False


async def test_listener_drain_covers_every_chain_with_the_ramp() -> None:
    runtime, clock = make_runtime("gradual", drain_time_s=4, draw=0.4)
    instance = add_instance(runtime, 1)
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_UPDATE)])
    chain = instance.chains[0]
    assert chain.drain_close() is False  # t = 0: p = 0
    clock.now += 1.0  # p = 1 / 2 and the draw is 0.4
    assert chain.drain_close() is True
    runtime.rng.value = 0.6
    assert chain.drain_close() is False
    clock.now += 1.0  # p = 1
    assert chain.drain_close() is True


async def test_health_failure_closes_default_listeners_only_and_at_once() -> None:
    runtime, _ = make_runtime("gradual")
    default = add_instance(runtime, 1, "default")
    modify_only = add_instance(
        runtime, 2, "modify_only", drain_type=listener_pb2.Listener.MODIFY_ONLY
    )
    runtime.set_health(failed=True)
    assert default.chains[0].drain_close() is True  # even with gradual at t = 0
    assert modify_only.chains[0].drain_close() is False
    runtime.set_health(failed=False)
    assert default.chains[0].drain_close() is False


async def test_admin_inbound_only_drain_covers_inbound_listeners_only() -> None:
    runtime, _ = make_runtime("immediate")
    inbound = add_instance(runtime, 1, "in", traffic_direction=base_pb2.INBOUND)
    outbound = add_instance(runtime, 2, "out", traffic_direction=base_pb2.OUTBOUND)
    unspecified = add_instance(runtime, 3, "any")
    conns = {i: FakeConnection(i.chains[0]).open() for i in (inbound, outbound, unspecified)}
    assert await runtime.start_admin_drain(inbound_only=True)
    await settle()
    assert inbound.chains[0].drain_close() is True
    assert outbound.chains[0].drain_close() is False
    assert unspecified.chains[0].drain_close() is False
    assert conns[inbound].told_at is not None
    assert conns[outbound].told_at is None and conns[unspecified].told_at is None
    [record] = runtime.drain_report()
    assert record["direction"] == "inbound_only" and record["connections"] == 1


async def test_a_second_admin_drain_is_a_no_op() -> None:
    runtime, clock = make_runtime("gradual", drain_time_s=10)
    add_instance(runtime, 1)
    assert await runtime.start_admin_drain(inbound_only=False)
    [running] = runtime.drains.admin_drains
    clock.now += 3
    assert not await runtime.start_admin_drain(inbound_only=False)
    assert not await runtime.start_admin_drain(inbound_only=True)
    assert runtime.drains.admin_drains == [running]  # the ramp keeps its own start and deadline
    assert len(runtime.drain_report()) == 1


async def test_drain_of_all_after_an_inbound_only_drain_widens_it() -> None:
    """Envoy starts an ALL drain when only an INBOUND_ONLY one runs; the inbound listeners'
    connections keep the ramp of the first drain, the outbound ones ramp from the second."""
    runtime, clock = make_runtime("gradual", drain_time_s=10, draw=0.3)
    inbound = add_instance(runtime, 1, "in", traffic_direction=base_pb2.INBOUND)
    outbound = add_instance(runtime, 2, "out", traffic_direction=base_pb2.OUTBOUND)
    assert await runtime.start_admin_drain(True)
    clock.now += 2  # the inbound drain is at p = 2 / 5
    assert await runtime.start_admin_drain(False)
    assert not await runtime.start_admin_drain(True)
    assert inbound.chains[0].drain_close() is True  # 0.3 < 0.4: the first drain's ramp
    assert outbound.chains[0].drain_close() is False  # the new drain is at t = 0
    assert [r["direction"] for r in runtime.drain_report()] == ["inbound_only", "all"]


async def test_admin_ramp_uses_the_running_drains_deadline_for_inbound_listeners() -> None:
    """Envoy looks up a per-direction deadline and an ALL drain is instant for INBOUND
    listeners there; ours ramps for every listener the running drain covers."""
    runtime, clock = make_runtime("gradual", drain_time_s=10, draw=0.5)
    inbound = add_instance(runtime, 1, "in", traffic_direction=base_pb2.INBOUND)
    await runtime.start_admin_drain(inbound_only=False)
    assert inbound.chains[0].drain_close() is False  # t = 0
    clock.now += 3  # p = 3 / 5 = 0.6 > 0.5
    assert inbound.chains[0].drain_close() is True


# -- pushes on the idle schedule -------------------------------------------------------------


async def test_immediate_drain_tells_every_connection_at_once() -> None:
    runtime, _ = make_runtime("immediate")
    instance = add_instance(runtime, 1)
    conns = [FakeConnection(instance.chains[0]).open() for _ in range(5)]
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_REMOVE)])
    assert all(conn.told_at is not None for conn in conns)


async def test_gradual_drain_tells_each_connection_at_its_drawn_moment() -> None:
    runtime, _ = make_runtime("gradual", drain_time_s=0.4, draw=0.5)  # moment: DT/4 = 0.1 s
    instance = add_instance(runtime, 1)
    conn = FakeConnection(instance.chains[0]).open()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_UPDATE)])
    assert conn.told_at is None
    await wait_until(lambda: conn.told_at is not None, 2)
    assert 0.08 <= conn.told_at - started < 0.2  # the timer fired at about DT/4


async def test_connection_closed_before_its_moment_is_never_told() -> None:
    runtime, _ = make_runtime("gradual", drain_time_s=0.4, draw=0.99)
    instance = add_instance(runtime, 1)
    early, late = (FakeConnection(instance.chains[0]).open() for _ in range(2))
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_UPDATE)])
    early.close()
    await wait_until(lambda: late.told_at is not None, 2)
    assert early.told_at is None


async def test_connection_opened_during_an_admin_drain_is_told_too() -> None:
    runtime, _ = make_runtime("immediate")
    instance = add_instance(runtime, 1)
    await runtime.start_admin_drain(inbound_only=False)
    newcomer = FakeConnection(instance.chains[0]).open()
    assert newcomer.told_at is not None


async def test_health_failure_pushes_nothing() -> None:
    """`/healthcheck/fail` is a decision on each response (Envoy's live flag), not a drain
    that closes idle connections."""
    runtime, _ = make_runtime("immediate")
    instance = add_instance(runtime, 1)
    conn = FakeConnection(instance.chains[0]).open()
    runtime.set_health(failed=True)
    await settle()
    assert conn.told_at is None
    [record] = runtime.drain_report()
    assert record["trigger"] == "healthcheck_fail" and record["connections"] == 1


# -- finalisation ------------------------------------------------------------------------------


async def test_listener_drain_finalises_on_last_close(caplog) -> None:
    runtime, _ = make_runtime("immediate", drain_time_s=30)
    instance = add_instance(runtime, 1)
    conns = [FakeConnection(instance.chains[0]).open() for _ in range(2)]
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_UPDATE)])
    [record] = runtime.drain_report()
    assert record["kind"] == "listener" and record["listener"] == "web"
    assert record["trigger"] == "lds_update" and record["connections"] == 2
    assert record["version_info"] == "v1" and record["strategy"] == "immediate"
    conns[0].close()
    assert runtime.drain_report()[0]["connections"] == 1
    assert 1 in runtime.instances
    with caplog.at_level(logging.INFO, logger="xds_proxy.listener"):
        conns[1].close()
    assert runtime.drain_report() == []
    assert 1 not in runtime.instances  # finalised long before the 30 s deadline
    assert not any(conn.cut_at_deadline for conn in conns)
    [line] = [r.getMessage() for r in caplog.records if "drain complete" in r.getMessage()]
    done = json.loads(line.split("drain complete: ", 1)[1])
    assert done["outcome"] == "last connection closed" and done["connections"] == 0
    assert done["listener"] == "web" and done["trigger"] == "lds_update"


async def test_listener_drain_without_connections_finalises_at_once() -> None:
    runtime, _ = make_runtime("gradual", drain_time_s=30)
    add_instance(runtime, 1)
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_REMOVE)])
    await settle()
    assert runtime.drain_report() == []
    assert 1 not in runtime.instances


async def test_deadline_cuts_the_rest_and_finalises(caplog) -> None:
    runtime, _ = make_runtime("gradual", drain_time_s=0.15, draw=0.99)
    instance = add_instance(runtime, 1)
    conn = FakeConnection(instance.chains[0]).open()
    with caplog.at_level(logging.INFO, logger="xds_proxy.listener"):
        await runtime.execute([DrainListener(1, DrainTrigger.LDS_UPDATE)])
        await wait_until(lambda: not runtime.drain_report(), 2)
    assert conn.cut_at_deadline
    assert conn.told_at is not None  # told (at DT/2 at the latest) before being cut
    assert any('"outcome": "deadline"' in r.getMessage() for r in caplog.records)


async def test_drain_status_times_are_rfc3339_and_elapsed_follows_the_clock() -> None:
    runtime, clock = make_runtime("gradual", drain_time_s=3)
    instance = add_instance(runtime, 1)
    FakeConnection(instance.chains[0]).open()
    await runtime.execute([DrainListener(1, DrainTrigger.LDS_UPDATE)])
    clock.now += 1.25
    [record] = runtime.drain_report()
    assert record["elapsed_s"] == 1.25
    assert record["started_at"].endswith("Z") and record["deadline"].endswith("Z")
    assert record["started_at"] < record["deadline"]
    assert set(record) == {
        "kind",
        "listener",
        "version_info",
        "filter_chain",
        "trigger",
        "direction",
        "strategy",
        "started_at",
        "deadline",
        "elapsed_s",
        "connections",
        "policy",  # the values the drain runs under (issue 24)
    }


async def test_healthcheck_ok_ends_the_health_record() -> None:
    runtime, _ = make_runtime()
    add_instance(runtime, 1)
    runtime.set_health(failed=True)
    runtime.set_health(failed=True)  # a second fail changes nothing
    assert len(runtime.drain_report()) == 1
    runtime.set_health(failed=False)
    assert runtime.drain_report() == []


# -- server-wide drains end through the action pipeline ---------------------------------------


async def test_graceful_admin_drain_stops_the_listeners_at_the_deadline() -> None:
    """`/drain_listeners?graceful`: at DT the drain manager ends the drain, the listener
    manager stops the listeners, and the runtime closes their sockets: connects are refused
    and the listener stays listed."""
    wired = wired_listeners("immediate", drain_time_s=0.1)
    result = wired.manager.apply_sotw("v1", [listener("web", 0)])
    await wired.runtime.execute(result.actions)
    version = wired.manager.active["web"]
    port = wired.pool.bound_addresses(version.id)[0][1]
    try:
        await _connects(port)
        await wired.runtime.execute(
            wired.drains.start_admin_drain(inbound_only=False, stop_listeners=True)
        )
        assert len(wired.runtime.drain_report()) == 1
        await wait_until(lambda: version.stopped, 2, "the listener stopped")
        assert wired.runtime.drain_report() == []
        assert wired.stats.value("listener_manager.listener_stopped") == 1
        assert list(wired.manager.active) == ["web"]
        try:
            await _connects(port)
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("a stopped listener still accepts")
    finally:
        await wired.runtime.close()


async def test_listener_drain_end_reports_listener_drained() -> None:
    """A removed listener with no connection: the drain ends at once, the runtime forgets
    the version and the listener manager stops counting it as draining."""
    wired = wired_listeners("gradual", drain_time_s=30)
    await wired.runtime.execute(wired.manager.apply_sotw("v1", [listener("web", 0)]).actions)
    version_id = wired.manager.active["web"].id
    await wired.runtime.execute(wired.manager.apply_sotw("v2", []).actions)
    assert wired.stats.value("listener_manager.total_listeners_draining") == 1
    await settle()
    assert wired.stats.value("listener_manager.total_listeners_draining") == 0
    assert version_id not in wired.runtime.instances and wired.runtime.watches == {}
    assert wired.pool.bound_addresses(version_id) == []  # its sockets were released
    await wired.runtime.close()


async def _connects(port: int) -> None:
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    writer.close()
