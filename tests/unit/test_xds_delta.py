"""The Delta subscription state machine: request sequences and stats exactly as Envoy 1.40's.

The reference sequence (`test_envoy_recorded_script`) was recorded from the real binary
(DELTA_GRPC and delta ADS send the same requests) against a scripted fake server.
"""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_proxy.stats import Stats
from xds_proxy.xds.decode import LISTENER_TYPE_URL, decode_delta_listeners
from xds_proxy.xds.delta import DeltaSubscription
from xds_proxy.xds.sotw import MAX_ERROR_MESSAGE_BYTES, SubscriptionStats
from xds_proxy.xds.ttl import TtlTracker
from xds_proxy.xxhash64 import xxhash64

P = "listener_manager.lds."
NODE = base_pb2.Node(id="node-1", cluster="cluster-1")
CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class Recorder:
    """An apply_delta callback that records calls and answers from a script."""

    def __init__(self, *answers: str | Exception | None) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[str], list[str]]] = []

    def __call__(
        self, version: str, listeners: list[listener_pb2.Listener], removed: list[str]
    ) -> str | None:
        self.calls.append((version, [listener.name for listener in listeners], list(removed)))
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(first_only: bool = False) -> tuple[DeltaSubscription, Stats]:
    stats = Stats()
    sub = DeltaSubscription(
        LISTENER_TYPE_URL,
        NODE,
        SubscriptionStats.create(stats, P, P + "control_plane."),
        decode=decode_delta_listeners,
        node_on_first_request_only=first_only,
    )
    return sub, stats


def response(
    system_version: str,
    nonce: str,
    *added: tuple[str, str] | tuple[str, str, float | None],
    removed: tuple[str, ...] = (),
    heartbeats: tuple[tuple[str, str, float | None], ...] = (),
) -> discovery_pb2.DeltaDiscoveryResponse:
    """`added`: (name, version[, ttl_s]); `heartbeats`: (name, version, ttl_s) without body."""
    result = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=system_version, nonce=nonce, type_url=LISTENER_TYPE_URL
    )
    for entry in added:
        name, version = entry[0], entry[1]
        resource = result.resources.add(name=name, version=version)
        resource.resource.Pack(listener_pb2.Listener(name=name))
        if len(entry) > 2 and entry[2] is not None:
            resource.ttl.FromNanoseconds(int(entry[2] * 1e9))
    for name, version, ttl_s in heartbeats:
        resource = result.resources.add(name=name, version=version)
        if ttl_s is not None:
            resource.ttl.FromNanoseconds(int(ttl_s * 1e9))
    result.removed_resources.extend(removed)
    return result


def summary(request: discovery_pb2.DeltaDiscoveryRequest) -> dict:
    """The request without the node, plus whether the node was there."""
    return {
        "node": request.HasField("node"),
        "type_url": request.type_url,
        "nonce": request.response_nonce,
        "subscribe": list(request.resource_names_subscribe),
        "unsubscribe": list(request.resource_names_unsubscribe),
        "initial": dict(request.initial_resource_versions),
        "error": (request.error_detail.code, request.error_detail.message)
        if request.HasField("error_detail")
        else None,
    }


def expect(nonce: str = "", initial: dict | None = None, error=None, node: bool = True) -> dict:
    return {
        "node": node,
        "type_url": LISTENER_TYPE_URL,
        "nonce": nonce,
        "subscribe": [],
        "unsubscribe": [],
        "initial": initial or {},
        "error": error,
    }


def counters(stats: Stats) -> dict[str, int | str | None]:
    names = ["update_attempt", "update_success", "update_rejected", "update_failure"]
    result = {name: stats.value(P + name) for name in names}
    result["version_text"] = stats.value(P + "version_text")
    result["connected"] = stats.value(P + "control_plane.connected_state")
    return result


def test_first_request_is_the_legacy_wildcard_with_the_node_only() -> None:
    sub, stats = make()
    first = sub.on_stream_established()
    assert first.node == NODE
    assert summary(first) == expect()
    assert stats.value(P + "update_attempt") == 1
    assert stats.value(P + "control_plane.connected_state") == 1


