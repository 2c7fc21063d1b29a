"""The stub's cache serving ClusterLoadAssignments (EDS) and Secrets (SDS).

Neither is a wildcard type: only the resources a client names are sent, an empty list
subscribes to nothing, a changed subscription (SotW: ACK-shaped, with the last nonce, as
Envoy sends it) is answered with what exists for the new names, and Delta tells removals
(and names that do not exist) of subscribed names only. A ClusterLoadAssignment is named by
its `cluster_name`. One push of every type reaches an ADS stream as secrets, clusters,
endpoints, listeners, routes. The status document never carries a secret's contents.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane_stub.cache import ADS_ORDER, XdsCache, evaluate_wait, resource_version
from control_plane_stub.cli import format_status_table
from control_plane_stub.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    NamedResource,
    ResourceError,
    encode_resources,
    load_resource_text,
)

PRIVATE_KEY = (
    "-----BEGIN PRIVATE KEY-----\nTUFURVJJQUwtVEhBVC1NVVNULU5PVC1MRUFL\n-----END PRIVATE KEY-----\n"
)


def assignment_message(name: str, port: int = 8080) -> endpoint_pb2.ClusterLoadAssignment:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    lb_endpoint = message.endpoints.add().lb_endpoints.add()
    lb_endpoint.endpoint.address.socket_address.address = "127.0.0.1"
    lb_endpoint.endpoint.address.socket_address.port_value = port
    return message


def secret_message(name: str, port: int = 1) -> secret_pb2.Secret:
    message = secret_pb2.Secret(name=name)
    message.tls_certificate.certificate_chain.inline_string = f"certificate {port}"
    message.tls_certificate.private_key.inline_string = PRIVATE_KEY
    return message


@dataclass(frozen=True)
class Kind:
    """One served type, with a way to make a named resource whose content depends on `port`."""

    section: str
    type_url: str
    make: Callable[..., Message]

    def resource(self, name: str, port: int = 1) -> NamedResource:
        message = self.make(name, port)
        body = any_pb2.Any(type_url=self.type_url, value=message.SerializeToString())
        return NamedResource(name=name, body=body)

    def names(self, response) -> list[str]:
        """The resource names in a SotW response (by decoding them)."""
        found = []
        for body in response.resources:
            message = type(self.make("x"))()
            assert body.Unpack(message)
            found.append(message.cluster_name if self.type_url == ENDPOINT_TYPE else message.name)
        return sorted(found)


KINDS = [
    Kind("endpoints", ENDPOINT_TYPE, assignment_message),
    Kind("secrets", SECRET_TYPE, secret_message),
]


@pytest.fixture(params=KINDS, ids=[k.section for k in KINDS])
def kind(request) -> Kind:
    return request.param


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
    type_url: str,
    names: tuple[str, ...] = (),
    nonce: str = "",
    version: str = "",
    error: str | None = None,
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
    type_url: str,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
    request.node.id = "n1"
    request.resource_names_subscribe.extend(subscribe)
    request.resource_names_unsubscribe.extend(unsubscribe)
    if error is not None:
        request.error_detail.code = 13
        request.error_detail.message = error
    return request


def only(responses):
    assert len(responses) == 1, responses
    return responses[0]


def row(cache: XdsCache, type_url: str) -> dict:
    [entry] = cache.status()["nodes"]
    [found] = [s for s in entry["streams"] if s["type_url"] == type_url]
    return found


# ---------------------------------------------------------------- SotW


def test_sotw_sends_only_the_subscribed_names(cache: XdsCache, kind: Kind) -> None:
    versions, _ = cache.set_resources(
        {kind.section: [kind.resource("a"), kind.resource("b"), kind.resource("other")]}
    )
    stream = cache.open_stream("sotw", kind.type_url)
    response = only(cache.handle_sotw_request(stream, sotw(kind.type_url, ("a", "missing"))))
    assert kind.names(response) == ["a"]
    assert response.version_info == versions[kind.section]
    assert row(cache, kind.type_url)["subscribed"] == ["a", "missing"]


def test_sotw_empty_subscription_is_nothing_not_the_wildcard(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a")]})
    stream = cache.open_stream("sotw", None)  # over ADS too
    response = only(cache.handle_sotw_request(stream, sotw(kind.type_url)))
    assert kind.names(response) == []
    assert row(cache, kind.type_url)["subscribed"] == []


def test_sotw_subscription_change_resends_what_exists(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a"), kind.resource("b")]})
    stream = cache.open_stream("sotw", None)
    first = only(cache.handle_sotw_request(stream, sotw(kind.type_url, ("a",))))
    cache.handle_sotw_request(stream, sotw(kind.type_url, ("a",), nonce=first.nonce, version="x"))
    # Envoy's subscription change: the new list, ACK-shaped with the last nonce.
    more = only(
        cache.handle_sotw_request(
            stream,
            sotw(kind.type_url, ("a", "b"), nonce=first.nonce, version=first.version_info),
        )
    )
    assert kind.names(more) == ["a", "b"]
    # A name that does not exist: what exists is sent again.
    again = only(
        cache.handle_sotw_request(
            stream,
            sotw(kind.type_url, ("a", "b", "c"), nonce=more.nonce, version=more.version_info),
        )
    )
    assert kind.names(again) == ["a", "b"] and again.nonce != more.nonce
    # Dropping names: only the remaining ones.
    fewer = only(
        cache.handle_sotw_request(
            stream, sotw(kind.type_url, ("b",), nonce=again.nonce, version=again.version_info)
        )
    )
    assert kind.names(fewer) == ["b"]
    assert cache.handle_sotw_request(stream, sotw(kind.type_url, ("b",), nonce=fewer.nonce)) == []
    # A changed subscribed resource is pushed; `c` appears but is no longer subscribed.
    versions, outgoing = cache.set_resources(
        {kind.section: [kind.resource("a"), kind.resource("b", 2), kind.resource("c")]}
    )
    update = only([r for _, r in outgoing])
    assert kind.names(update) == ["b"] and update.version_info == versions[kind.section]


def test_sotw_nack_is_recorded_and_not_resent(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a")]}, version="v1")
    stream = cache.open_stream("sotw", kind.type_url)
    first = only(cache.handle_sotw_request(stream, sotw(kind.type_url, ("a",))))
    cache.handle_sotw_request(stream, sotw(kind.type_url, ("a",), nonce=first.nonce, version="v1"))
    _, outgoing = cache.set_resources({kind.section: [kind.resource("a", 2)]}, version="v2")
    bad = only([r for _, r in outgoing])
    refused = sotw(kind.type_url, ("a",), nonce=bad.nonce, version="v1", error="bad thing")
    assert cache.handle_sotw_request(stream, refused) == []
    document = cache.status()
    assert row(cache, kind.type_url)["acked_version"] == "v1"
    assert row(cache, kind.type_url)["nack"]["version"] == "v2"
    assert evaluate_wait(document, "v2", section=kind.section).detail == (
        f"node 'n1' NACKed {kind.section} version v2: bad thing"
    )
    assert evaluate_wait(document, "v1", section=kind.section).state == "acked"
    assert evaluate_wait(document, "v1", section="listeners").state == "pending"


# ---------------------------------------------------------------- Delta


def test_delta_first_request_without_names_is_not_the_wildcard(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a")]})
    stream = cache.open_stream("delta", None)
    response = only(cache.handle_delta_request(stream, delta(kind.type_url)))
    assert list(response.resources) == [] and list(response.removed_resources) == []
    assert row(cache, kind.type_url)["subscribed"] == []


def test_delta_subscribe_unsubscribe_and_removals(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a"), kind.resource("b")]})
    stream = cache.open_stream("delta", kind.type_url)
    first = only(cache.handle_delta_request(stream, delta(kind.type_url, ("a", "c"))))
    assert [r.name for r in first.resources] == ["a"]
    assert first.resources[0].version == resource_version(kind.resource("a"))
    assert list(first.removed_resources) == ["c"]  # Delta's "does not exist", once
    more = only(cache.handle_delta_request(stream, delta(kind.type_url, ("b",), nonce=first.nonce)))
    assert [r.name for r in more.resources] == ["b"] and list(more.removed_resources) == []
    assert (
        cache.handle_delta_request(stream, delta(kind.type_url, (), ("a",), nonce=more.nonce)) == []
    )
    assert row(cache, kind.type_url)["subscribed"] == ["b", "c"]
    # `a` changes (not subscribed any more) and `c` appears (subscribed): only `c` is sent.
    _, outgoing = cache.set_resources(
        {kind.section: [kind.resource("a", 2), kind.resource("b"), kind.resource("c")]}
    )
    update = only([r for _, r in outgoing])
    assert [r.name for r in update.resources] == ["c"] and list(update.removed_resources) == []
    cache.handle_delta_request(stream, delta(kind.type_url, nonce=update.nonce))
    # `b` removed from the set while subscribed: told; `a` (not subscribed) silently.
    _, outgoing = cache.set_resources({kind.section: [kind.resource("c")]})
    removal = only([r for _, r in outgoing])
    assert list(removal.resources) == [] and list(removal.removed_resources) == ["b"]


def test_delta_nack_is_recorded_and_the_next_change_resends(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a")]})
    stream = cache.open_stream("delta", None)
    first = only(cache.handle_delta_request(stream, delta(kind.type_url, ("a",))))
    cache.handle_delta_request(stream, delta(kind.type_url, nonce=first.nonce))
    versions, outgoing = cache.set_resources({kind.section: [kind.resource("a", 2)]})
    bad = only([r for _, r in outgoing])
    refused = delta(kind.type_url, nonce=bad.nonce, error="bad thing")
    assert cache.handle_delta_request(stream, refused) == []
    assert row(cache, kind.type_url)["nack"]["version"] == versions[kind.section]
    # Back to the content the client still holds (the NACK undid what the stub believed
    # it took): nothing to resend. New content is sent.
    _, outgoing = cache.set_resources({kind.section: [kind.resource("a")]})
    assert [r.name for r in only([r for _, r in outgoing]).resources] == []
    _, outgoing = cache.set_resources({kind.section: [kind.resource("a", 3)]})
    assert [r.name for r in only([r for _, r in outgoing]).resources] == ["a"]


# ---------------------------------------------------------------- ADS, names, status


def test_ads_push_order_is_secrets_clusters_endpoints_listeners_routes(cache: XdsCache) -> None:
    assert ADS_ORDER == [SECRET_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    stream = cache.open_stream("sotw", None)
    subscriptions = {
        ROUTE_TYPE: ("R",),
        LISTENER_TYPE: (),
        ENDPOINT_TYPE: ("c",),
        CLUSTER_TYPE: (),
        SECRET_TYPE: ("s",),
    }
    for type_url, names in subscriptions.items():
        cache.handle_sotw_request(stream, sotw(type_url, names))
    _, outgoing = cache.set_resources(
        {
            "routes": [
                NamedResource(
                    "R",
                    any_pb2.Any(
                        type_url=ROUTE_TYPE,
                        value=route_pb2.RouteConfiguration(name="R").SerializeToString(),
                    ),
                )
            ],
            "listeners": [
                NamedResource(
                    "L",
                    any_pb2.Any(
                        type_url=LISTENER_TYPE,
                        value=listener_pb2.Listener(name="L").SerializeToString(),
                    ),
                )
            ],
            "endpoints": [KINDS[0].resource("c")],
            "clusters": [
                NamedResource(
                    "c",
                    any_pb2.Any(
                        type_url=CLUSTER_TYPE,
                        value=cluster_pb2.Cluster(name="c").SerializeToString(),
                    ),
                )
            ],
            "secrets": [KINDS[1].resource("s")],
        }
    )
    assert [r.type_url for _, r in outgoing] == ADS_ORDER
    # An endpoints-only push reaches only the EDS subscription.
    _, outgoing = cache.set_resources({"endpoints": [KINDS[0].resource("c", 2)]})
    assert [r.type_url for _, r in outgoing] == [ENDPOINT_TYPE]


def test_a_cluster_load_assignment_is_named_by_its_cluster_name() -> None:
    as_dict = {
        "cluster_name": "svc",
        "endpoints": [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}
                        }
                    }
                ]
            }
        ],
    }
    encoded = encode_resources(
        [as_dict, assignment_message("svc2"), {"cluster_name": "svc3"}], ENDPOINT_TYPE, "endpoints"
    )
    assert [r.name for r in encoded] == ["svc", "svc2", "svc3"]
    raw = encode_resources([{"cluster_name": "x"}], ENDPOINT_TYPE, "endpoints", raw=True)
    assert [r.name for r in raw] == ["x"]
    with pytest.raises(ResourceError, match=r"endpoints\[0\]\.cluster_name: required"):
        encode_resources([{"endpoints": []}], ENDPOINT_TYPE, "endpoints")


def test_envoy_data_plane_dataclasses_are_named_too() -> None:
    from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import Secret

    [assignment] = encode_resources(
        [ClusterLoadAssignment(cluster_name="svc")], ENDPOINT_TYPE, "endpoints"
    )
    [secret] = encode_resources([Secret(name="s")], SECRET_TYPE, "secrets")
    assert (assignment.name, secret.name) == ("svc", "s")
    [raw] = encode_resources(
        [ClusterLoadAssignment(cluster_name="svc")], ENDPOINT_TYPE, "endpoints", raw=True
    )
    assert raw.name == "svc"


def test_resource_file_sections_for_endpoints_and_secrets() -> None:
    loaded = load_resource_text(
        "endpoints:\n"
        "  - cluster_name: svc\n"
        "    endpoints:\n"
        "      - lb_endpoints:\n"
        "          - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n"
        "secrets:\n"
        "  - name: cert\n"
        "    tls_certificate:\n"
        "      certificate_chain: {inline_string: chain}\n"
        "      private_key: {inline_string: key}\n"
    )
    assert [r.name for r in loaded.sections["endpoints"] or []] == ["svc"]
    assert [r.name for r in loaded.sections["secrets"] or []] == ["cert"]
    assert loaded.sections["listeners"] is None


def test_status_never_carries_a_secrets_contents(cache: XdsCache) -> None:
    cache.set_resources({"secrets": [KINDS[1].resource("s")]})
    stream = cache.open_stream("sotw", SECRET_TYPE)
    response = only(cache.handle_sotw_request(stream, sotw(SECRET_TYPE, ("s",))))
    assert PRIVATE_KEY.encode() in response.resources[0].value  # served, of course
    cache.handle_sotw_request(stream, sotw(SECRET_TYPE, ("s",), nonce=response.nonce))
    document = cache.status()
    text = json.dumps(document) + format_status_table(document)
    assert "PRIVATE KEY" not in text and "TUFURVJJQUwt" not in text
    assert "certificate 1" not in text
    assert row(cache, SECRET_TYPE)["subscribed"] == ["s"]


def test_a_nack_quoting_a_private_key_is_redacted(cache: XdsCache, kind: Kind) -> None:
    cache.set_resources({kind.section: [kind.resource("a")]})
    stream = cache.open_stream("sotw", kind.type_url)
    response = only(cache.handle_sotw_request(stream, sotw(kind.type_url, ("a",))))
    cut = PRIVATE_KEY[:50]  # a key quoted only in part is redacted too
    refused = sotw(
        kind.type_url, ("a",), nonce=response.nonce, error=f"bad key {PRIVATE_KEY.strip()}; {cut}"
    )
    cache.handle_sotw_request(stream, refused)
    message = row(cache, kind.type_url)["nack"]["message"]
    assert message == "bad key [private key redacted]; [private key redacted]"
    [event] = cache.drain_events()
    assert event.endswith(": bad key [private key redacted]; [private key redacted]")


# ---------------------------------------------------------------- Delta, as a property


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.dictionaries(st.sampled_from("abcd"), st.integers(1, 2))),
            st.tuples(st.just("names"), st.frozensets(st.sampled_from("abcde"))),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_delta_client_that_acks_holds_exactly_the_subscribed_resources_that_exist(
    kind: Kind, steps
) -> None:
    """An Envoy-like Delta client that ACKs every response and forgets what it unsubscribes:
    after each step it holds, for every subscribed name, the stub's current resource (and
    nothing for a name the stub does not have); nothing unsubscribed is ever sent."""
    cache = XdsCache(clock=Clock())
    stream = cache.open_stream("delta", None)
    names: frozenset[str] = frozenset()
    held: dict[str, bytes] = {}

    def receive(responses: list) -> None:
        for response in responses:
            for resource in response.resources:
                assert resource.name in names
                held[resource.name] = resource.resource.value
            for name in response.removed_resources:
                assert name in names
                held.pop(name, None)
            assert (
                cache.handle_delta_request(stream, delta(kind.type_url, nonce=response.nonce)) == []
            )

    receive(cache.handle_delta_request(stream, delta(kind.type_url)))
    for step, value in steps:
        if step == "push":
            resources = [kind.resource(name, port) for name, port in sorted(value.items())]
            _, outgoing = cache.set_resources({kind.section: resources})
            receive([r for _, r in outgoing])
        else:
            added, dropped = value - names, names - value
            names = value
            for name in dropped:
                held.pop(name, None)  # Envoy forgets what it unsubscribes
            if added or dropped:
                request = delta(kind.type_url, tuple(sorted(added)), tuple(sorted(dropped)))
                receive(cache.handle_delta_request(stream, request))
        current = {r.name: r.body.value for r in cache.current_set(None, kind.type_url).resources}
        assert held == {name: current[name] for name in names if name in current}
