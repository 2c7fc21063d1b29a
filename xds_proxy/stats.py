"""The one stats store: counters, gauges and text readouts under Envoy's names.

Every part of the proxy that counts something holds a handle from here; the admin endpoints
(`/stats`, `/stats?format=json`, `/stats/prometheus`) read only this store, so what operators
see has one source of truth.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict


@dataclass(slots=True)
class Counter:
    name: str
    value: int = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


@dataclass(slots=True)
class Gauge:
    name: str
    value: int = 0

    def set(self, value: int) -> None:
        self.value = value

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount


class DerivedGauge:
    """A gauge whose value is computed when read (e.g. a circuit breaker's remaining room
    from the counts its cluster keeps), so the hot path updates nothing extra."""

    __slots__ = ("_read", "name")

    def __init__(self, name: str, read: Callable[[], int]) -> None:
        self.name = name
        self._read = read

    @property
    def value(self) -> int:
        return self._read()


@dataclass(slots=True)
class TextReadout:
    name: str
    value: str = ""

    def set(self, value: str) -> None:
        self.value = value


# Envoy's Prometheus output moves some name segments into labels (its default tag extractors).
# (regex on the dotted name, label name); the captured segment is removed from the metric name.
_PROMETHEUS_TAGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^http\.((.*?)\.)"), "envoy_http_conn_manager_prefix"),
    (
        # An IP listener's `127.0.0.1_10000`, `[__1]_10000`, or any other dot-free segment (a
        # pipe's path up to its first dot, a stat_prefix) except `admin`, as Envoy 1.40.
        re.compile(
            r"^listener\.(((?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+"
            r"|(?!admin\.)[^.]+)\.)"
        ),
        "envoy_listener_address",
    ),
    (re.compile(r"^cluster\.((.*?)\.)"), "envoy_cluster_name"),
    (re.compile(r"^connection_limit\.((.*?)\.)"), "envoy_connection_limit_prefix"),
)
_PROMETHEUS_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")
# Envoy's per-worker listener stats `listener.<address>.worker_<N>.*` become
# `envoy_listener_worker_*{envoy_worker_id="N",envoy_listener_address="<address>"}`: the worker
# id is taken first, then the address as above.
_PROMETHEUS_WORKER = re.compile(
    r"^listener\.(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}_\d+|\[[a-fA-F_\d]+\]_\d+|[^.]+)"
    r"\.worker_((\d+)\.)"
)


class StatsSnapshot(TypedDict):
    """Every stat's value as plain JSON-able data (what a worker process reports)."""

    counters: dict[str, int]
    gauges: dict[str, int]
    text_readouts: dict[str, str]


@dataclass
class Stats:
    counters: dict[str, Counter] = field(default_factory=dict)
    gauges: dict[str, Gauge | DerivedGauge] = field(default_factory=dict)
    text_readouts: dict[str, TextReadout] = field(default_factory=dict)

    def counter(self, name: str) -> Counter:
        found = self.counters.get(name)
        if found is None:
            found = self.counters[name] = Counter(name)
        return found

    def gauge(self, name: str) -> Gauge:
        found = self.gauges.get(name)
        if found is None:
            found = self.gauges[name] = Gauge(name)
        assert isinstance(found, Gauge), f"{name} is a derived gauge"
        return found

    def derived_gauge(self, name: str, read: Callable[[], int]) -> None:
        """`name` reads `read()` from now on (a later registration of the name replaces it)."""
        self.gauges[name] = DerivedGauge(name, read)

    def text_readout(self, name: str) -> TextReadout:
        found = self.text_readouts.get(name)
        if found is None:
            found = self.text_readouts[name] = TextReadout(name)
        return found

    def value(self, name: str) -> int | str | None:
        """The current value of a stat by name (tests and admin handlers use this)."""
        for table in (self.counters, self.gauges, self.text_readouts):
            stat = table.get(name)
            if stat is not None:
                return stat.value
        return None

    def take(self, other: Stats) -> None:
        """Hold `other`'s stats from now on (what admin shows for `--concurrency N`)."""
        self.counters, self.gauges, self.text_readouts = (
            other.counters,
            other.gauges,
            other.text_readouts,
        )

    def snapshot(self) -> StatsSnapshot:
        """Every value now (derived gauges are read), as plain data."""
        return {
            "counters": {name: stat.value for name, stat in self.counters.items()},
            "gauges": {name: stat.value for name, stat in self.gauges.items()},
            "text_readouts": {name: stat.value for name, stat in self.text_readouts.items()},
        }

    @classmethod
    def load(cls, snapshot: StatsSnapshot) -> Stats:
        """A store holding `snapshot`'s values (plain counters and gauges), for the admin
        handlers to render as they render a live store."""
        return cls(
            counters={name: Counter(name, value) for name, value in snapshot["counters"].items()},
            gauges={name: Gauge(name, value) for name, value in snapshot["gauges"].items()},
            text_readouts={
                name: TextReadout(name, value) for name, value in snapshot["text_readouts"].items()
            },
        )

    # -- rendering, in Envoy's formats --------------------------------------------------------

    def _selected(self, name_filter: str | None) -> list[tuple[str, int | str]]:
        pattern = re.compile(name_filter) if name_filter else None
        rows: list[tuple[str, int | str]] = []
        for table in (self.counters, self.gauges, self.text_readouts):
            for name, stat in table.items():
                if pattern is None or pattern.search(name):
                    rows.append((name, stat.value))
        rows.sort()
        return rows

    def render_text(self, name_filter: str | None = None) -> str:
        lines = []
        for name, value in self._selected(name_filter):
            shown = json.dumps(value) if isinstance(value, str) else str(value)
            lines.append(f"{name}: {shown}\n")
        return "".join(lines)

    def render_json(self, name_filter: str | None = None) -> str:
        stats = [{"name": name, "value": value} for name, value in self._selected(name_filter)]
        return json.dumps({"stats": stats}, indent=1) + "\n"

    def render_prometheus(self, name_filter: str | None = None) -> str:
        pattern = re.compile(name_filter) if name_filter else None
        families: dict[str, tuple[str, list[str]]] = {}
        for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
            for name, stat in table.items():
                if pattern is not None and not pattern.search(name):
                    continue
                metric, labels = _prometheus_name(name)
                label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                families.setdefault(metric, (kind, []))[1].append(
                    f"{metric}{{{label_text}}} {stat.value}\n"
                )
        out = []
        for metric in sorted(families):
            kind, samples = families[metric]
            out.append(f"# TYPE {metric} {kind}\n")
            out.extend(sorted(samples))
        return "".join(out)


def _prometheus_name(name: str) -> tuple[str, list[tuple[str, str]]]:
    labels = []
    worker = _PROMETHEUS_WORKER.search(name)
    if worker:
        labels.append(("envoy_worker_id", worker.group(2)))
        name = name[: worker.start(1)] + name[worker.end(1) :]
    for pattern, label in _PROMETHEUS_TAGS:
        match = pattern.search(name)
        if match:
            labels.append((label, match.group(2)))
            name = name[: match.start(1)] + name[match.end(1) :]
            break
    return "envoy_" + _PROMETHEUS_BAD_CHARS.sub("_", name), labels


def listener_stat_prefix(ip: str, port: int) -> str:
    """Envoy's `listener.<address>.` scope: `127.0.0.1_10000`; IPv6 `[__1]_10000`, since Envoy
    replaces `:` in stat names with `_`."""
    host = f"[{ip.replace(':', '_')}]" if ":" in ip else ip
    return f"listener.{host}_{port}."
