"""State-of-the-world xDS subscription: the pure state machine (no I/O, no clock of its own).

Given the stream events (stream up, response received, stream lost, initial fetch timed out),
it produces exactly the `DiscoveryRequest`s Envoy's `GrpcMuxImpl` sends and keeps the
subscription stats of Envoy's `GrpcSubscriptionImpl`:

- the first request of every stream: wildcard (no resource names), the node, the type URL,
  `version_info` = last accepted version ("" before any), empty `response_nonce`;
- after a response: ACK = the response's `version_info` and nonce; NACK = the last accepted
  version, the response's nonce and `error_detail{code: 13, message}` (message cut at 4096
  bytes like Envoy's `truncateGrpcStatusMessage`);
- a response for another type URL is ignored (no request), as Envoy does with a warning.

Stats (`<prefix>.` = `listener_manager.lds.` for LDS), as Envoy counts them:
`update_attempt` +1 when the subscription starts and +1 per outcome (accepted, rejected,
stream lost, initial fetch timeout) -- so it equals the requests sent on a healthy stream;
`update_success`, `update_rejected`, `update_failure` (stream lost), `init_fetch_timeout`;
`update_time` (ms since the epoch of the last accepted response), `version` (XXH64 of
version_info) and the text readout `version_text`, all moved only on ACK; and the
`control_plane.*` stats of the stream (`connected_state` 1 from stream start until it is
lost, `identifier`, `pending_requests`, `rate_limit_enforced`) under the scope the caller
chooses (Envoy: `<prefix>.control_plane.` for a plain gRPC subscription, `control_plane.`
for ADS).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import message

from xds_proxy.stats import Counter, Gauge, Stats, TextReadout
from xds_proxy.xds.decode import ResponseDecodeError
from xds_proxy.xxhash64 import xxhash64

GRPC_INTERNAL = 13
MAX_ERROR_MESSAGE_BYTES = 4096

R = TypeVar("R", bound=message.Message)

# (response) -> resources in response order; raises ResponseDecodeError to reject it all.
DecodeResources = Callable[[discovery_pb2.DiscoveryResponse], list[R]]
# (version_info, resources) -> None to accept, or the rejection message (may raise).
ApplyResources = Callable[[str, list[R]], str | None]


@dataclass(slots=True)
class SubscriptionStats:
    """Handles on the subscription's stats, created up front so they show as 0 like Envoy's."""

    update_attempt: Counter
    update_success: Counter
    update_rejected: Counter
    update_failure: Counter
    init_fetch_timeout: Counter
    update_time: Gauge
    version: Gauge
    version_text: TextReadout
    connected_state: Gauge
    control_plane_identifier: TextReadout
    pending_requests: Gauge
    rate_limit_enforced: Counter

    @classmethod
    def create(cls, stats: Stats, prefix: str, control_plane_prefix: str) -> SubscriptionStats:
        """`prefix` e.g. "listener_manager.lds."; `control_plane_prefix` e.g. "control_plane."."""
        return cls(
            update_attempt=stats.counter(prefix + "update_attempt"),
            update_success=stats.counter(prefix + "update_success"),
            update_rejected=stats.counter(prefix + "update_rejected"),
            update_failure=stats.counter(prefix + "update_failure"),
            init_fetch_timeout=stats.counter(prefix + "init_fetch_timeout"),
            update_time=stats.gauge(prefix + "update_time"),
            version=stats.gauge(prefix + "version"),
            version_text=stats.text_readout(prefix + "version_text"),
            connected_state=stats.gauge(control_plane_prefix + "connected_state"),
            control_plane_identifier=stats.text_readout(control_plane_prefix + "identifier"),
            pending_requests=stats.gauge(control_plane_prefix + "pending_requests"),
            rate_limit_enforced=stats.counter(control_plane_prefix + "rate_limit_enforced"),
        )


@dataclass(frozen=True, slots=True)
class ResponseOutcome:
    """What handling one response produced: the request to send back (None: ignored)."""

    request: discovery_pb2.DiscoveryRequest | None
    accepted: bool
    error: str | None = None


def truncate_error_message(text: str) -> str:
    """Envoy's `truncateGrpcStatusMessage`: at most 4096 bytes, then `...(truncated)`."""
    raw = text.encode()
    if len(raw) <= MAX_ERROR_MESSAGE_BYTES:
        return text
    return raw[:MAX_ERROR_MESSAGE_BYTES].decode(errors="ignore") + "...(truncated)"


def count_update(
    stats: SubscriptionStats, version_info: str, error: str | None, now_ms: int
) -> None:
    """One update outcome, as Envoy's `GrpcSubscriptionImpl` counts it (also for the local
    update a TTL expiry makes, whose version is "")."""
    stats.update_attempt.inc()
    if error is not None:
        stats.update_rejected.inc()
        return
    stats.update_success.inc()
    stats.update_time.set(now_ms)
    stats.version.set(xxhash64(version_info))
    stats.version_text.set(version_info)


