"""Turn the `Any` resources of a SotW `DiscoveryResponse` into typed messages.

Envoy decodes every resource before applying any: one resource that does not decode (wrong
type URL, corrupt bytes) rejects the whole response, nothing of it is applied, and the NACK
says why in the same words as Envoy's `GrpcMuxImpl`. A resource may also come wrapped in
`envoy.service.discovery.v3.Resource` (the TTL/heartbeat form); the wrapper is opened here.
"""

from __future__ import annotations

from collections.abc import Callable

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


class ResponseDecodeError(Exception):
    """The response cannot be decoded; the text is the NACK's error_detail message."""


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
    listeners: list[listener_pb2.Listener] = []
    for resource in response.resources:
        payload = resource
        if resource.type_url == RESOURCE_WRAPPER_TYPE_URL:
            wrapper = discovery_pb2.Resource()
            _unpack(resource, wrapper)
            if not wrapper.HasField("resource"):
                continue  # a heartbeat: nothing to apply
            payload = wrapper.resource
        elif resource.type_url != response.type_url:
            raise ResponseDecodeError(
                f"{resource.type_url} does not match the message-wide type URL "
                f"{response.type_url} in DiscoveryResponse {debug_string(response)}"
            )
        listener = listener_pb2.Listener()
        _unpack(payload, listener)
        if validate is not None:
            violation = validate(listener)
            if violation is not None:
                raise ResponseDecodeError(
                    f"{debug_string(listener)}: Proto constraint validation failed ({violation})"
                )
        listeners.append(listener)
    return listeners


def _unpack(resource: any_pb2.Any, target: message.Message) -> None:
    try:
        unpacked = resource.Unpack(target)
    except message.DecodeError:
        unpacked = False
    if not unpacked:
        raise ResponseDecodeError(
            f"Unable to unpack as {target.DESCRIPTOR.full_name}: {debug_string(resource)}"
        )
