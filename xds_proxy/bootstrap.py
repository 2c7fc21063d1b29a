"""Load an Envoy v3 bootstrap (YAML or JSON, snake_case or camelCase) into the xds-protos class.

`json_format.ParseDict` reports errors without the field's path and accepts out-of-range
integers, so the document is walked alongside the descriptors here and every error names the
field from the document's root (`static_resources.listeners[0].address...: reason`). Then the
PGV rules (config/pgv.py) and the support table (config/table.py) run.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import difflib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from xds_proxy import extensions
from xds_proxy.config.pgv import field_key, join_path, map_key_path, validate_message
from xds_proxy.config.support import bootstrap_findings
from xds_proxy.errors import ConfigError

if TYPE_CHECKING:
    from xds_proxy.options import Options

log = logging.getLogger("xds_proxy.config")

# ---------------------------------------------------------------------------------------------
# Text -> plain data, with line and column on syntax errors


class _YamlLoader(yaml.SafeLoader):
    """Plain scalars typed the way Envoy's YAML reader (yaml-cpp) types them.

    yaml-cpp's booleans are y/n, yes/no, true/false, on/off (lower, Title or UPPER case);
    integers are decimal (leading zeros stay decimal) or 0x hex; everything else, floats and
    dates included, stays a string (protobuf's JSON parser reads numbers from strings).
    Mapping keys are always strings. Duplicate keys are an error rather than a silent "last
    one wins".
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Keys are their text, as in Envoy (`y:` is the key "y", not true)."""
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                )
            if key_node.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                )
            seen.add(key_node.value)
        self.flatten_mapping(node)  # `<<:` merge keys first; the mapping's own keys win
        return {
            key_node.value: self.construct_object(value_node, deep=deep)
            for key_node, value_node in node.value
        }


_BOOL_WORDS = {"y": True, "yes": True, "true": True, "on": True}
_BOOL_WORDS |= {"n": False, "no": False, "false": False, "off": False}
_BOOL_FORMS = [form for word in _BOOL_WORDS for form in (word, word.title(), word.upper())]


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return _BOOL_WORDS[loader.construct_scalar(node).lower()]


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    if digits[:2] in ("0x", "0X"):
        return sign * int(digits[2:], 16)
    return sign * int(digits, 10)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_KEPT_TAGS = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _KEPT_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG,
    re.compile("^(?:" + "|".join(_BOOL_FORMS) + ")$"),
    sorted({form[0] for form in _BOOL_FORMS}),
)
_YamlLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:[0-9]+|0[xX][0-9a-fA-F]+)$"), list("-+0123456789")
)
_YamlLoader.add_constructor(_BOOL_TAG, _construct_bool)
_YamlLoader.add_constructor(_INT_TAG, _construct_int)


def _describe(value: Any) -> str:
    """A value as it appears in a message: `'text'`, `12`, `true`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _parse_json(text: str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConfigError(f"{source}: duplicate key '{key}'")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{source}: line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{source}: {where}{problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: {' '.join(str(error).split())}") from None


def parse_config_text(text: str, source: str, fmt: str | None) -> dict:
    """Parse a YAML or JSON document (fmt "yaml", "json" or None: JSON, else YAML) to a dict."""
    if fmt == "json":
        data = _parse_json(text, source)
    elif fmt == "yaml":
        data = _parse_yaml(text, source)
    else:
        try:
            data = _parse_json(text, source)
        except ConfigError:
            data = _parse_yaml(text, source)
    if data is None:
        raise ConfigError(f"{source}: the document is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the document must be a mapping, got {_describe(data)}")
    return data


def format_of(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return None


# ---------------------------------------------------------------------------------------------
# Plain data -> protobuf message, errors with field paths

_INTEGER_RANGES: dict[int, tuple[str, int, int]] = {}
for _kind, _name, _bits, _signed in (
    (FieldDescriptor.TYPE_INT32, "int32", 32, True),
    (FieldDescriptor.TYPE_SINT32, "sint32", 32, True),
    (FieldDescriptor.TYPE_SFIXED32, "sfixed32", 32, True),
    (FieldDescriptor.TYPE_UINT32, "uint32", 32, False),
    (FieldDescriptor.TYPE_FIXED32, "fixed32", 32, False),
    (FieldDescriptor.TYPE_INT64, "int64", 64, True),
    (FieldDescriptor.TYPE_SINT64, "sint64", 64, True),
    (FieldDescriptor.TYPE_SFIXED64, "sfixed64", 64, True),
    (FieldDescriptor.TYPE_UINT64, "uint64", 64, False),
    (FieldDescriptor.TYPE_FIXED64, "fixed64", 64, False),
):
    _low = -(2 ** (_bits - 1)) if _signed else 0
    _high = 2 ** (_bits - 1) - 1 if _signed else 2**_bits - 1
    _INTEGER_RANGES[_kind] = (_name, _low, _high)

_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_FLOAT_WORDS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}
_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_STRING_FORM = {
    "google.protobuf.Duration": "a string like '1.5s'",
    "google.protobuf.Timestamp": "an RFC 3339 string like '2026-01-01T00:00:00Z'",
    "google.protobuf.FieldMask": "a string like 'a.b,c'",
}
_JSON_VALUES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}

_field_index_cache: dict[str, dict[str, FieldDescriptor]] = {}


def _fields_by_key(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """Field lookup by proto name and by JSON (camelCase) name."""
    index = _field_index_cache.get(descriptor.full_name)
    if index is None:
        index = {}
        for field in descriptor.fields:
            index[field.json_name] = field
            index[field.name] = field
        _field_index_cache[descriptor.full_name] = index
    return index


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def message_from_dict(data: Any, message_class: type[Message], path: str = "") -> Message:
    """Build `message_class` from JSON/YAML data; ConfigError names the first bad field."""
    message = message_class()
    _fill(message, data, path)
    return message


def _fill(message: Message, value: Any, path: str) -> None:
    """Fill a message from its JSON form (special forms for well-known types and Any)."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Any":
        _fill_any(message, value, path)
    elif name in _WRAPPERS:
        message.value = _scalar(message.DESCRIPTOR.fields_by_name["value"], value, path)
    elif name in _STRING_FORM:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be {_STRING_FORM[name]}, got {_describe(value)}")
        if name == "google.protobuf.Duration" and not _DURATION.fullmatch(value):
            raise ConfigError(f"{path}: must be {_STRING_FORM[name]}, got {_describe(value)}")
        try:
            message.FromJsonString(value)
        except ValueError:
            raise ConfigError(
                f"{path}: must be {_STRING_FORM[name]}, got {_describe(value)}"
            ) from None
    elif name in _JSON_VALUES:
        if name == "google.protobuf.Struct" and not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {_describe(value)}")
        if name == "google.protobuf.ListValue" and not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {_describe(value)}")
        try:
            json_format.ParseDict(value, message)
        except json_format.ParseError as error:
            raise ConfigError(f"{path}: {error}") from None
    elif name == "google.protobuf.Empty":
        if value != {}:
            raise ConfigError(f"{path}: must be an empty mapping {{}}, got {_describe(value)}")
    else:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping, got {_describe(value)}")
        _fill_fields(message, value, path)
    message.SetInParent()


def _fill_fields(message: Message, data: dict, path: str) -> None:
    descriptor = message.DESCRIPTOR
    index = _fields_by_key(descriptor)
    given_as: dict[str, str] = {}
    oneof_members: dict[str, str] = {}
    for key, value in data.items():
        key_text = str(key)
        field = index.get(key_text)
        if field is None:
            raise ConfigError(
                f"{join_path(path, field_key(key_text))}: {_unknown_field(key_text, index)}"
            )
        field_path = join_path(path, field.name)
        if field.name in given_as:
            raise ConfigError(
                f"{field_path}: given twice (as '{given_as[field.name]}' and '{key_text}')"
            )
        given_as[field.name] = key_text
        if value is None:
            continue  # JSON null: the field keeps its default, as protobuf's JSON parser does
        oneof = field.containing_oneof
        if oneof is not None and not (field.has_presence and oneof.name == f"_{field.name}"):
            other = oneof_members.get(oneof.name)
            if other is not None:
                raise ConfigError(
                    f"{path or '(root)'}: only one of '{other}' and '{field.name}' may be set"
                    f" (oneof '{oneof.name}')"
                )
            oneof_members[oneof.name] = field.name
        _fill_field(message, field, value, field_path)


def _unknown_field(key: str, index: dict[str, FieldDescriptor]) -> str:
    names = sorted({field.name for field in index.values()})
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.8) if len(key) < 100 else []
    return f"unknown field (did you mean '{close[0]}'?)" if close else "unknown field"


def _fill_field(message: Message, field: FieldDescriptor, value: Any, path: str) -> None:
    if _is_map(field):
        _fill_map(message, field, value, path)
    elif _is_repeated(field):
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list, got {_describe(value)}")
        container = getattr(message, field.name)
        for position, item in enumerate(value):
            item_path = f"{path}[{position}]"
            if item is None:
                raise ConfigError(f"{item_path}: must not be null")
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _fill(container.add(), item, item_path)
            else:
                container.append(_scalar(field, item, item_path))
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        _fill(getattr(message, field.name), value, path)
    else:
        setattr(message, field.name, _scalar(field, value, path))


def _fill_map(message: Message, field: FieldDescriptor, value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping, got {_describe(value)}")
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    container = getattr(message, field.name)
    for raw_key, item in value.items():
        key = _map_key(key_field, raw_key, path)
        item_path = map_key_path(path, key)
        if item is None:
            raise ConfigError(f"{item_path}: must not be null")
        if value_field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(container[key], item, item_path)
        else:
            container[key] = _scalar(value_field, item, item_path)


def _map_key(key_field: FieldDescriptor, raw_key: Any, path: str) -> Any:
    if key_field.type == FieldDescriptor.TYPE_STRING:
        if isinstance(raw_key, bool) or raw_key is None:
            raise ConfigError(f"{path}: map key {_describe(raw_key)} must be a string")
        return str(raw_key)
    if key_field.type == FieldDescriptor.TYPE_BOOL:
        words = {"true": True, "false": False}
        if isinstance(raw_key, bool):
            return raw_key
        if raw_key in words:
            return words[raw_key]
        raise ConfigError(f"{path}: map key {_describe(raw_key)} must be true or false")
    return _scalar(key_field, raw_key, map_key_path(path, raw_key))


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Any:
    """A JSON value converted to the Python type of a scalar field, range-checked."""
    kind = field.type
    if kind in _INTEGER_RANGES:
        return _integer(kind, value, path)
    if kind in _FLOATS:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            if value in _FLOAT_WORDS:
                return _FLOAT_WORDS[value]
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: must be a number, got {_describe(value)}")
    if kind == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: must be true or false, got {_describe(value)}")
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: must be a string, got {_describe(value)}")
    if kind == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, str):
            try:
                padded = value + "=" * (-len(value) % 4)
                return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                pass
        raise ConfigError(f"{path}: must be a base64 string, got {_describe(value)}")
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(field, value, path)
    raise ConfigError(f"{path}: unsupported field type")  # groups: not used by Envoy's protos


def _integer(kind: int, value: Any, path: str) -> int:
    type_name, low, high = _INTEGER_RANGES[kind]
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _integer_text(value)
    if number is None:
        raise ConfigError(f"{path}: must be an integer, got {_describe(value)}")
    if not low <= number <= high:
        raise ConfigError(f"{path}: out of range for {type_name} [{low}, {high}], got {number}")
    return number


_NUMBER_TEXT = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def _integer_text(text: str) -> int | None:
    """An integer written as JSON text: "12", "-3", "1e3", "2.0" (not "1.5", not "0x10")."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if _NUMBER_TEXT.fullmatch(text):
        try:
            number = decimal.Decimal(text)
        except decimal.InvalidOperation:
            return None
        if number == number.to_integral_value() and abs(number) < 10**30:
            return int(number)
    return None


def _enum(field: FieldDescriptor, value: Any, path: str) -> int:
    enum_type = field.enum_type
    if isinstance(value, str):
        known = enum_type.values_by_name.get(value)
        if known is not None:
            return known.number
        names = ", ".join(v.name for v in enum_type.values)
        raise ConfigError(f"{path}: unknown value {_describe(value)} (expected one of {names})")
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    raise ConfigError(f"{path}: must be an enum name, got {_describe(value)}")


def _fill_any(target: any_pb2.Any, value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping with '@type', got {_describe(value)}")
    if not value:
        return  # {} is an empty Any
    type_url = value.get("@type")
    if type_url is None:
        raise ConfigError(f"{path}: @type is required")
    if not isinstance(type_url, str) or "/" not in type_url:
        raise ConfigError(
            f"{path}: @type must look like 'type.googleapis.com/NAME', got {_describe(type_url)}"
        )
    name = extensions.type_name(type_url)
    message_class = extensions.resolve_message_class(name)
    if message_class is None:
        raise ConfigError(f"{path}: unknown @type '{type_url}'")
    rest = {key: item for key, item in value.items() if key != "@type"}
    inner = message_class()
    if _has_special_json(name):
        if set(rest) != {"value"}:
            raise ConfigError(f"{path}: @type '{name}' takes its content under 'value'")
        _fill(inner, rest["value"], join_path(path, "value"))
    else:
        _fill_fields(inner, rest, path)
    target.Pack(inner, type_url_prefix=type_url[: -len(name)])


def _has_special_json(name: str) -> bool:
    return (
        name in _WRAPPERS
        or name in _STRING_FORM
        or name in _JSON_VALUES
        or name
        in (
            "google.protobuf.Any",
            "google.protobuf.Empty",
        )
    )


# ---------------------------------------------------------------------------------------------
# The bootstrap


def _read(path: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None


def load_bootstrap(options: Options) -> bootstrap_pb2.Bootstrap:
    """The validated bootstrap of the command line: `-c` file, `--config-yaml` merged over it.

    Warnings (inert sections) are logged; the first error is raised as ConfigError.
    """
    if not options.config_path and not options.config_yaml:
        raise ConfigError("--config-path: required unless --config-yaml is given")
    bootstrap = bootstrap_pb2.Bootstrap()
    if options.config_path:
        data = parse_config_text(
            _read(options.config_path), options.config_path, format_of(options.config_path)
        )
        bootstrap.MergeFrom(message_from_dict(data, bootstrap_pb2.Bootstrap))
    if options.config_yaml:
        data = parse_config_text(options.config_yaml, "--config-yaml", "yaml")
        try:
            override = message_from_dict(data, bootstrap_pb2.Bootstrap)
        except ConfigError as error:
            raise ConfigError(f"--config-yaml: {error}") from None
        bootstrap.MergeFrom(override)  # scalars replace, repeated fields append: as Envoy
    if options.service_node:
        bootstrap.node.id = options.service_node
    if options.service_cluster:
        bootstrap.node.cluster = options.service_cluster
    check_bootstrap(bootstrap)
    return bootstrap


def check_bootstrap(bootstrap: bootstrap_pb2.Bootstrap) -> list[str]:
    """PGV rules, then the supported-fields policy; raise the first error, log, return warnings."""
    errors = validate_message(bootstrap)
    if errors:
        raise ConfigError(errors[0])
    errors, warnings = bootstrap_findings(bootstrap)
    if errors:
        raise ConfigError(errors[0])
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
