"""The proxy's LDS client: a thin `grpc.aio` transport around the pure subscriptions.

It opens `ListenerDiscoveryService.StreamListeners` / `DeltaListeners` (plain LDS) or
`AggregatedDiscoveryService.StreamAggregatedResources` / `DeltaAggregatedResources` (ADS,
listeners only) to the static cluster named in the bootstrap -- over TLS or mTLS when the
cluster has a `transport_socket` -- feeds each response to `SotwSubscription` or
`DeltaSubscription` and writes back the ACK or NACK it produces. When the stream is lost,
everything applied stays as it is (the apply callback is simply not called),
`connected_state` drops to 0, `update_failure` counts, and the
stream is re-opened after a jittered exponential back-off (500 ms doubling to 30 s, reset after
a stream that delivered a response); the new stream's first request carries the last accepted
version. Initialisation ends (`on_initialized`, once) on the first listener response, accepted
or rejected, or when `initial_fetch_timeout` (default 15 s, 0 = wait forever) expires.

The stream handling, back-off and initialisation are `transport.SubscriptionClient`'s.

Resource TTL: one timer for the earliest deadline; when it fires the expired listeners are
removed (`apply_delta(version "", [], expired)`), counted as an accepted update like Envoy.
In SotW a `Resource` without a body whose version is the one held is a heartbeat: it
refreshes the TTL and the held listener is applied unchanged (Envoy 1.40 decodes it as an
empty listener and NACKs, keeping the old one and refreshing the TTL all the same).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc

from xds_proxy.config.warm import warm_listener_gate
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Stats
from xds_proxy.xds.decode import (
    LISTENER_TYPE_URL,
    DecodedListener,
    ListenerValidator,
    Unchanged,
    decode_delta_listeners,
    decode_sotw_listeners,
)
from xds_proxy.xds.delta import ApplyDelta, DeltaSubscription, safe_apply
from xds_proxy.xds.sotw import count_update
from xds_proxy.xds.source import lds_configured, lds_server
from xds_proxy.xds.transport import SubscriptionClient, new_subscription
from xds_proxy.xds.ttl import TtlTracker

log = logging.getLogger("xds_proxy.xds")

ApplyListeners = Callable[[str, list[listener_pb2.Listener]], str | None]
"""(version_info, listeners in response order) -> None to ACK, or the NACK message."""

LDS_STATS_PREFIX = "listener_manager.lds."


class LdsClient(SubscriptionClient):
    """Subscribes to listeners and keeps the subscription alive until cancelled."""

    name = "lds"
    plain_stub = lds_pb2_grpc.ListenerDiscoveryServiceStub
    sotw_method = "StreamListeners"
    delta_method = "DeltaListeners"

    def __init__(
        self,
        bootstrap: bootstrap_pb2.Bootstrap,
        stats: Stats,
        apply: ApplyListeners,
        on_initialized: Callable[[], None],
        rng: random.Random | None = None,
        validate: ListenerValidator | None = None,
        apply_delta: ApplyDelta | None = None,
        clock: Callable[[], float] = time.monotonic,
        applied: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Raises ConfigError (`FIELD_PATH: reason`) if the LDS source is not usable.

        `apply_delta(version, listeners, removed_names)` applies Delta responses and TTL
        expiries; it is required for a Delta source. `validate` (optional) checks each decoded
        listener's proto constraints; a listener it rejects rejects the whole response, as
        Envoy's resource decoder does. `clock` (seconds) times resource TTLs. `applied()`
        (optional) is awaited before an ACK or NACK goes out, so that the ACK means "serving".
        """
        server = lds_server(bootstrap)
        if server.delta and apply_delta is None:
            raise ConfigError("dynamic_resources: DELTA_GRPC needs the server's apply_delta")
        # A SotW push sends every listener again: those sent byte for byte as before are the
        # listener objects decoded then (no parse; the manager sees at once they are held).
        unchanged: Unchanged[listener_pb2.Listener] = Unchanged()
        stats_handles, subscription = new_subscription(
            server,
            bootstrap.node,
            stats,
            LDS_STATS_PREFIX,
            LISTENER_TYPE_URL,
            decode_sotw=lambda response: decode_sotw_listeners(response, validate, unchanged),
            decode_delta=lambda response: decode_delta_listeners(response, validate),
        )
        super().__init__(server, stats_handles, subscription, on_initialized, rng)
        self._apply = apply
        self._apply_delta = apply_delta
        self.applying_nonce = ""  # the nonce of the response being applied
        self._applied = applied
        self._clock = clock
        # SotW TTL bookkeeping (Delta keeps its own in the subscription).
        self._sotw_ttl = TtlTracker()
        # The last accepted response's resources and listeners; the name -> (version,
        # listener) map of them is made only when a heartbeat or a TTL needs it (`_held`).
        self._sotw_accepted: tuple[list[DecodedListener], list[listener_pb2.Listener]] = ([], [])
        self._sotw_held: dict[str, tuple[str, listener_pb2.Listener]] | None = {}
        self._ttl_timer: asyncio.TimerHandle | None = None

    def started(self) -> None:
        super().started()
        # While the stream opens and waits for the first response: the LDS gate is compiled
        # then rather than between that response and its ACK (config/warm.py).
        asyncio.get_running_loop().call_soon(warm_listener_gate)

    @staticmethod
    def configured(bootstrap: bootstrap_pb2.Bootstrap) -> bool:
        """True when the bootstrap sets `dynamic_resources.lds_config`."""
        return lds_configured(bootstrap)

    @property
    def resource_versions(self) -> dict[str, str]:
        """Delta: the listeners held, name -> version (sent on reconnect); SotW: empty."""
        if isinstance(self._subscription, DeltaSubscription):
            return dict(self._subscription.resource_versions)
        return {}

    def _stopped(self) -> None:
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()

    async def _handle(
        self, response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
    ) -> discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest | None:
        now_ms = time.time_ns() // 1_000_000
        self.applying_nonce = response.nonce  # for the drains this response causes
        if isinstance(self._subscription, DeltaSubscription):
            assert self._apply_delta is not None
            outcome = self._subscription.on_response(
                response, self._apply_delta, now_ms, self._clock()
            )
        else:
            outcome = self._subscription.on_response(response, self._apply_sotw, now_ms)
        self.applying_nonce = ""
        self._arm_ttl_timer()
        if outcome.request is None:
            log.warning(
                "lds: ignoring a response for type URL %s (not subscribed)", response.type_url
            )
            return None
        if outcome.error is not None and not self.repeated_rejection:
            kind = "gRPC" if self.server.rest is None else "REST"
            log.warning(
                "lds: %s config for %s rejected: %s", kind, LISTENER_TYPE_URL, outcome.error
            )
        if self._applied is not None:
            await self._applied()
        self._mark_initialized()
        return outcome.request

    # -- SotW apply and resource TTL ----------------------------------------------------------

    def _apply_sotw(self, version_info: str, decoded: list[DecodedListener]) -> str | None:
        """TTLs move as the resources are read (Envoy: even if the response is then
        rejected); heartbeats stand for the listener held; then the server's apply."""
        now = self._clock()
        listeners: list[listener_pb2.Listener] = []
        ttl = self._sotw_ttl
        for resource in decoded:
            if resource.ttl_s is not None or len(ttl):  # none held and none given: nothing
                ttl.refresh(resource.name, resource.ttl_s, now)
            if resource.body is not None:
                listeners.append(resource.body)
                continue
            held = self._held().get(resource.name)
            if held is not None and held[0] == resource.version:
                listeners.append(held[1])  # a heartbeat: unchanged
            else:
                listeners.append(listener_pb2.Listener(name=resource.name))  # rejected later
        if len(ttl):
            present = {resource.name for resource in decoded}
            ttl.clear([name for name in list(self._held()) if name not in present])
        error = self._apply(version_info, listeners)
        if error is None:
            self._sotw_accepted = (decoded, listeners)
            self._sotw_held = None
        return error

    def _held(self) -> dict[str, tuple[str, listener_pb2.Listener]]:
        """The listeners of the last accepted response: name -> (its `Resource` version,
        listener)."""
        if self._sotw_held is None:
            decoded, listeners = self._sotw_accepted
            self._sotw_held = {
                resource.name: (resource.version, listener)
                for resource, listener in zip(decoded, listeners, strict=True)
            }
        return self._sotw_held

    def _arm_ttl_timer(self) -> None:
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
            self._ttl_timer = None
        tracker = (
            self._subscription.ttl
            if isinstance(self._subscription, DeltaSubscription)
            else self._sotw_ttl
        )
        deadline = tracker.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self._clock())
            self._ttl_timer = asyncio.get_running_loop().call_later(delay, self._ttl_expired)

    def _ttl_expired(self) -> None:
        self._ttl_timer = None
        now, now_ms = self._clock(), time.time_ns() // 1_000_000
        if isinstance(self._subscription, DeltaSubscription):
            assert self._apply_delta is not None
            expired = self._subscription.on_ttl_expired(self._apply_delta, now_ms, now)
        else:
            expired = self._expire_sotw(now, now_ms)
        if expired:
            log.info("lds: TTL expired for listener(s) %s: removing", ", ".join(expired))
        self._arm_ttl_timer()

    def _expire_sotw(self, now: float, now_ms: int) -> list[str]:
        expired = self._sotw_ttl.pop_expired(now)
        if not expired:
            return []
        for name in expired:
            self._held().pop(name, None)
        if self._apply_delta is not None:
            error = safe_apply(self._apply_delta, "", [], expired)
        else:  # without the Delta path: the held set minus the expired, as a SotW update
            remaining = [listener for _, listener in self._held().values()]
            error = safe_apply(lambda v, added, _removed: self._apply(v, added), "", remaining, [])
        count_update(self._stats, "", error, now_ms)
        return expired
