"""Hostile LDS input for the pure path: random, mutated and extreme `Listener` resources,
decoded and applied in-process exactly as the LDS client does, many examples per second.

The same strategies feed `tests/integration/test_fuzz_lds.py`, which pushes them through a
real stub to a real proxy. What must hold for every input: the update is ACKed or NACKed with a
message of a known shape (never a stray exception text), nothing raises, and a listener that
was serving stays active and unchanged.

`FUZZ_EXAMPLES` scales the example budget (`make fuzz`); `FUZZ_SEED` replays a failing run
(every failure says its seed).
"""

from __future__ import annotations

import base64
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, wrappers_pb2
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.unit.listener_fixtures import (
    FakeSocketPool,
    chain,
    hcm_filter,
    listener,
    listener_compiler,
)
from xds_proxy.listener.manager import ListenerManager
from xds_proxy.stats import Stats
from xds_proxy.xds.decode import (
    LISTENER_TYPE_URL,
    ResponseDecodeError,
    decode_delta_listeners,
    decode_sotw_listeners,
)

FUZZ_SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)  # 0: each test's own budget

SENTINEL = "sentinel"  # the listener that serves throughout; fuzzed names never take it
TYPE_PREFIX = "type.googleapis.com/"
TCP_PROXY_TYPE = TYPE_PREFIX + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DIRECT_TYPE = TYPE_PREFIX + "envoy.extensions.filters.network.direct_response.v3.Config"
HCM_TYPE = (
    TYPE_PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)

# Every NACK the proxy may send starts like one of these (Envoy's words); anything else is an
# exception text leaking out of the apply path, i.e. a bug.
CLEAR_NACK = re.compile(
    r"^(Error adding/updating listener\(s\) "
    r"|Unable to unpack as envoy\.\S+: "
    r"|\S* does not match the message-wide type URL "
    r"|goo\.gle/debugstr[\s\S]*: Proto constraint validation failed \("
    r"|duplicate name [\s\S]* found (among added/updated resources|in the union of added))"
)


def budget(examples: int) -> int:
    return FUZZ_EXAMPLES or examples


@contextmanager
def seed_on_failure() -> Iterator[None]:
    """Tell how to replay a failure (hypothesis shrinks, the seed reproduces the run)."""
    try:
        yield
    except BaseException as error:
        error.add_note(f"replay with FUZZ_SEED={FUZZ_SEED}")
        raise


def assert_clear_nack(message: str) -> None:
    assert message.strip(), "a NACK without a message"
    assert "Traceback" not in message, message[:2000]
    assert "internal error: " not in message, message[:2000]  # the manager's safety net
    assert CLEAR_NACK.match(message), f"unclear NACK message: {message[:2000]!r}"


# -- strategies ---------------------------------------------------------------------------------

names = st.one_of(
    st.sampled_from(["a", "b", "web", "", " ", "ü-名字", "a\x00b", "new\nline"]),
    st.text(min_size=1, max_size=40),
    st.integers(1_000, 70_000).map(lambda n: "n" * n),  # huge names
).filter(lambda name: name != SENTINEL)

# Mostly valid (so that updates get far enough to be applied), sometimes not.
ips = st.sampled_from(
    ["127.0.0.1"] * 6
    + ["127.0.0.2", "::1", "::1", "::ffff:127.0.0.1", "", "localhost", "256.1.1.1", "::g"]
)
enum_values = st.one_of(st.integers(0, 2), st.integers(-5, 2**31 - 1))


def ports(fuzz_port: int, sentinel_port: int) -> st.SearchStrategy[int]:
    """Free, taken (the sentinel's), extreme and out-of-range ports."""
    return st.sampled_from([0, fuzz_port, sentinel_port, 65535, 65536, 2**32 - 1])


def direct_filter(body: bytes) -> listener_components_pb2.Filter:
    result = listener_components_pb2.Filter(name="envoy.filters.network.direct_response")
    result.typed_config.Pack(direct_pb2.Config(response={"inline_bytes": body}))
    return result


def tcp_filter(cluster: str) -> listener_components_pb2.Filter:
    result = listener_components_pb2.Filter(name="envoy.filters.network.tcp_proxy")
    result.typed_config.Pack(tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster=cluster))
    return result


