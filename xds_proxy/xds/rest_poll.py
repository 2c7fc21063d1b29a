"""REST xDS polling, the pure part: what a poll sends and what its answer means.

Envoy's `HttpSubscriptionImpl` (`api_type: REST`) polls `POST /v3/discovery:<type>` with a
proto3-JSON `DiscoveryRequest` (snake_case names: `version_info`, `node`, sorted
`resource_names`, `type_url`, `error_detail` after a rejection; never a nonce). The answer:

- 200 with a JSON `DiscoveryResponse`: applied through the subscription's SotW path; the next
  poll carries its version (ACK) or, rejected, the last accepted one with `error_detail`
  (NACK). A response without `type_url` is of the type polled (sovereign sends none);
- 304: nothing changed, the same request goes out again;
- anything else (another status, a body that is empty or not JSON, another `type_url`, a
  connection error, `request_timeout`): a failed fetch (`FetchFailed`): nothing changes,
  `update_failure` counts it, the same request goes out again.

The next poll goes out `refresh_delay` plus a jitter drawn uniformly from [0, refresh_delay)
after each answer (Envoy's `RestApiFetcher::requestComplete`).
"""

from __future__ import annotations

import hashlib
import random

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

# type URL -> the REST path's resource word (Envoy's `/v3/discovery:<word>`)
_REST_WORDS = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": "listeners",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "clusters",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "routes",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "endpoints",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": "secrets",
}
_UNKNOWN_FIELD_MARKERS = ("has no field named", "Cannot find field")


class FetchFailed(Exception):
    """A poll that brought nothing to apply; the text says why, in one line."""


def discovery_path(type_url: str) -> str:
    """`/v3/discovery:listeners` for the Listener type URL, and so on."""
    return "/v3/discovery:" + _REST_WORDS[type_url]


def request_body(request: discovery_pb2.DiscoveryRequest) -> bytes:
    """The JSON body of one poll: snake_case names, sorted resource names, no nonce."""
    sent = discovery_pb2.DiscoveryRequest()
    sent.CopyFrom(request)
    sent.ClearField("response_nonce")
    names = sorted(sent.resource_names)
    del sent.resource_names[:]
    sent.resource_names.extend(names)
    return json_format.MessageToJson(sent, preserving_proto_field_name=True, indent=None).encode()


def decode_response(body: bytes, type_url: str) -> tuple[discovery_pb2.DiscoveryResponse, bool]:
    """A 200's body as a `DiscoveryResponse` of `type_url`, and whether unknown fields were
    skipped (as Envoy does with a warning). Raises `FetchFailed`. CPU-bound: callers run it
    off the event loop."""
    if not body.strip():
        raise FetchFailed("a 200 response with an empty body")
    response = discovery_pb2.DiscoveryResponse()
    skipped_unknown = False
    try:
        json_format.Parse(body, response)
    except json_format.ParseError as error:
        if not any(marker in str(error) for marker in _UNKNOWN_FIELD_MARKERS):
            raise FetchFailed(f"not a JSON DiscoveryResponse: {_one_line(error)}") from None
        response = discovery_pb2.DiscoveryResponse()
        try:
            json_format.Parse(body, response, ignore_unknown_fields=True)
        except json_format.ParseError as second:
            raise FetchFailed(f"not a JSON DiscoveryResponse: {_one_line(second)}") from None
        skipped_unknown = True
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FetchFailed(f"not a JSON DiscoveryResponse: {_one_line(error)}") from None
    if response.type_url and response.type_url != type_url:
        raise FetchFailed(f"a response of type URL {response.type_url}, expected {type_url}")
    response.type_url = type_url
    return response, skipped_unknown


def body_digest(body: bytes) -> bytes:
    """What tells one response body from another (a repeated rejected answer logs once)."""
    return hashlib.blake2b(body, digest_size=16).digest()


def next_delay(refresh_delay_s: float, rng: random.Random) -> float:
    """Envoy: `refresh_delay + random() % refresh_delay` (in ms)."""
    interval_ms = max(1, round(refresh_delay_s * 1000))
    return (interval_ms + rng.randrange(interval_ms)) / 1000.0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:300] + "..."
