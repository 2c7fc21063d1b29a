"""The LDS gate's fast path: is a message free of PGV violations and of fields the support table
refuses? One check per (message type, table, PGV on or off), compiled once from the PGV plans
(pgv.py) and the table (table.py); it walks the PGV rules and the table in one pass and
formats no path.

`listener_errors` (support.py) asks it first. A listener it passes has no such error; any other
(one with an error, or a shape this path does not handle) goes through the walks of pgv.py and
support.py, which write the exact lines. So this path may answer "not clean" when in doubt,
which costs time only, but never "clean" where the walks find an error
(tests/unit/test_clean_gate.py holds the two together on fuzzed listeners).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import repeat
from types import MappingProxyType
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from xds_proxy import extensions
from xds_proxy.config import pgv
from xds_proxy.config.rules import (
    Extension,
    Inert,
    InertExcept,
    NotYet,
    Opaque,
    Rule,
    Supported,
    Values,
)
from xds_proxy.config.table import LEAF_TYPES, TABLE
from xds_proxy.errors import ConfigError

# (a message, the message holding it or None) -> clean
MessageCheck = Callable[[Message, Message | None], bool]
# (a set field's value, the message holding the field) -> clean; a sub-message's own
# MessageCheck is one too, so going into a message costs one call
FieldCheck = Callable[[Any, Message], bool]

_ANY = "google.protobuf.Any"
_NO_TABLE = 0  # the key of "the support walk does not look here"
_NO_PARENT = repeat(None)  # map()'s second argument: items have no parent to pass
_EMPTY_TABLE: Mapping[str, Rule] = MappingProxyType({})  # a type the table does not list


def is_clean(message: Message) -> bool:
    """No PGV violation and no field the table refuses, in `message` or below (inert fields are
    fine: they are warnings, not errors)."""
    descriptor = message.DESCRIPTOR
    return _checker(descriptor, _support_table(descriptor, None), True)(message, None)


def _clean(_value: Any, _parent: Message | None) -> bool:
    return True


def _refuse(_value: Any, _parent: Message | None) -> bool:
    return False


_UNCOMPILED: Any = object()  # a field whose check is not compiled yet


def _support_table(descriptor: Descriptor, override: Mapping[str, Rule] | None):
    """The table the support walk checks a message of this type against, None when it stops
    there (a leaf type)."""
    if descriptor.full_name in LEAF_TYPES:
        return None
    return override if override is not None else TABLE.get(descriptor.full_name, _EMPTY_TABLE)


_checkers: dict[tuple[str, int, bool], MessageCheck] = {}
_pinned_tables: list[Mapping[str, Rule]] = []  # keeps the ids in the keys above valid


def _checker(
    descriptor: Descriptor, table: Mapping[str, Rule] | None, with_pgv: bool
) -> MessageCheck:
    key = (descriptor.full_name, _NO_TABLE if table is None else id(table), with_pgv)
    found = _checkers.get(key)
    if found is None:
        found = _build(descriptor, table, with_pgv, key)
    return found


def _build(
    descriptor: Descriptor,
    table: Mapping[str, Rule] | None,
    with_pgv: bool,
    key: tuple[str, int, bool],
) -> MessageCheck:
    plan = pgv.plan_for(descriptor) if with_pgv else None
    if plan is not None and plan.disabled:
        plan = None  # the PGV walk stops here, below included
    if table is None and plan is None:
        _checkers[key] = _clean
        return _clean
    required_oneofs = [name for name, _ in plan.required_oneofs] if plan is not None else []
    required_extensions, broken = _required_extensions(descriptor, table)
    if broken:
        _checkers[key] = _refuse
        return _refuse
    # A field whose absence PGV refuses (pgv.py decides which, on its default value), or a
    # required extension: ListFields() lists it exactly when it is set (a scalar: when it is
    # not its default), so each must be seen once in the loop below.
    required = frozenset(
        [fp.field for fp in plan.unset_checks] if plan is not None else []
    ) | frozenset(descriptor.fields_by_name[name] for name in required_extensions)
    # A field's check is compiled the first time the field is set (most fields of most types
    # never are: compiling them all would cost milliseconds on the first push).
    handlers: dict[FieldDescriptor, FieldCheck | None] = {}

    def compile_field(field: FieldDescriptor) -> FieldCheck | None:
        if field.containing_type is not descriptor:
            handler: FieldCheck | None = _refuse  # an extension field: not in the tables
        else:
            handler = _field_check(descriptor, field, table, plan)
        handlers[field] = handler
        return handler

    def check(message: Message, _parent: Message | None) -> bool:
        for oneof in required_oneofs:
            if message.WhichOneof(oneof) is None:
                return False
        missing = len(required)
        for field, value in message.ListFields():
            if field in required:
                missing -= 1
            handler = handlers.get(field, _UNCOMPILED)
            if handler is _UNCOMPILED:
                handler = compile_field(field)
            if handler is not None and not handler(value, message):
                return False
        return not missing

    _checkers[key] = check
    if table is not None:
        _pinned_tables.append(table)
    return check


def _required_extensions(
    descriptor: Descriptor, table: Mapping[str, Rule] | None
) -> tuple[list[str], bool]:
    """The required `Extension` fields (the support walk's "is required"), and whether the
    table names one the type lacks (the walk fails there: never clean)."""
    names, broken = [], False
    for name, rule in (table or {}).items():
        if isinstance(rule, Extension) and rule.required:
            field = descriptor.fields_by_name.get(name)
            if field is None:
                broken = True
            elif not field.is_repeated:
                names.append(name)
    return names, broken


def _field_check(
    parent: Descriptor,
    field: FieldDescriptor,
    table: Mapping[str, Rule] | None,
    plan: pgv.Plan | None,
) -> FieldCheck | None:
    """What one set field must pass (None: nothing), support and PGV together."""
    field_plan = plan.set_fields.get(field.name) if plan is not None else None
    parts = [] if field_plan is None else _pgv_value_checks(field_plan)
    if table is None:
        descent = _descent(field, field_plan, None, False)
    else:
        rule = table.get(field.name)
        if rule is None or isinstance(rule, NotYet):
            return _refuse
        if isinstance(rule, Extension):
            extension = _extension_check(parent, field, field_plan, rule)
            if extension is _refuse:
                return _refuse
            return _all([*parts, extension])
        if isinstance(rule, Values):
            if field.is_repeated:
                return _refuse
            parts.append(_values_check(field, rule))
            descent = _descent(field, field_plan, None, False)
        elif isinstance(rule, Supported):
            descent = _descent(field, field_plan, rule, False)
        elif isinstance(rule, InertExcept):
            if not field.is_repeated or field.type != FieldDescriptor.TYPE_MESSAGE:
                return _refuse
            if field.message_type.GetOptions().map_entry:
                return _refuse
            descent = _descent(field, field_plan, rule, True)
        elif isinstance(rule, (Inert, Opaque)):
            descent = _descent(field, field_plan, None, False)
        else:
            return _refuse
    if descent is _refuse:
        return _refuse
    if descent is not None:
        parts.append(descent)
    return _all(parts)


def _all(parts: list[FieldCheck]) -> FieldCheck | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]

    first, *others = parts
    rest = _all(others)
    assert rest is not None
    return lambda value, message: first(value, message) and rest(value, message)


def _pgv_recurses(field_plan: pgv.FieldPlan | None) -> bool:
    """Whether the PGV walk goes into this field's message value(s)."""
    if field_plan is None:
        return False
    kind = field_plan.kind
    if kind == pgv.MESSAGE:
        return field_plan.recurse and not field_plan.skip
    if kind == pgv.REPEATED:
        return field_plan.item_is_message and field_plan.recurse and not field_plan.skip
    if kind == pgv.MAP:
        return field_plan.item_is_message and field_plan.recurse
    return False


def _descent(
    field: FieldDescriptor,
    field_plan: pgv.FieldPlan | None,
    support: Supported | InertExcept | None,
    per_item: bool,
) -> FieldCheck | None:
    """Going into the message value(s) of a field: the support walk (`support`: a Supported
    rule, or InertExcept whose active items are checked), PGV, both or neither."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    with_pgv = _pgv_recurses(field_plan)
    is_map = field.message_type.GetOptions().map_entry
    target = field.message_type
    if is_map:
        value_field = target.fields_by_name["value"]
        if value_field.type != FieldDescriptor.TYPE_MESSAGE:
            return None
        target = value_field.message_type
    if support is None and not with_pgv:
        return None
    override = support.fields if isinstance(support, Supported) else None
    if per_item:
        assert isinstance(support, InertExcept)
        return _inert_except_items(target, support, with_pgv)
    sub = _sub_check(
        target, None if support is None else _support_table(target, override), with_pgv
    )
    if is_map:
        return _map_values(sub)
    if field.is_repeated:
        return _items(sub)
    return sub


def _items(check: MessageCheck) -> FieldCheck:
    return lambda items, _message: all(map(check, items, _NO_PARENT))


def _map_values(check: MessageCheck) -> FieldCheck:
    return lambda entries, _message: all(check(entries[key], None) for key in entries)


def _inert_except_items(target: Descriptor, rule: InertExcept, with_pgv: bool) -> FieldCheck:
    checked = _sub_check(target, _support_table(target, None), with_pgv)
    inert = _sub_check(target, None, with_pgv)

    return lambda items, _message: all(
        (checked if rule.active(item) else inert)(item, None) for item in items
    )


def _sub_check(
    target: Descriptor, table: Mapping[str, Rule] | None, with_pgv: bool
) -> MessageCheck:
    """A sub-message of type `target`; PGV goes into an `Any` by unpacking it."""
    if target.full_name != _ANY or not with_pgv:
        return _checker(target, table, with_pgv)
    as_message = _checker(target, table, False)
    return lambda value, _parent: as_message(value, None) and _pgv_any_clean(value)


def _pgv_any_clean(value: Message) -> bool:
    """PGV's walk into an Any: unregistered types are not its business."""
    if extensions.message_class(value.type_url) is None:
        return True
    try:
        inner = extensions.unpack(value, "")
    except ConfigError:
        return False
    return _checker(inner.DESCRIPTOR, None, True)(inner, None)


def _extension_check(
    parent: Descriptor,
    field: FieldDescriptor,
    field_plan: pgv.FieldPlan | None,
    rule: Extension,
) -> FieldCheck:
    """An `Any` (or a map of them) whose @type must be in an extensions.py category."""
    category = extensions.CATEGORIES.get(rule.category)
    if category is None or field.type != FieldDescriptor.TYPE_MESSAGE:
        return _refuse
    with_pgv = _pgv_recurses(field_plan)

    def any_clean(value: Message, optional: bool) -> bool:
        type_url = value.type_url
        if not type_url:
            return False
        name = extensions.type_name(type_url)
        if name not in category:
            # An optional HTTP filter we do not know is skipped (support); PGV still looks.
            return optional and (not with_pgv or _pgv_any_clean(value))
        if name in extensions.NOT_YET:
            return False
        try:
            inner = extensions.unpack(value, "")
        except ConfigError:
            return False
        descriptor = inner.DESCRIPTOR
        return _checker(descriptor, _support_table(descriptor, None), with_pgv)(inner, None)

    if field.message_type.GetOptions().map_entry:
        return _map_values(lambda value, _parent: any_clean(value, False))
    if field.is_repeated:
        return _refuse
    if "is_optional" in parent.fields_by_name:
        return lambda value, message: any_clean(value, bool(message.is_optional))
    return lambda value, _message: any_clean(value, False)


def _values_check(field: FieldDescriptor, rule: Values) -> FieldCheck:
    names = (
        {value.number: value.name for value in field.enum_type.values}
        if field.type == FieldDescriptor.TYPE_ENUM
        else None
    )

    def allowed(value: Any, _message: Message) -> bool:
        shown = names.get(value, value) if names is not None else value
        try:
            found = rule.allowed.get(shown)
        except TypeError:
            return False
        return found is not None and not isinstance(found, NotYet)

    return allowed


def _pgv_value_checks(field_plan: pgv.FieldPlan) -> list[FieldCheck]:
    """PGV's checks on a field's own value(s) (not the messages below)."""
    kind = field_plan.kind
    checks = tuple(field_plan.checks)
    parts: list[FieldCheck] = []
    if kind == pgv.SCALAR and checks:
        parts.append(_scalar_checks(checks, field_plan.ignore_empty))
    elif kind == pgv.WRAPPER and checks:
        scalar = _scalar_checks(checks, False)
        parts.append(lambda value, message: scalar(value.value, message))
    elif kind == pgv.MESSAGE and checks:
        parts.append(_scalar_checks(checks, False))
    elif kind in (pgv.REPEATED, pgv.MAP):
        for whole in field_plan.repeated_checks:
            parts.append(lambda items, _message, whole=whole: not whole(items, ""))
        items = _scalar_checks(tuple(field_plan.item_checks), False)
        keys = _scalar_checks(tuple(field_plan.key_checks), False)
        if kind == pgv.REPEATED and field_plan.item_checks:
            unwrap = field_plan.item_is_wrapper

            parts.append(
                lambda values, message: all(
                    items(item.value if unwrap else item, message) for item in values
                )
            )
        elif kind == pgv.MAP and (field_plan.item_checks or field_plan.key_checks):
            parts.append(
                lambda entries, message: all(
                    keys(key, message) and items(entries[key], message) for key in entries
                )
            )
    return parts


def _scalar_checks(checks: tuple[pgv.Check, ...], ignore_empty: bool) -> FieldCheck:
    passes = _none_of(checks)
    if ignore_empty:
        return lambda value, _message: not value or passes(value)
    return lambda value, _message: passes(value)


def _none_of(checks: tuple[pgv.Check, ...]) -> Callable[[Any], bool]:
    """Whether no check has a reason against the value (composed: no loop per call)."""
    if not checks:
        return lambda _value: True
    first, *others = checks
    if not others:
        return lambda value: first(value) is None
    rest = _none_of(tuple(others))
    return lambda value: first(value) is None and rest(value)
