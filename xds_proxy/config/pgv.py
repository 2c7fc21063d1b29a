"""One generic validator driven by the PGV `validate.rules` options in the xds-protos descriptors.

Envoy validates every config message against these protoc-gen-validate rules; reading the same
rules from the descriptors (instead of writing per-field code) keeps us in step with Envoy's
protos. Rules are compiled once per message type into small checks, so validating a listener
costs little (LDS may deliver thousands). `Any` fields whose `@type` is registered in
extensions.py are unpacked and validated too, the path continuing through them
(`...typed_config.route_config...`).

Covered: required oneofs, message required/skip, numeric const/lt/lte/gt/gte/in/not_in
(including PGV's exclusive ranges), enum const/defined_only/in/not_in, string and bytes lengths,
const, pattern, prefix/suffix/contains/not_contains, in/not_in and the well-known formats
(hostname, ip, ipv4, ipv6, address, uri, uuid, email, HTTP header name/value), repeated
min/max_items/unique/items, map min/max_pairs/keys/values, duration and Any rules, timestamp
required, the `disabled`/`ignored` message options, `ignore_empty`, and rules on wrapper types.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any
from urllib.parse import urlparse

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

from xds_proxy import extensions
from xds_proxy.bounded_cache import RELATIVE_ROOT, BoundedCache, cached, relocate
from xds_proxy.errors import ConfigError

Check = Callable[[Any], str | None]  # value -> reason, or None when valid


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def map_key_path(path: str, key: Any) -> str:
    """`path['key']` (string keys quoted and escaped like Python literals) or `path[3]`."""
    return f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]"


def field_key(key: str) -> str:
    """A key as written by the user, safe to show on one line inside a path."""
    return key if _PLAIN_KEY.fullmatch(key) else repr(key)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_@.\-]+")


@lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """The compressed form of an IP literal, None if `text` is not one (cached: the listeners
    of a fleet mostly name the same few IPs)."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return None


def validate_message(msg: Message, path: str = "") -> list[str]:
    """Every PGV violation in `msg` and below, as `FIELD_PATH: reason` lines (in field order)."""
    errors: list[str] = []
    _validate(msg, path, errors)
    return errors


# ---------------------------------------------------------------------------------------------
# Plans: what to check in a message type, compiled once


@dataclass
class FieldPlan:
    field: FieldDescriptor
    checks: list[Check] = field(default_factory=list)  # on the scalar / wrapper / WKT value
    required: bool = False  # message.required, duration/any/timestamp required
    skip: bool = False  # message.skip
    recurse: bool = False  # a sub-message type that has rules somewhere below (or an Any)
    repeated_checks: list[Callable[[Any, str], list[str]]] = field(default_factory=list)
    item_checks: list[Check] = field(default_factory=list)
    key_checks: list[Check] = field(default_factory=list)
    ignore_empty: bool = False
    in_real_oneof: bool = False
    kind: int = 0  # SCALAR, MESSAGE, WRAPPER, REPEATED or MAP
    item_is_message: bool = False
    item_is_wrapper: bool = False


SCALAR, MESSAGE, WRAPPER, REPEATED, MAP = range(5)


@dataclass
class Plan:
    disabled: bool
    required_oneofs: list[tuple[str, list[str]]]
    set_fields: dict[str, FieldPlan]  # checked when ListFields() reports them
    unset_checks: list[FieldPlan]  # fields whose absence (or default value) is an error


_plans: dict[str, Plan] = {}

_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}


