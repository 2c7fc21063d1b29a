"""How the listener runtime composes and pushes drains (spec/draining.md sections 2-4), with
an injected clock and random source and fake connections: which drains cover a chain, the
idle schedule of pushes, finalisation on last close or at the deadline, `/drain_status`
records and the `drain complete` log line. No sockets are bound."""

from __future__ import annotations

import asyncio
import json
import logging
import random

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2

from tests.helpers.waiting import wait_until
from tests.unit.listener_fixtures import listener
from xds_proxy.listener.manager import DrainListener, DrainTrigger
from xds_proxy.listener.runtime import ChainRuntime, ListenerInstance, ListenerRuntime
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.stats import Stats


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


def make_runtime(
    strategy: str = "immediate", drain_time_s: float = 10.0, draw: float = 0.5
) -> tuple[ListenerRuntime, FakeClock]:
    clock = FakeClock()
    runtime = ListenerRuntime(
        Stats(), ListenSocketPool(), drain_time_s, strategy, clock=clock, rng=FixedDraw(draw)
    )
    return runtime, clock


def add_instance(
    runtime: ListenerRuntime, version_id: int, name: str = "web", **fields
) -> ListenerInstance:
    instance = runtime.compile(listener(name, 10000 + version_id, **fields))
    instance.version_id = version_id
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
    runtime.rng = FixedDraw(0.6)
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
    assert runtime.start_admin_drain(inbound_only=True, at_deadline=lambda: None)
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
    assert runtime.start_admin_drain(inbound_only=False, at_deadline=lambda: None)
    [running] = runtime.admin_drains
    clock.now += 3
    assert not runtime.start_admin_drain(inbound_only=False, at_deadline=lambda: None)
    assert not runtime.start_admin_drain(inbound_only=True, at_deadline=lambda: None)
    assert runtime.admin_drains == [running]  # the ramp keeps its own start and deadline
    assert len(runtime.drain_report()) == 1


async def test_drain_of_all_after_an_inbound_only_drain_widens_it() -> None:
    """Envoy starts an ALL drain when only an INBOUND_ONLY one runs; the inbound listeners'
    connections keep the ramp of the first drain, the outbound ones ramp from the second."""
    runtime, clock = make_runtime("gradual", drain_time_s=10, draw=0.3)
    inbound = add_instance(runtime, 1, "in", traffic_direction=base_pb2.INBOUND)
    outbound = add_instance(runtime, 2, "out", traffic_direction=base_pb2.OUTBOUND)
    assert runtime.start_admin_drain(True, at_deadline=lambda: None)
    clock.now += 2  # the inbound drain is at p = 2 / 5
    assert runtime.start_admin_drain(False, at_deadline=lambda: None)
    assert not runtime.start_admin_drain(True, at_deadline=lambda: None)
    assert inbound.chains[0].drain_close() is True  # 0.3 < 0.4: the first drain's ramp
    assert outbound.chains[0].drain_close() is False  # the new drain is at t = 0
    assert [r["direction"] for r in runtime.drain_report()] == ["inbound_only", "all"]


async def test_admin_ramp_uses_the_running_drains_deadline_for_inbound_listeners() -> None:
    """Envoy looks up a per-direction deadline and an ALL drain is instant for INBOUND
    listeners there; ours ramps for every listener the running drain covers."""
    runtime, clock = make_runtime("gradual", drain_time_s=10, draw=0.5)
    inbound = add_instance(runtime, 1, "in", traffic_direction=base_pb2.INBOUND)
    runtime.start_admin_drain(inbound_only=False, at_deadline=lambda: None)
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
    runtime.start_admin_drain(inbound_only=False, at_deadline=lambda: None)
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
    }


async def test_healthcheck_ok_ends_the_health_record() -> None:
    runtime, _ = make_runtime()
    add_instance(runtime, 1)
    runtime.set_health(failed=True)
    runtime.set_health(failed=True)  # a second fail changes nothing
    assert len(runtime.drain_report()) == 1
    runtime.set_health(failed=False)
    assert runtime.drain_report() == []
