"""A listener's own drain policy: `metadata.filter_metadata["xds_proxy.drain"]`.

Pure. The key is ours (Envoy does not read it), so it changes nothing unless a listener sets
it. Its fields override the command-line values for the drains of that listener (an LDS
update, a removal, an in-place chain drain); the server-wide drains (`/drain_listeners`, hot
restart, `/drain_and_exit`) keep the global values unless `applies_to_server_drain` is true.
An invalid value is a `ConfigError` naming the field, which NACKs that listener.

    metadata:
      filter_metadata:
        xds_proxy.drain:
          drain_time_s: 30             # >= 0
          drain_strategy: immediate    # gradual | immediate
          max_closes_per_second: 200   # >= 0; 0: unlimited
          applies_to_server_drain: true
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from envoy.config.listener.v3 import listener_pb2
from google.protobuf import struct_pb2

from xds_proxy.errors import ConfigError

POLICY_KEY = "xds_proxy.drain"
_PATH = f'metadata.filter_metadata["{POLICY_KEY}"]'
STRATEGIES = ("gradual", "immediate")
MAX_DRAIN_TIME_S = 2**32 - 1  # as --drain-time-s


@dataclass(frozen=True)
class DrainPolicy:
    """The values one drain runs under; `source` says where they came from."""

    drain_time_s: float
    strategy: str  # "gradual" | "immediate"
    max_closes_per_second: float  # 0: unlimited
    source: str = "global"  # "global" | "listener"

    def report(self) -> dict:
        return {
            "source": self.source,
            "drain_time_s": self.drain_time_s,
            "drain_strategy": self.strategy,
            "max_closes_per_second": self.max_closes_per_second,
        }


class ListenerDrainPolicy(NamedTuple):
    """What a listener's metadata sets (None: the global value). A tuple, so that the
    actions carrying it stay plain data."""

    drain_time_s: float | None = None
    strategy: str | None = None
    max_closes_per_second: float | None = None
    applies_to_server_drain: bool = False

    def resolve(self, defaults: DrainPolicy, server_drain: bool = False) -> DrainPolicy:
        """The policy a drain of this listener runs under."""
        if self == NO_POLICY or (server_drain and not self.applies_to_server_drain):
            return defaults
        return DrainPolicy(
            self.drain_time_s if self.drain_time_s is not None else defaults.drain_time_s,
            self.strategy if self.strategy is not None else defaults.strategy,
            self.max_closes_per_second
            if self.max_closes_per_second is not None
            else defaults.max_closes_per_second,
            "listener",
        )

    def report_fields(self) -> dict:
        """What the listener sets, by the metadata's field names."""
        fields: dict = {}
        if self.drain_time_s is not None:
            fields["drain_time_s"] = self.drain_time_s
        if self.strategy is not None:
            fields["drain_strategy"] = self.strategy
        if self.max_closes_per_second is not None:
            fields["max_closes_per_second"] = self.max_closes_per_second
        if self.applies_to_server_drain:
            fields["applies_to_server_drain"] = True
        return fields


NO_POLICY = ListenerDrainPolicy()


def listener_drain_policy(listener: listener_pb2.Listener) -> ListenerDrainPolicy:
    """The listener's drain policy (`NO_POLICY` when it sets none); raises ConfigError naming the
    field for an invalid value or an unknown field."""
    metadata = listener.metadata.filter_metadata
    if POLICY_KEY not in metadata:
        return NO_POLICY
    fields = metadata[POLICY_KEY].fields
    allowed = ("drain_time_s", "drain_strategy", "max_closes_per_second", "applies_to_server_drain")
    for name in fields:
        if name not in allowed:
            raise ConfigError(
                f"{_PATH}.{name}: unknown field (expected one of {', '.join(allowed)})"
            )
    strategy = None
    if "drain_strategy" in fields:
        value = fields["drain_strategy"]
        if value.WhichOneof("kind") != "string_value" or value.string_value not in STRATEGIES:
            raise ConfigError(
                f"{_PATH}.drain_strategy: must be one of gradual, immediate, got {_shown(value)}"
            )
        strategy = value.string_value
    applies = False
    if "applies_to_server_drain" in fields:
        value = fields["applies_to_server_drain"]
        if value.WhichOneof("kind") != "bool_value":
            raise ConfigError(
                f"{_PATH}.applies_to_server_drain: must be true or false, got {_shown(value)}"
            )
        applies = value.bool_value
    return ListenerDrainPolicy(
        _number(fields, "drain_time_s", MAX_DRAIN_TIME_S),
        strategy,
        _number(fields, "max_closes_per_second", 1e9),
        applies,
    )


def _number(fields, name: str, maximum: float) -> float | None:
    if name not in fields:
        return None
    value = fields[name]
    number = value.number_value
    if value.WhichOneof("kind") != "number_value" or not math.isfinite(number):
        raise ConfigError(f"{_PATH}.{name}: must be a number, got {_shown(value)}")
    if not 0 <= number <= maximum:
        raise ConfigError(f"{_PATH}.{name}: must be between 0 and {maximum:g}, got {number:g}")
    return number


def _shown(value: struct_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return repr(value.string_value)
    if kind == "number_value":
        return f"{value.number_value:g}"
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    return kind.removesuffix("_value") if kind else "nothing"


def without_policy(listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """A copy of the listener with the drain-policy key removed (an empty metadata cleared)."""
    copy = listener_pb2.Listener()
    copy.CopyFrom(listener)
    if POLICY_KEY in copy.metadata.filter_metadata:
        del copy.metadata.filter_metadata[POLICY_KEY]
    if copy.HasField("metadata") and copy.metadata.ByteSize() == 0:
        copy.ClearField("metadata")
    return copy
