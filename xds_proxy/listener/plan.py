"""What a push would do, listener by listener: the outcomes the listener manager records as
it decides (`ListenerManager.plan` runs its real diff on a copy of its state), and the
`POST /listeners/plan` report built from them with the connection counts of the moment.

Pure: the connection counts come in through `PlanCounts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from xds_proxy.listener.actions import DEFAULT_CHAIN, NO_CAUSE, DrainCause
from xds_proxy.listener.drain_policy import NO_POLICY, ListenerDrainPolicy

ADDED = "added"
FULL_UPDATE = "full_update"
IN_PLACE = "in_place"
POLICY_UPDATE = "policy_update"  # only the drain-policy metadata changed: nothing drains
NO_OP = "no_op"
REMOVED = "removed"
REJECTED = "rejected"


@dataclass(slots=True)
class Outcome:
    """One listener of a push, as the manager decided it (a plain record, never changed once
    made: one is made per listener per push, and a frozen dataclass costs 5x as much to make)."""

    name: str
    kind: str  # one of the constants above
    reason: str = ""  # no_op: why nothing changes
    old_version_id: int | None = None  # the version whose connections drain (or are kept)
    old_version_info: str = ""
    chains: tuple[int, ...] = ()  # in_place: indexes into the old config's chains that drain
    chain_names: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()  # would warm: the names it waits for
    nack: str = ""  # rejected: this listener's line of the NACK
    cause: DrainCause = NO_CAUSE  # what changed
    policy: ListenerDrainPolicy = NO_POLICY  # the drain policy of the version that drains


class PlanCounts(Protocol):
    def listener(self, version_id: int) -> int:
        """Connections of a running listener version now."""
        ...

    def chain(self, version_id: int, index: int) -> int:
        """Connections of one filter chain of a running version now."""
        ...


def chain_label(index: int, name: str) -> str:
    """A chain as the plan and `/drain_status` name it: its name, else its index."""
    if name:
        return name
    return "default_filter_chain" if index == DEFAULT_CHAIN else f"filter_chains[{index}]"


def plan_report(
    version_info: str,
    delta: bool,
    outcomes: list[Outcome],
    nack_message: str | None,
    counts: PlanCounts,
) -> dict:
    """The `POST /listeners/plan` document (docs/admin.md)."""
    listeners = [_entry(outcome, counts) for outcome in outcomes]
    return {
        "version_info": version_info,
        "mode": "delta" if delta else "sotw",
        "would_ack": nack_message is None,
        "nack": nack_message,
        "connections_to_drain": sum(entry.get("connections", 0) for entry in listeners),
        "listeners": listeners,
    }


def _entry(outcome: Outcome, counts: PlanCounts) -> dict:
    entry: dict = {"name": outcome.name, "outcome": outcome.kind}
    if outcome.reason:
        entry["reason"] = outcome.reason
    if outcome.kind == REJECTED:
        entry["nack"] = outcome.nack
    if outcome.old_version_id is not None and outcome.kind in (FULL_UPDATE, REMOVED):
        entry["draining_version"] = outcome.old_version_info
        entry["connections"] = counts.listener(outcome.old_version_id)
    if outcome.kind == IN_PLACE and outcome.old_version_id is not None:
        chains = [
            {
                "chain": chain_label(index, name),
                "index": index,
                "connections": counts.chain(outcome.old_version_id, index),
            }
            for index, name in zip(outcome.chains, outcome.chain_names, strict=True)
        ]
        entry["draining_chains"] = chains
        entry["connections"] = sum(chain["connections"] for chain in chains)
    if outcome.waiting:
        entry["would_warm"] = list(outcome.waiting)
    if outcome.cause.changed:
        entry["changed"] = list(outcome.cause.changed)
    if outcome.policy != NO_POLICY or outcome.kind == POLICY_UPDATE:
        entry["drain_policy"] = outcome.policy.report_fields()
    return entry