@st.composite
def filters(draw: st.DrawFn) -> listener_components_pb2.Filter:
    kind = draw(
        st.sampled_from(
            ["hcm"] * 4 + ["direct"] * 3 + ["tcp", "unknown", "bare", "garbage", "cluster"]
        )
    )
    if kind == "hcm":
        return hcm_filter(draw(st.text(max_size=20)), prefix=draw(st.sampled_from(["x", ""])))
    if kind == "direct":
        return direct_filter(draw(st.binary(max_size=64)))
    if kind == "tcp":
        return tcp_filter(draw(st.sampled_from(["nowhere", "", "x" * 300])))
    result = listener_components_pb2.Filter(name=draw(st.sampled_from(["f", "", "envoy.x"])))
    if kind == "unknown":
        result.typed_config.type_url = TYPE_PREFIX + draw(
            st.sampled_from(["no.such.Type", "", "google.protobuf.Empty"])
        )
        result.typed_config.value = draw(st.binary(max_size=16))
    elif kind == "garbage":  # a known type whose bytes do not parse
        result.typed_config.type_url = draw(st.sampled_from([HCM_TYPE, TCP_PROXY_TYPE]))
        result.typed_config.value = draw(st.binary(min_size=1, max_size=32))
    elif kind == "cluster":  # a well-formed message of the wrong type
        result.typed_config.Pack(cluster_pb2.Cluster(name="c"))
    return result


@st.composite
def filter_chains(draw: st.DrawFn) -> listener_components_pb2.FilterChain:
    result = listener_components_pb2.FilterChain(name=draw(st.sampled_from(["", "c1", "c2"])))
    result.filters.extend(draw(st.lists(filters(), min_size=1, max_size=2)))
    if draw(st.integers(0, 9)) == 0:
        result.filters.clear()  # a chain without filters
    if draw(st.integers(0, 3)) == 0:
        match = result.filter_chain_match
        if draw(st.booleans()):
            match.destination_port.value = draw(st.sampled_from([0, 1, 65535, 65536, 2**32 - 1]))
        for _ in range(draw(st.integers(0, 2))):
            prefix = match.source_prefix_ranges.add(address_prefix=draw(ips))
            prefix.prefix_len.value = draw(st.sampled_from([0, 8, 32, 33, 128, 129, 2**32 - 1]))
        match.server_names.extend(draw(st.lists(st.sampled_from(["a.com", "*.b", "", "*"]))))
        match.transport_protocol = draw(st.sampled_from(["", "tls", "raw_buffer", "quic"]))
        match.application_protocols.extend(draw(st.lists(st.sampled_from(["h2", "", "x"]))))
        match.source_type = draw(enum_values)
        match.source_ports.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=2)))
    return result


@st.composite
def listener_messages(draw: st.DrawFn, fuzz_port: int, sentinel_port: int) -> listener_pb2.Listener:
    result = listener_pb2.Listener(name=draw(names))
    if draw(st.integers(0, 9)):  # mostly a socket address
        address = result.address.socket_address
        address.address = draw(ips)
        address.port_value = draw(ports(fuzz_port, sentinel_port))
        if draw(st.integers(0, 9)) == 0:
            address.protocol = draw(enum_values)
    elif draw(st.booleans()):
        result.address.pipe.path = draw(st.sampled_from(["", "/nonexistent/dir/sock", "@abs"]))
    chain_count = draw(st.sampled_from([0, 1, 1, 1, 2, 3, 300]))
    if chain_count == 300:  # many chains: repeat one (a duplicate matcher NACKs, fine too)
        one = draw(filter_chains())
        result.filter_chains.extend(
            listener_components_pb2.FilterChain(
                name=f"c{i}",
                filters=one.filters,
                filter_chain_match={"destination_port": {"value": 1 + i}},
            )
            for i in range(chain_count)
        )
    else:
        result.filter_chains.extend(draw(filter_chains()) for _ in range(chain_count))
    if draw(st.integers(0, 4)) == 0:
        result.default_filter_chain.CopyFrom(draw(filter_chains()))
    if draw(st.integers(0, 3)) == 0:
        result.per_connection_buffer_limit_bytes.value = draw(st.sampled_from([0, 1, 2**32 - 1]))
    if draw(st.integers(0, 5)) == 0:
        result.traffic_direction = draw(enum_values)
    if draw(st.integers(0, 5)) == 0:
        result.drain_type = draw(enum_values)
    if draw(st.integers(0, 5)) == 0:
        added = result.listener_filters.add(
            name=draw(st.sampled_from(["envoy.filters.listener.tls_inspector", "x", ""]))
        )
        added.typed_config.type_url = TYPE_PREFIX + draw(
            st.sampled_from(
                [
                    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                    "no.such.Inspector",
                ]
            )
        )
    if draw(st.integers(0, 5)) == 0:
        extra = result.additional_addresses.add().address.socket_address
        extra.address = draw(ips)
        extra.port_value = draw(ports(fuzz_port, sentinel_port))
    if draw(st.integers(0, 7)) == 0:
        result.enable_reuse_port.value = draw(st.booleans())
    if draw(st.integers(0, 7)) == 0:  # a field we do not support
        result.tcp_backlog_size.value = draw(st.sampled_from([0, 1, 2**32 - 1]))
    return result


