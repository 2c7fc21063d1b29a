"""REST xDS subscriptions (`api_type: REST`): a poller that drives a subscription client's
pure SotW state machine as Envoy's `HttpSubscriptionImpl` does.

Any `transport.SubscriptionClient` whose source is REST runs here instead of on a gRPC stream
(LDS, CDS, RDS, and whatever type comes next): one poller per subscription, one keep-alive
HTTP/1.1 connection each (`rest_http.HttpClient`) to the first endpoint of the static cluster
named in `cluster_names`, `Host` = that cluster's name. What a poll sends and what its
answer means is `rest_poll`'s. A 200's JSON is decoded in a worker thread
(`asyncio.to_thread`), so a large response does not pause serving while it parses; it is
then applied through the client's `_handle`, exactly as a gRPC response is (same decode
rules, same apply, same stats and config_dump, `applied()` awaited before the next poll).

Stats, as Envoy counts them for REST: `update_attempt` +1 per poll (the subscription's start
counts the first; each answer counts the next), `update_success` / `update_rejected` per
applied 200, `update_failure` per failed fetch; a 304 moves only `update_attempt`. Envoy's
REST subscriptions have no `control_plane.*` stats; neither do ours. Initialisation ends on
the first applied 200 or at `initial_fetch_timeout`, never on a failed fetch (Envoy 1.40
keeps LDS, CDS and a warming listener's RDS waiting through failed fetches too).

Logs: one warning per failed fetch whose reason differs from the last one (a control plane
that stays down logs once, then at debug level until it answers), and one rejection line per
distinct rejected body (sovereign has no NACK handling: it sends the rejected config again on
every poll; it is applied again, and counted again, as Envoy does, but logged once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from envoy.service.discovery.v3 import discovery_pb2

from xds_proxy.stats import Stats
from xds_proxy.xds.rest_http import HttpClient, HttpFailure
from xds_proxy.xds.rest_poll import (
    FetchFailed,
    body_digest,
    decode_response,
    discovery_path,
    next_delay,
    request_body,
)
from xds_proxy.xds.sotw import SubscriptionStats
from xds_proxy.xds.source import XdsServer

log = logging.getLogger("xds_proxy.xds")

MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # as the gRPC side's MAX_MESSAGE_BYTES


class PolledClient(Protocol):
    """What the poller uses of a `transport.SubscriptionClient`."""

    name: str
    server: XdsServer
    repeated_rejection: bool
    _subscription: Any
    _stats: SubscriptionStats

    @property
    def type_url(self) -> str: ...

    def started(self) -> None: ...

    def stopped(self) -> None: ...

    def stream_lost(self) -> None: ...

    async def _handle(self, response: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class RestHooks:
    """What a poll that applies nothing counts (RDS counts per route configuration name)."""

    not_modified: Callable[[], None]  # a 304
    failed: Callable[[], None]  # a failed fetch


def default_hooks(client: PolledClient) -> RestHooks:
    """LDS, CDS: the subscription's own stats (a failed fetch counts as a lost stream)."""
    return RestHooks(not_modified=client._stats.update_attempt.inc, failed=client.stream_lost)


def rest_stats(stats: Stats, prefix: str) -> SubscriptionStats:
    """A REST subscription's stats: the update ones under `prefix`; it has no stream, and
    Envoy no `control_plane.*` for it: those handles are kept off the stats store."""
    off_store = SubscriptionStats.create(Stats(), prefix, "control_plane.")
    return dataclasses.replace(
        off_store,
        update_attempt=stats.counter(prefix + "update_attempt"),
        update_success=stats.counter(prefix + "update_success"),
        update_rejected=stats.counter(prefix + "update_rejected"),
        update_failure=stats.counter(prefix + "update_failure"),
        init_fetch_timeout=stats.counter(prefix + "init_fetch_timeout"),
        update_time=stats.gauge(prefix + "update_time"),
        version=stats.gauge(prefix + "version"),
        version_text=stats.text_readout(prefix + "version_text"),
    )


class RestPoller:
    """Polls for one subscription until cancelled."""

    def __init__(
        self,
        client: PolledClient,
        rng: random.Random | None = None,
        hooks: RestHooks | None = None,
    ) -> None:
        rest = client.server.rest
        if rest is None:
            raise ValueError("RestPoller needs a REST source")
        self._client = client
        self._rest = rest
        self._rng = rng or random.Random()
        self._hooks = hooks or default_hooks(client)
        self._path = discovery_path(client.type_url)
        self._http = HttpClient(rest.host, rest.port, MAX_RESPONSE_BYTES)
        self._last_failure: str | None = None
        self._rejected_digest: bytes | None = None
        self._unknown_fields_digest: bytes | None = None

    async def run(self) -> None:
        client = self._client
        client.started()
        request = client._subscription.on_stream_established()
        try:
            while True:
                try:
                    request = await self.poll(request)
                except Exception as error:  # a bug in one answer's handling ends no subscription
                    log.exception("%s: REST poll for %s failed", self._client.name, self._path)
                    self._failed(f"{type(error).__name__}: {error}")
                await asyncio.sleep(next_delay(self._rest.refresh_delay_s, self._rng))
        finally:
            self._http.close()
            client.stopped()

    async def poll(self, request: discovery_pb2.DiscoveryRequest) -> discovery_pb2.DiscoveryRequest:
        """One poll; returns the request the next one sends."""
        client = self._client
        try:
            status, body = await self._http.post(
                self._path,
                client.server.authority,
                request_body(request),
                self._rest.request_timeout_s,
            )
            if status == 304:
                self._answered()
                self._hooks.not_modified()
                return request
            if status != 200:
                raise FetchFailed(f"HTTP status {status}")
            digest = body_digest(body)
            response, skipped_unknown = await asyncio.to_thread(
                decode_response, body, client.type_url
            )
        except (HttpFailure, FetchFailed) as error:
            self._failed(str(error))
            return request
        self._answered()
        if skipped_unknown and digest != self._unknown_fields_digest:
            log.warning(
                "%s: REST config for %s: unknown fields ignored (version %s)",
                client.name,
                self._path,
                response.version_info,
            )
        self._unknown_fields_digest = digest if skipped_unknown else None
        client.repeated_rejection = digest == self._rejected_digest
        try:
            answer = await client._handle(response)
        finally:
            client.repeated_rejection = False
        if answer is None:  # not this subscription's type (cannot happen: the type is set)
            self._failed(f"a response the subscription ignored ({response.type_url})")
            return request
        self._rejected_digest = digest if answer.HasField("error_detail") else None
        return answer

    def _answered(self) -> None:
        if self._last_failure is not None:
            log.info("%s: REST config for %s: %s answers again", *self._where())
        self._last_failure = None

    def _failed(self, reason: str) -> None:
        level = logging.DEBUG if reason == self._last_failure else logging.WARNING
        log.log(level, "%s: REST update for %s from %s failed: %s", *self._where(), reason)
        self._last_failure = reason
        self._hooks.failed()

    def _where(self) -> tuple[str, str, str]:
        server = self._client.server
        return self._client.name, self._path, f"{server.cluster_name} ({server.target})"
