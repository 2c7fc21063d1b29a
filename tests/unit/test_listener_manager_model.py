"""The listener manager against a small reference model, on random update sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.listener_fixtures import FakeSocketPool, listener
from xds_proxy.listener.manager import ListenerManager
from xds_proxy.stats import Stats

NAMES = ["a", "b", "c", "d"]


@dataclass(frozen=True)
class Spec:
    name: str
    port: int
    buffer: int  # a listener-level field: a change means a full update
    body: str  # inside the filter chain: a change means an in-place update

    def message(self):
        return listener(
            self.name,
            self.port,
            body=self.body,
            per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=self.buffer),
        )


@dataclass
class Model:
    active: dict[str, Spec] = field(default_factory=dict)
    static: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(
        default_factory=lambda: dict(added=0, modified=0, removed=0, in_place=0)
    )
    draining: int = 0
    draining_chains: int = 0

    def apply(self, specs: list[Spec]) -> list[str]:
        wanted = {s.name for s in specs}
        for name in [n for n in self.active if n not in self.static and n not in wanted]:
            del self.active[name]
            self.counts["removed"] += 1
            self.draining += 1
        failed, seen = [], set()
        for spec in specs:
            if spec.name in seen:
                failed.append(spec.name)
                continue
            seen.add(spec.name)
            old = self.active.get(spec.name)
            if spec.name in self.static or old == spec:
                continue
            moved = old is None or old.port != spec.port
            others = [o.port for n, o in self.active.items() if n != spec.name]
            if moved and spec.port != 0 and spec.port in others:
                failed.append(spec.name)
                continue
            if old is None:
                self.counts["added"] += 1
            else:
                self.counts["modified"] += 1
                if old.port == spec.port and old.buffer == spec.buffer:
                    self.counts["in_place"] += 1
                    self.draining_chains += 1  # the one chain changed
                else:
                    self.draining += 1
            self.active[spec.name] = spec
        return failed


specs = st.builds(
    Spec,
    name=st.sampled_from(NAMES),
    port=st.sampled_from([0, 10001, 10002, 10003]),
    buffer=st.sampled_from([1, 2]),
    body=st.sampled_from(["x", "y"]),
)


@settings(max_examples=300, deadline=None)
@given(
    static_port=st.sampled_from([None, 10001]),
    updates=st.lists(st.lists(specs, max_size=5), min_size=1, max_size=8),
)
def test_manager_agrees_with_model(static_port, updates):
    stats, pool = Stats(), FakeSocketPool()
    manager = ListenerManager(stats, pool, lambda version_id, config: None, lambda: 0.0)
    model = Model()
    if static_port is not None:
        manager.add_static(listener("s", static_port))
        model.active["s"] = Spec("s", static_port, 0, "static")
        model.static.add("s")
        model.counts["added"] += 1
    for update in updates:
        result = manager.apply_sotw("v", [spec.message() for spec in update])
        pool.execute(result.actions)
        failed = model.apply(update)
        nacked = [] if result.nack_message is None else _names(result.nack_message)
        assert nacked == failed
        assert sorted(manager.active) == sorted(model.active)
        for name, spec in model.active.items():
            if name not in model.static:
                assert manager.active[name].config == spec.message()
        for stat, key in [
            ("listener_added", "added"),
            ("listener_modified", "modified"),
            ("listener_removed", "removed"),
            ("listener_in_place_updated", "in_place"),
        ]:
            assert stats.value(f"listener_manager.{stat}") == model.counts[key], stat
        assert stats.value("listener_manager.total_listeners_active") == len(model.active)
        assert stats.value("listener_manager.total_listeners_draining") == model.draining
        assert stats.value("listener_manager.total_filter_chains_draining") == (
            model.draining_chains
        )
        # every active listener holds exactly one socket, and no two share a fixed port
        ports = [pool.by_version[v.id][0] for v in manager.active.values()]
        assert len(ports) == len(set(ports))


def _names(message: str) -> list[str]:
    body = message.removeprefix("Error adding/updating listener(s) ")
    return [line.split(":", 1)[0] for line in body.splitlines()]