def mutate(value: bytes, rng: random.Random, how: str) -> bytes:
    if not value:
        return b"\xff"
    if how == "truncate":
        return value[: rng.randrange(len(value))]
    if how == "flip":
        mutated = bytearray(value)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        return bytes(mutated)
    if how == "splice":  # a tag/length soup in the middle
        at = rng.randrange(len(value))
        return value[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + value[at:]
    return value


@st.composite
def listener_resources(draw: st.DrawFn, fuzz_port: int, sentinel_port: int) -> any_pb2.Any:
    """One resource as a control plane would send it: mostly a Listener, sometimes corrupt,
    sometimes of the wrong type."""
    message = draw(listener_messages(fuzz_port, sentinel_port))
    value = message.SerializeToString()
    how = draw(st.sampled_from(["as_is"] * 30 + ["truncate", "flip", "splice", "type", "junk"]))
    if how == "type":
        type_url = draw(
            st.sampled_from(
                [
                    TYPE_PREFIX + "envoy.config.cluster.v3.Cluster",
                    TYPE_PREFIX + "no.such.Listener",
                    "",
                    "envoy.config.listener.v3.Listener",  # no prefix
                ]
            )
        )
        return any_pb2.Any(type_url=type_url, value=value)
    if how == "junk":
        return any_pb2.Any(type_url=LISTENER_TYPE_URL, value=draw(st.binary(max_size=64)))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    return any_pb2.Any(type_url=LISTENER_TYPE_URL, value=mutate(value, rng, how))


def updates(fuzz_port: int, sentinel_port: int) -> st.SearchStrategy[list[any_pb2.Any]]:
    """The fuzzed part of one SotW response (the sentinel is added by the test)."""
    return st.lists(listener_resources(fuzz_port, sentinel_port), min_size=0, max_size=3)


def to_raw(resource: any_pb2.Any) -> dict[str, str]:
    """The stub's raw form of a resource (bytes as they are)."""
    return {"@type": resource.type_url, "value_base64": base64.b64encode(resource.value).decode()}


# -- the pure path ------------------------------------------------------------------------------

FUZZ_PORT, SENTINEL_PORT = 20001, 20002  # in-process only: the fake pool binds nothing


class InProcessLds:
    """Decode like the LDS client and apply like the server, with a fake socket pool."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.pool = FakeSocketPool()
        self.compiler = listener_compiler(self.stats)
        self.manager = ListenerManager(self.stats, self.pool, self.compiler.compile, lambda: 0.0)
        self.sentinel = listener(SENTINEL, SENTINEL_PORT, body="alive")
        self.versions = 0
        assert self.push([]) is None  # the sentinel serves before the hostile updates

    def push(self, resources: list[any_pb2.Any]) -> str | None:
        """One SotW response; returns the NACK message or None (ACK)."""
        self.versions += 1
        sentinel = any_pb2.Any()
        sentinel.Pack(self.sentinel)
        response = discovery_pb2.DiscoveryResponse(
            version_info=str(self.versions),
            type_url=LISTENER_TYPE_URL,
            resources=[sentinel, *resources],
        )
        try:
            decoded = decode_sotw_listeners(response)
        except ResponseDecodeError as error:
            return str(error)
        listeners = [d.body for d in decoded if d.body is not None]
        return self.manager.apply_sotw(response.version_info, listeners).nack_message

    def push_delta(self, resources: list[any_pb2.Any], names: list[str], removed: list[str]):
        """One Delta response: `resources` under `names` (a name may repeat), `removed`."""
        self.versions += 1
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(self.versions),
            type_url=LISTENER_TYPE_URL,
            removed_resources=removed,
        )
        for resource, name in zip(resources, names, strict=False):
            response.resources.add(name=name, version=str(self.versions), resource=resource)
        try:
            decoded = decode_delta_listeners(response)
        except ResponseDecodeError as error:
            return str(error)
        listeners = [d.body for d in decoded if d.body is not None]
        return self.manager.apply_delta(str(self.versions), listeners, removed).nack_message

    def assert_sentinel_serving(self) -> None:
        active = self.manager.active.get(SENTINEL)
        assert active is not None, "the serving listener was removed"
        assert active.config == self.sentinel, "the serving listener was changed"
        assert not active.stopped


@settings(
    max_examples=budget(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@seed(FUZZ_SEED)
@given(st.lists(updates(FUZZ_PORT, SENTINEL_PORT), min_size=1, max_size=4))
def test_hostile_updates_are_acked_or_clearly_nacked(pushes: list[list[any_pb2.Any]]) -> None:
    with seed_on_failure():
        lds = InProcessLds()
        for resources in pushes:
            nack = lds.push(resources)
            if nack is not None:
                assert_clear_nack(nack)
            lds.assert_sentinel_serving()


@settings(
    max_examples=budget(60),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@seed(FUZZ_SEED)
@given(
    st.lists(
        st.tuples(
            updates(FUZZ_PORT, SENTINEL_PORT),
            st.lists(st.sampled_from(["a", "b", "web", ""]), max_size=3),
            st.lists(st.sampled_from(["a", "b", "unknown", ""]), max_size=2),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_hostile_delta_updates_are_acked_or_clearly_nacked(pushes) -> None:
    """The same resources as Delta: names that repeat or contradict `removed_resources`."""
    with seed_on_failure():
        lds = InProcessLds()
        for resources, names, removed in pushes:
            nack = lds.push_delta(resources, names, removed)
            if nack is not None:
                assert_clear_nack(nack)
            lds.assert_sentinel_serving()


def test_ten_thousand_filter_chains_apply() -> None:
    """Issue 14's extreme: one listener with 10,000 chains, each on its own port match."""
    lds = InProcessLds()
    chains = [
        listener_components_pb2.FilterChain(
            name=f"c{i}",
            filters=[direct_filter(b"x")],
            filter_chain_match={"destination_port": {"value": 1 + i}},
        )
        for i in range(10_000)
    ]
    big = listener("big", FUZZ_PORT, chains=chains)
    packed = any_pb2.Any()
    packed.Pack(big)
    assert lds.push([packed]) is None
    assert len(lds.manager.active["big"].config.filter_chains) == 10_000
    lds.assert_sentinel_serving()


def test_wrong_type_and_truncated_bytes_reject_the_whole_response() -> None:
    lds = InProcessLds()
    good = any_pb2.Any()
    good.Pack(listener("good", FUZZ_PORT))
    wrong = any_pb2.Any()
    wrong.Pack(cluster_pb2.Cluster(name="c"))
    truncated = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=good.value[:-3])
    for bad in (wrong, truncated):
        nack = lds.push([good, bad])
        assert nack is not None
        assert_clear_nack(nack)
        assert "good" not in lds.manager.active  # nothing of a rejected response applies
        lds.assert_sentinel_serving()


