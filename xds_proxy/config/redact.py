"""Redacting what `/config_dump` must not show: every string or bytes value inside a field marked
`(udpa.annotations.sensitive) = true` (a TLS private key, a session ticket key, a generic
secret) reads `[redacted]`, wherever it is, inside `Any`s too: Envoy 1.40's rule
(`MessageUtil::redact`), so `private_key {filename: "/k.pem"}` shows `filename: "[redacted]"`.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

REDACTED = "[redacted]"
_SENSITIVE = "udpa.annotations.sensitive"
_TEXT = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES)


def redact_sensitive(message: Message, sensitive: bool = False) -> None:
    """Redact `message` in place (all of it when `sensitive`)."""
    if isinstance(message, any_pb2.Any):
        _redact_any(message, sensitive)
        return
    for field, value in message.ListFields():
        inner = sensitive or _marked_sensitive(field)
        repeated = field.is_repeated
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                _redact_map(field, value, inner)
                continue
            for item in value if repeated else [value]:
                redact_sensitive(item, inner)
        elif inner and field.type in _TEXT:
            blank = REDACTED if field.type == FieldDescriptor.TYPE_STRING else REDACTED.encode()
            if repeated:
                value[:] = [blank] * len(value)
            else:
                setattr(message, field.name, blank)


def _marked_sensitive(field: FieldDescriptor) -> bool:
    """`(udpa.annotations.sensitive) = true` (read by name: the generated Envoy messages load
    that extension)."""
    return any(
        option.full_name == _SENSITIVE and value
        for option, value in field.GetOptions().ListFields()
    )


def _redact_map(field: FieldDescriptor, value, sensitive: bool) -> None:
    value_field = field.message_type.fields_by_name["value"]
    if value_field.message_type is not None:
        for item in value.values():
            redact_sensitive(item, sensitive)
    elif sensitive and value_field.type in _TEXT:
        blank = REDACTED if value_field.type == FieldDescriptor.TYPE_STRING else REDACTED.encode()
        for key in list(value):
            value[key] = blank


def _redact_any(packed: any_pb2.Any, sensitive: bool) -> None:
    name = packed.type_url.rpartition("/")[2]
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return  # a type we do not know: shown as it is (Envoy cannot show it either)
    inner = message_factory.GetMessageClass(descriptor)()
    try:
        packed.Unpack(inner)
    except DecodeError:
        return
    before = inner.SerializeToString(deterministic=True)
    redact_sensitive(inner, sensitive)
    if inner.SerializeToString(deterministic=True) != before:
        packed.Pack(inner)
