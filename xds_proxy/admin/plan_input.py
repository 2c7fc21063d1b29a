"""The body of `POST /listeners/plan`: what a control plane would send, in JSON or YAML.

Accepted shapes (docs/admin.md):

- a `DiscoveryResponse` (`{"version_info": ..., "resources": [{"@type": ...Listener, ...}]}`);
- the stub's resource file (`{"version": ..., "listeners": [...]}`; other sections ignored);
- a list of `Listener`s;
- with `?delta`: any of these names only the listeners added or changed, plus
  `removed: [names]` (or a `DeltaDiscoveryResponse`'s `removed_resources`, with its
  `resources` as `{"name": ..., "resource": {...}}`).

A body that does not parse, or a listener that does not decode, is refused whole (400), as
an undecodable resource rejects a whole LDS response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
PLAN_VERSION = "(plan)"  # the version_info shown when the body gives none


class PlanInputError(Exception):
    """One line: what is wrong with the body."""


@dataclass(frozen=True)
class PlanInput:
    version_info: str
    listeners: list[listener_pb2.Listener]
    removed: list[str] | None  # None: state of the world


def parse_plan_body(body: bytes, delta: bool) -> PlanInput:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise PlanInputError("the body is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PlanInputError(
                f"the body is neither JSON nor YAML: {_first_line(error)}"
            ) from None
    if document is None:
        document = {}  # an empty body: no listener (state of the world: every one removed)
    version = PLAN_VERSION
    removed: list[str] = []
    if isinstance(document, list):
        items: list[Any] = document
    elif isinstance(document, dict):
        version = str(document.get("version_info", document.get("version", PLAN_VERSION)))
        if "resources" in document:
            items = _list(document, "resources")
        elif "listeners" in document:
            items = _list(document, "listeners")
        else:
            items = []
        for key in ("removed", "removed_resources"):
            if key in document:
                names = _list(document, key)
                if not all(isinstance(name, str) for name in names):
                    raise PlanInputError(f"{key}: must be a list of listener names")
                removed += names
    else:
        raise PlanInputError("the body must be a list of listeners or a mapping")
    if removed and not delta:
        raise PlanInputError("removed: only with ?delta (state of the world removes by absence)")
    listeners = [_listener(item, index) for index, item in enumerate(items)]
    return PlanInput(version, listeners, removed if delta else None)


def _list(document: dict, key: str) -> list:
    value = document[key]
    if value is None:
        return []
    if not isinstance(value, list):
        raise PlanInputError(f"{key}: must be a list")
    return value


def _listener(item: Any, index: int) -> listener_pb2.Listener:
    if not isinstance(item, dict):
        raise PlanInputError(f"listeners[{index}]: must be a mapping")
    data = dict(item)
    if "resource" in data and isinstance(data["resource"], dict):  # a Delta Resource wrapper
        data = dict(data["resource"])
    declared = data.pop("@type", LISTENER_TYPE)
    if declared != LISTENER_TYPE:
        raise PlanInputError(f"listeners[{index}]: expected {LISTENER_TYPE}, got {declared!r}")
    listener = listener_pb2.Listener()
    try:
        json_format.ParseDict(data, listener)
    except json_format.ParseError as error:
        raise PlanInputError(f"listeners[{index}]: {_first_line(error)}") from None
    return listener


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
