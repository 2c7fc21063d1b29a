"""The pure parts of the drain controls (issue 24), with injected clocks and random sources:
pacing (`drain.py` `Pacer`), per-listener drain policies (`drain_policy.py`, and the drain
manager running each drain under its policy), drain causes in `/drain_status` and the log
line, and when an exit-when-drained exits (`drain_exit.py`)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.listener_fixtures import listener
from xds_proxy.cli import parse_args
from xds_proxy.errors import ConfigError
from xds_proxy.listener.actions import DrainCause
from xds_proxy.listener.drain import Drain, Pacer
from xds_proxy.listener.drain_exit import DEADLINE, DRAINED, DrainExit
from xds_proxy.listener.drain_manager import (
    DrainEmptied,
    DrainManager,
    ListenerScope,
    TellConnections,
    WatchDrain,
)
from xds_proxy.listener.drain_policy import (
    NO_POLICY,
    DrainPolicy,
    ListenerDrainPolicy,
    listener_drain_policy,
)

PATH = 'metadata.filter_metadata["xds_proxy.drain"]'


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- pacing ---------------------------------------------------------------------------------------


def spaced(times: list[float], rate: float) -> bool:
    ordered = sorted(times)
    return all(b - a >= 1 / rate - 1e-9 for a, b in itertools.pairwise(ordered))


def most_in_one_second(times: list[float]) -> int:
    ordered = sorted(times)
    return max((sum(1 for t in ordered if s <= t < s + 1 - 1e-9) for s in ordered), default=0)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 3.0, 7.0, 200.0]),
    drain_time=st.sampled_from([0.0, 1.0, 5.0, 30.0]),
    strategy=st.sampled_from(["gradual", "immediate"]),
    steps=st.lists(
        st.tuples(
            st.floats(0, 2, allow_nan=False),  # clock advance
            st.sampled_from(["idle", "response"]),
            st.integers(1, 40),  # how many
        ),
        max_size=25,
    ),
    seed=st.integers(0, 2**16),
)
def test_pacing_never_exceeds_its_rate_and_always_ends_by_the_deadline(
    rate, drain_time, strategy, steps, seed
) -> None:
    start = 50.0
    drain = Drain("lds_update", strategy, drain_time, start, Pacer(rate, start, start + drain_time))
    rng, now = random.Random(seed), start
    told: list[float] = []  # moments before the deadline (at the deadline everything closes)
    for advance, kind, count in steps:
        now += advance
        for _ in range(count):
            if kind == "idle":
                at = now + drain.tell_delay(now, rng)
                assert now <= at <= max(now, drain.deadline) + 1e-9  # never past the deadline
            elif drain.drain_close(now, rng):
                at = now
            else:
                continue
            if at < drain.deadline:
                told.append(at)
    assert spaced(told, rate)
    assert most_in_one_second(told) <= max(1, math.floor(rate))


def test_an_immediate_paced_drain_tells_one_per_slot_from_the_start() -> None:
    drain = Drain("lds_remove", "immediate", 10.0, 0.0, Pacer(2.0, 0.0, 10.0))
    rng = random.Random(0)
    assert [drain.tell_delay(0.0, rng) for _ in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert drain.pacer is not None and drain.pacer.granted == 5
    many = [drain.tell_delay(0.0, rng) for _ in range(30)]
    assert many[-1] == 10.0 and max(many) == 10.0  # past the slots: the deadline closes them


def test_a_gradual_paced_drain_may_pass_dt_half_but_never_the_deadline() -> None:
    drain = Drain("lds_update", "gradual", 10.0, 0.0, Pacer(1.0, 0.0, 10.0))
    rng = random.Random(1)
    moments = sorted(drain.tell_delay(0.0, rng) for _ in range(20))
    assert max(m for m in moments if m < 10.0) > 5.0  # pushed past DT/2 by the pacing
    before = [m for m in moments if m < 10.0]
    assert before == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]  # one per slot
    assert moments[len(before) :] == [10.0] * (20 - len(before))  # the rest: at the deadline


def test_a_drain_close_takes_the_slots_around_now_or_waits() -> None:
    pacer = Pacer(1.0, 0.0, 100.0)
    assert pacer.take_now(0.5)  # slots 0 and 1
    assert not pacer.take_now(0.9) and not pacer.take_now(1.0)
    assert pacer.take_now(2.0)  # exactly on slot 2: that slot only
    assert pacer.book(0.0) == 3.0  # the first free slot for an idle connection
    assert pacer.take_now(100.0)  # at the deadline everything closes anyway


def test_unpaced_drains_keep_todays_schedule() -> None:
    drain = Drain("lds_update", "gradual", 10.0, 0.0)
    assert drain.tell_delay(0.0, random.Random(3)) < 5.0
    assert Drain("x", "immediate", 10.0, 0.0).drain_close(0.0, random.Random(0))


# -- per-listener drain policy ---------------------------------------------------------------


def with_policy(**fields):
    message = listener("l", 10001)
    policy = message.metadata.filter_metadata["xds_proxy.drain"]
    for name, value in fields.items():
        if isinstance(value, bool):
            policy.fields[name].bool_value = value
        elif isinstance(value, str):
            policy.fields[name].string_value = value
        else:
            policy.fields[name].number_value = value
    return message


def test_policy_fields_are_read_and_override_only_what_they_set() -> None:
    assert listener_drain_policy(listener("l", 10001)) == NO_POLICY
    policy = listener_drain_policy(
        with_policy(drain_time_s=5, drain_strategy="immediate", max_closes_per_second=200)
    )
    assert policy == ListenerDrainPolicy(5.0, "immediate", 200.0, False)
    defaults = DrainPolicy(600, "gradual", 0)
    assert policy.resolve(defaults) == DrainPolicy(5.0, "immediate", 200.0, "listener")
    assert policy.resolve(defaults, server_drain=True) == defaults
    only_time = listener_drain_policy(with_policy(drain_time_s=2, applies_to_server_drain=True))
    assert only_time.resolve(defaults, server_drain=True) == DrainPolicy(
        2, "gradual", 0, "listener"
    )
    assert NO_POLICY.resolve(defaults) == defaults


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"drain_strategy": "slow"},
            "drain_strategy: must be one of gradual, immediate, got 'slow'",
        ),
        ({"drain_strategy": 3}, "drain_strategy: must be one of gradual, immediate, got 3"),
        ({"drain_time_s": -1}, "drain_time_s: must be between 0 and 4.29497e+09, got -1"),
        ({"drain_time_s": "5"}, "drain_time_s: must be a number, got '5'"),
        (
            {"max_closes_per_second": -2},
            "max_closes_per_second: must be between 0 and 1e+09, got -2",
        ),
        ({"applies_to_server_drain": 1}, "applies_to_server_drain: must be true or false, got 1"),
        (
            {"drain_tme_s": 1},
            "drain_tme_s: unknown field (expected one of drain_time_s, drain_strategy, "
            "max_closes_per_second, applies_to_server_drain)",
        ),
    ],
)
def test_an_invalid_policy_is_an_error_naming_the_field(fields, error) -> None:
    with pytest.raises(ConfigError) as raised:
        listener_drain_policy(with_policy(**fields))
    assert str(raised.value) == f"{PATH}.{error}"


def make(strategy: str = "gradual", drain_time_s: float = 10.0, rate: float = 0.0):
    clock = Clock()
    drains = DrainManager(
        strategy, drain_time_s, clock, random.Random(0), lambda: clock.now + 1e9, rate
    )
    return drains, clock


def test_a_listener_drain_runs_on_its_own_policy_next_to_the_global_one() -> None:
    drains, _ = make("gradual", 600.0)
    own = ListenerDrainPolicy(5.0, "immediate", 100.0)
    cause = DrainCause("v7", "nonce-3", ("per_connection_buffer_limit_bytes",))
    watch, tell = drains.drain_listener(1, "fast", "v6", "lds_update", own, cause)
    assert isinstance(watch, WatchDrain) and watch.deadline_s == 5.0
    assert isinstance(tell, TellConnections) and tell.drain.strategy == "immediate"
    assert tell.drain.pacer is not None and tell.drain.pacer.rate == 100.0
    slow_watch, slow_tell = drains.drain_listener(2, "slow", "v6", "lds_update")
    assert slow_watch.deadline_s == 600.0 and slow_tell.drain.pacer is None
    fast, slow = drains.report(lambda scope: 3 if scope == ListenerScope(1) else 0)
    assert fast["policy"] == {
        "source": "listener",
        "drain_time_s": 5.0,
        "drain_strategy": "immediate",
        "max_closes_per_second": 100.0,
    }
    assert fast["tells_booked"] == 0
    assert fast["cause"] == {
        "version_info": "v7",
        "nonce": "nonce-3",
        "changed": ["per_connection_buffer_limit_bytes"],
    }
    assert slow["policy"]["source"] == "global" and "cause" not in slow


def test_the_global_pacing_default_applies_to_every_drain() -> None:
    drains, _ = make("immediate", 10.0, rate=50.0)
    _, tell = drains.drain_listener(1, "l", "v1", "lds_remove")
    assert tell.drain.pacer is not None and tell.drain.pacer.rate == 50.0
    [tell_all, _] = drains.start_admin_drain(False, stop_listeners=False)
    assert tell_all.drain.pacer is not None


def test_a_chain_drain_names_its_chains_in_its_cause_and_log_line(caplog) -> None:
    drains, _ = make()
    cause = DrainCause("v2", "n1", ("filter_chains[1].name",))
    [watch, _] = drains.drain_chains(1, 9, "api", "v1", (1, -1), ["", "tls"], cause=cause)
    [record] = drains.report(lambda scope: 2)
    assert record["cause"]["chains"] == ["filter_chains[1]", "tls"]
    with caplog.at_level(logging.INFO, logger="xds_proxy.listener"):
        drains.on_event(DrainEmptied(watch.drain_id))
    line = json.loads(caplog.records[-1].getMessage().removeprefix("drain complete: "))
    assert line["cause"]["nonce"] == "n1" and line["outcome"] == "last connection closed"


def test_server_drains_keep_the_global_values_unless_the_listener_opts_in() -> None:
    drains, _ = make("gradual", 600.0)
    drains.set_listener_policy(1, ListenerDrainPolicy(5.0, "immediate", None, False))
    drains.set_listener_policy(2, ListenerDrainPolicy(5.0, "immediate", None, True))
    [tell, _] = drains.start_admin_drain(False, stop_listeners=False)
    assert drains.for_listener(tell.drain, 1) is tell.drain
    own = drains.for_listener(tell.drain, 2)
    assert (own.strategy, own.drain_time_s, own.started_at) == (
        "immediate",
        5.0,
        tell.drain.started_at,
    )
    assert drains.for_listener(tell.drain, 2) is own  # one derived drain per listener
    assert drains.covering(2, 0, inbound=False) == [own]
    assert drains.latest_deadline([1, 2]) == tell.drain.deadline
    drains.forget_listener(2)
    assert drains.for_listener(tell.drain, 2) is tell.drain


def test_the_latest_deadline_covers_a_longer_listener_policy_and_running_drains() -> None:
    drains, clock = make("gradual", 10.0)
    drains.set_listener_policy(3, ListenerDrainPolicy(40.0, None, None, True))
    assert drains.latest_deadline([3]) == clock.now + 40.0
    drains.drain_listener(4, "l", "v", "lds_update", ListenerDrainPolicy(90.0))
    assert drains.latest_deadline([]) == clock.now + 90.0


# -- exit when drained ---------------------------------------------------------------------


def test_exit_when_no_connection_is_left_never_before_min_never_after_the_deadline() -> None:
    decision = DrainExit(started_at=10.0, min_drain_s=2.0, deadline=30.0)
    assert decision.decide(10.0, 0) is None  # before --min-drain-time-s
    assert decision.decide(11.9, 0) is None
    assert decision.decide(12.0, 0) == DRAINED
    assert decision.decide(12.0, 3) is None
    assert decision.decide(29.9, 1) is None
    assert decision.decide(30.0, 1) == DEADLINE
    assert DrainExit(10.0, 0.0, 30.0).decide(10.0, 0) == DRAINED  # default: at once


def test_exit_checks_wake_at_the_boundaries() -> None:
    decision = DrainExit(started_at=10.0, min_drain_s=0.02, deadline=10.5)
    assert decision.next_check_s(10.0, 0.05) == pytest.approx(0.02)
    assert decision.next_check_s(10.48, 0.05) == pytest.approx(0.02)
    assert decision.next_check_s(11.0, 0.05) == 0.05


# -- flags -----------------------------------------------------------------------------------------


def test_the_drain_control_flags_default_to_envoys_behaviour() -> None:
    options = parse_args(["-c", "x.yaml"])
    assert options.drain_max_closes_per_second == 0.0
    assert options.drain_on_sigterm is False and options.min_drain_time_s == 0.0
    options = parse_args(
        [
            "-c",
            "x.yaml",
            "--drain-max-closes-per-second",
            "12.5",
            "--drain-on-sigterm",
            "--min-drain-time-s",
            "3",
        ]
    )
    assert options.drain_max_closes_per_second == 12.5
    assert options.drain_on_sigterm and options.min_drain_time_s == 3.0


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "fast"])
def test_a_bad_drain_control_flag_is_one_line_naming_it(value) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_args(["-c", "x.yaml", "--drain-max-closes-per-second", value])
    assert str(raised.value).startswith("--drain-max-closes-per-second: must be")
