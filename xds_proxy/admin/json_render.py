"""The admin endpoints' JSON, printed as Envoy prints it.

Messages go through protobuf's JSON printer (`envoy.admin.v3` messages, so the shape is
Envoy's by construction), with three differences from calling it directly:

- `google.protobuf.Any` of any type `xds-protos` knows is printed, not only of the types our
  own code happens to import: a rejected listener's `failed_configuration` may carry any
  extension a control plane sends. The printer only finds types whose generated module was
  imported; on a miss the types are resolved as the config loader resolves them
  (`extensions.resolve_message_class`, which imports the proto package on demand) and the
  printing is tried again.
- A type nobody knows answers what Envoy 1.40 answers (status 200, no JSON):
  `Failed to convert protobuf message to JSON string: INVALID_ARGUMENT: could not find
  @type '...'`; an Any whose bytes do not parse as its type is printed with its `@type`
  only, as Envoy does.
- `/server_info` prints default-valued fields (`"state": "LIVE"`, `false`, `0`, `""`, `[]`)
  in field-number order, as Envoy does for that endpoint (and only for that one: `/config_dump`
  leaves them out, as Envoy does).
"""

from __future__ import annotations

import json

from envoy.admin.v3 import server_info_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from xds_proxy.extensions import resolve_message_class
from xds_proxy.proto_anys import visit_anys

_SERVER_INFO = server_info_pb2.ServerInfo.DESCRIPTOR.full_name
_CONVERT_FAILED = "Failed to convert protobuf message to JSON string: INVALID_ARGUMENT: "
# Printed as JSON scalars or free-form objects, not as objects with the message's fields.
_WELL_KNOWN = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Duration",
        "google.protobuf.Timestamp",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.FieldMask",
    }
)


class _UnknownType(Exception):
    """An Any whose type cannot be printed; the text is Envoy's reason."""


def message_json(message: Message) -> str:
    """What Envoy's admin prints for `message`: fields with default values left out, except
    in a ServerInfo (only `/server_info` prints one)."""
    if message.DESCRIPTOR.full_name == _SERVER_INFO:
        return server_info_json(message)
    try:
        return _print(message)
    except (TypeError, DecodeError):  # an Any of a type not imported, or of unparsable bytes
        pass
    resolved = type(message)()
    resolved.CopyFrom(message)
    try:
        visit_anys(resolved, _resolve_any)
    except _UnknownType as error:
        return _CONVERT_FAILED + str(error)
    return _print(resolved)


def server_info_json(message: Message) -> str:
    """`/server_info`: every field, default-valued ones included, in field-number order."""
    printed = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _dumps(_in_field_order(printed, message.DESCRIPTOR))


def _print(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1) + "\n"


def _dumps(document: object) -> str:
    """The printer's own layout (MessageToJson with `indent=1`)."""
    return json.dumps(document, indent=1) + "\n"


# -- Any resolution ---------------------------------------------------------------------------


def _resolve_any(packed: any_pb2.Any) -> None:
    """Make an Any printable: resolve its type (importing its package), or empty the value
    that does not parse (Envoy prints such an Any with its `@type` only), recursively; raise
    _UnknownType for a type that cannot be found."""
    if not packed.type_url and not packed.value:
        return  # printed as {}
    host, slash, type_name = packed.type_url.rpartition("/")
    if not slash or not host:
        raise _UnknownType(
            f"@type must contain at least one / and a nonempty host; got: {packed.type_url}"
        )
    message_class = resolve_message_class(type_name)
    if message_class is None:
        raise _UnknownType(f"could not find @type '{packed.type_url}'")
    try:
        inner = message_class.FromString(packed.value)
    except DecodeError:
        packed.value = b""
        return
    visit_anys(inner, _resolve_any)
    packed.value = inner.SerializeToString()


# -- field order ------------------------------------------------------------------------------


def _in_field_order(printed: object, descriptor: Descriptor) -> object:
    """The printer puts default-valued fields after the set ones; Envoy prints all of them
    in field-number order."""
    if not isinstance(printed, dict):
        return printed  # a wrapper type's scalar
    ordered: dict = {}
    for field in sorted(descriptor.fields, key=lambda field: field.number):
        if field.name not in printed:
            continue
        value = printed[field.name]
        nested = field.message_type
        if (
            nested is not None
            and nested.full_name not in _WELL_KNOWN
            and not nested.GetOptions().map_entry
        ):
            if isinstance(value, list):
                value = [_in_field_order(item, nested) for item in value]
            else:
                value = _in_field_order(value, nested)
        ordered[field.name] = value
    return ordered
