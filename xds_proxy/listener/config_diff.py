"""What changed between two configs: the field paths that differ, for "why did this drain".

Pure. Two values are compared as the listener manager compares them (`config_key.py`):
every `Any` of a known type is unpacked, maps are compared as maps, so a re-serialized but
equal config has no changed path. Paths use the proto field names:
`filter_chains[0].filters[0].typed_config.stat_prefix`, `metadata.filter_metadata["k"]`.
"""

from __future__ import annotations

from google.protobuf import any_pb2, symbol_database
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from xds_proxy.config_key import config_key, may_hold_any

MAX_PATHS = 10
_symbols = symbol_database.Default()


def changed_fields(old: Message, new: Message, limit: int = MAX_PATHS) -> tuple[str, ...]:
    """Up to `limit` field paths whose values differ, in field order."""
    found: list[str] = []
    _diff(old, new, "", found, limit)
    return tuple(found)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _diff(old: Message, new: Message, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit:
        return
    if old.DESCRIPTOR.full_name == any_pb2.Any.DESCRIPTOR.full_name:
        _diff_any(old, new, path, found, limit)  # type: ignore[arg-type]
        return
    names = [f.name for f, _ in old.ListFields()] + [f.name for f, _ in new.ListFields()]
    for name in dict.fromkeys(sorted(names, key=lambda n: old.DESCRIPTOR.fields_by_name[n].index)):
        if len(found) >= limit:
            return
        field = old.DESCRIPTOR.fields_by_name[name]
        here = _join(path, name)
        old_value, new_value = getattr(old, name), getattr(new, name)
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            if old_value != new_value:
                found.append(here)
        elif field.message_type.GetOptions().map_entry:
            _diff_map(field, old_value, new_value, here, found, limit)
        elif field.is_repeated:
            _diff_repeated(old_value, new_value, here, found, limit)
        elif old.HasField(name) != new.HasField(name):
            found.append(here)
        elif _differ(old_value, new_value):
            _diff(old_value, new_value, here, found, limit)


def _diff_repeated(old, new, path: str, found: list[str], limit: int) -> None:
    for index in range(max(len(old), len(new))):
        if len(found) >= limit:
            return
        here = f"{path}[{index}]"
        if index >= len(old) or index >= len(new):
            found.append(here)
        elif _differ(old[index], new[index]):
            _diff(old[index], new[index], here, found, limit)


def _diff_map(field, old, new, path: str, found: list[str], limit: int) -> None:
    value_field = field.message_type.fields_by_name["value"]
    for key in sorted(set(old) | set(new), key=str):
        if len(found) >= limit:
            return
        here = f'{path}["{key}"]'
        if key not in old or key not in new:
            found.append(here)
        elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
            if _differ(old[key], new[key]):
                _diff(old[key], new[key], here, found, limit)
        elif old[key] != new[key]:
            found.append(here)


def _differ(old: Message, new: Message) -> bool:
    """Worth going into? Protobuf's own equality first (fast, and exact when it says equal).
    Below an Any, two messages it finds different may still be equal unpacked: going into
    them finds no path then, which costs less than unpacking both at every level."""
    if old == new:
        return False
    return may_hold_any(old.DESCRIPTOR) or config_key(old) != config_key(new)


def _diff_any(old: any_pb2.Any, new: any_pb2.Any, path: str, found: list[str], limit: int) -> None:
    old_inner, new_inner = _unpack(old), _unpack(new)
    if old.type_url != new.type_url or old_inner is None or new_inner is None:
        if old != new:
            found.append(path)
        return
    _diff(old_inner, new_inner, path, found, limit)


def _unpack(packed: any_pb2.Any) -> Message | None:
    try:
        inner = _symbols.GetSymbol(packed.type_url.rpartition("/")[2])()
        inner.ParseFromString(packed.value)
    except (KeyError, DecodeError):
        return None
    return inner
