"""Named (RDS) subscriptions in the pure SotW and Delta state machines: the names go on every
request, and a change of names is sent as Envoy sends it (spec §2.3, §2.5)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_proxy.stats import Stats
from xds_proxy.xds.delta import DeltaSubscription
from xds_proxy.xds.sotw import SotwSubscription, SubscriptionStats

ROUTES = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def stats() -> SubscriptionStats:
    return SubscriptionStats.create(Stats(), "rds.", "control_plane.")


def test_sotw_names_change_in_an_ack_shaped_request() -> None:
    sub = SotwSubscription(ROUTES, base_pb2.Node(id="n"), stats(), lambda r: list(r.resources))
    sub.resource_names = ["R"]
    first = sub.on_stream_established()
    assert (first.version_info, first.response_nonce, list(first.resource_names)) == ("", "", ["R"])
    response = discovery_pb2.DiscoveryResponse(version_info="r1", nonce="n4", type_url=ROUTES)
    ack = sub.on_response(response, lambda version, resources: None, 0).request
    assert (ack.version_info, ack.response_nonce, list(ack.resource_names)) == ("r1", "n4", ["R"])
    change = sub.change_names(["R2", "R"])
    assert change is not None
    assert (change.version_info, change.response_nonce) == ("r1", "n4")  # old nonce
    assert list(change.resource_names) == ["R2", "R"]
    assert not change.HasField("error_detail")


def test_sotw_unsubscribing_everything_sends_an_empty_list() -> None:
    sub = SotwSubscription(ROUTES, base_pb2.Node(id="n"), stats(), lambda r: [])
    sub.resource_names = ["R"]
    sub.on_stream_established()
    change = sub.change_names([])
    assert change is not None
    assert (change.version_info, change.response_nonce, list(change.resource_names)) == ("", "", [])


def test_sotw_names_change_without_a_stream_waits_for_the_next_one() -> None:
    sub = SotwSubscription(ROUTES, base_pb2.Node(id="n"), stats(), lambda r: [])
    sub.resource_names = []
    assert sub.change_names(["R"]) is None
    assert list(sub.on_stream_established().resource_names) == ["R"]


def test_delta_names_change_as_subscribe_and_unsubscribe_lists() -> None:
    sub = DeltaSubscription(ROUTES, base_pb2.Node(id="n"), stats(), lambda r: [])
    sub.resource_names = ["R"]
    first = sub.on_stream_established()
    assert list(first.resource_names_subscribe) == ["R"]
    change = sub.change_names(["R2"])
    assert change is not None
    assert list(change.resource_names_subscribe) == ["R2"]
    assert list(change.resource_names_unsubscribe) == ["R"]
    assert change.response_nonce == ""
    assert sub.change_names(["R2"]) is None  # nothing changed
