"""The gRPC side every subscription client shares (LDS, CDS): a stream per attempt, re-opened
after a jittered back-off, initialisation on the first response or `initial_fetch_timeout`.

A subclass says which stream to open (`_open`) and what to do with each response
(`_handle`, which writes the ACK or NACK). Every attempt uses a fresh channel, so that gRPC's
own reconnect back-off (up to 120 s) never adds to ours and TLS files are read afresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc

from xds_proxy.xds.backoff import JitteredBackoff
from xds_proxy.xds.sotw import SubscriptionLifecycle, SubscriptionStats
from xds_proxy.xds.source import XdsServer

log = logging.getLogger("xds_proxy.xds")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # SotW responses with many resources exceed gRPC's 4 MiB


class SubscriptionClient:
    """Keeps one subscription alive until cancelled; `name` prefixes its log lines."""

    name = "xds"

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
        self._backoff = JitteredBackoff(rng or random.Random())

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
                log.debug("%s: reconnecting to %s in %.3f s", self.name, self.server.target, delay)
                await asyncio.sleep(delay)
        finally:
            if timer is not None:
                timer.cancel()
            self._stopped()
            self._stats.connected_state.set(0)

    # -- what a subclass provides --------------------------------------------------------------

    def _open(self, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
        raise NotImplementedError

    async def _handle(self, call: grpc.aio.StreamStreamCall, response: Any) -> None:
        raise NotImplementedError

    def _stopped(self) -> None:
        """The subscription ends (cancelled): cancel the subclass's own timers."""

    # -- one stream ---------------------------------------------------------------------------

    async def _run_stream(self) -> bool:
        """One stream from open to loss; True if it delivered at least one response."""
        delivered = False
        call = None
        channel = None
        try:
            channel = self._channel()
            call = self._open(channel)
            await call.write(self._subscription.on_stream_established())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    log.warning(
                        "%s: gRPC config stream to %s closed by the server", self.name, self._peer()
                    )
                    break
                delivered = True
                await self._handle(call, response)
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
            if call is not None:
                call.cancel()
            if channel is not None:
                await channel.close(grace=None)
        self._subscription.on_stream_lost()
        return delivered

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