def _rules_of(field_descriptor: FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = field_descriptor.GetOptions()
    if options.HasExtension(validate_pb2.rules):
        return options.Extensions[validate_pb2.rules]
    return None


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _is_repeated(f: FieldDescriptor) -> bool:
    return f.is_repeated


def _in_real_oneof(f: FieldDescriptor) -> bool:
    oneof = f.containing_oneof
    return oneof is not None and not (f.has_presence and oneof.name == f"_{f.name}")


_walk_memo: dict[str, bool] = {}


def _needs_walk(descriptor: Descriptor) -> bool:
    """Whether a message type can hold a rule (itself or below); cycles count as yes."""
    name = descriptor.full_name
    if name in _walk_memo:
        return _walk_memo[name]
    if name == "google.protobuf.Any":
        return True
    _walk_memo[name] = True  # provisional, for recursive types
    options = descriptor.GetOptions()
    needed = options.HasExtension(validate_pb2.disabled) or any(
        oneof.GetOptions().HasExtension(validate_pb2.required) for oneof in descriptor.oneofs
    )
    for f in descriptor.fields:
        if needed:
            break
        if _rules_of(f) is not None:
            needed = True
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            target = f.message_type
            if _is_map(f):
                value_field = target.fields_by_name["value"]
                if value_field.type != FieldDescriptor.TYPE_MESSAGE:
                    continue
                target = value_field.message_type
            needed = _needs_walk(target)
    _walk_memo[name] = needed
    return needed


def plan_for(descriptor: Descriptor) -> Plan:
    plan = _plans.get(descriptor.full_name)
    if plan is not None:
        return plan
    options = descriptor.GetOptions()
    disabled = (
        options.HasExtension(validate_pb2.disabled) and options.Extensions[validate_pb2.disabled]
    ) or (options.HasExtension(validate_pb2.ignored) and options.Extensions[validate_pb2.ignored])
    required_oneofs = [
        (oneof.name, [f.name for f in oneof.fields])
        for oneof in descriptor.oneofs
        if oneof.GetOptions().HasExtension(validate_pb2.required)
        and oneof.GetOptions().Extensions[validate_pb2.required]
    ]
    fields = [p for p in (_field_plan(f) for f in descriptor.fields) if p is not None]
    plan = Plan(
        disabled,
        required_oneofs,
        {fp.field.name: fp for fp in fields},
        [fp for fp in fields if _fails_when_unset(fp)],
    )
    _plans[descriptor.full_name] = plan
    return plan


def _fails_when_unset(fp: FieldPlan) -> bool:
    """Whether the field's absence can be an error (decided once, on its default value).

    ListFields() skips unset fields and scalars holding their default value; PGV still checks
    those defaults (an empty required name), except in oneofs, with presence or ignore_empty.
    """
    f = fp.field
    if fp.kind in (MAP, REPEATED):
        return not fp.ignore_empty and any(check([], "") for check in fp.repeated_checks)
    if fp.kind in (MESSAGE, WRAPPER):
        return fp.required and not fp.in_real_oneof
    if fp.in_real_oneof or f.has_presence or fp.ignore_empty:
        return False
    return any(check(f.default_value) is not None for check in fp.checks)


def _field_plan(f: FieldDescriptor) -> FieldPlan | None:
    rules = _rules_of(f)
    plan = FieldPlan(field=f, in_real_oneof=_in_real_oneof(f))
    if _is_map(f):
        plan.kind = MAP
        value_field = f.message_type.fields_by_name["value"]
        plan.item_is_message = value_field.type == FieldDescriptor.TYPE_MESSAGE
    elif _is_repeated(f):
        plan.kind = REPEATED
        plan.item_is_message = f.type == FieldDescriptor.TYPE_MESSAGE
        plan.item_is_wrapper = plan.item_is_message and f.message_type.full_name in _WRAPPERS
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        plan.kind = WRAPPER if f.message_type.full_name in _WRAPPERS else MESSAGE
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if _is_map(f):
            value_field = f.message_type.fields_by_name["value"]
            plan.recurse = value_field.type == FieldDescriptor.TYPE_MESSAGE and _needs_walk(
                value_field.message_type
            )
        else:
            plan.recurse = _needs_walk(f.message_type)
    if rules is not None:
        if rules.HasField("message"):
            plan.required = rules.message.required
            plan.skip = rules.message.skip
        kind = rules.WhichOneof("type")
        if kind == "repeated":
            _plan_repeated(plan, rules.repeated, f)
        elif kind == "map":
            _plan_map(plan, rules.map, f)
        elif kind is not None:
            sub_rules = getattr(rules, kind)
            plan.required = plan.required or (
                kind in ("duration", "any", "timestamp") and sub_rules.required
            )
            plan.ignore_empty = kind in _IGNORE_EMPTY_KINDS and sub_rules.ignore_empty
            plan.checks = _compile(kind, sub_rules, f)
    useful = plan.checks or plan.required or plan.recurse or plan.repeated_checks
    if not (useful or plan.item_checks or plan.key_checks):
        return None
    return plan


_IGNORE_EMPTY_KINDS = {
    "float",
    "double",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "fixed32",
    "fixed64",
    "sfixed32",
    "sfixed64",
    "string",
    "bytes",
}


def _plan_repeated(plan: FieldPlan, rules: validate_pb2.RepeatedRules, f: FieldDescriptor) -> None:
    if rules.HasField("min_items"):
        low = rules.min_items
        plan.repeated_checks.append(
            lambda items, path, low=low: (
                [f"{path}: must have at least {_items(low)}, got {len(items)}"]
                if len(items) < low
                else []
            )
        )
    if rules.HasField("max_items"):
        high = rules.max_items
        plan.repeated_checks.append(
            lambda items, path, high=high: (
                [f"{path}: must have at most {_items(high)}, got {len(items)}"]
                if len(items) > high
                else []
            )
        )
    if rules.unique:
        plan.repeated_checks.append(_unique_items)
    if rules.HasField("items"):
        items = rules.items
        if items.HasField("message"):
            plan.skip = items.message.skip
        kind = items.WhichOneof("type")
        if kind is not None:
            plan.item_checks = _compile(kind, getattr(items, kind), f)
            if kind in _IGNORE_EMPTY_KINDS and getattr(items, kind).ignore_empty:
                plan.item_checks = [_skip_empty(check) for check in plan.item_checks]
    if rules.ignore_empty:
        plan.ignore_empty = True


def _skip_empty(check: Check) -> Check:
    return lambda value: None if not value else check(value)


def _plan_map(plan: FieldPlan, rules: validate_pb2.MapRules, f: FieldDescriptor) -> None:
    if rules.HasField("min_pairs"):
        low = rules.min_pairs
        plan.repeated_checks.append(
            lambda items, path, low=low: (
                [f"{path}: must have at least {low} entries, got {len(items)}"]
                if len(items) < low
                else []
            )
        )
    if rules.HasField("max_pairs"):
        high = rules.max_pairs
        plan.repeated_checks.append(
            lambda items, path, high=high: (
                [f"{path}: must have at most {high} entries, got {len(items)}"]
                if len(items) > high
                else []
            )
        )
    plan.ignore_empty = rules.ignore_empty
    entry = f.message_type
    if rules.HasField("keys"):
        kind = rules.keys.WhichOneof("type")
        if kind is not None:
            plan.key_checks = _compile(kind, getattr(rules.keys, kind), entry.fields_by_name["key"])
    if rules.HasField("values"):
        kind = rules.values.WhichOneof("type")
        if kind is not None:
            plan.item_checks = _compile(
                kind, getattr(rules.values, kind), entry.fields_by_name["value"]
            )


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _unique_items(items: Any, path: str) -> list[str]:
    seen: dict[Any, int] = {}
    errors = []
    for position, item in enumerate(items):
        key = item.SerializeToString(deterministic=True) if isinstance(item, Message) else item
        if key in seen:
            errors.append(f"{path}[{position}]: repeats item [{seen[key]}]; items must be unique")
        else:
            seen[key] = position
    return errors


# ---------------------------------------------------------------------------------------------
# Compiling rule messages into checks


def _compile(kind: str, rules: Message, f: FieldDescriptor) -> list[Check]:
    if kind in _NUMERIC_KINDS:
        return _numeric_checks(rules, str)
    if kind == "enum":
        return _enum_checks(rules, f)
    if kind == "string":
        return _string_checks(rules)
    if kind == "bytes":
        return _bytes_checks(rules)
    if kind == "bool":
        if rules.HasField("const"):
            want = rules.const
            return [lambda v, want=want: None if v == want else f"must be {str(want).lower()}"]
        return []
    if kind == "duration":
        return _duration_checks(rules)
    if kind == "any":
        return _any_checks(rules)
    return []  # timestamp: only `required`, handled by the plan


_NUMERIC_KINDS = {
    "float",
    "double",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "fixed32",
    "fixed64",
    "sfixed32",
    "sfixed64",
}


def _numeric_checks(rules: Message, show: Callable[[Any], str], key: Callable = lambda v: v):
    """const/lt/lte/gt/gte/in/not_in; `key` maps a value to something comparable."""
    checks: list[Check] = []
    present = {descriptor.name for descriptor, _ in rules.ListFields()}
    if "const" in present:
        want = rules.const
        checks.append(
            lambda v: None if key(v) == key(want) else f"must equal {show(want)}, got {show(v)}"
        )
    lower = next((name for name in ("gt", "gte") if name in present), None)
    upper = next((name for name in ("lt", "lte") if name in present), None)
    bound_checks = {
        "gt": lambda v, b: key(v) > key(b),
        "gte": lambda v, b: key(v) >= key(b),
        "lt": lambda v, b: key(v) < key(b),
        "lte": lambda v, b: key(v) <= key(b),
    }
    words = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
    if lower and upper and key(getattr(rules, upper)) < key(getattr(rules, lower)):
        low, high = getattr(rules, lower), getattr(rules, upper)
        ok_low, ok_high = bound_checks[lower], bound_checks[upper]
        message = f"must be {words[lower]} {show(low)} or {words[upper]} {show(high)}"
        checks.append(
            lambda v: None if ok_low(v, low) or ok_high(v, high) else f"{message}, got {show(v)}"
        )
    else:
        for name in (lower, upper):
            if name is None:
                continue
            bound, ok = getattr(rules, name), bound_checks[name]
            word = words[name]
            checks.append(
                lambda v, bound=bound, ok=ok, word=word: (
                    None if ok(v, bound) else f"must be {word} {show(bound)}, got {show(v)}"
                )
            )
    allowed = list(getattr(rules, "in"))
    if allowed:
        allowed_keys = {key(a) for a in allowed}
        text = ", ".join(show(a) for a in allowed)
        checks.append(
            lambda v: None if key(v) in allowed_keys else f"must be one of [{text}], got {show(v)}"
        )
    refused = list(rules.not_in)
    if refused:
        refused_keys = {key(r) for r in refused}
        text = ", ".join(show(r) for r in refused)
        checks.append(
            lambda v: None if key(v) not in refused_keys else f"must not be one of [{text}]"
        )
    return checks


def _enum_checks(rules: validate_pb2.EnumRules, f: FieldDescriptor) -> list[Check]:
    enum_type = f.enum_type

    def show(number: int) -> str:
        value = enum_type.values_by_number.get(number)
        return value.name if value is not None else str(number)

    checks: list[Check] = []
    if rules.defined_only:
        checks.append(
            lambda v: (
                None
                if v in enum_type.values_by_number
                else f"must be a defined value of {enum_type.name}, got {v}"
            )
        )
    return checks + _numeric_checks(rules, show)


_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0A-\x1F\x7F]*$")
_HEADER_LOOSE = re.compile(r"^[^\x00\x0A\x0D]*$")


