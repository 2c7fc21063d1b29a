"""The stub's pure core: resource sets, versions, per-stream xDS bookkeeping, the ACK/NACK ledger.

No I/O and no clock of its own. The gRPC servicers feed it requests and pushes and write
out the responses it returns, so every protocol rule here is unit-testable with plain
messages:

- Versions come from content when a push gives none (the same content twice sends nothing).
- A NACKed response is never resent by itself (go-control-plane#962): the next response on
  that stream goes out when the set changes or the client reconnects.
- SotW sends the whole (subscribed) set; Delta sends what the client lacks, per-resource
  versions, `removed_resources`, and honours `initial_resource_versions` on reconnect.
- LDS and CDS treat an empty subscription as the wildcard; RDS, EDS and SDS are not wildcard
  types: only the resources the client names are sent, and a changed subscription is
  answered with what exists for the new names.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import timestamp_pb2

from control_plane_stub.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    SECTION_TYPES,
    NamedResource,
    type_name_of,
)

SERVED_TYPES: dict[str, str] = dict(SECTION_TYPES)  # section -> type URL
# The order a push reaches an ADS stream: make before break, every type before the ones that
# use it. Secrets first (a rotated certificate reaches the listeners and clusters that
# already use it before any new listener or cluster does; Envoy subscribes to a new secret
# name when the listener or cluster naming it arrives, and the stub answers that), then
# Envoy's ADS order: clusters, their ClusterLoadAssignments, the listeners that route to
# them, the route configs the listeners name.
ADS_ORDER = [SECRET_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
# Types where an empty subscription means "everything" (xDS legacy wildcard). For the others
# (RDS, EDS, SDS) the client names what it wants and an empty list means nothing.
WILDCARD_TYPES = frozenset({LISTENER_TYPE, CLUSTER_TYPE})
WILDCARD = "*"
Mode = Literal["sotw", "delta"]
NONCE_MEMORY = 32  # recent nonces remembered per stream and type, to match late ACKs/NACKs
# A PEM private key (its END line may be cut off) quoted in a client's NACK message.
PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
    re.DOTALL,
)
REDACTED_KEY = "[private key redacted]"


def redact_private_keys(text: str) -> str:
    """`text` without PEM private keys: a NACK message goes to `status` and the log, and a
    client may quote the secret or TLS context it refused (Envoy itself writes `<inline>`)."""
    return PRIVATE_KEY_PEM.sub(REDACTED_KEY, text)


def _digest(chunks: Iterable[bytes]) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(len(chunk).to_bytes(8, "big"))
        hasher.update(chunk)
    return hasher.hexdigest()[:16]


def resource_version(resource: NamedResource) -> str:
    """Per-resource version for Delta: a hash of its type URL and bytes."""
    return _digest([resource.body.type_url.encode(), resource.body.value])


def content_key(resources: Sequence[NamedResource]) -> str:
    """A hash of a resource set that ignores order (it is a set)."""
    entries = sorted((r.name.encode(), r.body.type_url.encode(), r.body.value) for r in resources)
    return _digest(chunk for entry in entries for chunk in entry)


@dataclass(frozen=True)
class TypeSet:
    """One type's resources for one scope (the default set or one node's own set)."""

    version: str
    content: str
    resources: tuple[NamedResource, ...]

    @classmethod
    def build(cls, resources: Sequence[NamedResource], version: str | None) -> TypeSet:
        content = content_key(resources)
        return cls(version=version or content, content=content, resources=tuple(resources))

    @property
    def key(self) -> tuple[str, str]:
        return (self.version, self.content)

    def subset(self, names: set[str] | None) -> tuple[NamedResource, ...]:
        if names is None:
            return self.resources
        return tuple(r for r in self.resources if r.name in names)


EMPTY_SET = TypeSet.build((), None)


@dataclass
class Nack:
    version: str
    nonce: str
    code: int
    message: str


@dataclass
class Ledger:
    """What one stream has been sent for one type and what the client said about it."""

    type_url: str
    mode: Mode
    connected_since: datetime
    sent_version: str | None = None
    sent_nonce: str | None = None
    acked_version: str | None = None
    nack: Nack | None = None


@dataclass
class SotwTypeState:
    names: set[str] | None = None  # None: wildcard
    last_sent: tuple[str, str] | None = None  # (version, content of the subset sent)
    latest_nonce: str | None = None
    nonce_versions: OrderedDict[str, str] = field(default_factory=OrderedDict)


@dataclass
class DeltaSent:
    version: str
    changes: dict[str, tuple[str | None, str | None]]  # name -> (known before, known after)


@dataclass
class DeltaTypeState:
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the client has, as we believe
    told_absent: set[str] = field(default_factory=set)  # named, missing, already told so
    last_sent_version: str | None = None
    pending: OrderedDict[str, DeltaSent] = field(default_factory=OrderedDict)


@dataclass
class Stream:
    id: int
    mode: Mode
    fixed_type: str | None  # LDS-only streams; None for ADS
    connected_since: datetime
    node: str | None = None
    sotw: dict[str, SotwTypeState] = field(default_factory=dict)
    delta: dict[str, DeltaTypeState] = field(default_factory=dict)
    ledgers: dict[str, Ledger] = field(default_factory=dict)


Response = discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC, spelled as protobuf's Timestamp JSON (so the API round-trips it)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp.ToJsonString()


class XdsCache:
    """Resource sets per node plus a default, and every open stream's protocol state."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._clock = clock
        self._default: dict[str, TypeSet] = {}
        self._per_node: dict[str, dict[str, TypeSet]] = {}
        self._streams: dict[int, Stream] = {}
        self._next_stream = 1
        self._next_nonce = 1
        self.revision = 0  # bumped on every change a status watcher could see
        self._events: list[str] = []  # ACK/NACK lines for the server's log

    def drain_events(self) -> list[str]:
        """Human-readable ACK/NACK events since the last call (the server logs them)."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ resource sets

    def current_set(self, node: str | None, type_url: str) -> TypeSet:
        """What `node` is served for `type_url` (its own set, else the default, else empty)."""
        if node is not None:
            own = self._per_node.get(node, {}).get(type_url)
            if own is not None:
                return own
        return self._default.get(type_url, EMPTY_SET)

    def versions(self, node: str | None = None) -> dict[str, str]:
        return {
            section: self.current_set(node, type_url).version
            for section, type_url in SERVED_TYPES.items()
        }

    def set_resources(
        self,
        sections: dict[str, Sequence[NamedResource] | None],
        node: str | None = None,
        version: str | None = None,
    ) -> tuple[dict[str, str], list[tuple[int, Response]]]:
        """Replace the default set (or `node`'s own) for each section given (None keeps it).

        Returns the versions now served to that scope and the responses to send.
        """
        scope = self._default if node is None else self._per_node.setdefault(node, {})
        changed: list[str] = []
        for section, resources in sections.items():
            if resources is None:
                continue
            type_url = SERVED_TYPES[section]
            new_set = TypeSet.build(resources, version)
            old_set = scope.get(type_url)
            if old_set is None and node is not None:
                old_set = self.current_set(node, type_url)
            scope[type_url] = new_set
            if old_set is None or old_set.key != new_set.key:
                changed.append(type_url)
        changed.sort(key=ADS_ORDER.index)  # one ADS stream: in ADS_ORDER
        outgoing: list[tuple[int, Response]] = []
        for stream in list(self._streams.values()):
            if stream.node is None:
                continue
            if node is not None and stream.node != node:
                continue
            for type_url in changed:
                if node is None and type_url in self._per_node.get(stream.node, {}):
                    continue  # this node has its own set for the type
                outgoing.extend((stream.id, r) for r in self._on_set_changed(stream, type_url))
        return self.versions(node), outgoing

    # ------------------------------------------------------------ streams

    def open_stream(self, mode: Mode, fixed_type: str | None = None) -> int:
        stream_id = self._next_stream
        self._next_stream += 1
        self._streams[stream_id] = Stream(
            id=stream_id, mode=mode, fixed_type=fixed_type, connected_since=self._clock()
        )
        return stream_id

    def close_stream(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.ledgers:
            self.revision += 1

    def stream_count(self) -> int:
        return len(self._streams)

    def _new_nonce(self) -> str:
        nonce = str(self._next_nonce)
        self._next_nonce += 1
        return nonce

    def _ledger(self, stream: Stream, type_url: str) -> Ledger:
        ledger = stream.ledgers.get(type_url)
        if ledger is None:
            ledger = Ledger(
                type_url=type_url, mode=stream.mode, connected_since=stream.connected_since
            )
            stream.ledgers[type_url] = ledger
            self.revision += 1
        return ledger

    def _bind_node(self, stream: Stream, request_node_id: str) -> None:
        if stream.node is None:
            stream.node = request_node_id

    def _type_of(self, stream: Stream, type_url: str) -> str:
        return type_url or stream.fixed_type or ""

    def _on_set_changed(self, stream: Stream, type_url: str) -> list[Response]:
        if stream.mode == "sotw":
            state = stream.sotw.get(type_url)
            if state is None:
                return []
            return self._sotw_respond(stream, type_url, state, force=False)
        delta_state = stream.delta.get(type_url)
        if delta_state is None:
            return []
        return self._delta_respond(stream, type_url, delta_state, force=False)

    # ------------------------------------------------------------ SotW

    def handle_sotw_request(
        self, stream_id: int, request: discovery_pb2.DiscoveryRequest
    ) -> list[discovery_pb2.DiscoveryResponse]:
        stream = self._streams[stream_id]
        self._bind_node(stream, request.node.id)
        type_url = self._type_of(stream, request.type_url)
        if not type_url:
            return []  # an ADS request must name its type; nothing sensible to answer
        subscription = sotw_subscription(type_url, request.resource_names)
        state = stream.sotw.get(type_url)
        ledger = self._ledger(stream, type_url)
        if state is None or not request.response_nonce:
            if state is None or state.names != subscription:
                self.revision += 1
            state = state or SotwTypeState()
            state.names = subscription
            stream.sotw[type_url] = state
            return self._sotw_respond(stream, type_url, state, force=True)
        sent_version = state.nonce_versions.get(request.response_nonce)
        if sent_version is not None:
            self._record_reply(ledger, request, sent_version, stream.node)
        if request.response_nonce != state.latest_nonce:
            return []  # stale: the client has not seen our latest response yet
        if subscription != state.names:
            # A new subscription (Envoy sends it ACK-shaped, with the last nonce): answer
            # with what exists for the names now subscribed, even if that subset is unchanged.
            state.names = subscription
            self.revision += 1
            return self._sotw_respond(stream, type_url, state, force=True)
        return []

    def _record_reply(self, ledger: Ledger, request, sent_version: str, node: str | None) -> None:
        kind = type_name_of(ledger.type_url)
        if request.HasField("error_detail"):
            message = redact_private_keys(request.error_detail.message)
            self._events.append(
                f"NACK from {node!r} for {kind} version {sent_version} "
                f"(nonce {request.response_nonce}): {message}"
            )
            ledger.nack = Nack(
                version=sent_version,
                nonce=request.response_nonce,
                code=request.error_detail.code,
                message=message,
            )
        else:
            if ledger.acked_version != sent_version:
                self._events.append(f"ACK from {node!r} for {kind} version {sent_version}")
            ledger.acked_version = sent_version
        self.revision += 1

    def _sotw_respond(
        self, stream: Stream, type_url: str, state: SotwTypeState, force: bool
    ) -> list[discovery_pb2.DiscoveryResponse]:
        served = self.current_set(stream.node, type_url)
        resources = served.subset(state.names)
        subset_key = (
            served.version,
            content_key(resources) if state.names is not None else served.content,
        )
        if not force and subset_key == state.last_sent:
            return []
        nonce = self._new_nonce()
        state.last_sent = subset_key
        state.latest_nonce = nonce
        state.nonce_versions[nonce] = served.version
        while len(state.nonce_versions) > NONCE_MEMORY:
            state.nonce_versions.popitem(last=False)
        ledger = self._ledger(stream, type_url)
        ledger.sent_version = served.version
        ledger.sent_nonce = nonce
        self.revision += 1
        response = discovery_pb2.DiscoveryResponse(
            version_info=served.version, type_url=type_url, nonce=nonce
        )
        response.resources.extend(r.body for r in resources)
        return [response]

    # ------------------------------------------------------------ Delta

    def handle_delta_request(
        self, stream_id: int, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        stream = self._streams[stream_id]
        self._bind_node(stream, request.node.id)
        type_url = self._type_of(stream, request.type_url)
        if not type_url:
            return []
        ledger = self._ledger(stream, type_url)
        state = stream.delta.get(type_url)
        first = state is None
        if state is None:
            state = DeltaTypeState(known=dict(request.initial_resource_versions))
            stream.delta[type_url] = state
            if not request.resource_names_subscribe and type_url in WILDCARD_TYPES:
                state.wildcard = True  # legacy wildcard: LDS and CDS only
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
            else:
                state.subscribed.add(name)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.subscribed.discard(name)
                state.known.pop(name, None)
                state.told_absent.discard(name)
        if request.response_nonce:
            sent = state.pending.pop(request.response_nonce, None)
            if sent is not None:
                if request.HasField("error_detail"):
                    self._delta_revert(state, sent)
                self._record_reply(ledger, request, sent.version, stream.node)
        changed_subscription = bool(
            request.resource_names_subscribe or request.resource_names_unsubscribe
        )
        if changed_subscription:
            self.revision += 1
        if first or changed_subscription:
            return self._delta_respond(stream, type_url, state, force=first)
        return []

    @staticmethod
    def _delta_revert(state: DeltaTypeState, sent: DeltaSent) -> None:
        """The client refused this response: forget we thought it took these resources,
        so the next change resends them (the change, not the NACK, triggers the send)."""
        for name, (before, after) in sent.changes.items():
            if state.known.get(name) != after:
                continue  # a later response moved on already
            if before is None:
                state.known.pop(name, None)
            else:
                state.known[name] = before

    def _delta_respond(
        self, stream: Stream, type_url: str, state: DeltaTypeState, force: bool
    ) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        served = self.current_set(stream.node, type_url)
        wanted_names = None if state.wildcard else set(state.subscribed)
        resources = served.subset(wanted_names)
        updates: list[tuple[NamedResource, str]] = []
        present: set[str] = set()
        for resource in resources:
            present.add(resource.name)
            version = resource_version(resource)
            if state.known.get(resource.name) != version:
                updates.append((resource, version))
        removed = [
            name
            for name in state.known
            if name not in present and (wanted_names is None or name in wanted_names)
        ]
        # A named subscription to a resource that does not exist is answered by naming it
        # in removed_resources (the Delta way to say "does not exist"), once.
        absent = sorted(
            name
            for name in (wanted_names or ())
            if name not in present and name not in state.known and name not in state.told_absent
        )
        state.told_absent.difference_update(present)
        unchanged = not updates and not removed and not absent
        if not force and unchanged and served.version == state.last_sent_version:
            return []
        nonce = self._new_nonce()
        changes: dict[str, tuple[str | None, str | None]] = {}
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=served.version, type_url=type_url, nonce=nonce
        )
        for resource, version in updates:
            changes[resource.name] = (state.known.get(resource.name), version)
            state.known[resource.name] = version
            response.resources.add(name=resource.name, version=version, resource=resource.body)
        for name in removed:
            changes[name] = (state.known.pop(name), None)
        response.removed_resources.extend(removed)
        response.removed_resources.extend(absent)
        state.told_absent.update(absent)
        state.last_sent_version = served.version
        state.pending[nonce] = DeltaSent(version=served.version, changes=changes)
        while len(state.pending) > NONCE_MEMORY:
            state.pending.popitem(last=False)
        ledger = self._ledger(stream, type_url)
        ledger.sent_version = served.version
        ledger.sent_nonce = nonce
        self.revision += 1
        return [response]

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        """The document of `status --json` (docs/control-plane-stub.md)."""
        nodes: dict[str, list[dict]] = {}
        for stream in sorted(self._streams.values(), key=lambda s: s.id):
            if stream.node is None:
                continue
            for type_url in sorted(stream.ledgers):
                ledger = stream.ledgers[type_url]
                nodes.setdefault(stream.node, []).append(
                    ledger_document(stream.id, ledger, subscribed_names(stream, type_url))
                )
        return {
            "nodes": [{"node": node, "streams": streams} for node, streams in sorted(nodes.items())]
        }


def sotw_subscription(type_url: str, resource_names: Iterable[str]) -> set[str] | None:
    """The names a SotW request subscribes to; None is the wildcard. An empty list is the
    wildcard only for LDS and CDS; for RDS, EDS and SDS it subscribes to nothing."""
    names = set(resource_names)
    if WILDCARD in names or (not names and type_url in WILDCARD_TYPES):
        return None
    return names


def subscribed_names(stream: Stream, type_url: str) -> list[str]:
    """What the stream subscribes to for a type, sorted, "*" for the wildcard."""
    if stream.mode == "sotw":
        sotw = stream.sotw.get(type_url)
        if sotw is None:
            return []
        return [WILDCARD] if sotw.names is None else sorted(sotw.names)
    delta = stream.delta.get(type_url)
    if delta is None:
        return []
    return ([WILDCARD] if delta.wildcard else []) + sorted(delta.subscribed)


def ledger_document(stream_id: int, ledger: Ledger, subscribed: list[str] | None = None) -> dict:
    sent = None
    if ledger.sent_nonce is not None:
        sent = {"version": ledger.sent_version, "nonce": ledger.sent_nonce}
    nack = None
    if ledger.nack is not None:
        nack = {
            "version": ledger.nack.version,
            "nonce": ledger.nack.nonce,
            "code": ledger.nack.code,
            "message": ledger.nack.message,
        }
    return {
        "stream": stream_id,
        "type_url": ledger.type_url,
        "mode": ledger.mode,
        "connected_since": rfc3339(ledger.connected_since),
        "sent": sent,
        "acked_version": ledger.acked_version,
        "nack": nack,
        "subscribed": list(subscribed or []),
    }


# ---------------------------------------------------------------- wait


@dataclass(frozen=True)
class WaitVerdict:
    """`acked` (exit 0), `nacked` (exit 2, with the error_detail) or `pending`."""

    state: Literal["acked", "nacked", "pending"]
    detail: str = ""


def evaluate_wait(
    status: dict, version: str, node: str | None = None, section: str = "listeners"
) -> WaitVerdict:
    """`wait` (docs/control-plane-stub.md): the named node, or every node connected now (at
    least one) with a stream of that type, has ACKed `version` of the section's type
    ("listeners", "clusters", "routes", "endpoints" or "secrets"); a NACK of that version
    (matched by nonce) fails at once."""
    type_url = SERVED_TYPES[section]
    candidates = [
        entry
        for entry in status.get("nodes", [])
        if (node is None or entry["node"] == node)
        and any(s["type_url"] == type_url for s in entry["streams"])
    ]
    if not candidates:
        return WaitVerdict("pending")
    all_acked = True
    for entry in candidates:
        for stream in entry["streams"]:
            if stream["type_url"] != type_url:
                continue
            if stream["acked_version"] == version:
                continue
            nack = stream["nack"]
            if nack is not None and nack["version"] == version:
                detail = (
                    f"node {entry['node']!r} NACKed {section} version {version}: {nack['message']}"
                )
                return WaitVerdict("nacked", detail)
            all_acked = False
    return WaitVerdict("acked") if all_acked else WaitVerdict("pending")
