"""Field policy for the Envoy messages we translate: every set field is either handled,
planned for a later part of the project (`not supported yet`), or refused (`not supported`).

A field that changes behaviour in Envoy must never be silently ignored, so builders call
`check_fields` with the names they handle before reading a message.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from xds_proxy.errors import ConfigError


def check_fields(
    message: Message,
    path: str,
    handled: Iterable[str],
    later: Iterable[str] = (),
) -> None:
    """Raise `ConfigError("PATH.FIELD: not supported[ yet]")` for the first set field that is
    neither handled nor planned."""
    handled_names = set(handled)
    later_names = set(later)
    for field, _value in message.ListFields():
        if field.name in handled_names:
            continue
        suffix = " yet" if field.name in later_names else ""
        raise ConfigError(f"{path}.{field.name}: not supported{suffix}")


def duration_seconds(message: Message) -> float:
    """A google.protobuf.Duration as float seconds."""
    return message.seconds + message.nanos / 1e9  # type: ignore[attr-defined]
