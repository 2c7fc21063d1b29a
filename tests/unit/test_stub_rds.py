"""The stub's cache serving RouteConfigurations: RDS is not a wildcard type.

Only the route configs a client names are sent; an empty list subscribes to nothing; a
changed subscription (SotW: ACK-shaped, with the last nonce, as Envoy sends it) is answered
with what exists for the new names; Delta tells removals of subscribed names only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane_stub.cache import XdsCache, evaluate_wait, resource_version
from control_plane_stub.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, NamedResource


def route(name: str, body: str = "v1") -> NamedResource:
    message = route_pb2.RouteConfiguration(name=name)
    virtual_host = message.virtual_hosts.add(name="all", domains=["*"])
    entry = virtual_host.routes.add()
    entry.match.prefix = "/"
    entry.direct_response.status = 200
    entry.direct_response.body.inline_string = body
    body_any = any_pb2.Any(type_url=ROUTE_TYPE, value=message.SerializeToString())
    return NamedResource(name=name, body=body_any)


def listener(name: str) -> NamedResource:
    body = any_pb2.Any(
        type_url=LISTENER_TYPE, value=listener_pb2.Listener(name=name).SerializeToString()
    )
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


@pytest.fixture
def cache() -> XdsCache:
    return XdsCache(clock=Clock())


def sotw(
    names: tuple[str, ...] = (),
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    type_url: str = ROUTE_TYPE,
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, response_nonce=nonce, version_info=version
    )
    request.node.id = "n1"
    request.resource_names.extend(names)
    if error is not None:
        request.error_detail.code = 13
        request.error_detail.message = error
    return request


def delta(
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=ROUTE_TYPE, response_nonce=nonce)
    request.node.id = "n1"
    request.resource_names_subscribe.extend(subscribe)
    request.resource_names_unsubscribe.extend(unsubscribe)
    if error is not None:
        request.error_detail.code = 13
        request.error_detail.message = error
    return request


def route_names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    names = []
    for body in response.resources:
        message = route_pb2.RouteConfiguration()
        assert body.Unpack(message)
        names.append(message.name)
    return sorted(names)


def only(responses):
    assert len(responses) == 1, responses
    return responses[0]


def rds_row(cache: XdsCache) -> dict:
    [entry] = cache.status()["nodes"]
    [row] = [s for s in entry["streams"] if s["type_url"] == ROUTE_TYPE]
    return row


# ---------------------------------------------------------------- SotW


def test_sotw_rds_sends_only_the_subscribed_route_configs(cache: XdsCache) -> None:
    versions, _ = cache.set_resources({"routes": [route("R"), route("R2"), route("other")]})
    stream = cache.open_stream("sotw", ROUTE_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw(names=("R", "missing"))))
    assert route_names(response) == ["R"]
    assert response.version_info == versions["routes"]
    assert rds_row(cache)["subscribed"] == ["R", "missing"]


def test_sotw_rds_empty_subscription_is_nothing_not_the_wildcard(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R")]})
    stream = cache.open_stream("sotw", ROUTE_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw()))
    assert route_names(response) == []
    assert rds_row(cache)["subscribed"] == []
    # The explicit wildcard is honoured (Envoy never sends it for RDS).
    star = only(cache.handle_sotw_request(stream, sotw(names=("*",), nonce=response.nonce)))
    assert route_names(star) == ["R"]


def test_sotw_rds_subscription_change_resends_what_exists(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R"), route("R2")]})
    stream = cache.open_stream("sotw", ROUTE_TYPE)
    first = only(cache.handle_sotw_request(stream, sotw(names=("R",))))
    cache.handle_sotw_request(stream, sotw(names=("R",), nonce=first.nonce, version="x"))
    # Envoy's subscription change: the union of names, ACK-shaped with the last nonce.
    more = only(
        cache.handle_sotw_request(
            stream, sotw(names=("R", "R2"), nonce=first.nonce, version=first.version_info)
        )
    )
    assert route_names(more) == ["R", "R2"]
    # A name that does not exist yet: what exists is sent again (the subset is unchanged).
    again = only(
        cache.handle_sotw_request(
            stream, sotw(names=("R", "R2", "R3"), nonce=more.nonce, version=more.version_info)
        )
    )
    assert route_names(again) == ["R", "R2"] and again.nonce != more.nonce
    # Dropping names: only the remaining ones.
    fewer = only(
        cache.handle_sotw_request(
            stream, sotw(names=("R2",), nonce=again.nonce, version=again.version_info)
        )
    )
    assert route_names(fewer) == ["R2"]
    # The same names in an ACK: nothing to send.
    assert cache.handle_sotw_request(stream, sotw(names=("R2",), nonce=fewer.nonce)) == []
    # R3 appears: the client asked for it before; it is no longer subscribed, so not sent.
    _, outgoing = cache.set_resources({"routes": [route("R"), route("R2"), route("R3")]})
    assert [route_names(r) for _, r in outgoing] == [["R2"]]


def test_sotw_rds_subscription_with_a_stale_nonce_waits_for_the_ack(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R")]})
    stream = cache.open_stream("sotw", ROUTE_TYPE)
    first = only(cache.handle_sotw_request(stream, sotw(names=("R",))))
    _, outgoing = cache.set_resources({"routes": [route("R", "v2"), route("R2")]})
    latest = only([r for _, r in outgoing])
    # The client changes its names before it saw `latest`: ignored, as any stale request.
    assert cache.handle_sotw_request(stream, sotw(names=("R", "R2"), nonce=first.nonce)) == []
    # Its ACK of `latest` carries the new names: now they are answered.
    answered = only(cache.handle_sotw_request(stream, sotw(names=("R", "R2"), nonce=latest.nonce)))
    assert route_names(answered) == ["R", "R2"]


def test_sotw_rds_push_of_a_subscribed_route_config(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R")]})
    stream = cache.open_stream("sotw", ROUTE_TYPE)
    first = only(cache.handle_sotw_request(stream, sotw(names=("R",))))
    cache.handle_sotw_request(stream, sotw(names=("R",), nonce=first.nonce))
    versions, outgoing = cache.set_resources({"routes": [route("R", "v2")]})
    update = only([r for _, r in outgoing])
    assert route_names(update) == ["R"] and update.version_info == versions["routes"]
    cache.handle_sotw_request(stream, sotw(names=("R",), nonce=update.nonce))
    assert rds_row(cache)["acked_version"] == versions["routes"]
    # Removing R from the set: a response without it (Envoy keeps its copy, spec row 7).
    _, outgoing = cache.set_resources({"routes": []})
    assert [route_names(r) for _, r in outgoing] == [[]]


def test_sotw_rds_nack_is_recorded_per_type_and_not_resent(cache: XdsCache) -> None:
    cache.set_resources({"listeners": [listener("L")], "routes": [route("R")]}, version="v1")
    stream = cache.open_stream("sotw", None)
    lds = only(cache.handle_sotw_request(stream, sotw(type_url=LISTENER_TYPE)))
    cache.handle_sotw_request(stream, sotw(type_url=LISTENER_TYPE, nonce=lds.nonce))
    rds = only(cache.handle_sotw_request(stream, sotw(names=("R",))))
    cache.handle_sotw_request(stream, sotw(names=("R",), nonce=rds.nonce, version="v1"))
    _, outgoing = cache.set_resources({"routes": [route("R", "bad")]}, version="v2")
    bad = only([r for _, r in outgoing])
    assert bad.type_url == ROUTE_TYPE
    again = cache.handle_sotw_request(
        stream, sotw(names=("R",), nonce=bad.nonce, version="v1", error="missing ): (abc")
    )
    assert again == []
    document = cache.status()
    rows = {row["type_url"]: row for row in document["nodes"][0]["streams"]}
    assert rows[LISTENER_TYPE]["acked_version"] == "v1" and rows[LISTENER_TYPE]["nack"] is None
    assert rows[ROUTE_TYPE]["acked_version"] == "v1"
    assert rows[ROUTE_TYPE]["nack"]["version"] == "v2"
    assert evaluate_wait(document, "v2", section="routes").state == "nacked"
    assert evaluate_wait(document, "v1", section="routes").state == "acked"
    assert evaluate_wait(document, "v2", section="listeners").state == "pending"
    assert evaluate_wait(document, "v2", section="routes").detail == (
        "node 'n1' NACKed routes version v2: missing ): (abc"
    )


def test_ads_push_order_is_clusters_listeners_routes(cache: XdsCache) -> None:
    stream = cache.open_stream("sotw", None)
    for type_url, names in ((ROUTE_TYPE, ("R",)), (LISTENER_TYPE, ()), (CLUSTER_TYPE, ())):
        cache.handle_sotw_request(stream, sotw(names=names, type_url=type_url))
    _, outgoing = cache.set_resources(
        {"routes": [route("R")], "listeners": [listener("L")], "clusters": [cluster("c")]}
    )
    assert [r.type_url for _, r in outgoing] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    # A route-only push reaches only the RDS subscription.
    _, outgoing = cache.set_resources({"routes": [route("R", "v2")]})
    assert [r.type_url for _, r in outgoing] == [ROUTE_TYPE]


def test_routes_per_node_set(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R", "default")]})
    cache.set_resources({"routes": [route("R", "own")]}, node="n1")
    stream = cache.open_stream("sotw", ROUTE_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw(names=("R",))))
    message = route_pb2.RouteConfiguration()
    response.resources[0].Unpack(message)
    assert message.virtual_hosts[0].routes[0].direct_response.body.inline_string == "own"


# ---------------------------------------------------------------- Delta


def test_delta_rds_first_request_without_names_is_not_the_wildcard(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R")]})
    stream = cache.open_stream("delta", None)
    response = only(cache.handle_delta_request(stream, delta()))
    assert list(response.resources) == [] and list(response.removed_resources) == []
    assert rds_row(cache)["subscribed"] == []
    # A later push is not sent to a stream that named nothing (beyond the version).
    _, outgoing = cache.set_resources({"routes": [route("R", "v2")]})
    assert [list(r.resources) for _, r in outgoing] == [[]]


def test_delta_rds_subscribe_unsubscribe_and_removals(cache: XdsCache) -> None:
    cache.set_resources({"routes": [route("R"), route("R2")]})
    stream = cache.open_stream("delta", ROUTE_TYPE)
    first = only(cache.handle_delta_request(stream, delta(subscribe=("R", "R3"))))
    assert [r.name for r in first.resources] == ["R"]
    assert list(first.removed_resources) == ["R3"]  # Delta's "does not exist"
    assert rds_row(cache)["subscribed"] == ["R", "R3"]
    # Subscribing to R2 sends R2 only (the client has R).
    more = only(cache.handle_delta_request(stream, delta(subscribe=("R2",), nonce=first.nonce)))
    assert [r.name for r in more.resources] == ["R2"] and list(more.removed_resources) == []
    # Unsubscribing sends nothing (the client forgets it by itself).
    assert cache.handle_delta_request(stream, delta(unsubscribe=("R",), nonce=more.nonce)) == []
    assert rds_row(cache)["subscribed"] == ["R2", "R3"]
    # R changes: no longer subscribed, only the version moves. R3 appears: sent.
    _, outgoing = cache.set_resources({"routes": [route("R", "v2"), route("R2"), route("R3")]})
    update = only([r for _, r in outgoing])
    assert [r.name for r in update.resources] == ["R3"] and list(update.removed_resources) == []
    assert update.resources[0].version == resource_version(route("R3"))
    cache.handle_delta_request(stream, delta(nonce=update.nonce))
    # R2 removed from the set while subscribed: told in removed_resources; R (not
    # subscribed) removed silently.
    _, outgoing = cache.set_resources({"routes": [route("R3")]})
    removal = only([r for _, r in outgoing])
    assert list(removal.resources) == [] and list(removal.removed_resources) == ["R2"]


def test_delta_rds_resubscribe_resends_a_route_config_the_client_dropped(
    cache: XdsCache,
) -> None:
    cache.set_resources({"routes": [route("R")]})
    stream = cache.open_stream("delta", ROUTE_TYPE)
    first = only(cache.handle_delta_request(stream, delta(subscribe=("R",))))
    cache.handle_delta_request(stream, delta(unsubscribe=("R",), nonce=first.nonce))
    again = only(cache.handle_delta_request(stream, delta(subscribe=("R",))))
    assert [r.name for r in again.resources] == ["R"]


# ---------------------------------------------------------------- SotW, as a property


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("push"), st.dictionaries(st.sampled_from("abcd"), st.sampled_from("xy"))
            ),
            st.tuples(st.just("names"), st.frozensets(st.sampled_from("abcde"))),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_sotw_rds_client_that_acks_holds_exactly_its_subscribed_routes(steps) -> None:
    """An Envoy-like SotW client that ACKs every response (with its names) and changes its
    names ACK-shaped: every response carries only subscribed names, and after each step it
    has received every subscribed route config that exists, in its current form."""
    cache = XdsCache(clock=Clock())
    stream = cache.open_stream("sotw", None)
    names: frozenset[str] = frozenset()
    held: dict[str, bytes] = {}
    latest = only(cache.handle_sotw_request(stream, sotw(names=())))

    def receive(responses: list) -> None:
        nonlocal latest
        for response in responses:
            assert set(route_names(response)) <= names
            for body in response.resources:
                message = route_pb2.RouteConfiguration()
                body.Unpack(message)
                held[message.name] = body.value
            latest = response
            assert (
                cache.handle_sotw_request(
                    stream,
                    sotw(names=tuple(sorted(names)), nonce=response.nonce, version="v"),
                )
                == []
            )

    for kind, value in steps:
        if kind == "push":
            _, outgoing = cache.set_resources(
                {"routes": [route(name, body) for name, body in sorted(value.items())]}
            )
            receive([r for _, r in outgoing])
        else:
            names = value
            receive(
                cache.handle_sotw_request(
                    stream, sotw(names=tuple(sorted(names)), nonce=latest.nonce, version="v")
                )
            )
        current = {r.name: r.body.value for r in cache.current_set(None, ROUTE_TYPE).resources}
        for name in names & current.keys():
            assert held.get(name) == current[name]
