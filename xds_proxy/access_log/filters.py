"""Access-log filters (config/access_log.py's specs) as predicates over a finished record."""

from __future__ import annotations

import random
from collections.abc import Callable

from xds_proxy.access_log.record import LogRecord
from xds_proxy.config.access_log import (
    EQ,
    GE,
    LE,
    AndFilter,
    DurationFilter,
    Filter,
    NotHealthCheckFilter,
    OrFilter,
    ResponseFlagFilter,
    RuntimeFilter,
    StatusCodeFilter,
)

Predicate = Callable[[LogRecord], bool]


def _compare(op: int, value: int, expected: int) -> bool:
    if op == EQ:
        return value == expected
    if op == GE:
        return value >= expected
    if op == LE:
        return value <= expected
    return value != expected


def compile_filter(spec: Filter, rng: random.Random | None = None) -> Predicate:
    rng = rng or random.Random()
    if isinstance(spec, StatusCodeFilter):
        return lambda record: _compare(spec.op, record.status, spec.value)
    if isinstance(spec, DurationFilter):

        def by_duration(record: LogRecord) -> bool:
            end = record.end if record.end is not None else record.start
            return _compare(spec.op, int((end - record.start) * 1000), spec.value_ms)

        return by_duration
    if isinstance(spec, NotHealthCheckFilter):
        # No health-check filter runs here: no request is a health check.
        return lambda record: True
    if isinstance(spec, RuntimeFilter):
        numerator, denominator = spec.numerator, spec.denominator
        return lambda record: rng.randrange(denominator) < numerator
    if isinstance(spec, ResponseFlagFilter):
        wanted = spec.flags
        if not wanted:
            return lambda record: bool(record.flags)
        return lambda record: bool(record.flags) and not wanted.isdisjoint(record.flags.split(","))
    if isinstance(spec, AndFilter):
        parts = tuple(compile_filter(item, rng) for item in spec.filters)
        return lambda record: all(part(record) for part in parts)
    if isinstance(spec, OrFilter):
        parts = tuple(compile_filter(item, rng) for item in spec.filters)
        return lambda record: any(part(record) for part in parts)
    raise TypeError(f"unknown access-log filter {spec!r}")
