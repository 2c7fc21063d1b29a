"""Hostile LDS pushed through one real stub to one real proxy: random, mutated and extreme
`Listener` resources (the strategies of tests/unit/test_hostile_listeners.py).

After every push: the version is ACKed or NACKed with a clear message, the process lives, and
the sentinel listener, served since the start, still answers a real request. One stub and one
proxy serve the whole module (fast); `FUZZ_EXAMPLES` / `FUZZ_SEED` as in the unit test.
"""

from __future__ import annotations

import itertools

import pytest
from envoy.config.listener.v3 import listener_components_pb2
from google.protobuf import any_pb2
from hypothesis import HealthCheck, given, seed, settings

from control_plane_stub.client import StubNack
from tests.helpers.http_client import get
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.unit.listener_fixtures import listener
from tests.unit.test_hostile_listeners import (
    FUZZ_SEED,
    LISTENER_TYPE_URL,
    SENTINEL,
    assert_clear_nack,
    budget,
    direct_filter,
    seed_on_failure,
    to_raw,
    updates,
)

_versions = itertools.count(1)


class Served:
    """The module's stub and proxy, and the sentinel they serve."""

    def __init__(self, stub: StubProcess, proxy: ProxyProcess, sentinel_port: int) -> None:
        self.stub = stub
        self.proxy = proxy
        self.sentinel_port = sentinel_port
        self.fuzz_port = free_port()
        self.sentinel = http_listener(SENTINEL, sentinel_port, chains=[chain("alive")])

    def push(self, resources: list) -> str | None:
        """Push the sentinel and `resources` as a raw SotW set; the NACK message or None."""
        version = f"fuzz-{next(_versions)}"
        self.stub.client.set_resources(
            listeners=[self.sentinel, *resources], version=version, raw=True
        )
        try:
            self.stub.client.wait(version, timeout=10)
        except StubNack as nack:  # "node 'N' NACKed listeners version V: MESSAGE"
            return nack.detail.partition(f" version {version}: ")[2]
        return None

    def assert_serving(self) -> None:
        assert self.proxy.alive(), self.proxy.log()[-3000:]
        assert get(self.sentinel_port).text == "alive"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz-lds")
    stub = StubProcess(workdir).start()
    proxy = ProxyProcess(
        lds_bootstrap(stub.xds_address),
        workdir,
        log_level="warning",
        extra_args=["--drain-time-s", "1", "--drain-strategy", "immediate"],
    )
    try:
        proxy.start()
        result = Served(stub, proxy, free_port())
        assert result.push([]) is None
        proxy.wait_ready()
        result.assert_serving()
        yield result
    finally:
        proxy.stop()
        stub.stop()


def test_fuzzed_listeners_are_acked_or_nacked_and_serving_goes_on(served: Served) -> None:
    @settings(
        max_examples=budget(40),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @seed(FUZZ_SEED)
    @given(updates(served.fuzz_port, served.sentinel_port))
    def one_push(resources: list[any_pb2.Any]) -> None:
        with seed_on_failure():
            nack = served.push([to_raw(resource) for resource in resources])
            if nack is not None:
                assert_clear_nack(nack)
            served.assert_serving()

    one_push()


def test_ten_thousand_filter_chains_over_lds(served: Served) -> None:
    """Direct-response chains: an HCM chain costs ~2 ms to validate and build, so 10,000 of
    them would hold the event loop for tens of seconds (a known limit, see issue 14's note)."""
    chains = [
        listener_components_pb2.FilterChain(
            name=f"c{i}",
            filters=[direct_filter(b"many")],
            filter_chain_match={"destination_port": {"value": 1 + i}},
        )
        for i in range(10_000)
    ]
    big = listener("big", served.fuzz_port, chains=chains)
    assert served.push([big]) is None
    served.assert_serving()
    assert served.proxy.listeners()["big"] == f"127.0.0.1:{served.fuzz_port}"
    assert served.push([]) is None  # and away again
    served.assert_serving()


def test_duplicate_of_the_serving_listener_is_nacked(served: Served) -> None:
    other = http_listener(SENTINEL, served.fuzz_port, chains=[chain("impostor")])
    nack = served.push([other])
    assert nack is not None
    assert_clear_nack(nack)
    assert f"duplicate listener {SENTINEL} found" in nack
    served.assert_serving()


def test_undecodable_bytes_reject_the_whole_response(served: Served) -> None:
    fresh = http_listener("fresh", served.fuzz_port, chains=[chain("fresh")])
    nack = served.push([fresh, to_raw(any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\x0a\xff"))])
    assert nack is not None and nack.startswith("Unable to unpack as")
    assert "fresh" not in served.proxy.listeners()
    served.assert_serving()
