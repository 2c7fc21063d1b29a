"""One proxy's picture from many processes: the workers' stats and drain reports merged into
the main process's (pure: plain data in, plain data out; no I/O).

With `--concurrency N` the main process counts the control side (xDS, the listener and
cluster managers, server state, admin) and each worker counts its own connections and
requests. Each worker is a whole xds-proxy, so it also keeps a replica of the control-side
stats (its listener manager, its cluster manager, its subscriptions to the main process over
the local channel, `server.*`): adding those would count every push N+1 times, or show a
worker's view of the local channel. `MERGE_RULES` says, per stat name, how the values of the
processes become one; docs/stats.md ("Worker processes") gives the same rules for users.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from xds_proxy.stats import StatsSnapshot


class Merge(Enum):
    """How the values of one stat in the main process and the workers become one value."""

    MAIN = "main"  # the control side: main's value; the workers' replicas are dropped
    SHARED = "shared"  # every process computes it from the same config: main's, else a worker's
    SUM = "sum"  # counted where it happens: main + every worker
    MAX = "max"  # the largest: a 0/1 "open" flag (open in any worker), a table built on use
    MIN = "min"  # the smallest: the room left in the fullest worker


@dataclass(frozen=True)
class MergeRule:
    pattern: re.Pattern[str]
    merge: Merge
    why: str


def _rule(pattern: str, merge: Merge, why: str) -> MergeRule:
    return MergeRule(re.compile(pattern), merge, why)


# What follows the name of one xDS subscription (RDS per route configuration, EDS per cluster).
_SUBSCRIPTION_STAT = (
    r"(?:update_\w+|init_fetch_timeout|config_reload(?:_time_ms)?|version(?:_text)?"
    r"|assignment_\w+)"
)

# The first rule whose pattern matches a stat's name (re.match) decides; no match: SUM.
# Cluster and route configuration names may hold dots, so their rules match on the name's end.
MERGE_RULES: tuple[MergeRule, ...] = (
    _rule(
        r"server\.total_connections$",
        Merge.SUM,
        "open downstream connections: every worker's",
    ),
    _rule(
        r"server\.",
        Merge.MAIN,
        "state, live, concurrency, hot restart epoch and parent connections are main's",
    ),
    _rule(r"listener_manager\.", Merge.MAIN, "the listener manager and LDS are main's"),
    _rule(r"cluster_manager\.", Merge.MAIN, "the cluster manager and CDS are main's"),
    _rule(r"control_plane\.", Merge.MAIN, "the ADS stream is main's"),
    _rule(
        r"(?:rds|eds|sds)\.",
        Merge.MAIN,
        "per-secret SDS stats, and the plain RDS/EDS/SDS streams' control_plane.*",
    ),
    _rule(r"runtime\.", Merge.MAIN, "runtime is main's"),
    _rule(r"(?:http|listener)\.admin\.", Merge.MAIN, "admin runs in the main process"),
    _rule(
        rf"http\..+\.rds\..+\.{_SUBSCRIPTION_STAT}$",
        Merge.MAIN,
        "the RDS subscription of a route configuration is main's",
    ),
    _rule(
        rf"cluster\..+\.{_SUBSCRIPTION_STAT}$",
        Merge.MAIN,
        "a cluster's EDS subscription (or DNS resolution) is main's",
    ),
    _rule(
        r"cluster\..+\.(?:membership_\w+|max_host_weight|warming_state"
        r"|health_check\.(?:healthy|degraded))$",
        Merge.SHARED,
        "a cluster's hosts and their health: the same set in every process",
    ),
    _rule(
        r"(?:listener|cluster)\..+\.(?:server|client)_ssl_socket_factory"
        r"\.ssl_context_update_by_sds$",
        Merge.SHARED,
        "every process rebuilds its TLS context once per SDS update",
    ),
    _rule(
        r"cluster\..+\.circuit_breakers\.[^.]+\.\w+_open$",
        Merge.MAX,
        "a breaker is open (1) while it is open in any worker",
    ),
    _rule(
        r"cluster\..+\.circuit_breakers\.[^.]+\.remaining_\w+$",
        Merge.MIN,
        "the room left before a breaker opens: the fullest worker's",
    ),
    _rule(
        r"cluster\..+\.(?:ring_hash_lb|maglev_lb)\.\w+$",
        Merge.MAX,
        "the ring or table is built from the same hosts where requests are balanced",
    ),
    _rule(r"overload\..+\.pressure$", Merge.MAX, "a ratio, not a count"),
)


# All the rules as one pattern, alternatives in rule order (the first that matches wins, as
# in the list); `lastgroup` names the rule.
_ANY_RULE = re.compile(
    "|".join(f"(?P<r{i}>{rule.pattern.pattern})" for i, rule in enumerate(MERGE_RULES))
)


@functools.lru_cache(maxsize=1 << 16)
def merge_rule(name: str) -> Merge:
    """How the values of the stat `name` are merged across processes."""
    found = _ANY_RULE.match(name)
    if found is None or found.lastgroup is None:
        return Merge.SUM
    return MERGE_RULES[int(found.lastgroup[1:])].merge


def merge_stats(main: StatsSnapshot, workers: Sequence[StatsSnapshot]) -> StatsSnapshot:
    """The main process's and the workers' stats (`Stats.snapshot()`) as one proxy's.

    A name only workers have is kept (unless it is control side: a worker's replica); a
    control-side name main lacks is left out."""
    return {
        "counters": _merge_numbers(main["counters"], [w["counters"] for w in workers]),
        "gauges": _merge_numbers(main["gauges"], [w["gauges"] for w in workers]),
        "text_readouts": _merge_texts(main["text_readouts"], [w["text_readouts"] for w in workers]),
    }


def _merge_numbers(main: dict[str, int], workers: list[dict[str, int]]) -> dict[str, int]:
    merged = dict(main)
    for table in workers:
        for name, value in table.items():
            merge = merge_rule(name)
            held = merged.get(name)
            if held is None:
                if merge is not Merge.MAIN:
                    merged[name] = value
            elif merge is Merge.SUM:
                merged[name] = held + value
            elif merge is Merge.MAX:
                merged[name] = max(held, value)
            elif merge is Merge.MIN:
                merged[name] = min(held, value)
    return merged


def _merge_texts(main: dict[str, str], workers: list[dict[str, str]]) -> dict[str, str]:
    """Text readouts are never added: main's, else the first worker's (not control side)."""
    merged = dict(main)
    for table in workers:
        for name, value in table.items():
            if name not in merged and merge_rule(name) is not Merge.MAIN:
                merged[name] = value
    return merged


# -- /drain_status --------------------------------------------------------------------------

# The fields that name one drain in the main process and in every worker
# (`DrainRecord.report`): the main process's drains end by the workers' under the same key.
DRAIN_KEY = ("kind", "listener", "version_info", "filter_chain", "trigger", "direction")


# A process's per-host counts for `/clusters`: cluster name -> host address (as `/clusters`
# prints it) -> the values of upstream/host.py's HOST_STAT_NAMES, in that order.
HostCounts = dict[str, dict[str, list[int]]]


def sum_host_counts(reports: Sequence[HostCounts]) -> HostCounts:
    """The workers' per-host counts added up (counters and gauges alike: each counts what
    happened in its own process). A host only some processes know still counts."""
    total: HostCounts = {}
    for report in reports:
        for cluster, hosts in report.items():
            summed = total.setdefault(cluster, {})
            for host, values in hosts.items():
                found = summed.get(host)
                summed[host] = (
                    list(values)
                    if found is None
                    else [mine + theirs for mine, theirs in zip(found, values, strict=True)]
                )
    return total
