"""REST xDS polling, the pure part: what a poll sends and what its answer means.

Envoy's `HttpSubscriptionImpl` (`api_type: REST`) polls `POST /v3/discovery:<type>` with a
proto3-JSON `DiscoveryRequest` (snake_case names: `version_info`, `node`, sorted
`resource_names`, `type_url`; never a nonce, and -- as Envoy 1.40 does, checked on the wire --
no `error_detail` either: sovereign answers a request with one 422). The answer:

- 200 with a JSON `DiscoveryResponse`: applied through the subscription's SotW path; the next
  poll carries its version (ACK) or, rejected, the last accepted one again (NACK: the
  rejection shows only in the logs and stats). A response without `type_url` is of the type
  polled (sovereign sends none);
- 304: nothing changed, the same request goes out again;
- anything else (another status, a body that is empty or not JSON, another `type_url`, a
  connection error, `request_timeout`): a failed fetch (`FetchFailed`): nothing changes,
  `update_failure` counts it, the same request goes out again.

The next poll goes out `refresh_delay` plus a jitter drawn uniformly from [0, refresh_delay)
after each answer (Envoy's `RestApiFetcher::requestComplete`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format, message

# type URL -> the REST path's resource word (Envoy's `/v3/discovery:<word>`)
_REST_WORDS = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": "listeners",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "clusters",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "routes",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "endpoints",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": "secrets",
}
_UNKNOWN_FIELD_MARKERS = ("has no field named", "Cannot find field")
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


class FetchFailed(Exception):
    """A poll that brought nothing to apply; the text says why, in one line."""


def discovery_path(type_url: str) -> str:
    """`/v3/discovery:listeners` for the Listener type URL, and so on."""
    return "/v3/discovery:" + _REST_WORDS[type_url]


def request_body(request: discovery_pb2.DiscoveryRequest) -> bytes:
    """The JSON body of one poll: snake_case names, sorted resource names, no nonce and no
    error_detail (Envoy sends neither over REST)."""
    sent = discovery_pb2.DiscoveryRequest()
    sent.CopyFrom(request)
    sent.ClearField("response_nonce")
    sent.ClearField("error_detail")
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
    unknown: list[bool] = []

    def to_any(item: Any) -> any_pb2.Any:
        resource = any_pb2.Any()
        unknown.append(_parse(item, resource))
        return resource

    try:
        doc = load_sliced(body.decode("utf-8"), to_any)
    except (json_format.ParseError, ValueError, RecursionError) as error:
        raise FetchFailed(f"not a JSON DiscoveryResponse: {_one_line(error)}") from None
    except (TypeError, AttributeError, KeyError) as error:  # json_format on ill-typed JSON
        raise FetchFailed(f"not a JSON DiscoveryResponse: {_one_line(error)}") from None
    if not isinstance(doc, dict):
        raise FetchFailed("not a JSON DiscoveryResponse: not a JSON object")
    resources = doc.pop("resources", None) if _all_any(doc.get("resources")) else None
    response = discovery_pb2.DiscoveryResponse()
    try:
        unknown.append(_parse(doc, response))
    except (json_format.ParseError, TypeError, AttributeError, KeyError) as error:
        raise FetchFailed(f"not a JSON DiscoveryResponse: {_one_line(error)}") from None
    if resources:
        response.resources.extend(resources)
    skipped_unknown = any(unknown)
    if response.type_url and response.type_url != type_url:
        raise FetchFailed(f"a response of type URL {response.type_url}, expected {type_url}")
    response.type_url = type_url
    return response, skipped_unknown


def _parse(doc: Any, target: message.Message) -> bool:
    """ParseDict; unknown fields are skipped (returns True) as Envoy does, with a warning."""
    try:
        json_format.ParseDict(doc, target)
        return False
    except json_format.ParseError as error:
        if not any(marker in str(error) for marker in _UNKNOWN_FIELD_MARKERS):
            raise
    target.Clear()
    json_format.ParseDict(doc, target, ignore_unknown_fields=True)
    return True


def _all_any(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, any_pb2.Any) for item in value)


def load_sliced(text: str, convert: Callable[[Any], Any] = lambda item: item) -> Any:
    """`json.loads`, but a top-level object's `resources` array is decoded one element at a
    time and handed to `convert` at once: `json.loads` of a large response is one C call that
    holds the GIL throughout (about 40 ms per MiB), so that even in a worker thread it would
    pause the event loop, and the dicts of every resource alive at once make the garbage
    collector's full passes long; element by element, the loop gets the GIL back between
    resources and only one resource's dicts live at a time."""
    index = _skip(text, 0)
    if text[index : index + 1] != "{":
        return _DECODER.decode(text)
    doc: dict[str, Any] = {}
    index = _skip(text, index + 1)
    if text[index : index + 1] == "}":
        return _end(doc, text, index + 1)
    while True:
        key, index = _DECODER.raw_decode(text, index)
        if not isinstance(key, str):
            raise ValueError(f"an object key must be a string (char {index})")
        index = _expect(text, index, ":")
        if key == "resources" and text[index : index + 1] == "[":
            doc[key], index = _array(text, index + 1, convert)
        else:
            doc[key], index = _DECODER.raw_decode(text, index)
        index = _skip(text, index)
        mark = text[index : index + 1]
        if mark == "}":
            return _end(doc, text, index + 1)
        if mark != ",":
            raise ValueError(f"expected ',' or '}}' at char {index}")
        index = _skip(text, index + 1)


def _array(text: str, index: int, convert: Callable[[Any], Any]) -> tuple[list[Any], int]:
    items: list[Any] = []
    index = _skip(text, index)
    if text[index : index + 1] == "]":
        return items, index + 1
    while True:
        item, index = _DECODER.raw_decode(text, index)
        items.append(convert(item))
        index = _skip(text, index)
        mark = text[index : index + 1]
        if mark == "]":
            return items, index + 1
        if mark != ",":
            raise ValueError(f"expected ',' or ']' at char {index}")
        index = _skip(text, index + 1)


def _skip(text: str, index: int) -> int:
    return _SPACE.match(text, index).end()  # type: ignore[union-attr]


def _expect(text: str, index: int, mark: str) -> int:
    index = _skip(text, index)
    if text[index : index + 1] != mark:
        raise ValueError(f"expected '{mark}' at char {index}")
    return _skip(text, index + 1)


def _end(doc: dict[str, Any], text: str, index: int) -> dict[str, Any]:
    if _skip(text, index) != len(text):
        raise ValueError(f"extra data at char {index}")
    return doc


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
