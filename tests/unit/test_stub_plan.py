"""`control-plane-stub plan`'s table, from a plan document (no process)."""

from __future__ import annotations

from control_plane_stub.cli import build_parser
from control_plane_stub.plan import format_plan_table

DOCUMENT = {
    "version_info": "v2",
    "mode": "sotw",
    "would_ack": False,
    "nack": "Error adding/updating listener(s) bad: bad filter\n",
    "connections_to_drain": 5,
    "listeners": [
        {"name": "gone", "outcome": "removed", "draining_version": "v1", "connections": 2},
        {
            "name": "web",
            "outcome": "in_place",
            "draining_chains": [{"chain": "blue", "index": 1, "connections": 3}],
            "connections": 3,
            "changed": ["a", "b", "c", "d"],
        },
        {"name": "new", "outcome": "added", "would_warm": ["routes"]},
        {"name": "same", "outcome": "no_op", "reason": "identical: the same bytes"},
        {"name": "pol", "outcome": "policy_update", "drain_policy": {"drain_time_s": 7.0}},
        {"name": "bad", "outcome": "rejected", "nack": "bad: bad filter"},
    ],
}


def test_the_table_has_one_row_per_listener_and_the_verdict() -> None:
    assert format_plan_table(DOCUMENT).splitlines() == [
        "LISTENER  OUTCOME        DRAINS  DETAIL",
        "gone      removed        2       version 'v1' drains",
        "web       in_place       3       chains blue (3); changed a, b, c (+1)",
        "new       added          -       would warm on routes",
        "same      no_op          -       identical: the same bytes",
        "pol       policy_update  -       drain policy drain_time_s=7.0",
        "bad       rejected       -       bad: bad filter",
        "connections that would drain: 5",
        "would NACK: Error adding/updating listener(s) bad: bad filter",
    ]


def test_plan_needs_an_admin_and_push_takes_dry_run() -> None:
    arguments = build_parser().parse_args(["plan", "f.yaml", "--admin", "127.0.0.1:9901"])
    assert arguments.admin == "127.0.0.1:9901"
    arguments = build_parser().parse_args(["push", "--dry-run", "--admin", "h:1", "f.yaml"])
    assert arguments.dry_run and arguments.admin == "h:1"
