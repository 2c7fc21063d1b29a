"""The SotW subscription state machine: request sequences and stats exactly as Envoy's."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from xds_proxy.stats import Stats
from xds_proxy.xds.decode import LISTENER_TYPE_URL, decode_listeners
from xds_proxy.xds.sotw import (
    MAX_ERROR_MESSAGE_BYTES,
    SotwSubscription,
    SubscriptionStats,
    truncate_error_message,
)
from xds_proxy.xxhash64 import xxhash64

P = "listener_manager.lds."
NODE = base_pb2.Node(id="node-1", cluster="cluster-1")


class Recorder:
    """An apply callback that records calls and answers from a script."""

    def __init__(self, *answers: str | Exception | None) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, version: str, listeners: list[listener_pb2.Listener]) -> str | None:
        self.calls.append((version, [listener.name for listener in listeners]))
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer


def make(
    stats: Stats | None = None, cp_prefix: str = P + "control_plane.", first_only: bool = False
) -> tuple[SotwSubscription, Stats]:
    stats = stats or Stats()
    sub = SotwSubscription(
        LISTENER_TYPE_URL,
        NODE,
        SubscriptionStats.create(stats, P, cp_prefix),
        decode=decode_listeners,
        node_on_first_request_only=first_only,
    )
    return sub, stats


def response(version: str, nonce: str, *names: str) -> discovery_pb2.DiscoveryResponse:
    result = discovery_pb2.DiscoveryResponse(
        version_info=version, nonce=nonce, type_url=LISTENER_TYPE_URL
    )
    for name in names:
        result.resources.add().Pack(listener_pb2.Listener(name=name))
    return result


def fields(request: discovery_pb2.DiscoveryRequest) -> tuple:
    detail = (
        (request.error_detail.code, request.error_detail.message)
        if request.HasField("error_detail")
        else None
    )
    return (request.version_info, request.response_nonce, list(request.resource_names), detail)


def lds_stats(stats: Stats) -> dict[str, int | str | None]:
    names = [
        "update_attempt",
        "update_success",
        "update_rejected",
        "update_failure",
        "init_fetch_timeout",
        "version_text",
        "control_plane.connected_state",
    ]
    return {name: stats.value(P + name) for name in names}


def test_stats_exist_at_zero_before_anything_happens() -> None:
    _, stats = make()
    assert lds_stats(stats) == {
        "update_attempt": 0,
        "update_success": 0,
        "update_rejected": 0,
        "update_failure": 0,
        "init_fetch_timeout": 0,
        "version_text": "",
        "control_plane.connected_state": 0,
    }
    assert stats.value(P + "version") == 0
    assert stats.value(P + "update_time") == 0
    assert stats.value(P + "control_plane.identifier") == ""
    assert stats.value(P + "control_plane.pending_requests") == 0
    assert stats.value(P + "control_plane.rate_limit_enforced") == 0


def test_first_request_is_wildcard_with_node_type_and_empty_version_and_nonce() -> None:
    sub, stats = make()
    request = sub.on_stream_established()
    assert fields(request) == ("", "", [], None)
    assert request.type_url == LISTENER_TYPE_URL
    assert request.node.id == "node-1" and request.node.cluster == "cluster-1"
    assert stats.value(P + "update_attempt") == 1
    assert stats.value(P + "control_plane.connected_state") == 1


def test_ack_carries_response_version_and_nonce_and_node() -> None:
    sub, stats = make()
    sub.on_stream_established()
    apply = Recorder(None)
    outcome = sub.on_response(response("v1", "n1", "a", "b"), apply, now_ms=1234)
    assert outcome.accepted and outcome.error is None
    assert apply.calls == [("v1", ["a", "b"])]
    assert fields(outcome.request) == ("v1", "n1", [], None)
    assert outcome.request.node == NODE
    assert outcome.request.type_url == LISTENER_TYPE_URL
    assert sub.last_accepted_version == "v1"
    assert lds_stats(stats) == {
        "update_attempt": 2,
        "update_success": 1,
        "update_rejected": 0,
        "update_failure": 0,
        "init_fetch_timeout": 0,
        "version_text": "v1",
        "control_plane.connected_state": 1,
    }
    assert stats.value(P + "version") == xxhash64("v1") == 9194640092791331756
    assert stats.value(P + "update_time") == 1234


def test_nack_before_any_accept_has_empty_version() -> None:
    sub, stats = make()
    sub.on_stream_established()
    message = "Error adding/updating listener(s) c: bad\n"
    outcome = sub.on_response(response("v1", "n1", "c"), Recorder(message), now_ms=5)
    assert not outcome.accepted
    assert fields(outcome.request) == ("", "n1", [], (13, message))
    assert outcome.request.node == NODE
    assert stats.value(P + "update_rejected") == 1
    assert stats.value(P + "update_success") == 0
    assert stats.value(P + "update_attempt") == 2
    assert stats.value(P + "version_text") == ""
    assert stats.value(P + "version") == 0
    assert stats.value(P + "update_time") == 0


def test_nack_after_accept_keeps_last_accepted_version_and_version_stats() -> None:
    sub, stats = make()
    sub.on_stream_established()
    sub.on_response(response("v1", "n1", "a"), Recorder(None), now_ms=10)
    outcome = sub.on_response(response("v2", "n2", "a", "c"), Recorder("no\n"), now_ms=20)
    assert fields(outcome.request) == ("v1", "n2", [], (13, "no\n"))
    # the next ACK has no error_detail any more
    outcome = sub.on_response(response("v3", "n3", "a"), Recorder(None), now_ms=30)
    assert fields(outcome.request) == ("v3", "n3", [], None)
    assert stats.value(P + "version_text") == "v3"
    assert stats.value(P + "update_time") == 30
    assert stats.value(P + "update_attempt") == 4
    assert (stats.value(P + "update_success"), stats.value(P + "update_rejected")) == (2, 1)


def test_noop_response_counts_as_success_and_refreshes_update_time() -> None:
    sub, stats = make()
    sub.on_stream_established()
    sub.on_response(response("v1", "n1", "a"), Recorder(None), now_ms=10)
    outcome = sub.on_response(response("v1", "n2", "a"), Recorder(None), now_ms=99)
    assert fields(outcome.request) == ("v1", "n2", [], None)
    assert stats.value(P + "update_success") == 2
    assert stats.value(P + "update_time") == 99


def test_empty_response_is_applied_as_remove_all() -> None:
    sub, _ = make()
    sub.on_stream_established()
    apply = Recorder(None)
    outcome = sub.on_response(response("v9", "n1"), apply, now_ms=1)
    assert apply.calls == [("v9", [])]
    assert outcome.accepted


def test_exception_from_apply_is_a_nack_with_its_text() -> None:
    sub, stats = make()
    sub.on_stream_established()
    outcome = sub.on_response(response("v1", "n1", "a"), Recorder(RuntimeError("boom")), 1)
    assert fields(outcome.request) == ("", "n1", [], (13, "boom"))
    outcome = sub.on_response(response("v2", "n2", "a"), Recorder(KeyError()), 1)
    assert outcome.request.error_detail.message == "KeyError"
    assert stats.value(P + "update_rejected") == 2


def test_undecodable_response_is_rejected_whole_and_apply_is_not_called() -> None:
    sub, stats = make()
    sub.on_stream_established()
    bad = response("v1", "n1", "a")
    bad.resources.append(any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\xff\xff\xff"))
    apply = Recorder(None)
    outcome = sub.on_response(bad, apply, now_ms=1)
    assert apply.calls == []
    assert outcome.request.version_info == "" and outcome.request.response_nonce == "n1"
    assert outcome.request.error_detail.code == 13
    assert outcome.request.error_detail.message.startswith(
        "Unable to unpack as envoy.config.listener.v3.Listener: "
    )
    assert stats.value(P + "update_rejected") == 1


def test_response_of_another_type_is_ignored_without_request_or_stats() -> None:
    sub, stats = make()
    sub.on_stream_established()
    other = discovery_pb2.DiscoveryResponse(
        version_info="x", nonce="nx", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"
    )
    apply = Recorder(None)
    outcome = sub.on_response(other, apply, now_ms=1)
    assert outcome.request is None and apply.calls == []
    assert sub.nonce == "" and sub.responses_handled == 0
    assert stats.value(P + "update_attempt") == 1
    # the next listener response is acknowledged normally
    outcome = sub.on_response(response("v1", "n1"), apply, now_ms=1)
    assert fields(outcome.request) == ("v1", "n1", [], None)


def test_reconnect_sends_last_accepted_version_and_empty_nonce() -> None:
    sub, stats = make()
    sub.on_stream_established()
    sub.on_response(response("v1", "n1", "a"), Recorder(None), 1)
    sub.on_response(response("v2", "n2", "a"), Recorder("bad\n"), 1)
    sub.on_stream_lost()
    assert stats.value(P + "control_plane.connected_state") == 0
    assert stats.value(P + "update_failure") == 1
    assert sub.nonce == ""
    request = sub.on_stream_established()
    assert fields(request) == ("v1", "", [], None)
    assert request.node == NODE
    assert stats.value(P + "control_plane.connected_state") == 1
    # Envoy: 1 (start) + 2 responses + 1 failure; the reconnect request adds nothing
    assert stats.value(P + "update_attempt") == 4
    assert stats.value(P + "version_text") == "v1"


def test_failed_connection_attempts_each_count_a_failure_and_an_attempt() -> None:
    sub, stats = make()
    for _ in range(3):
        sub.on_stream_established()
        sub.on_stream_lost()
    assert stats.value(P + "update_failure") == 3
    assert stats.value(P + "update_attempt") == 4
    assert stats.value(P + "control_plane.connected_state") == 0
    assert fields(sub.on_stream_established()) == ("", "", [], None)


def test_initial_fetch_timeout_counts() -> None:
    sub, stats = make()
    sub.on_stream_established()
    sub.on_initial_fetch_timeout()
    assert stats.value(P + "init_fetch_timeout") == 1
    assert stats.value(P + "update_attempt") == 2


def test_start_counts_once() -> None:
    sub, stats = make()
    sub.start()
    sub.start()
    sub.on_stream_established()
    assert stats.value(P + "update_attempt") == 1


def test_ads_puts_control_plane_stats_at_the_root() -> None:
    sub, stats = make(cp_prefix="control_plane.")
    sub.on_stream_established()
    assert stats.value("control_plane.connected_state") == 1
    assert stats.value(P + "control_plane.connected_state") is None


def test_control_plane_identifier_is_recorded() -> None:
    sub, stats = make()
    sub.on_stream_established()
    r = response("v1", "n1")
    r.control_plane.identifier = "stub-7"
    sub.on_response(r, Recorder(None), 1)
    assert stats.value(P + "control_plane.identifier") == "stub-7"


def test_node_on_first_request_only() -> None:
    sub, _ = make(first_only=True)
    first = sub.on_stream_established()
    ack = sub.on_response(response("v1", "n1"), Recorder(None), 1).request
    assert first.HasField("node") and not ack.HasField("node")
    sub.on_stream_lost()
    assert sub.on_stream_established().HasField("node")


def test_a_whole_envoy_sequence() -> None:
    """The same sequence recorded from Envoy 1.40 against a fake control plane."""
    sub, stats = make()
    sent = [fields(sub.on_stream_established())]
    script = [
        (response("v1", "n1", "a"), None),
        (response("v2", "n2", "a", "b", "c"), "Error adding/updating listener(s) c: dup\n"),
        (response("v1", "n5", "a"), None),
    ]
    for resp, answer in script:
        sent.append(fields(sub.on_response(resp, Recorder(answer), 1).request))
    sub.on_stream_lost()
    sent.append(fields(sub.on_stream_established()))
    assert sent == [
        ("", "", [], None),
        ("v1", "n1", [], None),
        ("v1", "n2", [], (13, "Error adding/updating listener(s) c: dup\n")),
        ("v1", "n5", [], None),
        ("v1", "", [], None),
    ]
    assert stats.value(P + "update_attempt") == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short", "short"),
        ("x" * MAX_ERROR_MESSAGE_BYTES, "x" * MAX_ERROR_MESSAGE_BYTES),
        ("x" * (MAX_ERROR_MESSAGE_BYTES + 1), "x" * MAX_ERROR_MESSAGE_BYTES + "...(truncated)"),
        # a multi-byte character cut in the middle is dropped, never left half
        (
            "x" * (MAX_ERROR_MESSAGE_BYTES - 1) + "é",
            "x" * (MAX_ERROR_MESSAGE_BYTES - 1) + "...(truncated)",
        ),
    ],
)
def test_error_message_truncation(text: str, expected: str) -> None:
    assert truncate_error_message(text) == expected


def test_long_nack_message_is_truncated_on_the_wire() -> None:
    sub, _ = make()
    sub.on_stream_established()
    outcome = sub.on_response(response("v1", "n1"), Recorder("y" * 5000), 1)
    assert outcome.request.error_detail.message == "y" * 4096 + "...(truncated)"
