"""The stub's pure core: versions, SotW and Delta bookkeeping, the ACK/NACK ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane_stub.cache import (
    EMPTY_SET,
    WaitVerdict,
    XdsCache,
    content_key,
    evaluate_wait,
    resource_version,
)
from control_plane_stub.resources import CLUSTER_TYPE, LISTENER_TYPE, NamedResource

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def listener(name: str, port: int = 10000) -> NamedResource:
    message = listener_pb2.Listener(name=name)
    message.address.socket_address.address = "127.0.0.1"
    message.address.socket_address.port_value = port
    body = any_pb2.Any(type_url=LISTENER_TYPE, value=message.SerializeToString())
    return NamedResource(name=name, body=body)


def cluster(name: str) -> NamedResource:
    body = any_pb2.Any(
        type_url=CLUSTER_TYPE, value=cluster_pb2.Cluster(name=name).SerializeToString()
    )
    return NamedResource(name=name, body=body)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def sotw_request(
    node: str = "n1",
    type_url: str = "",
    version: str = "",
    nonce: str = "",
    names: tuple[str, ...] = (),
    error: str | None = None,
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(
        version_info=version, response_nonce=nonce, type_url=type_url
    )
    request.node.id = node
    request.resource_names.extend(names)
    if error is not None:
        request.error_detail.code = 3
        request.error_detail.message = error
    return request


def delta_request(
    node: str = "n1",
    type_url: str = "",
    nonce: str = "",
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    initial: dict[str, str] | None = None,
    error: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
    request.node.id = node
    request.resource_names_subscribe.extend(subscribe)
    request.resource_names_unsubscribe.extend(unsubscribe)
    for name, version in (initial or {}).items():
        request.initial_resource_versions[name] = version
    if error is not None:
        request.error_detail.code = 3
        request.error_detail.message = error
    return request


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for body in response.resources:
        message = listener_pb2.Listener()
        body.Unpack(message)
        out.append(message.name)
    return out


def only(responses):
    assert len(responses) == 1, responses
    return responses[0]


@pytest.fixture
def cache() -> XdsCache:
    return XdsCache(clock=Clock())


# ---------------------------------------------------------------- versions


def test_content_key_ignores_order_and_sees_bytes() -> None:
    a, b = listener("a"), listener("b")
    assert content_key([a, b]) == content_key([b, a])
    assert content_key([a]) != content_key([a, b])
    assert content_key([listener("a", 1)]) != content_key([listener("a", 2)])
    assert content_key([]) == EMPTY_SET.content


def test_resource_version_is_content_derived() -> None:
    assert resource_version(listener("a")) == resource_version(listener("a"))
    assert resource_version(listener("a", 1)) != resource_version(listener("a", 2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(1, 5)), max_size=6))
def test_same_content_gives_same_version(entries) -> None:
    resources = [listener(name, port) for name, port in entries]
    first = XdsCache().set_resources({"listeners": resources})[0]
    second = XdsCache().set_resources({"listeners": list(reversed(resources))})[0]
    assert first == second


def test_push_returns_versions_of_every_type(cache: XdsCache) -> None:
    versions, outgoing = cache.set_resources({"listeners": [listener("a")], "clusters": None})
    assert set(versions) == {"listeners", "clusters", "routes", "endpoints", "secrets"}
    assert versions["clusters"] == EMPTY_SET.version
    assert outgoing == []


def test_explicit_version_is_used(cache: XdsCache) -> None:
    versions, _ = cache.set_resources({"listeners": [listener("a")]}, version="v7")
    assert versions["listeners"] == "v7"


def test_none_keeps_and_empty_clears(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a")], "clusters": [cluster("c")]})
    kept, _ = cache.set_resources({"listeners": [listener("b")], "clusters": None})
    assert cache.current_set(None, CLUSTER_TYPE).resources[0].name == "c"
    cleared, _ = cache.set_resources({"clusters": []})
    assert cache.current_set(None, CLUSTER_TYPE).resources == ()
    assert cleared["clusters"] == EMPTY_SET.version
    assert kept["listeners"] == cleared["listeners"]


# ---------------------------------------------------------------- SotW


def test_sotw_first_request_is_answered_even_when_empty(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw_request()))
    assert response.type_url == LISTENER_TYPE
    assert response.version_info == EMPTY_SET.version
    assert list(response.resources) == []
    assert response.nonce


def test_sotw_push_sends_whole_set_and_ack_is_recorded(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    first = only(cache.handle_sotw_request(stream, sotw_request()))
    versions, outgoing = cache.set_resources({"listeners": [listener("a"), listener("b")]})
    assert [stream_id for stream_id, _ in outgoing] == [stream]
    response = outgoing[0][1]
    assert sorted(names_of(response)) == ["a", "b"]
    assert response.version_info == versions["listeners"]
    assert response.nonce != first.nonce
    ack = sotw_request(version=response.version_info, nonce=response.nonce)
    assert cache.handle_sotw_request(stream, ack) == []
    entry = cache.status()["nodes"][0]["streams"][0]
    assert entry["acked_version"] == versions["listeners"]
    assert entry["sent"] == {"version": versions["listeners"], "nonce": response.nonce}
    assert entry["nack"] is None


def test_same_content_twice_sends_nothing(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(stream, sotw_request())
    _, first = cache.set_resources({"listeners": [listener("a")]})
    assert len(first) == 1
    _, second = cache.set_resources({"listeners": [listener("a")]})
    assert second == []


def test_new_explicit_version_with_same_content_is_sent(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(stream, sotw_request())
    cache.set_resources({"listeners": [listener("a")]}, version="1")
    _, outgoing = cache.set_resources({"listeners": [listener("a")]}, version="2")
    assert only([r for _, r in outgoing]).version_info == "2"


def test_nack_is_recorded_and_not_resent(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    initial = only(cache.handle_sotw_request(stream, sotw_request()))
    cache.handle_sotw_request(
        stream, sotw_request(version=initial.version_info, nonce=initial.nonce)
    )
    versions, outgoing = cache.set_resources({"listeners": [listener("bad")]})
    bad = outgoing[0][1]
    nack = sotw_request(version=initial.version_info, nonce=bad.nonce, error="bad listener")
    assert cache.handle_sotw_request(stream, nack) == []
    entry = cache.status()["nodes"][0]["streams"][0]
    assert entry["acked_version"] == initial.version_info
    assert entry["nack"] == {
        "version": versions["listeners"],
        "nonce": bad.nonce,
        "code": 3,
        "message": "bad listener",
    }
    # The same (refused) content again: still nothing.
    assert cache.set_resources({"listeners": [listener("bad")]})[1] == []
    # New content goes out.
    _, outgoing = cache.set_resources({"listeners": [listener("good")]})
    assert names_of(only([r for _, r in outgoing])) == ["good"]
    # Going back to the set before the NACK goes out too (it differs from the refused one).
    _, outgoing = cache.set_resources({"listeners": []})
    assert len(outgoing) == 1


def test_stale_nonce_is_ignored_but_its_nack_recorded(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(stream, sotw_request())
    v1 = cache.set_resources({"listeners": [listener("a")]})[1][0][1]
    v2 = cache.set_resources({"listeners": [listener("b")]})[1][0][1]
    # The client refuses v1 after v2 was sent: no response, but the ledger knows.
    late = sotw_request(nonce=v1.nonce, error="no", names=("a",))
    assert cache.handle_sotw_request(stream, late) == []
    entry = cache.status()["nodes"][0]["streams"][0]
    assert entry["nack"]["version"] == v1.version_info
    assert entry["sent"]["nonce"] == v2.nonce


def test_unknown_nonce_changes_nothing(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(stream, sotw_request())
    before = cache.status()
    assert cache.handle_sotw_request(stream, sotw_request(nonce="999", error="x")) == []
    assert cache.status() == before


def test_reconnect_gets_current_set_again(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a")]})
    first = cache.open_stream("sotw", LISTENER_TYPE)
    response = only(cache.handle_sotw_request(first, sotw_request()))
    cache.close_stream(first)
    assert cache.status() == {"nodes": []}
    second = cache.open_stream("sotw", LISTENER_TYPE)
    again = only(cache.handle_sotw_request(second, sotw_request(version=response.version_info)))
    assert again.version_info == response.version_info
    assert names_of(again) == ["a"]


def test_request_without_nonce_on_open_stream_is_answered(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(stream, sotw_request())
    assert len(cache.handle_sotw_request(stream, sotw_request())) == 1


def test_sotw_named_subscription_filters_and_resubscribes(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a"), listener("b")]})
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw_request(names=("b",))))
    assert names_of(response) == ["b"]
    # A change outside the subscription sends nothing.
    _, outgoing = cache.set_resources({"listeners": [listener("a", 2), listener("b")]})
    assert outgoing == [] or names_of(outgoing[0][1]) == ["b"]
    latest = outgoing[0][1] if outgoing else response
    # Subscribing to more names answers with them.
    more = cache.handle_sotw_request(stream, sotw_request(nonce=latest.nonce, names=("a", "b")))
    assert sorted(names_of(only(more))) == ["a", "b"]


def test_star_is_wildcard(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a"), listener("b")]})
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw_request(names=("*",))))
    assert sorted(names_of(response)) == ["a", "b"]


def test_ads_serves_listeners_clusters_and_empty_other_types(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a")], "clusters": [cluster("c")]})
    stream = cache.open_stream("sotw", None)
    lds = only(cache.handle_sotw_request(stream, sotw_request(type_url=LISTENER_TYPE)))
    cds = only(cache.handle_sotw_request(stream, sotw_request(type_url=CLUSTER_TYPE)))
    rds = only(cache.handle_sotw_request(stream, sotw_request(type_url=ROUTE_TYPE, names=("r",))))
    assert (lds.type_url, len(lds.resources)) == (LISTENER_TYPE, 1)
    assert (cds.type_url, len(cds.resources)) == (CLUSTER_TYPE, 1)
    assert (rds.type_url, len(rds.resources)) == (ROUTE_TYPE, 0)
    types = [s["type_url"] for s in cache.status()["nodes"][0]["streams"]]
    assert sorted(types) == sorted([LISTENER_TYPE, CLUSTER_TYPE, ROUTE_TYPE])
    # A listener push reaches only the listener subscription of the ADS stream.
    _, outgoing = cache.set_resources({"listeners": [listener("b")]})
    assert [r.type_url for _, r in outgoing] == [LISTENER_TYPE]


def test_ads_request_without_type_is_ignored(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", None)
    assert cache.handle_sotw_request(stream, sotw_request()) == []


def test_node_is_bound_by_first_request(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw_request(node="first")))
    cache.handle_sotw_request(stream, sotw_request(node="", nonce=response.nonce))
    assert [n["node"] for n in cache.status()["nodes"]] == ["first"]


# ---------------------------------------------------------------- per-node sets


def test_node_set_overrides_default_for_that_node_only(cache: XdsCache) -> None:
    one = cache.open_stream("sotw", LISTENER_TYPE)
    two = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(one, sotw_request(node="one"))
    cache.handle_sotw_request(two, sotw_request(node="two"))
    _, outgoing = cache.set_resources({"listeners": [listener("own")]}, node="one")
    assert [(s, names_of(r)) for s, r in outgoing] == [(one, ["own"])]
    # A default push now skips node one (it has its own listeners) but reaches two.
    _, outgoing = cache.set_resources({"listeners": [listener("shared")]})
    assert [(s, names_of(r)) for s, r in outgoing] == [(two, ["shared"])]
    assert cache.current_set("one", LISTENER_TYPE).resources[0].name == "own"
    assert cache.current_set("three", LISTENER_TYPE).resources[0].name == "shared"


def test_node_set_per_type_falls_back_to_default(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("d")], "clusters": [cluster("dc")]})
    cache.set_resources({"listeners": [listener("own")]}, node="one")
    assert cache.current_set("one", CLUSTER_TYPE).resources[0].name == "dc"
    versions = cache.versions("one")
    assert versions["clusters"] == cache.versions()["clusters"]
    assert versions["listeners"] != cache.versions()["listeners"]


def test_node_push_equal_to_default_sends_nothing(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a")]})
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    cache.handle_sotw_request(stream, sotw_request(node="one"))
    _, outgoing = cache.set_resources({"listeners": [listener("a")]}, node="one")
    assert outgoing == []


# ---------------------------------------------------------------- Delta


def test_delta_wildcard_initial_and_incremental(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a"), listener("b")]})
    stream = cache.open_stream("delta", LISTENER_TYPE)
    first = only(cache.handle_delta_request(stream, delta_request()))
    assert sorted(r.name for r in first.resources) == ["a", "b"]
    assert all(r.version for r in first.resources)
    assert first.system_version_info == cache.versions()["listeners"]
    cache.handle_delta_request(stream, delta_request(nonce=first.nonce))
    _, outgoing = cache.set_resources({"listeners": [listener("a"), listener("c")]})
    update = only([r for _, r in outgoing])
    assert [r.name for r in update.resources] == ["c"]
    assert list(update.removed_resources) == ["b"]
    ack = delta_request(nonce=update.nonce)
    assert cache.handle_delta_request(stream, ack) == []
    assert cache.status()["nodes"][0]["streams"][0]["acked_version"] == update.system_version_info


def test_delta_first_request_answered_even_when_empty(cache: XdsCache) -> None:
    stream = cache.open_stream("delta", LISTENER_TYPE)
    first = only(cache.handle_delta_request(stream, delta_request()))
    assert list(first.resources) == [] and list(first.removed_resources) == []


def test_delta_reconnect_with_initial_versions_sends_only_differences(cache: XdsCache) -> None:
    a, b = listener("a"), listener("b")
    cache.set_resources({"listeners": [a, b]})
    stream = cache.open_stream("delta", LISTENER_TYPE)
    initial = {"a": resource_version(a), "b": "stale", "gone": "x"}
    response = only(cache.handle_delta_request(stream, delta_request(initial=initial)))
    assert [r.name for r in response.resources] == ["b"]
    assert list(response.removed_resources) == ["gone"]


def test_delta_reconnect_in_sync_sends_empty_response(cache: XdsCache) -> None:
    a = listener("a")
    cache.set_resources({"listeners": [a]})
    stream = cache.open_stream("delta", LISTENER_TYPE)
    response = only(
        cache.handle_delta_request(stream, delta_request(initial={"a": resource_version(a)}))
    )
    assert list(response.resources) == [] and list(response.removed_resources) == []


def test_delta_nack_is_not_resent_but_next_change_resends_refused(cache: XdsCache) -> None:
    stream = cache.open_stream("delta", LISTENER_TYPE)
    first = only(cache.handle_delta_request(stream, delta_request()))
    cache.handle_delta_request(stream, delta_request(nonce=first.nonce))
    good = listener("good")
    _, outgoing = cache.set_resources({"listeners": [good]})
    ok = only([r for _, r in outgoing])
    cache.handle_delta_request(stream, delta_request(nonce=ok.nonce))
    _, outgoing = cache.set_resources({"listeners": [good, listener("bad", 1)]})
    bad = only([r for _, r in outgoing])
    assert [r.name for r in bad.resources] == ["bad"]
    assert cache.handle_delta_request(stream, delta_request(nonce=bad.nonce, error="no")) == []
    entry = cache.status()["nodes"][0]["streams"][0]
    assert entry["nack"]["version"] == bad.system_version_info
    assert entry["acked_version"] == ok.system_version_info
    # Same refused content: nothing. A change: the refused resource goes out again.
    assert cache.set_resources({"listeners": [good, listener("bad", 1)]})[1] == []
    _, outgoing = cache.set_resources({"listeners": [good, listener("bad", 1), listener("x")]})
    again = only([r for _, r in outgoing])
    assert sorted(r.name for r in again.resources) == ["bad", "x"]


def test_delta_named_subscribe_and_unsubscribe(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a"), listener("b")]})
    stream = cache.open_stream("delta", LISTENER_TYPE)
    first = only(cache.handle_delta_request(stream, delta_request(subscribe=("a", "missing"))))
    assert [r.name for r in first.resources] == ["a"]
    assert list(first.removed_resources) == ["missing"]  # Delta's "does not exist"
    more = only(
        cache.handle_delta_request(stream, delta_request(nonce=first.nonce, subscribe=("b",)))
    )
    assert [r.name for r in more.resources] == ["b"]
    cache.handle_delta_request(stream, delta_request(nonce=more.nonce, unsubscribe=("a",)))
    # "a" changes, but it is no longer subscribed: only the version moves.
    _, outgoing = cache.set_resources({"listeners": [listener("a", 9), listener("b")]})
    update = only([r for _, r in outgoing])
    assert list(update.resources) == [] and list(update.removed_resources) == []
    # Removing "b" (subscribed and known) is told.
    _, outgoing = cache.set_resources({"listeners": [listener("a", 9)]})
    assert list(only([r for _, r in outgoing]).removed_resources) == ["b"]


def test_delta_absent_named_resource_is_told_once_then_sent_when_it_appears(
    cache: XdsCache,
) -> None:
    stream = cache.open_stream("delta", None)
    first = only(
        cache.handle_delta_request(stream, delta_request(type_url=LISTENER_TYPE, subscribe=("x",)))
    )
    assert list(first.removed_resources) == ["x"]
    _, outgoing = cache.set_resources({"listeners": [listener("y")]})
    assert [list(r.removed_resources) for _, r in outgoing] == [[]]
    _, outgoing = cache.set_resources({"listeners": [listener("x")]})
    assert [r.name for r in only([r for _, r in outgoing]).resources] == ["x"]
    _, outgoing = cache.set_resources({"listeners": []})
    assert list(only([r for _, r in outgoing]).removed_resources) == ["x"]


def test_delta_ack_only_request_sends_nothing(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a")]})
    stream = cache.open_stream("delta", LISTENER_TYPE)
    first = only(cache.handle_delta_request(stream, delta_request()))
    assert cache.handle_delta_request(stream, delta_request(nonce=first.nonce)) == []


def test_delta_ads_other_type_is_empty(cache: XdsCache) -> None:
    stream = cache.open_stream("delta", None)
    response = only(
        cache.handle_delta_request(stream, delta_request(type_url=ROUTE_TYPE, subscribe=("r",)))
    )
    assert response.type_url == ROUTE_TYPE and list(response.resources) == []


def test_delta_version_only_change_is_sent_so_wait_can_finish(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("a")]}, version="1")
    stream = cache.open_stream("delta", LISTENER_TYPE)
    cache.handle_delta_request(stream, delta_request())
    _, outgoing = cache.set_resources({"listeners": [listener("a")]}, version="2")
    update = only([r for _, r in outgoing])
    assert update.system_version_info == "2" and list(update.resources) == []


# ---------------------------------------------------------------- status and wait


def test_status_shape_and_times(cache: XdsCache) -> None:
    stream = cache.open_stream("delta", LISTENER_TYPE)
    assert cache.status() == {"nodes": []}  # not bound to a node yet
    cache.handle_delta_request(stream, delta_request(node="n"))
    entry = cache.status()["nodes"][0]
    assert entry["node"] == "n"
    [row] = entry["streams"]
    assert set(row) == {
        "stream",
        "type_url",
        "mode",
        "connected_since",
        "sent",
        "acked_version",
        "nack",
        "subscribed",
    }
    assert row["mode"] == "delta"
    assert row["connected_since"] == "2026-01-02T03:04:06Z"
    assert row["acked_version"] is None


def test_revision_moves_on_ledger_changes_only(cache: XdsCache) -> None:
    start = cache.revision
    stream = cache.open_stream("sotw", LISTENER_TYPE)
    assert cache.revision == start
    response = only(cache.handle_sotw_request(stream, sotw_request()))
    after_send = cache.revision
    assert after_send > start
    cache.handle_sotw_request(stream, sotw_request(nonce=response.nonce))
    assert cache.revision > after_send
    before_close = cache.revision
    cache.close_stream(stream)
    assert cache.revision > before_close


def status_of(*nodes: tuple[str, list[dict]]) -> dict:
    return {"nodes": [{"node": name, "streams": streams} for name, streams in nodes]}


def row(acked: str | None = None, nack_version: str | None = None, type_url=LISTENER_TYPE):
    nack = None
    if nack_version is not None:
        nack = {"version": nack_version, "nonce": "9", "code": 3, "message": "refused"}
    return {"type_url": type_url, "acked_version": acked, "nack": nack}


@pytest.mark.parametrize(
    ("status", "node", "expected"),
    [
        (status_of(), None, "pending"),
        (status_of(("a", [row("v")])), None, "acked"),
        (status_of(("a", [row("v")]), ("b", [row("old")])), None, "pending"),
        (status_of(("a", [row("v")]), ("b", [row("old", "v")])), None, "nacked"),
        (status_of(("a", [row("v")]), ("b", [row("old")])), "a", "acked"),
        (status_of(("a", [row("v")])), "b", "pending"),
        (status_of(("a", [row("old", "v")])), "a", "nacked"),
        (status_of(("a", [row("old", "older")])), "a", "pending"),
        (status_of(("a", [row("v", "v")])), None, "acked"),  # ACKed after a reconnect
        (status_of(("a", [row("v"), row("old")])), None, "pending"),  # two streams
        (status_of(("c", [row("x", type_url=CLUSTER_TYPE)])), None, "pending"),
        (status_of(("a", [row("v")]), ("c", [row(None, type_url=CLUSTER_TYPE)])), None, "acked"),
    ],
)
def test_evaluate_wait(status: dict, node: str | None, expected: str) -> None:
    verdict = evaluate_wait(status, "v", node)
    assert verdict.state == expected


def test_evaluate_wait_nack_detail_names_node_and_message() -> None:
    verdict = evaluate_wait(status_of(("edge", [row(None, "v")])), "v")
    assert verdict == WaitVerdict("nacked", "node 'edge' NACKed listeners version v: refused")


def test_closed_streams_leave_no_state(cache: XdsCache) -> None:
    ids = [cache.open_stream("sotw", LISTENER_TYPE) for _ in range(5)]
    for stream in ids:
        cache.handle_sotw_request(stream, sotw_request(node=f"n{stream}"))
    for stream in ids:
        cache.close_stream(stream)
    assert cache.stream_count() == 0
    assert cache.status() == {"nodes": []}
    assert cache.set_resources({"listeners": [listener("a")]})[1] == []


# ---------------------------------------------------------------- Delta, as a property


class DeltaClient:
    """What an Envoy-like Delta client holds: applies a response only when it ACKs it."""

    def __init__(self) -> None:
        self.resources: dict[str, str] = {}

    def apply(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        for resource in response.resources:
            self.resources[resource.name] = resource.version
        for name in response.removed_resources:
            self.resources.pop(name, None)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from("abcde"), st.integers(1, 3), max_size=5),
            st.booleans(),  # does the client refuse this response?
        ),
        min_size=1,
        max_size=12,
    )
)
def test_delta_client_that_acks_a_changed_push_is_in_sync(pushes) -> None:
    cache = XdsCache(clock=Clock())
    client = DeltaClient()
    stream = cache.open_stream("delta", LISTENER_TYPE)
    first = only(cache.handle_delta_request(stream, delta_request()))
    client.apply(first)
    cache.handle_delta_request(stream, delta_request(nonce=first.nonce))
    for contents, refuse in pushes:
        resources = [listener(name, port) for name, port in sorted(contents.items())]
        _, outgoing = cache.set_resources({"listeners": resources})
        for _, response in outgoing:
            if refuse:
                cache.handle_delta_request(stream, delta_request(nonce=response.nonce, error="no"))
            else:
                client.apply(response)
                cache.handle_delta_request(stream, delta_request(nonce=response.nonce))
        expected = {r.name: resource_version(r) for r in resources}
        if outgoing and not refuse:
            assert client.resources == expected
        if not outgoing:
            # Nothing sent: either the client already has it or it refused exactly this.
            assert (
                client.resources == expected
                or cache.status()["nodes"][0]["streams"][0]["nack"] is not None
            )
    # Reconnecting with what it holds always converges.
    cache.close_stream(stream)
    again = cache.open_stream("delta", LISTENER_TYPE)
    response = only(
        cache.handle_delta_request(again, delta_request(initial=dict(client.resources)))
    )
    client.apply(response)
    current = cache.current_set(None, LISTENER_TYPE).resources
    assert client.resources == {r.name: resource_version(r) for r in current}