def _is_hostname(value: str) -> bool:
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    return all(_HOSTNAME_LABEL.fullmatch(label) for label in name.split("."))


def _is_ip(value: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    return version is None or address.version == version


def _is_uri(value: str) -> bool:
    try:
        parsed = urlparse(value)
    except ValueError:
        return False
    return bool(parsed.scheme)


def _is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and local and _is_hostname(domain))


def _shorten(value: str, limit: int = 60) -> str:
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


def _string_checks(rules: validate_pb2.StringRules) -> list[Check]:
    checks: list[Check] = []
    present = {descriptor.name for descriptor, _ in rules.ListFields()}

    def add(test: Callable[[str], bool], reason: Callable[[str], str]) -> None:
        checks.append(lambda v: None if test(v) else reason(v))

    if "const" in present:
        want = rules.const
        add(
            lambda v, want=want: v == want,
            lambda v, want=want: f"must equal {want!r}, got {_shorten(v)}",
        )
    if "len" in present:
        n = rules.len
        add(
            lambda v, n=n: len(v) == n,
            lambda v, n=n: f"must be exactly {n} characters long, got {len(v)}",
        )
    if "min_len" in present:
        n = rules.min_len
        if n == 1:
            add(lambda v: len(v) >= 1, lambda v: "must not be empty")
        else:
            add(
                lambda v, n=n: len(v) >= n,
                lambda v, n=n: f"must be at least {n} characters long, got {len(v)}",
            )
    if "max_len" in present:
        n = rules.max_len
        add(
            lambda v, n=n: len(v) <= n,
            lambda v, n=n: f"must be at most {n} characters long, got {len(v)}",
        )
    if "len_bytes" in present:
        n = rules.len_bytes
        add(
            lambda v, n=n: len(v.encode()) == n,
            lambda v, n=n: f"must be exactly {n} bytes long, got {len(v.encode())}",
        )
    if "min_bytes" in present:
        n = rules.min_bytes
        add(
            lambda v, n=n: len(v.encode()) >= n,
            lambda v, n=n: f"must be at least {n} bytes long, got {len(v.encode())}",
        )
    if "max_bytes" in present:
        n = rules.max_bytes
        add(
            lambda v, n=n: len(v.encode()) <= n,
            lambda v, n=n: f"must be at most {n} bytes long, got {len(v.encode())}",
        )
    if "pattern" in present:
        pattern = _compile_pattern(rules.pattern)
        if pattern is not None:
            text = rules.pattern
            add(
                lambda v, pattern=pattern: pattern.search(v) is not None,
                lambda v, pattern=pattern, text=text: (
                    f"must match the pattern {text!r}, got {_shorten(v)}"
                ),
            )
    _affix_checks(rules, present, add, _shorten)
    well_known = rules.WhichOneof("well_known")
    if well_known is not None:
        checks.extend(_well_known_check(rules, well_known))
    return checks


