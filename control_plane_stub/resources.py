"""Resource files and Python inputs -> named `Any`s ready to serve.

Two ways in, one way out. Validated mode parses every resource into its xds-protos class and
refuses a set a real control plane would never send (no name, duplicate names, unknown
`@type`). Raw mode (`raw=True`) encodes what it is given as faithfully as the wire allows, so
tests can play a broken control plane: duplicate names, bad addresses, unknown `@type`s, and
`{"@type": URL, "value_base64": ...}` Any values with arbitrary bytes.

Errors are one line: `FILE:LINE:COL: listeners[1].name: duplicate name 'web'`.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
TYPE_PREFIX = "type.googleapis.com/"

# The file's section -> the type URL served for it.
SECTION_TYPES: dict[str, str] = {
    "listeners": LISTENER_TYPE,
    "clusters": CLUSTER_TYPE,
    "routes": ROUTE_TYPE,
    "endpoints": ENDPOINT_TYPE,
    "secrets": SECRET_TYPE,
}
FILE_KEYS = ("version", *SECTION_TYPES)
# The field that names a resource: `name`, except a ClusterLoadAssignment's `cluster_name`
# (the name an EDS client subscribes to: the cluster's, or its eds `service_name`).
NAME_FIELDS: dict[str, str] = {ENDPOINT_TYPE: "cluster_name"}


def name_field_of(type_url: str) -> str:
    return NAME_FIELDS.get(type_url, "name")


def name_field_of_section(section: str) -> str:
    return name_field_of(SECTION_TYPES.get(section, ""))


class ResourceError(Exception):
    """A refused resource file or resource list; the message is one line for the user."""


@dataclass(frozen=True)
class NamedResource:
    """One resource as it goes on the wire: its name (for Delta and named subscriptions)
    and its body as an `Any`."""

    name: str
    body: any_pb2.Any


@dataclass(frozen=True)
class ResourceFile:
    """A loaded resource file; a section is None when the file does not mention it."""

    version: str | None
    sections: dict[str, list[NamedResource] | None]


# ---------------------------------------------------------------- type resolution


def type_name_of(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


def _import_package_modules(package: str) -> bool:
    """Import every generated `_pb2` module of a package so its messages join the pool."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    imported = False
    for location in spec.submodule_search_locations:
        try:
            names = sorted(os.listdir(location))
        except OSError:
            continue
        for file_name in names:
            if file_name.endswith("_pb2.py"):
                try:
                    importlib.import_module(f"{package}.{file_name[:-3]}")
                    imported = True
                except Exception:  # a broken optional module must not hide the others
                    continue
    return imported


def find_message_descriptor(type_url: str) -> Descriptor | None:
    """The descriptor for a type URL, importing its xds-protos package on first use."""
    pool = descriptor_pool.Default()
    full_name = type_name_of(type_url)
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        pass
    parts = full_name.split(".")
    # The package is a prefix of the full name (nested messages add components after it).
    for cut in range(len(parts) - 1, 0, -1):
        if _import_package_modules(".".join(parts[:cut])):
            break
    try:
        return pool.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def message_class_for(type_url: str) -> type[Message] | None:
    descriptor = find_message_descriptor(type_url)
    if descriptor is None:
        return None
    return message_factory.GetMessageClass(descriptor)


# ---------------------------------------------------------------- positions in a YAML/JSON file

PathKey = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _collect_marks(node: yaml.Node, path: PathKey, marks: dict[PathKey, yaml.Mark]) -> None:
    marks[path] = node.start_mark
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            marks[(*path, key, "<key>")] = key_node.start_mark
            _collect_marks(value_node, (*path, key), marks)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_marks(item, (*path, index), marks)


class _Locator:
    """Turns a field path into `FILE:LINE:COL` using the marks of the composed YAML."""

    def __init__(self, file_name: str, marks: dict[PathKey, yaml.Mark]):
        self.file_name = file_name
        self.marks = marks

    def where(self, path: Sequence[str | int]) -> str:
        path = tuple(path)
        for cut in range(len(path), -1, -1):
            # A field's key is where a reader looks; a list item's start is its own mark.
            mark = self.marks.get((*path[:cut], "<key>")) or self.marks.get(path[:cut])
            if mark is not None:
                return f"{self.file_name}:{mark.line + 1}:{mark.column + 1}"
        return self.file_name

    def error(self, path: Sequence[str | int], reason: str) -> ResourceError:
        field = format_path(path)
        prefix = f"{self.where(path)}: "
        return ResourceError(f"{prefix}{field}: {reason}" if field else f"{prefix}{reason}")