def test_extreme_scalars() -> None:
    """Out-of-range ports NACK naming the field; what Envoy takes (open enums, a 70,000
    character name, the largest buffer limit) is taken."""
    lds = InProcessLds()
    huge_name = "n" * 70_000
    messages = [
        listener("p", 65536),
        listener("e", FUZZ_PORT, traffic_direction=77),
        listener(huge_name, FUZZ_PORT + 10),
        listener(
            "b", 0, per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=2**32 - 1)
        ),
    ]
    packed = []
    for message in messages:
        resource = any_pb2.Any()
        resource.Pack(message)
        packed.append(resource)
    nack = lds.push(packed)
    assert nack == (
        "Error adding/updating listener(s) p: address.socket_address.port_value: "
        "must be <= 65535, got 65536\n"
    )
    assert sorted(lds.manager.active) == sorted([SENTINEL, "e", huge_name, "b"])
    lds.assert_sentinel_serving()


def test_cidr_ranges_like_envoy() -> None:
    """Found by the fuzzer: a prefix length beyond the address's bits raised ValueError out of
    the apply path. Envoy clamps it (1.2.3.5/33 is 1.2.3.5/32); a prefix that is no IP
    address NACKs that listener."""
    lds = InProcessLds()
    clamped = chain("x", source_prefix="127.0.0.1/33")
    not_ip = chain("y", source_prefix="localhost/8")
    resources = []
    for message in (
        listener("clamped", FUZZ_PORT, chains=[clamped]),
        listener("not-ip", FUZZ_PORT + 10, chains=[not_ip]),
    ):
        resource = any_pb2.Any()
        resource.Pack(message)
        resources.append(resource)
    nack = lds.push(resources)
    assert nack == "Error adding/updating listener(s) not-ip: malformed IP address: localhost\n"
    assert "clamped" in lds.manager.active
    lds.assert_sentinel_serving()


def test_a_bug_in_one_listener_does_not_lose_the_others() -> None:
    """The manager's safety net: an unexpected exception while building one listener NACKs
    that listener; the rest of the update is applied and its actions are returned (before,
    the exception escaped `apply_sotw` and the actions of the whole update were lost)."""
    stats = Stats()
    compiler = listener_compiler(stats)

    def compile_with_a_bug(version_id: int, config: listener_pb2.Listener) -> None:
        if config.name == "buggy":
            raise RuntimeError("a bug")
        compiler.compile(version_id, config)

    manager = ListenerManager(stats, FakeSocketPool(), compile_with_a_bug, lambda: 0.0)
    result = manager.apply_sotw("1", [listener("buggy", FUZZ_PORT), listener("fine", 0)])
    assert result.nack_message == (
        "Error adding/updating listener(s) buggy: internal error: RuntimeError('a bug')\n"
    )
    assert list(manager.active) == ["fine"]
    assert [type(action).__name__ for action in result.actions] == ["StartListener"]