def _affix_checks(rules: Message, present: set[str], add: Callable, show: Callable) -> None:
    """prefix/suffix/contains/not_contains/in/not_in, shared by strings and bytes."""
    if "prefix" in present:
        p = rules.prefix
        add(lambda v, p=p: v.startswith(p), lambda v, p=p: f"must start with {p!r}, got {show(v)}")
    if "suffix" in present:
        s = rules.suffix
        add(lambda v, s=s: v.endswith(s), lambda v, s=s: f"must end with {s!r}, got {show(v)}")
    if "contains" in present:
        c = rules.contains
        add(lambda v, c=c: c in v, lambda v, c=c: f"must contain {c!r}, got {show(v)}")
    if "not_contains" in present:
        c = rules.not_contains
        add(lambda v, c=c: c not in v, lambda v, c=c: f"must not contain {c!r}, got {show(v)}")
    allowed = list(getattr(rules, "in"))
    if allowed:
        text = ", ".join(repr(a) for a in allowed)
        add(
            lambda v, text=text, allowed=allowed: v in allowed,
            lambda v, text=text, allowed=allowed: f"must be one of [{text}], got {show(v)}",
        )
    refused = list(rules.not_in)
    if refused:
        text = ", ".join(repr(r) for r in refused)
        add(
            lambda v, text=text, refused=refused: v not in refused,
            lambda v, text=text, refused=refused: f"must not be one of [{text}]",
        )


