"""Config equality that ignores how a control plane happened to serialize a message.

Two configs are equal when their messages are equal after every `google.protobuf.Any` of a
known type has been unpacked, recursively; an update that changes nothing drains nothing
(docs/draining.md). Protobuf's own `==` compares the raw bytes inside an `Any`, so a control
plane that writes map entries in another order would otherwise cause a needless drain
(envoy#8564). The key of a config is the
deterministic serialization of that unpacked form: equal keys, equal configs.
"""

from __future__ import annotations

from google.protobuf import any_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from xds_proxy.bounded_cache import BoundedCache
from xds_proxy.proto_anys import ANY_FULL_NAME, visit_anys

_symbols = symbol_database.Default()


def config_key(message: Message) -> bytes:
    """Bytes equal for two messages exactly when they are equal with every known Any unpacked."""
    return _canonical(message).SerializeToString(deterministic=True)


def _canonical(message: Message) -> Message:
    if not _contains_any(message.DESCRIPTOR):
        return message
    copy = type(message)()
    copy.CopyFrom(message)
    _canonicalize_in_place(copy)
    return copy


def _canonicalize_in_place(message: Message) -> None:
    visit_anys(message, _canonicalize_any, _contains_any)


# (type URL, packed bytes) -> canonical bytes: the same HCM in 10,000 chains is unpacked once.
_canonical_anys: BoundedCache[tuple[str, bytes], bytes] = BoundedCache.for_config_bytes()


def _canonicalize_any(packed: any_pb2.Any) -> None:
    key = (packed.type_url, packed.value)
    cached = _canonical_anys.get(key)
    if cached is None:
        cached = _canonical_any_bytes(packed)
        _canonical_anys.put(key, cached, len(packed.value))
    packed.value = cached


def _canonical_any_bytes(packed: any_pb2.Any) -> bytes:
    type_name = packed.type_url.rpartition("/")[2]
    try:
        message_class = _symbols.GetSymbol(type_name)
    except KeyError:
        return packed.value  # unknown type: compare its bytes as they are
    inner = message_class()
    try:
        inner.ParseFromString(packed.value)
    except DecodeError:
        return packed.value
    _canonicalize_in_place(inner)
    return inner.SerializeToString(deterministic=True)


def may_hold_any(descriptor) -> bool:
    """Whether a message of this type can hold an Any anywhere below it (cached per type)."""
    return _contains_any(descriptor)


_contains_any_cache: dict[str, bool] = {}


def _contains_any(descriptor, _visiting: frozenset[str] = frozenset()) -> bool:
    """Whether a message type can hold an Any anywhere below it (cached per type)."""
    name = descriptor.full_name
    cached = _contains_any_cache.get(name)
    if cached is not None:
        return cached
    if name == ANY_FULL_NAME:
        return True
    if name in _visiting:
        return False  # recursion: decided by the outer frame
    visiting = _visiting | {name}
    result = any(
        field.type == FieldDescriptor.TYPE_MESSAGE and _contains_any(field.message_type, visiting)
        for field in descriptor.fields
    )
    if result or not _visiting:
        _contains_any_cache[name] = result
    return result
