"""Reading the values the builders share: durations and `DataSource`s.

One DataSource reader: `read_data_source` for bytes needed once at build time (a response
body), `DataSourceRef` for bytes read again when needed (TLS material, so certificates rotated
on disk are picked up). Which specifiers a place accepts is the support table's business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from xds_proxy.errors import ConfigError


def duration_seconds(message: Message) -> float:
    """A google.protobuf.Duration as float seconds."""
    return message.seconds + message.nanos / 1e9  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DataSourceRef:
    """A DataSource kept as what it names: a file (read on each `read()`), inline bytes, or an
    environment variable. `path` is the field path, for errors."""

    path: str
    filename: str | None = None
    inline: bytes | None = None
    environment_variable: str | None = None

    def read(self) -> bytes:
        """The bytes now; raises ConfigError (`PATH.filename: cannot read ...`)."""
        if self.filename is not None:
            try:
                with open(self.filename, "rb") as source:
                    return source.read()
            except OSError as error:
                raise ConfigError(
                    f"{self.path}.filename: cannot read '{self.filename}': {error.strerror}"
                ) from None
        if self.environment_variable is not None:
            value = os.environ.get(self.environment_variable)
            if value is None:
                raise ConfigError(
                    f"{self.path}.environment_variable: '{self.environment_variable}' is not set"
                )
            return value.encode()
        return self.inline if self.inline is not None else b""


def data_source(source: base_pb2.DataSource, path: str) -> DataSourceRef:
    """A (table-checked) DataSource as a reference; an unset one holds no bytes."""
    kind = source.WhichOneof("specifier")
    if kind == "filename":
        return DataSourceRef(path, filename=source.filename)
    if kind == "inline_string":
        return DataSourceRef(path, inline=source.inline_string.encode())
    if kind == "inline_bytes":
        return DataSourceRef(path, inline=source.inline_bytes)
    if kind == "environment_variable":
        return DataSourceRef(path, environment_variable=source.environment_variable)
    return DataSourceRef(path)


def read_data_source(source: base_pb2.DataSource, path: str) -> bytes:
    """The bytes of a DataSource, read now (once, at build time)."""
    kind = source.WhichOneof("specifier")
    if kind == "inline_string":  # the commonest (a response body): no reference made
        return source.inline_string.encode()
    if kind == "inline_bytes":
        return source.inline_bytes
    return data_source(source, path).read()
