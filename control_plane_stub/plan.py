"""`control-plane-stub plan FILE --admin HOST:PORT` and `push --dry-run`: ask an xds-proxy
what pushing FILE would do (its `POST /listeners/plan`, docs/admin.md) and print the answer
as a table. Nothing is pushed and nothing changes on the proxy."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from control_plane_stub.resources import load_resource_file


class PlanError(Exception):
    pass


def fetch_plan(admin: str, path: Path, timeout: float = 30.0) -> dict:
    """Check FILE as `push` would (ResourceError with file, position and reason), then send
    it to the proxy's admin."""
    load_resource_file(path)  # refuse a bad file here, with its position
    request = urllib.request.Request(
        f"http://{admin}/listeners/plan", data=path.read_bytes(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace").strip()
        raise PlanError(f"{admin}: {error.code} {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PlanError(f"{admin}: cannot reach the admin: {reason}") from None


def format_plan_table(document: dict) -> str:
    """One row per listener: what the push does to it, the connections that would drain,
    and the details (chains, what it would wait for, why nothing changes, the NACK line)."""
    header = ("LISTENER", "OUTCOME", "DRAINS", "DETAIL")
    rows = [header]
    for entry in document["listeners"]:
        rows.append(
            (
                entry["name"],
                entry["outcome"],
                str(entry["connections"]) if "connections" in entry else "-",
                _detail(entry),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    if len(rows) == 1:
        lines.append("(no listener)")
    lines.append(f"connections that would drain: {document['connections_to_drain']}")
    if document.get("nack"):
        lines.append(f"would NACK: {document['nack'].strip()}")
    else:
        lines.append("would ACK")
    return "\n".join(lines)


def _detail(entry: dict) -> str:
    parts: list[str] = []
    if "draining_chains" in entry:
        parts.append(
            "chains "
            + ", ".join(f"{c['chain']} ({c['connections']})" for c in entry["draining_chains"])
        )
    if "draining_version" in entry:
        parts.append(f"version {entry['draining_version']!r} drains")
    if "would_warm" in entry:
        parts.append("would warm on " + ", ".join(entry["would_warm"]))
    if "changed" in entry:
        parts.append("changed " + ", ".join(entry["changed"][:3]))
        if len(entry["changed"]) > 3:
            parts[-1] += f" (+{len(entry['changed']) - 3})"
    if "drain_policy" in entry:
        policy = ", ".join(f"{k}={v}" for k, v in entry["drain_policy"].items())
        parts.append(f"drain policy {policy or 'removed'}")
    if "reason" in entry:
        parts.append(entry["reason"])
    if "nack" in entry:
        parts.append(entry["nack"])
    return "; ".join(parts)
