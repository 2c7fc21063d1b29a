"""Every `google.protobuf.Any` inside a message: the one walk over set fields, map values,
repeated items and singular messages that config keys and the admin JSON both need."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

ANY_FULL_NAME = any_pb2.Any.DESCRIPTOR.full_name


def _every_type(descriptor: Descriptor) -> bool:
    return True


def visit_anys(
    message: Message,
    visit: Callable[[any_pb2.Any], None],
    may_hold_any: Callable[[Descriptor], bool] = _every_type,
) -> None:
    """Call `visit` on each Any set in `message` (the message itself if it is one), not
    looking inside the Anys; `may_hold_any(descriptor)` False skips a field's subtree."""
    if message.DESCRIPTOR.full_name == ANY_FULL_NAME:
        visit(message)  # type: ignore[arg-type]
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE or not may_hold_any(field.message_type):
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    visit_anys(item, visit, may_hold_any)
        elif field.is_repeated:
            for item in value:
                visit_anys(item, visit, may_hold_any)
        else:
            visit_anys(value, visit, may_hold_any)