class _NoLocation(_Locator):
    def __init__(self) -> None:
        super().__init__("", {})

    def error(self, path: Sequence[str | int], reason: str) -> ResourceError:
        field = format_path(path)
        return ResourceError(f"{field}: {reason}" if field else reason)


class _TextKeyLoader(yaml.SafeLoader):
    """Mapping keys are their text, as Envoy reads YAML: a `json_format` key `y` or `on`
    stays a string instead of becoming a boolean."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        return {
            key.value if isinstance(key, yaml.ScalarNode) else self.construct_object(key): (
                self.construct_object(value, deep=deep)
            )
            for key, value in node.value
        }


def _parse_document(text: str, file_name: str) -> tuple[Any, dict[PathKey, yaml.Mark]]:
    """Parse YAML or JSON text; JSON syntax errors keep JSON's own line and column."""
    if file_name.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            raise ResourceError(f"{file_name}:{error.lineno}:{error.colno}: {error.msg}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_TextKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        reason = (
            " ".join(part for part in (error.context, error.problem) if part) or "does not parse"
        )
        if mark is None:
            raise ResourceError(f"{file_name}: {reason}") from None
        raise ResourceError(f"{file_name}:{mark.line + 1}:{mark.column + 1}: {reason}") from None
    except yaml.YAMLError as error:
        raise ResourceError(f"{file_name}: {str(error).splitlines()[0]}") from None
    marks: dict[PathKey, yaml.Mark] = {}
    if node is not None:
        _collect_marks(node, (), marks)
    return data, marks