def test_envoy_recorded_script() -> None:
    """The sequence recorded from Envoy 1.40: add a, add b, NACK c, remove b (and an unknown
    name), add t with a 1.5 s TTL, t expires, stream lost, reconnect, an empty response."""
    sub, stats = make()
    apply = Recorder(None, None, "Error adding/updating listener(s) c: duplicate address\n")
    now = 100.0
    sent = [sub.on_stream_established()]
    for message in (
        response("sv1", "n1", ("a", "va1")),
        response("sv2", "n2", ("b", "vb1")),
        response("sv3", "n3", ("c", "vc1")),
        response("sv4", "n4", removed=("b", "zzz")),
        response("sv5", "n5", ("t", "vt1", 1.5)),
    ):
        outcome = sub.on_response(message, apply, now_ms=5, now=now)
        sent.append(outcome.request)
    assert [summary(r) for r in sent] == [
        expect(),
        expect("n1"),
        expect("n2"),
        expect("n3", error=(13, "Error adding/updating listener(s) c: duplicate address\n")),
        expect("n4"),
        expect("n5"),
    ]
    assert apply.calls == [
        ("sv1", ["a"], []),
        ("sv2", ["b"], []),
        ("sv3", ["c"], []),
        ("sv4", [], ["b", "zzz"]),
        ("sv5", ["t"], []),
    ]
    assert counters(stats) == {
        "update_attempt": 7,
        "update_success": 4,
        "update_rejected": 1,
        "update_failure": 0,
        "version_text": "sv5",
        "connected": 1,
    }
    assert sub.ttl.next_deadline() == pytest.approx(101.5)
    assert sub.on_ttl_expired(apply, now_ms=6, now=101.0) == []  # not yet
    assert sub.on_ttl_expired(apply, now_ms=7, now=101.5) == ["t"]
    assert apply.calls[-1] == ("", [], ["t"])
    assert counters(stats)["update_success"] == 5
    assert counters(stats)["version_text"] == ""
    assert stats.value(P + "version") == xxhash64("")
    assert stats.value(P + "update_time") == 7
    sub.on_stream_lost()
    assert counters(stats)["update_failure"] == 1
    assert counters(stats)["connected"] == 0
    again = sub.on_stream_established()
    assert summary(again) == expect(initial={"a": "va1"})  # c was rejected, b and t are gone
    outcome = sub.on_response(response("sv6", "m1"), apply, now_ms=8, now=103.0)
    assert summary(outcome.request) == expect("m1")
    assert counters(stats) == {
        "update_attempt": 10,
        "update_success": 6,
        "update_rejected": 1,
        "update_failure": 1,
        "version_text": "sv6",
        "connected": 1,
    }
    assert stats.value(P + "version") == xxhash64("sv6") == 11984702692337061701


def test_nack_changes_no_version_and_starts_no_ttl() -> None:
    sub, _ = make()
    sub.on_stream_established()
    sub.on_response(response("1", "n1", ("a", "1")), Recorder(), now_ms=1, now=0.0)
    outcome = sub.on_response(
        response("2", "n2", ("a", "2", 5.0), removed=("x",)), Recorder("bad"), now_ms=2, now=0.0
    )
    assert not outcome.accepted and outcome.error == "bad"
    assert sub.resource_versions == {"a": "1"}
    assert len(sub.ttl) == 0


def test_removal_forgets_the_version_and_the_ttl() -> None:
    sub, _ = make()
    sub.on_stream_established()
    sub.on_response(response("1", "n1", ("a", "1", 3.0), ("b", "1")), Recorder(), 1, now=0.0)
    assert sub.ttl.deadline("a") == 3.0
    sub.on_response(response("2", "n2", removed=("a",)), Recorder(), 2, now=1.0)
    assert sub.resource_versions == {"b": "1"}
    assert "a" not in sub.ttl


def test_heartbeat_refreshes_the_ttl_and_is_not_applied() -> None:
    sub, _ = make()
    apply = Recorder()
    sub.on_stream_established()
    sub.on_response(response("1", "n1", ("a", "va", 2.0)), apply, 1, now=10.0)
    outcome = sub.on_response(
        response("2", "n2", heartbeats=(("a", "va", 2.0),)), apply, 2, now=11.5
    )
    assert outcome.accepted
    assert apply.calls[-1] == ("2", [], [])
    assert sub.ttl.deadline("a") == pytest.approx(13.5)
    assert sub.on_ttl_expired(apply, 3, now=12.5) == []
    assert sub.on_ttl_expired(apply, 4, now=13.5) == ["a"]
    assert sub.resource_versions == {}


def test_resend_without_ttl_clears_the_deadline() -> None:
    sub, _ = make()
    sub.on_stream_established()
    sub.on_response(response("1", "n1", ("a", "1", 2.0)), Recorder(), 1, now=0.0)
    sub.on_response(response("2", "n2", ("a", "2")), Recorder(), 2, now=1.0)
    assert sub.ttl.next_deadline() is None


