"""Delta xDS subscription: the pure state machine (no I/O, no clock of its own).

It produces exactly the `DeltaDiscoveryRequest`s Envoy 1.40 sends for a wildcard listener (or
cluster) subscription (recorded from the real binary against a fake server, DELTA_GRPC and
delta ADS alike):

- the first request of every stream: the node, the type URL, no resource names (the legacy
  wildcard form: neither `*` nor a name) and `initial_resource_versions` = every resource held,
  name -> version, from the responses accepted so far (empty on the very first stream);
- after a response: the type URL and `response_nonce` (no version: Delta has none); a NACK adds
  `error_detail{code: 13, message}`; nothing else changes, the per-resource versions included
  (a rejected resource is not held, so a reconnect asks for it again);
- the node on every request unless `set_node_on_first_message_only`.

Applying a response: `removed_resources` first, then the added/updated ones, in one call of
`apply(system_version_info, resources, removed_names)`. A resource without a body whose version
is the one held is a heartbeat: it refreshes its TTL and is not applied. TTL deadlines move on
accepted responses only; an expiry removes the resources as a local update with version "",
counted as an accepted update (Envoy: `update_success` +1, `version_text` "").

The stats are the SotW ones (`sotw.SubscriptionStats`), counted the same way, except that a
rejected Delta response adds 2 to `update_attempt` (measured on Envoy 1.40).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_proxy.xds.decode import DecodedResource, ResponseDecodeError
from xds_proxy.xds.sotw import (
    GRPC_INTERNAL,
    SubscriptionLifecycle,
    SubscriptionStats,
    count_update,
    truncate_error_message,
)
from xds_proxy.xds.ttl import TtlTracker

DecodeDelta = Callable[[discovery_pb2.DeltaDiscoveryResponse], list[DecodedResource]]
# (system_version_info, added/updated resources in order, removed names) -> None or NACK text.
ApplyDelta = Callable[[str, list, list[str]], str | None]


@dataclass(frozen=True, slots=True)
class DeltaOutcome:
    """What handling one response produced: the request to send back (None: ignored)."""

    request: discovery_pb2.DeltaDiscoveryRequest | None
    accepted: bool
    error: str | None = None


def safe_apply(apply: ApplyDelta, version: str, resources: list, removed: list[str]) -> str | None:
    """Run the callback; an exception becomes the NACK text (it must not end the stream)."""
    try:
        return apply(version, resources, removed)
    except Exception as apply_error:
        return str(apply_error) or type(apply_error).__name__


class DeltaSubscription(SubscriptionLifecycle):
    """One wildcard Delta subscription of one type URL, across any number of streams."""

    def __init__(
        self,
        type_url: str,
        node: base_pb2.Node,
        stats: SubscriptionStats,
        decode: DecodeDelta,
        node_on_first_request_only: bool = False,
    ) -> None:
        super().__init__(type_url, node, stats, node_on_first_request_only)
        self._decode = decode
        self.resource_versions: dict[str, str] = {}  # what we hold: name -> version
        self.last_accepted_version = ""  # system_version_info: informational in Delta
        self.ttl = TtlTracker()
        # None: a wildcard subscription (LDS, CDS); else the names subscribed to (RDS).
        self.resource_names: list[str] | None = None

    def change_names(self, names: list[str]) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """A named subscription's names change: the names added go in
        `resource_names_subscribe`, those dropped in `resource_names_unsubscribe` (no nonce:
        it acknowledges nothing); None while no stream is up or nothing changed."""
        before = self.resource_names or []
        self.resource_names = list(names)
        added = [name for name in names if name not in before]
        dropped = [name for name in before if name not in names]
        for name in dropped:
            self.resource_versions.pop(name, None)
        if not self.stream_up or not (added or dropped):
            return None
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=self.type_url,
            resource_names_subscribe=added,
            resource_names_unsubscribe=dropped,
        )
        self._stamp(request)
        return request

    # -- events -------------------------------------------------------------------------------

    def on_stream_established(self) -> discovery_pb2.DeltaDiscoveryRequest:
        """A new stream is open: its first request names every resource held, with version."""
        self._stream_opened()
        request = self._request()
        if self.resource_names is not None:
            request.resource_names_subscribe.extend(self.resource_names)
        for name in sorted(self.resource_versions):
            request.initial_resource_versions[name] = self.resource_versions[name]
        return request

    def on_response(
        self,
        response: discovery_pb2.DeltaDiscoveryResponse,
        apply: ApplyDelta,
        now_ms: int,
        now: float,
    ) -> DeltaOutcome:
        """Decode and apply one response; returns the ACK or NACK to send.

        `now_ms` (wall clock, ms since the epoch) sets `update_time`; `now` (the TTL clock,
        seconds) starts the TTL of the resources that carry one.
        """
        self._stats.connected_state.set(1)
        if response.HasField("control_plane"):
            self._stats.control_plane_identifier.set(response.control_plane.identifier)
        if response.type_url != self.type_url:
            return DeltaOutcome(request=None, accepted=False)
        self.responses_handled += 1
        self.nonce = response.nonce
        removed = list(response.removed_resources)
        error: str | None
        try:
            decoded = self._decode(response)
            updates = self._updates(decoded)
        except ResponseDecodeError as decode_error:
            error = str(decode_error)
        else:
            error = safe_apply(apply, response.system_version_info, updates, removed)
        count_update(self._stats, response.system_version_info, error, now_ms)
        if error is not None:
            self._stats.update_attempt.inc()  # Envoy 1.40 counts a Delta rejection twice
            message_text = truncate_error_message(error)
            request = self._request(error_message=message_text)
            return DeltaOutcome(request=request, accepted=False, error=message_text)
        self.last_accepted_version = response.system_version_info
        for name in removed:
            self.resource_versions.pop(name, None)
        self.ttl.clear(removed)
        for resource in decoded:
            self.resource_versions[resource.name] = resource.version
            self.ttl.refresh(resource.name, resource.ttl_s, now)
        return DeltaOutcome(request=self._request(), accepted=True)

    def on_ttl_expired(self, apply: ApplyDelta, now_ms: int, now: float) -> list[str]:
        """Remove the resources whose TTL ran out (a local update); returns their names."""
        expired = self.ttl.pop_expired(now)
        if not expired:
            return []
        for name in expired:
            self.resource_versions.pop(name, None)
        count_update(self._stats, "", safe_apply(apply, "", [], expired), now_ms)
        return expired

    # -- helpers ------------------------------------------------------------------------------

    def _updates(self, decoded: list[DecodedResource]) -> list:
        """The resources to apply: heartbeats left out, a body-less non-heartbeat refused."""
        bodies: list = []
        for resource in decoded:
            if resource.body is not None:
                bodies.append(resource.body)
                continue
            held = self.resource_versions.get(resource.name)
            if held is None or held != resource.version:
                raise ResponseDecodeError(
                    f"resource {resource.name} has no body and is not a heartbeat "
                    f"(version '{resource.version}', held '{held or ''}')"
                )
        return bodies

    def _request(self, error_message: str | None = None) -> discovery_pb2.DeltaDiscoveryRequest:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=self.type_url, response_nonce=self.nonce
        )
        self._stamp(request)
        if error_message is not None:
            request.error_detail.code = GRPC_INTERNAL
            request.error_detail.message = error_message
        return request
