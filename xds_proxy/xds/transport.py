"""The gRPC side every subscription client shares (LDS, CDS): a stream per attempt, re-opened
after a jittered back-off, initialisation on the first response or `initial_fetch_timeout`.

An `XdsStream` carries one subscription (plain LDS or CDS) or several (ADS: Envoy multiplexes
every type on one aggregated stream). Over ADS the subscriptions go in the order they were
added -- CDS, then LDS once CDS has initialised -- so each new stream asks for clusters first
and a response is handled only after every earlier response on the stream, whatever its type:
a listener pushed together with the cluster it names finds that cluster applied.

A subscription (`SubscriptionClient` subclass) says which stream to open (`_open`) and what to
do with each response (`_handle`, which returns the ACK or NACK). Every attempt uses a fresh
channel, so that gRPC's own reconnect back-off (up to 120 s) never adds to ours and TLS files
are read afresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc

from xds_proxy import __version__
from xds_proxy.lazy import lazy_import
from xds_proxy.stats import Stats
from xds_proxy.xds.backoff import JitteredBackoff
from xds_proxy.xds.delta import DecodeDelta, DeltaSubscription
from xds_proxy.xds.sotw import (
    DecodeResources,
    SotwSubscription,
    SubscriptionLifecycle,
    SubscriptionStats,
)
from xds_proxy.xds.source import XdsServer

if TYPE_CHECKING:
    from xds_proxy.xds import rest
else:  # REST sources are rare: loaded by the first one (xds_proxy/lazy.py)
    rest = lazy_import("xds_proxy.xds.rest")

log = logging.getLogger("xds_proxy.xds")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # SotW responses with many resources exceed gRPC's 4 MiB
USER_AGENT_NAME = "xds-proxy"


def client_node(node: base_pb2.Node) -> base_pb2.Node:
    """The bootstrap node as sent on the wire: Envoy fills in the user agent; so do we."""
    sent = base_pb2.Node()
    sent.CopyFrom(node)
    sent.user_agent_name = USER_AGENT_NAME
    sent.user_agent_version = __version__
    return sent


def new_subscription(
    server: XdsServer,
    node: base_pb2.Node,
    stats: Stats,
    stats_prefix: str,
    type_url: str,
    decode_sotw: DecodeResources[Any],
    decode_delta: DecodeDelta,
) -> tuple[SubscriptionStats, SotwSubscription[Any] | DeltaSubscription]:
    """The stat handles and the pure subscription (SotW or Delta, as the source says) of one
    resource type. Over ADS the connection state is the shared `control_plane.*`; a plain
    source has its own under `<stats_prefix>control_plane.`."""
    control_plane_prefix = (
        "control_plane." if server.aggregated else stats_prefix + "control_plane."
    )
    if server.rest is not None:
        stats_handles = rest.rest_stats(stats, stats_prefix)
    else:
        stats_handles = SubscriptionStats.create(stats, stats_prefix, control_plane_prefix)
    sent_node = client_node(node)
    first_only = server.node_on_first_request_only
    if server.delta:
        return stats_handles, DeltaSubscription(
            type_url, sent_node, stats_handles, decode_delta, first_only
        )
    return stats_handles, SotwSubscription(
        type_url, sent_node, stats_handles, decode_sotw, first_only
    )


class SubscriptionClient:
    """One type URL's subscription; `name` prefixes its log lines."""

    name = "xds"
    repeated_rejection = False  # REST: this response is the one rejected last (log it once)

    def __init__(
        self,
        server: XdsServer,
        stats: SubscriptionStats,
        subscription: SubscriptionLifecycle,
        on_initialized: Callable[[], None],
        rng: random.Random | None,
    ) -> None:
        self.server = server
        self._stats = stats
        self._subscription: Any = subscription
        self._on_initialized = on_initialized
        self._initialized = False
        self._rng = rng
        self._fetch_timer: asyncio.TimerHandle | None = None
        self.stream: XdsStream | None = None  # the stream that carries it, once added

    @property
    def type_url(self) -> str:
        return self._subscription.type_url

    @property
    def last_accepted_version(self) -> str:
        return self._subscription.last_accepted_version

    @property
    def connected(self) -> bool:
        return self._subscription.stream_up

    @property
    def initialized(self) -> bool:
        return self._initialized

    def _outcome(self, response: Any) -> Any:
        """Feed a response to the SotW or Delta state machine with the subclass's
        `_apply_sotw(version, resources)` / `_apply_delta(version, resources, removed)`; log
        what Envoy logs for an ignored or rejected response. The outcome's `request` is the ACK
        or NACK (None: the response was ignored)."""
        now_ms = time.time_ns() // 1_000_000
        if isinstance(self._subscription, DeltaSubscription):
            outcome = self._subscription.on_response(
                response,
                self._apply_delta,
                now_ms,
                time.monotonic(),  # type: ignore[attr-defined]
            )
        else:
            outcome = self._subscription.on_response(response, self._apply_sotw, now_ms)  # type: ignore[attr-defined]
        if outcome.request is None:
            log.warning("%s: ignoring a response for type URL %s", self.name, response.type_url)
        elif outcome.error is not None and not self.repeated_rejection:
            log.warning(
                "%s: %s config for %s rejected: %s",
                self.name,
                "gRPC" if self.server.rest is None else "REST",
                self.type_url,
                outcome.error,
            )
        return outcome

    async def run(self) -> None:
        """Subscribe on a stream of its own, re-subscribing after every loss, until cancelled
        (a REST source: poll, `xds.rest`)."""
        if self.server.rest is not None:
            await rest.RestPoller(self, self._rng).run()
            return
        stream = XdsStream(self.server, self._rng)
        stream.add(self)
        await stream.run()

    # -- what a subclass provides (and the stream it opens) ------------------------------------

    # The plain (non-ADS) service: its stub class and its SotW and Delta methods.
    plain_stub: Callable[[grpc.aio.Channel], Any]
    sotw_method: str
    delta_method: str

    def _open(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
        """The stream this subscription's source names: ADS or the plain service, SotW or
        Delta."""
        if self.server.aggregated:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            method = (
                "DeltaAggregatedResources" if self.server.delta else "StreamAggregatedResources"
            )
        else:
            stub = self.plain_stub(channel)
            method = self.delta_method if self.server.delta else self.sotw_method
        return getattr(stub, method)(metadata=self.server.initial_metadata or None)

    async def _handle(self, response: Any) -> Any:
        """Apply one response of this type; returns the ACK/NACK to send (None: nothing)."""
        raise NotImplementedError

    def _stopped(self) -> None:
        """The subscription ends (cancelled): cancel the subclass's own timers."""

    # -- lifecycle, driven by the stream ------------------------------------------------------

    def started(self) -> None:
        """The subscription begins: Envoy counts an attempt and starts the initial fetch timer."""
        self._subscription.start()
        if self.server.initial_fetch_timeout_s is not None:
            self._fetch_timer = asyncio.get_running_loop().call_later(
                self.server.initial_fetch_timeout_s, self._initial_fetch_timed_out
            )

    def stream_lost(self) -> None:
        """The stream failed or was closed: the subscription counts it."""
        self._subscription.on_stream_lost()

    def stopped(self) -> None:
        if self._fetch_timer is not None:
            self._fetch_timer.cancel()
        self._stopped()
        self._stats.connected_state.set(0)

    # -- initialisation -----------------------------------------------------------------------

    def _initial_fetch_timed_out(self) -> None:
        if self._initialized or self._subscription.responses_handled:
            return
        log.warning("%s: initial fetch timed out for %s", self.name, self._subscription.type_url)
        self._subscription.on_initial_fetch_timeout()
        self._mark_initialized()

    def _mark_initialized(self) -> None:
        if self._initialized:
            return
        self._initialized = True
        try:
            self._on_initialized()
        except Exception:  # the server's bug must not end the subscription
            log.exception("%s: on_initialized callback failed", self.name)


class XdsStream:
    """One gRPC stream (re-opened after every loss) carrying one or more subscriptions."""

    def __init__(self, server: XdsServer, rng: random.Random | None = None) -> None:
        self.server = server
        self._subscriptions: list[SubscriptionClient] = []
        self._backoff = JitteredBackoff(rng or random.Random(), *server.backoff_ms)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._write_lock = asyncio.Lock()  # one write at a time, in the order asked
        self._writes: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return "ads" if len(self._subscriptions) > 1 else self._subscriptions[0].name

    def add(self, subscription: SubscriptionClient) -> None:
        """Start `subscription` on this stream; if a stream is up, its first request goes now."""
        subscription.started()
        subscription.stream = self
        self._subscriptions.append(subscription)
        call = self._call
        if call is not None:
            first = subscription._subscription.on_stream_established()
            task = asyncio.ensure_future(self._write(call, first))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    def send(self, request: Any) -> None:
        """Write a request now if a stream is up (after every write asked for before);
        without a stream it is dropped: the next stream's first requests say it all."""
        call = self._call
        if call is None:
            return
        task = asyncio.ensure_future(self._write(call, request))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def run(self) -> None:
        """Subscribe, and re-subscribe after every loss, until cancelled."""
        try:
            while True:
                if await self._run_stream():
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                log.debug("%s: reconnecting to %s in %.3f s", self.name, self.server.target, delay)
                await asyncio.sleep(delay)
        finally:
            for subscription in self._subscriptions:
                subscription.stopped()

    async def _write(self, call: grpc.aio.StreamStreamCall, request: Any) -> None:
        async with self._write_lock:
            try:
                await call.write(request)
            except Exception as error:  # the reader sees the stream end and reconnects
                log.debug("%s: write failed: %r", self.name, error)

    async def _run_stream(self) -> bool:
        """One stream from open to loss; True if it delivered at least one response."""
        delivered = False
        call = None
        channel = None
        try:
            channel = self._channel()
            call = self._subscriptions[0]._open(channel)
            self._call = call
            for subscription in list(self._subscriptions):  # in order: CDS before LDS
                await self._write(call, subscription._subscription.on_stream_established())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    log.warning(
                        "%s: gRPC config stream to %s closed by the server", self.name, self._peer()
                    )
                    break
                delivered = True
                request = await self._subscription_for(response.type_url)._handle(response)
                if request is not None:
                    await self._write(call, request)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "%s: gRPC config stream to %s closed: %s, %s",
                self.name,
                self._peer(),
                error.code().value[0],
                error.details(),
            )
        except Exception as error:  # whatever ends the stream, keep the subscription alive
            log.warning("%s: gRPC config stream to %s failed: %r", self.name, self._peer(), error)
        finally:
            self._call = None
            if call is not None:
                call.cancel()
            if channel is not None:
                await channel.close(grace=None)
        for subscription in self._subscriptions:
            subscription.stream_lost()
        return delivered

    def _subscription_for(self, type_url: str) -> SubscriptionClient:
        """The subscription of `type_url`; an unknown type goes to the first, which ignores it
        with a warning (as Envoy's mux does for a type nobody watches)."""
        for subscription in self._subscriptions:
            if subscription.type_url == type_url:
                return subscription
        return self._subscriptions[0]

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.default_authority", self.server.authority),
            ("grpc.enable_retries", 0),
        ]
        tls = self.server.tls
        if tls is None:
            return grpc.aio.insecure_channel(self.server.target, options=options)
        options += tls.channel_options(self.server.target)
        return grpc.aio.secure_channel(self.server.target, tls.credentials(), options=options)

    def _peer(self) -> str:
        return f"{self.server.cluster_name} ({self.server.target})"