def _well_known_check(rules: validate_pb2.StringRules, well_known: str) -> list[Check]:
    if not getattr(rules, well_known) and well_known != "well_known_regex":
        return []
    tests: dict[str, tuple[Callable[[str], bool], str]] = {
        "email": (_is_email, "an email address"),
        "hostname": (_is_hostname, "a hostname"),
        "ip": (lambda v: _is_ip(v), "an IP address"),
        "ipv4": (lambda v: _is_ip(v, 4), "an IPv4 address"),
        "ipv6": (lambda v: _is_ip(v, 6), "an IPv6 address"),
        "uri": (_is_uri, "an absolute URI"),
        "uri_ref": (lambda v: True, "a URI reference"),
        "address": (lambda v: _is_ip(v) or _is_hostname(v), "a hostname or IP address"),
        "uuid": (lambda v: bool(_UUID.fullmatch(v)), "a UUID"),
    }
    if well_known == "well_known_regex":
        strict = rules.strict if rules.HasField("strict") else True
        kind = rules.well_known_regex
        if kind == validate_pb2.HTTP_HEADER_NAME:
            pattern, what = (_HEADER_NAME if strict else _HEADER_LOOSE), "a valid HTTP header name"
        elif kind == validate_pb2.HTTP_HEADER_VALUE:
            pattern = _HEADER_VALUE if strict else _HEADER_LOOSE
            what = "a valid HTTP header value"
        else:
            return []
        return [lambda v: None if pattern.fullmatch(v) else f"must be {what}, got {_shorten(v)}"]
    test, what = tests[well_known]
    return [lambda v: None if test(v) else f"must be {what}, got {_shorten(v)}"]


