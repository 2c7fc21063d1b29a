"""Turn the `Any` resources of a SotW `DiscoveryResponse` into typed messages.

Envoy decodes every resource before applying any: one resource that does not decode (wrong
type URL, corrupt bytes) rejects the whole response, nothing of it is applied, and the NACK
says why in the same words as Envoy's `GrpcMuxImpl`. A resource may also come wrapped in
`envoy.service.discovery.v3.Resource` (the TTL/heartbeat form); the wrapper is opened here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

# Imported so that the Cluster and Listener types are in the default pool: Envoy's messages
# print Anys of these types expanded, and a control plane that sends a Cluster on the listener
# stream is the commonest type mix-up.
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, descriptor_pool, message, text_format

LISTENER_TYPE_URL = "type.googleapis.com/envoy.config.listener.v3.Listener"
RESOURCE_WRAPPER_TYPE_URL = "type.googleapis.com/envoy.service.discovery.v3.Resource"

# Checks one decoded listener against its proto (PGV) constraints; returns None, or the
# violation in Envoy's words, e.g. "ListenerValidationError.FilterChains[0]: embedded message
# failed validation | caused by FilterValidationError.Name: value length must be at least 1
# characters". Envoy rejects the whole response then (its resource decoder validates).
ListenerValidator = Callable[[listener_pb2.Listener], str | None]

_EMPTY_POOL = descriptor_pool.DescriptorPool()
M = TypeVar("M", bound=message.Message)


class ResponseDecodeError(Exception):
    """The response cannot be decoded; the text is the NACK's error_detail message."""


@dataclass(frozen=True, slots=True)
class DecodedResource(Generic[M]):
    """One resource of a response (a Listener or a Cluster), with what the TTL bookkeeping needs.

    `body` is None for a body-less `Resource` (a heartbeat if its version is the one held);
    `version` is the `Resource` wrapper's (SotW: "" when not wrapped); `ttl_s` is None when the
    resource carries no TTL.
    """

    name: str
    body: M | None
    version: str = ""
    ttl_s: float | None = None


DecodedListener = DecodedResource[listener_pb2.Listener]
DecodeBody = Callable[[any_pb2.Any], M]  # one resource's Any -> its message (may raise)


def resource_name(body: message.Message) -> str:
    """A resource's name: `name`, or a ClusterLoadAssignment's `cluster_name`."""
    name = getattr(body, "name", None)
    return name if name is not None else body.cluster_name  # type: ignore[attr-defined]


def debug_string(msg: message.Message) -> str:
    """Text format close to C++ `DebugString()` (which Envoy's messages embed).

    C++ prefixes the text with a marker `goo.gle/debugstr` and a random number of spaces (the
    count changes from one Envoy process to the next); we write two.
    """
    try:
        text = text_format.MessageToString(msg)
    except message.DecodeError:
        # Some Any holds bytes that do not parse as its type: print Anys unexpanded.
        text = text_format.MessageToString(msg, descriptor_pool=_EMPTY_POOL)
    return "goo.gle/debugstr  \n" + text


def decode_listeners(
    response: discovery_pb2.DiscoveryResponse, validate: ListenerValidator | None = None
) -> list[listener_pb2.Listener]:
    """All listeners of `response`, in order; raises `ResponseDecodeError` if any is bad."""
    return [d.body for d in decode_sotw_listeners(response, validate) if d.body]


def decode_sotw_listeners(
    response: discovery_pb2.DiscoveryResponse,
    validate: ListenerValidator | None = None,
    unchanged: Unchanged[listener_pb2.Listener] | None = None,
) -> list[DecodedListener]:
    """Every resource of a SotW response, wrapped or not, in order (heartbeats included)."""
    return decode_sotw_resources(
        response, lambda payload: _decode_listener(payload, validate), unchanged
    )


class Unchanged(Generic[M]):
    """The bodies decoded from the last response, by their bytes on the wire: a control plane
    that sends the whole state of the world again sends most resources byte for byte as before;
    those are not parsed again, and the same message object lets the listener manager see at
    once that nothing changed. A response that fails to decode keeps the previous bodies.

    A plain resource (not in a `Resource` wrapper) sent again is its whole `DecodedResource`
    of then: its bytes are compared with those held before anything of it is decoded."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, bytes], M] = {}
        self._next: dict[tuple[str, bytes], M] = {}
        self._held_plain: dict[bytes, DecodedResource[M]] = {}
        self._next_plain: dict[bytes, DecodedResource[M]] = {}

    def begin(self) -> None:
        self._next = {}
        self._next_plain = {}

    def decode(self, payload: any_pb2.Any, decode_body: DecodeBody[M]) -> M:
        key = (payload.type_url, payload.value)
        body = self._held.get(key)
        if body is None:
            body = decode_body(payload)
        self._next[key] = body
        return body

    def plain(self, payload: any_pb2.Any, decode_body: DecodeBody[M]) -> DecodedResource[M]:
        """A resource of the response's own type URL, not wrapped."""
        value = payload.value
        decoded = self._held_plain.get(value)
        if decoded is None:
            body = decode_body(payload)
            decoded = DecodedResource(name=resource_name(body), body=body)
        self._next_plain[value] = decoded
        return decoded

    def commit(self) -> None:
        self._held, self._next = self._next, {}
        self._held_plain, self._next_plain = self._next_plain, {}