def load_resource_file(path: str | os.PathLike[str], raw: bool = False) -> ResourceFile:
    """Read and check a resource file; refuse it whole with file, position and reason."""
    file_name = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ResourceError(f"{file_name}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ResourceError(f"{file_name}: not UTF-8 text") from None
    data, marks = _parse_document(text, file_name)
    return parse_resource_document(data, _Locator(file_name, marks), raw=raw)


def load_resource_text(text: str, file_name: str = "<text>", raw: bool = False) -> ResourceFile:
    data, marks = _parse_document(text, file_name)
    return parse_resource_document(data, _Locator(file_name, marks), raw=raw)


def _sections_text() -> str:
    quoted = [f"'{section}'" for section in SECTION_TYPES]
    return f"{', '.join(quoted[:-1])} and/or {quoted[-1]}"


def parse_resource_document(
    data: Any, locator: _Locator | None = None, raw: bool = False
) -> ResourceFile:
    locator = locator or _NoLocation()
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise locator.error((), f"must be a mapping with {_sections_text()}")
    for key in data:
        if key not in FILE_KEYS:
            allowed = ", ".join(FILE_KEYS)
            raise locator.error((key,), f"unknown key (expected one of {allowed})")
    version = data.get("version")
    if version is not None and not isinstance(version, str | int | float):
        raise locator.error(("version",), "must be a string")
    sections: dict[str, list[NamedResource] | None] = {}
    for section, type_url in SECTION_TYPES.items():
        if section not in data:
            sections[section] = None
            continue
        items = data[section]
        if items is None:
            items = []
        if not isinstance(items, list):
            raise locator.error((section,), "must be a list")
        sections[section] = encode_resources(items, type_url, section, raw=raw, locator=locator)
    return ResourceFile(
        version=None if version is None else str(version),
        sections=sections,
    )


# ---------------------------------------------------------------- encoding


def encode_resources(
    items: Iterable[Any],
    type_url: str,
    section: str,
    raw: bool = False,
    locator: _Locator | None = None,
) -> list[NamedResource]:
    """Messages, envoy-data-plane dataclasses or dicts -> named Anys (validated unless raw)."""
    locator = locator or _NoLocation()
    encoded: list[NamedResource] = []
    for index, item in enumerate(items):
        path = (section, index)
        if isinstance(item, NamedResource):
            encoded.append(item)  # already encoded (a loaded file)
        elif raw:
            encoded.append(_encode_raw(item, type_url, path, locator))
        else:
            encoded.append(_encode_validated(item, type_url, path, locator))
    if not raw:
        check_names(encoded, section, locator)
    return encoded


def check_names(
    resources: Sequence[NamedResource], section: str, locator: _Locator | None = None
) -> None:
    """Every resource has a name and no two share one."""
    locator = locator or _NoLocation()
    name_field = name_field_of_section(section)
    first_index: dict[str, int] = {}
    for index, resource in enumerate(resources):
        if not resource.name:
            raise locator.error((section, index, name_field), "required")
        if resource.name in first_index:
            where = format_path((section, first_index[resource.name]))
            raise locator.error(
                (section, index, name_field),
                f"duplicate name {resource.name!r} (first at {where})",
            )
        first_index[resource.name] = index


def _is_data_plane_dataclass(item: Any) -> bool:
    """envoy-data-plane (betterproto2) messages, recognised without importing the package."""
    return any(cls.__module__.startswith("betterproto2") for cls in type(item).__mro__)


def _dataclass_bytes(item: Any) -> bytes:
    return bytes(item)


def _collect_type_urls(value: Any, path: PathKey, found: list[tuple[PathKey, str]]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if key == "@type":
                found.append(((*path, "@type"), str(inner)))
            else:
                _collect_type_urls(inner, (*path, key), found)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            _collect_type_urls(inner, (*path, index), found)


def _parse_error_reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0].strip() if text else type(error).__name__


def _encode_validated(item: Any, type_url: str, path: PathKey, locator: _Locator) -> NamedResource:
    message_class = message_class_for(type_url)
    assert message_class is not None, type_url
    expected = type_name_of(type_url)
    if isinstance(item, any_pb2.Any):
        if type_name_of(item.type_url) != expected:
            raise locator.error(path, f"expected {expected}, got an Any of {item.type_url!r}")
        message = message_class()
        try:
            message.ParseFromString(item.value)
        except DecodeError:
            raise locator.error(path, f"does not decode as {expected}") from None
    elif isinstance(item, Message):
        if item.DESCRIPTOR.full_name != expected:
            raise locator.error(path, f"expected {expected}, got {item.DESCRIPTOR.full_name}")
        message = item
    elif _is_data_plane_dataclass(item):
        if type(item).__name__ != expected.rsplit(".", 1)[-1]:
            raise locator.error(path, f"expected {expected}, got {type(item).__name__}")
        message = message_class()
        try:
            message.ParseFromString(_dataclass_bytes(item))
        except DecodeError as error:
            raise locator.error(path, f"cannot decode {type(item).__name__}: {error}") from None
    elif isinstance(item, Mapping):
        data = dict(item)
        declared = data.pop("@type", None)
        if declared is not None and type_name_of(str(declared)) != expected:
            raise locator.error((*path, "@type"), f"expected {TYPE_PREFIX}{expected}")
        type_urls: list[tuple[PathKey, str]] = []
        _collect_type_urls(data, path, type_urls)
        for type_path, inner_url in type_urls:
            if find_message_descriptor(inner_url) is None:
                raise locator.error(type_path, f"unknown @type {inner_url!r}")
        message = message_class()
        try:
            json_format.ParseDict(data, message)
        except (json_format.ParseError, ValueError, TypeError, KeyError) as error:
            raise locator.error(path, _parse_error_reason(error)) from None
    else:
        raise locator.error(path, f"expected a mapping, got {type(item).__name__}")
    body = any_pb2.Any(type_url=type_url, value=message.SerializeToString(deterministic=True))
    return NamedResource(name=name_of(message), body=body)


def name_of(message: Message) -> str:
    """A resource's name (`cluster_name` for a ClusterLoadAssignment), '' when it has none."""
    field = name_field_of(TYPE_PREFIX + message.DESCRIPTOR.full_name)
    if field not in message.DESCRIPTOR.fields_by_name:
        return ""
    return str(getattr(message, field))


def _encode_raw(item: Any, type_url: str, path: PathKey, locator: _Locator) -> NamedResource:
    if isinstance(item, any_pb2.Any):
        return NamedResource(name=_name_from_any(item), body=item)
    if isinstance(item, Message):
        body = any_pb2.Any(
            type_url=TYPE_PREFIX + item.DESCRIPTOR.full_name,
            value=item.SerializeToString(deterministic=True),
        )
        return NamedResource(name=name_of(item), body=body)
    if _is_data_plane_dataclass(item):
        body = any_pb2.Any(type_url=type_url, value=_dataclass_bytes(item))
        name = getattr(item, name_field_of(type_url), "")
        return NamedResource(name=str(name or ""), body=body)
    if not isinstance(item, Mapping):
        raise locator.error(path, f"expected a mapping, got {type(item).__name__}")
    data = dict(item)
    if "@type" in data:
        body = _build_any(data, path, locator)
    else:
        message_class = message_class_for(type_url)
        assert message_class is not None, type_url
        message = message_class()
        _merge_lenient(message, data, path, locator)
        body = any_pb2.Any(type_url=type_url, value=message.SerializeToString(deterministic=True))
    name = data.get(name_field_of(type_url))
    if not isinstance(name, str):
        name = _name_from_any(body)
    return NamedResource(name=name, body=body)


def _name_from_any(body: any_pb2.Any) -> str:
    """Best effort: the name inside an Any, or '' when it does not decode."""
    message_class = message_class_for(body.type_url)
    if message_class is None:
        return ""
    message = message_class()
    try:
        message.ParseFromString(body.value)
    except DecodeError:
        return ""
    return name_of(message)


_ANY = "google.protobuf.Any"


def _is_plain(field: FieldDescriptor) -> bool:
    """Fields json_format can parse on its own: scalars, enums and well-known types."""
    if field.message_type is None:
        return True
    full_name = field.message_type.full_name
    return full_name.startswith("google.protobuf.") and full_name != _ANY


def _field_by_key(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(key)
    if field is not None:
        return field
    for candidate in descriptor.fields:
        if candidate.json_name == key:
            return candidate
    return None


def _is_map(field: FieldDescriptor) -> bool:
    message_type = field.message_type
    return message_type is not None and message_type.GetOptions().map_entry


def _merge_lenient(
    message: Message, data: Mapping[str, Any], path: PathKey, locator: _Locator
) -> None:
    """Like json_format.ParseDict, but every Any is built by `_build_any` (raw mode)."""
    if not isinstance(data, Mapping):
        raise locator.error(path, f"expected a mapping, got {type(data).__name__}")
    descriptor = message.DESCRIPTOR
    plain: dict[str, Any] = {}
    for key, value in data.items():
        field = _field_by_key(descriptor, key)
        if field is None:
            raise locator.error((*path, key), f"no such field in {descriptor.full_name}")
        if value is None:
            continue
        field_path = (*path, key)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            if _is_plain(value_field):
                plain[key] = value
                continue
            key_field = field.message_type.fields_by_name["key"]
            target = getattr(message, field.name)
            for map_key, map_value in value.items():
                typed_key = (
                    map_key if key_field.type == FieldDescriptor.TYPE_STRING else int(map_key)
                )
                if value_field.message_type.full_name == _ANY:
                    target[typed_key].CopyFrom(
                        _build_any(map_value, (*field_path, map_key), locator)
                    )
                else:
                    _merge_lenient(target[typed_key], map_value, (*field_path, map_key), locator)
        elif _is_plain(field):
            plain[key] = value
        elif field.is_repeated:
            if not isinstance(value, list):
                raise locator.error(field_path, "expected a list")
            target = getattr(message, field.name)
            for index, element in enumerate(value):
                if field.message_type.full_name == _ANY:
                    target.add().CopyFrom(_build_any(element, (*field_path, index), locator))
                else:
                    _merge_lenient(target.add(), element, (*field_path, index), locator)
        elif field.message_type.full_name == _ANY:
            getattr(message, field.name).CopyFrom(_build_any(value, field_path, locator))
        else:
            inner = getattr(message, field.name)
            inner.SetInParent()
            _merge_lenient(inner, value, field_path, locator)
    if plain:
        try:
            json_format.ParseDict(plain, message)
        except (json_format.ParseError, ValueError, TypeError, KeyError) as error:
            raise locator.error(path, _parse_error_reason(error)) from None


def _build_any(data: Any, path: PathKey, locator: _Locator) -> any_pb2.Any:
    """An Any from `{"@type": URL, ...fields}` or `{"@type": URL, "value_base64": B64}`;
    an unknown @type without bytes becomes an Any with that URL and no bytes."""
    if not isinstance(data, Mapping) or "@type" not in data:
        raise locator.error(path, "an Any needs '@type'")
    type_url = str(data["@type"])
    if "value_base64" in data:
        try:
            value = base64.b64decode(str(data["value_base64"]), validate=True)
        except (binascii.Error, ValueError) as error:
            raise locator.error((*path, "value_base64"), f"not base64: {error}") from None
        return any_pb2.Any(type_url=type_url, value=value)
    if type_name_of(type_url).startswith("google.protobuf."):
        body = any_pb2.Any()
        try:
            json_format.ParseDict(dict(data), body)
        except (json_format.ParseError, ValueError, TypeError, KeyError) as error:
            raise locator.error(path, _parse_error_reason(error)) from None
        return body
    message_class = message_class_for(type_url)
    if message_class is None:
        return any_pb2.Any(type_url=type_url)
    message = message_class()
    fields = {key: value for key, value in data.items() if key != "@type"}
    _merge_lenient(message, fields, path, locator)
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString(deterministic=True))


def decode_resource(resource: NamedResource) -> Message | None:
    """The message inside a resource, or None when its type or bytes are unknown."""
    message_class = message_class_for(resource.body.type_url)
    if message_class is None:
        return None
    message = message_class()
    try:
        message.ParseFromString(resource.body.value)
    except DecodeError:
        return None
    return message
