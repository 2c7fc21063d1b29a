"""The kinds of rule a field of an Envoy message can have in the support table (table.py).

A field set to a non-default value must have a rule that accepts it, or it is an error
(`path: not supported`); never silently ignored. A rule that refuses for now says why in
words (`NotYet("...")`), shown to the user as `path: not supported yet`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message


@dataclass(frozen=True)
class Supported:
    """Accepted; a sub-message is checked against its type's table, or against `fields` when
    what this place accepts differs from the type's other uses (a DataSource of a certificate
    vs. of a response body; an HCM's protocol options vs. a cluster's)."""

    fields: Mapping[str, Rule] | None = None


@dataclass(frozen=True)
class NotYet:
    """Refused with `not supported yet`: Envoy has it and xds-proxy will build it. `reason`
    says in words what is missing (for the maintainers; the user sees `not supported yet`)."""

    reason: str


@dataclass(frozen=True)
class Inert:
    """Accepted, changes nothing observable here: one warning names it."""


@dataclass(frozen=True)
class InertExcept:
    """A repeated field whose items are inert (one warning names each) except those `active`
    selects, which are checked against their type's table: e.g. the one resource monitor of
    the overload manager that xds-proxy implements."""

    active: Callable[[Message], bool]


@dataclass(frozen=True)
class Values:
    """An enum (by value name) or scalar field: each allowed value has its own rule."""

    allowed: Mapping[object, Supported | NotYet]


@dataclass(frozen=True)
class Extension:
    """An `Any` (or a map of them) whose @type must be in an extensions.py category."""

    category: str
    required: bool = True


@dataclass(frozen=True)
class Opaque:
    """Accepted with whatever is inside (metadata, free-form structs)."""


Rule = Supported | NotYet | Inert | InertExcept | Values | Extension | Opaque

OK = Supported()
OPAQUE = Opaque()
INERT = Inert()