def test_bodyless_resource_with_another_version_is_rejected() -> None:
    sub, _ = make()
    apply = Recorder()
    sub.on_stream_established()
    sub.on_response(response("1", "n1", ("a", "1")), apply, 1, now=0.0)
    outcome = sub.on_response(response("2", "n2", heartbeats=(("a", "2", None),)), apply, 2, 0.0)
    assert not outcome.accepted
    assert "resource a has no body" in outcome.error
    assert len(apply.calls) == 1  # nothing applied


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (
            response("1", "n", ("a", "1"), ("a", "2")),
            "duplicate name a found among added/updated resources",
        ),
        (
            response("1", "n", ("a", "1"), removed=("a",)),
            "duplicate name a found in the union of added+removed resources",
        ),
    ],
)
def test_contradictory_responses_are_rejected_whole(message, error: str) -> None:
    sub, stats = make()
    apply = Recorder()
    sub.on_stream_established()
    outcome = sub.on_response(message, apply, 1, 0.0)
    assert outcome.error == error
    assert summary(outcome.request)["error"] == (13, error)
    assert apply.calls == []
    assert stats.value(P + "update_rejected") == 1


def test_a_resource_of_another_type_is_rejected() -> None:
    sub, _ = make()
    message = discovery_pb2.DeltaDiscoveryResponse(nonce="n", type_url=LISTENER_TYPE_URL)
    resource = message.resources.add(name="a", version="1")
    resource.resource.type_url = CLUSTER_TYPE_URL
    sub.on_stream_established()
    outcome = sub.on_response(message, Recorder(), 1, 0.0)
    assert outcome.error.startswith(f"{CLUSTER_TYPE_URL} does not match the message-wide type URL")


def test_response_for_another_type_is_ignored() -> None:
    sub, stats = make()
    sub.on_stream_established()
    message = discovery_pb2.DeltaDiscoveryResponse(nonce="n", type_url=CLUSTER_TYPE_URL)
    outcome = sub.on_response(message, Recorder(), 1, 0.0)
    assert outcome.request is None
    assert sub.nonce == ""
    assert stats.value(P + "update_attempt") == 1


def test_apply_exception_becomes_the_nack_text() -> None:
    sub, _ = make()
    sub.on_stream_established()
    outcome = sub.on_response(response("1", "n", ("a", "1")), Recorder(KeyError("x")), 1, 0.0)
    assert outcome.error == "'x'"


def test_long_error_is_truncated_like_envoy() -> None:
    sub, _ = make()
    sub.on_stream_established()
    outcome = sub.on_response(response("1", "n", ("a", "1")), Recorder("e" * 5000), 1, 0.0)
    assert outcome.error == "e" * MAX_ERROR_MESSAGE_BYTES + "...(truncated)"


def test_node_on_first_request_only() -> None:
    sub, _ = make(first_only=True)
    assert sub.on_stream_established().HasField("node")
    ack = sub.on_response(response("1", "n1", ("a", "1")), Recorder(), 1, 0.0).request
    assert not ack.HasField("node")
    sub.on_stream_lost()
    assert sub.on_stream_established().HasField("node")


def test_nonce_is_cleared_on_reconnect_and_versions_kept() -> None:
    sub, _ = make()
    sub.on_stream_established()
    sub.on_response(response("1", "n1", ("b", "2"), ("a", "1")), Recorder(), 1, 0.0)
    sub.on_stream_lost()
    first = sub.on_stream_established()
    assert summary(first) == expect(initial={"a": "1", "b": "2"})


def test_control_plane_identifier_is_recorded() -> None:
    sub, stats = make()
    sub.on_stream_established()
    message = response("1", "n1")
    message.control_plane.identifier = "cp-7"
    sub.on_response(message, Recorder(), 1, 0.0)
    assert stats.value(P + "control_plane.identifier") == "cp-7"


def test_initial_fetch_timeout_counts_an_attempt() -> None:
    sub, stats = make()
    sub.start()
    sub.on_initial_fetch_timeout()
    assert stats.value(P + "init_fetch_timeout") == 1
    assert stats.value(P + "update_attempt") == 2


# -- the TTL tracker ---------------------------------------------------------------------------


def test_ttl_tracker_deadlines() -> None:
    tracker = TtlTracker()
    assert tracker.next_deadline() is None
    tracker.refresh("b", 2.0, now=10.0)
    tracker.refresh("a", 1.0, now=10.0)
    assert tracker.next_deadline() == 11.0
    assert tracker.pop_expired(10.999) == []
    tracker.refresh("c", 0.5, now=10.5)
    assert tracker.pop_expired(12.0) == ["a", "b", "c"]
    assert len(tracker) == 0


def test_ttl_tracker_refresh_moves_and_none_clears() -> None:
    tracker = TtlTracker()
    tracker.refresh("a", 1.0, now=0.0)
    tracker.refresh("a", 1.0, now=0.9)
    assert tracker.pop_expired(1.0) == []
    assert tracker.deadline("a") == pytest.approx(1.9)
    tracker.refresh("a", None, now=1.0)
    assert tracker.next_deadline() is None
    tracker.refresh("b", 1.0, now=0.0)
    tracker.clear(["b", "unknown"])
    assert "b" not in tracker
