"""Access-log formats compiled once per config, so that a request pays only for the fields
its format names: a text format becomes one generated function (text.py); a JSON format a
tree of the operators' getters (getters.py), typed as Envoy types them: a value that is one
numeric operator is a number, no value is null.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from xds_proxy.access_log.getters import NUMERIC, getter
from xds_proxy.access_log.record import LogRecord
from xds_proxy.access_log.text import Line, compile_text
from xds_proxy.config.access_log import Command, JsonFormat, JsonObject, TextFormat

_ABSENT = object()


def _json_value(value: object, omit_empty: bool) -> Callable[[LogRecord], object]:
    if isinstance(value, JsonObject):
        return _json_object(value, omit_empty)
    if isinstance(value, tuple):  # a template
        if len(value) == 1 and isinstance(value[0], Command):
            command = value[0]
            get = getter(command)
            numeric = command.name in NUMERIC
            limit = command.max_length

            def typed(record: LogRecord) -> object:
                found = get(record)
                if found is None or found == "":
                    return _ABSENT if omit_empty else None
                if numeric:
                    return found
                text = found if type(found) is str else str(found)
                return text[:limit] if limit is not None else text

            return typed
        render = compile_text(value)
        return lambda record: render(record).decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a Struct's numbers are doubles; Envoy prints 5, not 5.0
    return lambda record: value


def _json_object(value: JsonObject, omit_empty: bool) -> Callable[[LogRecord], object]:
    members = tuple((key, _json_value(item, omit_empty)) for key, item in value.fields)

    def build(record: LogRecord) -> object:
        out = {}
        for key, get in members:
            found = get(record)
            if found is _ABSENT or (omit_empty and isinstance(found, dict) and not found):
                continue
            out[key] = found
        return out

    return build


def compile_format(spec: TextFormat | JsonFormat, omit_empty: bool) -> Line:
    """A format as a function from a finished record to its line (bytes, with its newline
    when the format has one; JSON lines always end with one)."""
    if isinstance(spec, TextFormat):
        return compile_text(spec.template, omit_empty)
    build = _json_object(spec.root, omit_empty)
    # Envoy's keys come out sorted at every level (a Struct is a map).
    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode
    return lambda record: (encode(build(record)) + "\n").encode("utf-8", "replace")
