"""The proxy's LDS client: a thin `grpc.aio` transport around the pure SotW subscription.

It opens `ListenerDiscoveryService.StreamListeners` (plain LDS) or
`AggregatedDiscoveryService.StreamAggregatedResources` (ADS, listeners only) to the static
cluster named in the bootstrap, feeds each response to `SotwSubscription` and writes back the
ACK or NACK it produces. When the stream is lost, everything applied stays as it is (the apply
callback is simply not called), `connected_state` drops to 0, `update_failure` counts, and the
stream is re-opened after a jittered exponential back-off (500 ms doubling to 30 s, reset after
a stream that delivered a response); the new stream's first request carries the last accepted
version. Initialisation ends (`on_initialized`, once) on the first listener response, accepted
or rejected, or when `initial_fetch_timeout` (default 15 s, 0 = wait forever) expires.

Every stream attempt uses a fresh channel so that gRPC's own reconnect back-off (up to 120 s)
never adds to ours.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import grpc
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc

from xds_proxy.stats import Stats
from xds_proxy.xds.backoff import JitteredBackoff
from xds_proxy.xds.decode import LISTENER_TYPE_URL, ListenerValidator, decode_listeners
from xds_proxy.xds.sotw import SotwSubscription, SubscriptionStats
from xds_proxy.xds.source import XdsServer, lds_configured, lds_server

log = logging.getLogger("xds_proxy.xds")

ApplyListeners = Callable[[str, list[listener_pb2.Listener]], str | None]
"""(version_info, listeners in response order) -> None to ACK, or the NACK message."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # SotW responses with many listeners exceed gRPC's 4 MiB
USER_AGENT_NAME = "xds-proxy"
LDS_STATS_PREFIX = "listener_manager.lds."


class LdsClient:
    """Subscribes to listeners and keeps the subscription alive until cancelled."""

    def __init__(
        self,
        bootstrap: bootstrap_pb2.Bootstrap,
        stats: Stats,
        apply: ApplyListeners,
        on_initialized: Callable[[], None],
        rng: random.Random | None = None,
        validate: ListenerValidator | None = None,
    ) -> None:
        """Raises ConfigError (`FIELD_PATH: reason`) if the LDS source is not usable.

        `validate` (optional) checks each decoded listener's proto constraints; a listener it
        rejects rejects the whole response, as Envoy's resource decoder does.
        """
        self.server: XdsServer = lds_server(bootstrap)
        control_plane_prefix = (
            "control_plane." if self.server.aggregated else LDS_STATS_PREFIX + "control_plane."
        )
        self._stats = SubscriptionStats.create(stats, LDS_STATS_PREFIX, control_plane_prefix)
        self._subscription: SotwSubscription[listener_pb2.Listener] = SotwSubscription(
            LISTENER_TYPE_URL,
            client_node(bootstrap.node),
            self._stats,
            decode=lambda response: decode_listeners(response, validate),
            node_on_first_request_only=self.server.node_on_first_request_only,
        )
        self._apply = apply
        self._on_initialized = on_initialized
        self._initialized = False
        self._backoff = JitteredBackoff(rng or random.Random())

    @staticmethod
    def configured(bootstrap: bootstrap_pb2.Bootstrap) -> bool:
        """True when the bootstrap sets `dynamic_resources.lds_config`."""
        return lds_configured(bootstrap)

    @property
    def last_accepted_version(self) -> str:
        return self._subscription.last_accepted_version

    @property
    def connected(self) -> bool:
        return self._subscription.stream_up

    @property
    def initialized(self) -> bool:
        return self._initialized

    async def run(self) -> None:
        """Subscribe, and re-subscribe after every loss, until cancelled."""
        self._subscription.start()
        timer = None
        if self.server.initial_fetch_timeout_s is not None:
            timer = asyncio.get_running_loop().call_later(
                self.server.initial_fetch_timeout_s, self._initial_fetch_timed_out
            )
        try:
            while True:
                if await self._run_stream():
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                log.debug("lds: reconnecting to %s in %.3f s", self.server.target, delay)
                await asyncio.sleep(delay)
        finally:
            if timer is not None:
                timer.cancel()
            self._stats.connected_state.set(0)

    # -- one stream ---------------------------------------------------------------------------

    async def _run_stream(self) -> bool:
        """One stream from open to loss; True if it delivered at least one response."""
        delivered = False
        channel = grpc.aio.insecure_channel(
            self.server.target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.default_authority", self.server.authority),
                ("grpc.enable_retries", 0),
            ],
        )
        call = None
        try:
            call = self._open(channel)
            await call.write(self._subscription.on_stream_established())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    log.warning("lds: gRPC config stream to %s closed by the server", self._peer())
                    break
                delivered = True
                await self._handle(call, response)
        except grpc.aio.AioRpcError as error:
            log.warning(
                "lds: gRPC config stream to %s closed: %s, %s",
                self._peer(),
                error.code().value[0],
                error.details(),
            )
        except Exception as error:  # whatever ends the stream, keep the subscription alive
            log.warning("lds: gRPC config stream to %s failed: %r", self._peer(), error)
        finally:
            if call is not None:
                call.cancel()
            await channel.close(grace=None)
        self._subscription.on_stream_lost()
        return delivered

    def _open(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
        metadata = self.server.initial_metadata or None
        if self.server.aggregated:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            return stub.StreamAggregatedResources(metadata=metadata)
        return lds_pb2_grpc.ListenerDiscoveryServiceStub(channel).StreamListeners(metadata=metadata)

    async def _handle(
        self, call: grpc.aio.StreamStreamCall, response: discovery_pb2.DiscoveryResponse
    ) -> None:
        outcome = self._subscription.on_response(response, self._apply, time.time_ns() // 1_000_000)
        if outcome.request is None:
            log.warning(
                "lds: ignoring a response for type URL %s (not subscribed)", response.type_url
            )
            return
        if outcome.error is not None:
            log.warning("lds: gRPC config for %s rejected: %s", LISTENER_TYPE_URL, outcome.error)
        self._mark_initialized()
        await call.write(outcome.request)

    # -- initialisation -----------------------------------------------------------------------

    def _initial_fetch_timed_out(self) -> None:
        if self._initialized or self._subscription.responses_handled:
            return
        log.warning("lds: initial fetch timed out for %s", LISTENER_TYPE_URL)
        self._subscription.on_initial_fetch_timeout()
        self._mark_initialized()

    def _mark_initialized(self) -> None:
        if self._initialized:
            return
        self._initialized = True
        try:
            self._on_initialized()
        except Exception:  # the server's bug must not end the subscription
            log.exception("lds: on_initialized callback failed")

    def _peer(self) -> str:
        return f"{self.server.cluster_name} ({self.server.target})"


def client_node(node: base_pb2.Node) -> base_pb2.Node:
    """The bootstrap node as sent on the wire: Envoy fills in the user agent; so do we."""
    sent = base_pb2.Node()
    sent.CopyFrom(node)
    sent.user_agent_name = USER_AGENT_NAME
    sent.user_agent_version = _package_version()
    return sent


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("xds-proxy")
    except Exception:  # not installed (running from the source tree)
        return "0.1.0"