@cache
def _compile_pattern(pattern: str) -> re.Pattern | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None  # an RE2 construct Python lacks: leave it to Envoy


def _bytes_checks(rules: validate_pb2.BytesRules) -> list[Check]:
    checks: list[Check] = []
    present = {descriptor.name for descriptor, _ in rules.ListFields()}

    def add(test: Callable[[bytes], bool], reason: Callable[[bytes], str]) -> None:
        checks.append(lambda v: None if test(v) else reason(v))

    def show(v: bytes) -> str:
        return repr(v[:40])

    if "const" in present:
        want = rules.const
        add(lambda v: v == want, lambda v: f"must equal {want!r}")
    for name, word, test in (
        ("len", "exactly", lambda v, n: len(v) == n),
        ("min_len", "at least", lambda v, n: len(v) >= n),
        ("max_len", "at most", lambda v, n: len(v) <= n),
    ):
        if name in present:
            n = getattr(rules, name)
            add(
                lambda v, n=n, test=test: test(v, n),
                lambda v, n=n, word=word: f"must be {word} {n} bytes long, got {len(v)}",
            )
    if "pattern" in present:
        pattern = _compile_pattern(rules.pattern)
        if pattern is not None:
            text = rules.pattern
            add(
                lambda v: pattern.search(v.decode("utf-8", "replace")) is not None,
                lambda v: f"must match the pattern {text!r}",
            )
    _affix_checks(rules, present, add, show)
    sizes = {"ip": (4, 16), "ipv4": (4,), "ipv6": (16,)}
    well_known = rules.WhichOneof("well_known")
    if well_known in sizes and getattr(rules, well_known):
        allowed = sizes[well_known]
        add(lambda v: len(v) in allowed, lambda v: f"must be {well_known} address bytes")
    return checks


def _duration_nanos(duration: Message) -> int:
    return duration.seconds * 1_000_000_000 + duration.nanos


def _duration_checks(rules: validate_pb2.DurationRules) -> list[Check]:
    def show(duration: Message) -> str:
        return duration.ToJsonString()

    return _numeric_checks(rules, show, key=_duration_nanos)


def _any_checks(rules: validate_pb2.AnyRules) -> list[Check]:
    checks: list[Check] = []
    allowed = list(getattr(rules, "in"))
    if allowed:
        text = ", ".join(allowed)
        checks.append(lambda v: None if v.type_url in allowed else f"@type must be one of [{text}]")
    refused = list(rules.not_in)
    if refused:
        checks.append(
            lambda v: None if v.type_url not in refused else f"@type {v.type_url!r} not allowed"
        )
    return checks


# ---------------------------------------------------------------------------------------------
# The walk


def _validate(msg: Message, path: str, errors: list[str]) -> None:
    plan = plan_for(msg.DESCRIPTOR)
    if plan.disabled:
        return
    for oneof, names in plan.required_oneofs:
        if msg.WhichOneof(oneof) is None:
            listed = ", ".join(names)
            errors.append(f"{path or '(root)'}: one of {listed} is required")
    for fp in plan.unset_checks:
        check_unset(msg, fp, path, errors)
    set_fields = plan.set_fields
    for f, value in msg.ListFields():
        fp = set_fields.get(f.name)
        if fp is None:
            continue
        field_path = f"{path}.{f.name}" if path else f.name
        kind = fp.kind
        if kind == MESSAGE:
            _apply(fp.checks, value, field_path, errors)
            if fp.recurse and not fp.skip:
                _validate_value(value, field_path, errors)
        elif kind == SCALAR:
            if not (fp.ignore_empty and not value):
                _apply(fp.checks, value, field_path, errors)
        elif kind == WRAPPER:
            _apply(fp.checks, value.value, field_path, errors)
        elif kind == REPEATED:
            _validate_repeated(value, fp, field_path, errors)
        else:
            _validate_map(value, fp, field_path, errors)


