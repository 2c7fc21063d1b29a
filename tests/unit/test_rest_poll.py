"""REST xDS polls, the pure part: the request body Envoy sends, what an answer decodes to,
the jittered delay."""

from __future__ import annotations

import json
import random

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_proxy.xds.cds import CLUSTER_TYPE_URL
from xds_proxy.xds.decode import LISTENER_TYPE_URL
from xds_proxy.xds.rest_poll import (
    FetchFailed,
    body_digest,
    decode_response,
    discovery_path,
    load_sliced,
    next_delay,
    request_body,
)

ROUTE_TYPE_URL = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def test_paths_name_the_resource_type() -> None:
    assert discovery_path(LISTENER_TYPE_URL) == "/v3/discovery:listeners"
    assert discovery_path(CLUSTER_TYPE_URL) == "/v3/discovery:clusters"
    assert discovery_path(ROUTE_TYPE_URL) == "/v3/discovery:routes"
    assert (
        discovery_path("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment")
        == "/v3/discovery:endpoints"
    )
    assert (
        discovery_path("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")
        == "/v3/discovery:secrets"
    )


def test_request_body_is_snake_case_sorted_without_nonce_nor_error_detail() -> None:
    """As Envoy 1.40 sends it (a NACK is the last accepted version again, no error_detail)."""
    request = discovery_pb2.DiscoveryRequest(
        version_info="v7",
        node=base_pb2.Node(id="n1", cluster="c1", user_agent_name="xds-proxy"),
        resource_names=["b-routes", "a-routes"],
        type_url=ROUTE_TYPE_URL,
        response_nonce="n-3",
    )
    request.error_detail.code = 13
    request.error_detail.message = "bad route"
    body = json.loads(request_body(request))
    assert body == {
        "version_info": "v7",
        "node": {"id": "n1", "cluster": "c1", "user_agent_name": "xds-proxy"},
        "resource_names": ["a-routes", "b-routes"],
        "type_url": ROUTE_TYPE_URL,
    }
    assert request.response_nonce == "n-3"  # the caller's request is left as it was
    assert request.error_detail.message == "bad route"


def test_first_request_has_no_version_field() -> None:
    body = json.loads(request_body(discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE_URL)))
    assert body == {"type_url": LISTENER_TYPE_URL}


def test_a_response_without_type_url_is_of_the_type_polled() -> None:
    """sovereign sends only version_info and resources."""
    body = json.dumps(
        {
            "version_info": "42",
            "resources": [{"@type": CLUSTER_TYPE_URL, "name": "web", "connect_timeout": "1s"}],
        }
    ).encode()
    response, skipped = decode_response(body, CLUSTER_TYPE_URL)
    assert (response.version_info, response.type_url, skipped) == ("42", CLUSTER_TYPE_URL, False)
    assert response.resources[0].type_url == CLUSTER_TYPE_URL


def test_unknown_fields_are_skipped_and_reported() -> None:
    body = json.dumps(
        {
            "version_info": "1",
            "type_url": CLUSTER_TYPE_URL,
            "resources": [{"@type": CLUSTER_TYPE_URL, "name": "web", "no_such_field": 1}],
            "extra": True,
        }
    ).encode()
    response, skipped = decode_response(body, CLUSTER_TYPE_URL)
    assert skipped is True
    assert len(response.resources) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "a 200 response with an empty body"),
        (b"  \r\n", "a 200 response with an empty body"),
        (b'{"version_info": "1", "resources": [', "not a JSON DiscoveryResponse: "),
        (b"\xff\xfe", "not a JSON DiscoveryResponse: "),
        (b"[1, 2]", "not a JSON DiscoveryResponse: "),
        (b'{"version_info": 3.5}', "not a JSON DiscoveryResponse: "),
        (
            b'{"resources": [{"@type": "type.googleapis.com/no.such.Type"}]}',
            "not a JSON DiscoveryResponse: ",
        ),
        (b'{"resources": [1]}', "not a JSON DiscoveryResponse: "),
        (b'{"resources": [{"@type": 5}]}', "not a JSON DiscoveryResponse: "),
        (b'{"resources": "x"}', "not a JSON DiscoveryResponse: "),
        (b"null", "not a JSON DiscoveryResponse: not a JSON object"),
        (
            json.dumps({"version_info": "1", "type_url": LISTENER_TYPE_URL}).encode(),
            f"a response of type URL {LISTENER_TYPE_URL}, expected {CLUSTER_TYPE_URL}",
        ),
    ],
)
def test_bad_answers_are_failed_fetches(body: bytes, reason: str) -> None:
    with pytest.raises(FetchFailed) as caught:
        decode_response(body, CLUSTER_TYPE_URL)
    assert str(caught.value).startswith(reason)
    assert "\n" not in str(caught.value)


def test_delay_is_refresh_delay_plus_jitter_below_it() -> None:
    rng = random.Random(7)
    delays = [next_delay(0.5, rng) for _ in range(200)]
    assert all(0.5 <= delay < 1.0 for delay in delays)
    assert max(delays) - min(delays) > 0.3  # jittered, not fixed
    again = random.Random(7)
    assert [next_delay(0.5, again) for _ in range(200)] == delays  # the rng decides


def test_digest_tells_bodies_apart() -> None:
    assert body_digest(b"a") == body_digest(b"a")
    assert body_digest(b"a") != body_digest(b"b")


@pytest.mark.parametrize(
    "text",
    [
        '{"version_info": "1", "resources": [{"a": [1, {"b": null}]}, "x", 2.5, []]}',
        ' \n{ "resources" : [ ] , "nonce":"n" } \t',
        '{"resources": {"not": "a list"}}',
        "{}",
        "[1, 2]",
        '"text"',
    ],
)
def test_sliced_loading_is_json_loads(text: str) -> None:
    assert load_sliced(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    ['{"resources": [1, 2', '{"resources": [1 2]}', '{"a": 1} x', '{"a" 1}', "{1: 2}", "{", ""],
)
def test_sliced_loading_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        load_sliced(text)


def test_resources_are_converted_one_by_one() -> None:
    seen: list[object] = []
    doc = load_sliced('{"resources": [{"n": 1}, {"n": 2}], "other": [{"n": 3}]}', seen.append)
    assert seen == [{"n": 1}, {"n": 2}]  # only the top-level resources
    assert doc["other"] == [{"n": 3}]
