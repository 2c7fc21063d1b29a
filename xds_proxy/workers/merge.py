"""TEMPORARY stand-in (the real merge rules land from another branch)."""

from __future__ import annotations

from collections.abc import Sequence

_MAIN = ("server.", "listener_manager.", "cluster_manager.", "control_plane.", "runtime.")


def merge_stats(main: dict, workers: Sequence[dict]) -> dict:
    merged = {kind: dict(values) for kind, values in main.items()}
    for worker in workers:
        for kind in ("counters", "gauges"):
            for name, value in worker[kind].items():
                if name.startswith(_MAIN) and name != "server.total_connections":
                    continue
                merged[kind][name] = merged[kind].get(name, 0) + value
    return merged


def merge_drain_reports(reports: Sequence[list[dict]]) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for report in reports:
        for entry in report:
            key = (
                entry["kind"],
                entry["listener"],
                entry["version_info"],
                entry["filter_chain"],
                entry["trigger"],
            )
            if key in merged:
                merged[key]["connections"] += entry["connections"]
            else:
                merged[key] = dict(entry)
    return list(merged.values())