class SubscriptionLifecycle:
    """What SotW and Delta subscriptions share: the node on requests, streams coming and
    going, and how Envoy counts attempts and failures across them."""

    def __init__(
        self,
        type_url: str,
        node: base_pb2.Node,
        stats: SubscriptionStats,
        node_on_first_request_only: bool,
    ) -> None:
        self.type_url = type_url
        self._node = node
        self._stats = stats
        self._node_on_first_request_only = node_on_first_request_only
        self.nonce = ""
        self.stream_up = False
        self.responses_handled = 0
        self._requests_on_stream = 0
        self._started = False

    def start(self) -> None:
        """The subscription begins (once, before the first stream); Envoy counts an attempt."""
        if not self._started:
            self._started = True
            self._stats.update_attempt.inc()

    def _stream_opened(self) -> None:
        self.start()
        self.stream_up = True
        self.nonce = ""
        self._requests_on_stream = 0
        self._stats.connected_state.set(1)

    def _stamp(self, request) -> None:
        """The node goes on every request (or only the stream's first, when configured)."""
        if not self._node_on_first_request_only or self._requests_on_stream == 0:
            request.node.CopyFrom(self._node)
        self._requests_on_stream += 1

    def on_stream_lost(self) -> None:
        """The stream failed or was closed by the server: keep everything, count a failure."""
        self.start()
        self.stream_up = False
        self.nonce = ""
        self._stats.connected_state.set(0)
        self._stats.update_failure.inc()
        self._stats.update_attempt.inc()

    def on_initial_fetch_timeout(self) -> None:
        """No response within `initial_fetch_timeout` of the start."""
        self._stats.init_fetch_timeout.inc()
        self._stats.update_attempt.inc()


class SotwSubscription(SubscriptionLifecycle, Generic[R]):
    """One wildcard SotW subscription of one type URL, across any number of streams."""

    def __init__(
        self,
        type_url: str,
        node: base_pb2.Node,
        stats: SubscriptionStats,
        decode: DecodeResources[R],
        node_on_first_request_only: bool = False,
    ) -> None:
        super().__init__(type_url, node, stats, node_on_first_request_only)
        self._decode = decode
        self.last_accepted_version = ""
        # None: a wildcard subscription (LDS, CDS); else the names asked for (RDS), in
        # Envoy's order: the newest first.
        self.resource_names: list[str] | None = None

    def change_names(self, names: list[str]) -> discovery_pb2.DiscoveryRequest | None:
        """A named subscription's names change: Envoy sends the new list in an ACK-shaped
        request (the last accepted version and the current nonce); None while no stream is up."""
        self.resource_names = list(names)
        if not self.stream_up:
            return None
        return self._request()

    # -- events -------------------------------------------------------------------------------

    def on_stream_established(self) -> discovery_pb2.DiscoveryRequest:
        """A new stream is open: returns its first request (last accepted version, no nonce)."""
        self._stream_opened()
        return self._request()

    def on_response(
        self,
        response: discovery_pb2.DiscoveryResponse,
        apply: ApplyResources[R],
        now_ms: int,
    ) -> ResponseOutcome:
        """Decode and apply one response; returns the ACK or NACK to send.

        `apply` runs only if every resource decoded; an exception from it becomes the NACK
        text, so a bug in one update cannot end the stream. `now_ms` (wall clock, ms since the
        epoch) sets `update_time`.
        """
        self._stats.connected_state.set(1)
        if response.HasField("control_plane"):
            self._stats.control_plane_identifier.set(response.control_plane.identifier)
        if response.type_url != self.type_url:
            return ResponseOutcome(request=None, accepted=False)
        self.responses_handled += 1
        error: str | None
        try:
            resources = self._decode(response)
        except ResponseDecodeError as decode_error:
            error = str(decode_error)
        else:
            try:
                error = apply(response.version_info, resources)
            except Exception as apply_error:  # reject, never crash the stream
                error = str(apply_error) or type(apply_error).__name__
        self.nonce = response.nonce
        count_update(self._stats, response.version_info, error, now_ms)
        if error is None:
            self.last_accepted_version = response.version_info
            return ResponseOutcome(request=self._request(), accepted=True)
        message_text = truncate_error_message(error)
        return ResponseOutcome(
            request=self._request(error_message=message_text), accepted=False, error=message_text
        )

    # -- requests -----------------------------------------------------------------------------

    def _request(self, error_message: str | None = None) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(
            version_info=self.last_accepted_version,
            response_nonce=self.nonce,
            type_url=self.type_url,
        )
        if self.resource_names is not None:
            request.resource_names.extend(self.resource_names)
        self._stamp(request)
        if error_message is not None:
            request.error_detail.code = GRPC_INTERNAL
            request.error_detail.message = error_message
        return request