def decode_sotw_resources(
    response: discovery_pb2.DiscoveryResponse,
    decode_body: DecodeBody[M],
    unchanged: Unchanged[M] | None = None,
) -> list[DecodedResource[M]]:
    """Every resource of a SotW response, wrapped or not, in order (heartbeats included);
    with `unchanged`, a resource sent byte for byte as in the last response is its body then."""
    wrapped_body = decode_body
    if unchanged is not None:
        unchanged.begin()
        wrapped_body = functools.partial(unchanged.decode, decode_body=decode_body)
    type_url = response.type_url
    decoded: list[DecodedResource[M]] = []
    for resource in response.resources:
        resource_type = resource.type_url
        if resource_type == RESOURCE_WRAPPER_TYPE_URL:
            wrapper = discovery_pb2.Resource()
            unpack(resource, wrapper)
            decoded.append(_decode_wrapper(wrapper, wrapped_body))
            continue
        if resource_type != type_url:
            raise ResponseDecodeError(
                f"{resource_type} does not match the message-wide type URL "
                f"{type_url} in DiscoveryResponse {debug_string(response)}"
            )
        if unchanged is not None:
            decoded.append(unchanged.plain(resource, decode_body))
        else:
            body = decode_body(resource)
            decoded.append(DecodedResource(name=resource_name(body), body=body))
    if unchanged is not None:
        unchanged.commit()
    return decoded


def decode_delta_listeners(
    response: discovery_pb2.DeltaDiscoveryResponse, validate: ListenerValidator | None = None
) -> list[DecodedListener]:
    """The added/updated listeners of a Delta response, in order (heartbeats included)."""
    return decode_delta_resources(response, lambda payload: _decode_listener(payload, validate))


def decode_delta_resources(
    response: discovery_pb2.DeltaDiscoveryResponse, decode_body: DecodeBody[M]
) -> list[DecodedResource[M]]:
    """The added/updated resources of a Delta response, in order (heartbeats included).

    A name twice among them, or both added and removed, rejects the response (the server
    contradicts itself), as Envoy's `DeltaSubscriptionState` does.
    """
    seen: set[str] = set()
    removed = set(response.removed_resources)
    decoded: list[DecodedResource[M]] = []
    for resource in response.resources:
        if resource.name in seen:
            raise ResponseDecodeError(
                f"duplicate name {resource.name} found among added/updated resources"
            )
        if resource.name in removed:
            raise ResponseDecodeError(
                f"duplicate name {resource.name} found in the union of added+removed resources"
            )
        seen.add(resource.name)
        if resource.HasField("resource") and resource.resource.type_url != response.type_url:
            raise ResponseDecodeError(
                f"{resource.resource.type_url} does not match the message-wide type URL "
                f"{response.type_url} in DeltaDiscoveryResponse {debug_string(response)}"
            )
        decoded.append(_decode_wrapper(resource, decode_body))
    return decoded


def _decode_wrapper(
    wrapper: discovery_pb2.Resource, decode_body: DecodeBody[M]
) -> DecodedResource[M]:
    ttl_s = wrapper.ttl.ToNanoseconds() / 1e9 if wrapper.HasField("ttl") else None
    body = decode_body(wrapper.resource) if wrapper.HasField("resource") else None
    name = wrapper.name or (resource_name(body) if body is not None else "")
    return DecodedResource(name=name, body=body, version=wrapper.version, ttl_s=ttl_s)


def _decode_listener(
    payload: any_pb2.Any, validate: ListenerValidator | None
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener()
    unpack(payload, listener)
    if validate is not None:
        violation = validate(listener)
        if violation is not None:
            raise ResponseDecodeError(
                f"{debug_string(listener)}: Proto constraint validation failed ({violation})"
            )
    return listener


def unpack(resource: any_pb2.Any, target: message.Message) -> None:
    """Unpack or reject the whole response, in Envoy's words."""
    try:
        unpacked = resource.Unpack(target)
    except message.DecodeError:
        unpacked = False
    if not unpacked:
        raise ResponseDecodeError(
            f"Unable to unpack as {target.DESCRIPTOR.full_name}: {debug_string(resource)}"
        )