def check_unset(msg: Message, fp: FieldPlan, path: str, errors: list[str]) -> None:
    f = fp.field
    field_path = join_path(path, f.name)
    if fp.kind in (REPEATED, MAP):
        if not getattr(msg, f.name):
            for check in fp.repeated_checks:
                errors.extend(check([], field_path))
    elif fp.kind == MESSAGE or fp.kind == WRAPPER:
        if not msg.HasField(f.name):
            errors.append(f"{field_path}: is required")
    else:
        value = getattr(msg, f.name)
        if value == f.default_value:
            _apply(fp.checks, value, field_path, errors)


def _apply(checks: list[Check], value: Any, path: str, errors: list[str]) -> None:
    for check in checks:
        reason = check(value)
        if reason is not None:
            errors.append(f"{path}: {reason}")


# (type URL, packed bytes) of an Any -> its violations, under RELATIVE_ROOT.
_any_violations: BoundedCache[tuple[str, bytes], tuple[str, ...]] = BoundedCache.for_config_bytes()
# Messages that repeat byte for byte across listeners (1,000 listeners with one chain each
# differ in name and address only): their violations are cached by their bytes too.
CACHED_SUBTREES = frozenset({"envoy.config.listener.v3.FilterChain"})
_subtree_violations: BoundedCache[tuple[str, bytes], tuple[str, ...]] = (
    BoundedCache.for_config_bytes()
)


def _validate_value(value: Message, path: str, errors: list[str]) -> None:
    """Recurse into a message; an Any of a registered type is unpacked first (once per
    distinct content: its violations depend on its bytes only)."""
    if value.DESCRIPTOR.full_name == "google.protobuf.Any":
        type_url = value.type_url
        if extensions.message_class(type_url) is None:
            return  # unknown types are the support policy's business
        if not path:
            _validate_any(value, path, errors)
            return
        packed = value.value
        found = cached(
            _any_violations,
            (type_url, packed),
            len(packed),
            lambda: _relative_violations(_validate_any, value),
        )
        errors.extend(relocate(found, path))
    elif path and value.DESCRIPTOR.full_name in CACHED_SUBTREES:
        packed = value.SerializeToString()
        found = cached(
            _subtree_violations,
            (value.DESCRIPTOR.full_name, packed),
            len(packed),
            lambda: _relative_violations(_validate, value),
        )
        errors.extend(relocate(found, path))
    else:
        _validate(value, path, errors)


def _relative_violations(
    walk: Callable[[Message, str, list[str]], None], value: Message
) -> tuple[str, ...]:
    relative: list[str] = []
    walk(value, RELATIVE_ROOT, relative)
    return tuple(relative)


def _validate_any(value: Message, path: str, errors: list[str]) -> None:
    try:
        inner = extensions.unpack(value, path)
    except ConfigError as error:
        errors.append(str(error))
        return
    _validate(inner, path, errors)


def _validate_repeated(items: Any, fp: FieldPlan, path: str, errors: list[str]) -> None:
    for check in fp.repeated_checks:
        errors.extend(check(items, path))
    if not (fp.item_checks or (fp.item_is_message and fp.recurse and not fp.skip)):
        return
    for position, item in enumerate(items):
        item_path = f"{path}[{position}]"
        if fp.item_checks:
            _apply(fp.item_checks, item.value if fp.item_is_wrapper else item, item_path, errors)
        if fp.item_is_message and fp.recurse and not fp.skip:
            _validate_value(item, item_path, errors)


def _validate_map(entries: Any, fp: FieldPlan, path: str, errors: list[str]) -> None:
    for check in fp.repeated_checks:
        errors.extend(check(entries, path))
    if not (fp.key_checks or fp.item_checks or (fp.item_is_message and fp.recurse)):
        return
    for key in sorted(entries):
        item_path = map_key_path(path, key)
        for check in fp.key_checks:
            reason = check(key)
            if reason is not None:
                errors.append(f"{item_path}: key {reason}")
        value = entries[key]
        if fp.item_checks:
            _apply(fp.item_checks, value, item_path, errors)
        if fp.item_is_message and fp.recurse:
            _validate_value(value, item_path, errors)
