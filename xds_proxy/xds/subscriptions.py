"""Who wants which names of one named resource type, and the clients that ask for them.

The owner of a type (the route registry for RDS, the cluster manager for EDS, the secret store
for SDS) says which user (a listener version, a cluster, ...) needs which name from which
`ConfigSource`; `NamedSubscriptions` counts the users of each name. The first user subscribes
(and starts the name's `initial_fetch_timeout` timer); the last one gone lets the name go at
the next `flush()` (so that a user taking a name over in the same batch keeps it).

`flush()` sends the name lists that changed: over ADS one `NamedClient` on the server's shared
stream (names newest first, as Envoy), joined after CDS and LDS (while `ads_coming()` says
the server is about to open that stream, the client waits for it instead of opening its own);
with a plain `api_config_source` one client (one stream) per name, as Envoy; with a REST
source one poller per name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2

from xds_proxy.lazy import lazy_import
from xds_proxy.stats import Counter, Gauge, Stats, TextReadout
from xds_proxy.xds.named import NamedClient, NamedSink, ResourceType
from xds_proxy.xds.source import XdsServer, source_server
from xds_proxy.xds.transport import XdsStream
from xds_proxy.xxhash64 import xxhash64

if TYPE_CHECKING:
    from xds_proxy.xds import rest
else:  # REST sources are rare: loaded by the first one (xds_proxy/lazy.py)
    rest = lazy_import("xds_proxy.xds.rest")

log = logging.getLogger("xds_proxy.xds")

DEFAULT_INITIAL_FETCH_TIMEOUT_S = 15.0  # Envoy's, for every subscription


def initial_fetch_timeout_s(source: config_source_pb2.ConfigSource) -> float | None:
    """A source's `initial_fetch_timeout` (Envoy's default 15 s); None: wait forever (0)."""
    if not source.HasField("initial_fetch_timeout"):
        return DEFAULT_INITIAL_FETCH_TIMEOUT_S
    return source.initial_fetch_timeout.ToNanoseconds() / 1e9 or None


class UpdateStats:
    """The update stats Envoy 1.40 keeps per named subscription, under `prefix`
    (`http.<stat_prefix>.rds.<name>.`, `sds.<name>.`, `cluster.<name>.` for EDS); an owner
    that keeps more adds them in a subclass."""

    def __init__(self, stats: Stats, prefix: str) -> None:
        self._store = stats
        self._prefix = prefix
        self.init_fetch_timeout = self.counter("init_fetch_timeout")
        self.update_attempt = self.counter("update_attempt")
        self.update_failure = self.counter("update_failure")
        self.update_rejected = self.counter("update_rejected")
        self.update_success = self.counter("update_success")
        self.update_time = self.gauge("update_time")
        self.version = self.gauge("version")
        self.version_text: TextReadout = stats.text_readout(prefix + "version_text")

    def counter(self, name: str) -> Counter:
        return self._store.counter(self._prefix + name)

    def gauge(self, name: str) -> Gauge:
        return self._store.gauge(self._prefix + name)

    def success(self, version_info: str, now_ms: int) -> None:
        """An accepted update (Delta's "does not exist" too, as Envoy counts it)."""
        self.update_attempt.inc()
        self.update_success.inc()
        self.update_time.set(now_ms)
        self.version.set(xxhash64(version_info))
        self.version_text.set(version_info)

    def rejected(self) -> None:
        """A response carrying it was NACKed."""
        self.update_attempt.inc()
        self.update_rejected.inc()

    def failed(self) -> None:
        """Its stream was lost, or (REST) a fetch failed."""
        self.update_attempt.inc()
        self.update_failure.inc()

    def timed_out(self) -> None:
        """Its initial fetch timed out."""
        self.update_attempt.inc()
        self.init_fetch_timeout.inc()


@dataclass
class Subscription:
    """One subscribed name."""

    name: str
    source: config_source_pb2.ConfigSource
    subscribed_at: float  # wall clock
    users: set[Hashable] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None  # the initial fetch timer, while it runs
    client: NamedClient | None = None  # the client that asks for it
    task: asyncio.Task | None = None  # a plain source: its own stream

    @property
    def aggregated(self) -> bool:
        return self.source.WhichOneof("config_source_specifier") == "ads"

    @property
    def timeout_at(self) -> float | None:
        """When the initial fetch times out, while its timer runs."""
        timeout_s = initial_fetch_timeout_s(self.source)
        if self.timer is None or timeout_s is None:
            return None
        return self.subscribed_at + timeout_s


class NamedSubscriptions:
    def __init__(
        self,
        kind: ResourceType,
        bootstrap: bootstrap_pb2.Bootstrap,
        stats: Stats,
        sink: NamedSink,
        on_timeout: Callable[[Subscription], None],
        on_released: Callable[[Subscription], None] = lambda subscription: None,
        on_not_modified: Callable[[Subscription], None] = lambda subscription: None,
        applied: Callable[[], Awaitable[None]] | None = None,
        ads_stream: Callable[[], XdsStream | None] = lambda: None,
        ads_coming: Callable[[], bool] = lambda: False,
        wall_clock: Callable[[], float] = time.time,
        timers: bool = True,
    ) -> None:
        """`on_timeout(subscription)`: its initial fetch timed out before any answer (never
        with `timers` False: a worker process of `--concurrency N`, told by the main process).
        `on_released(subscription)`: the last user let it go (it is unsubscribed).
        `on_not_modified(subscription)`: a REST poll of its name answered 304."""
        self._kind = kind
        self._bootstrap = bootstrap
        self._stats = stats
        self._sink = sink
        self._on_timeout = on_timeout
        self._on_released = on_released
        self._on_not_modified = on_not_modified
        self._applied = applied
        self._ads_stream = ads_stream
        self._ads_coming = ads_coming
        self._wall_clock = wall_clock
        self._timers = timers
        self.by_name: dict[str, Subscription] = {}  # oldest first
        self._unused: set[str] = set()  # names whose last user went since the last flush
        self._ads_client: NamedClient | None = None
        self._own_ads_task: asyncio.Task | None = None
        self._dirty = False

    def get(self, name: str) -> Subscription | None:
        return self.by_name.get(name)

    def add_user(
        self, user: Hashable, name: str, source: config_source_pb2.ConfigSource
    ) -> tuple[Subscription, bool]:
        """`user` needs `name` from `source`: (its subscription, True if it is new)."""
        subscription = self.by_name.get(name)
        created = subscription is None
        if subscription is None:
            subscription = Subscription(name, source, self._wall_clock())
            self.by_name[name] = subscription
            timeout_s = initial_fetch_timeout_s(source) if self._timers else None
            if timeout_s is not None:
                subscription.timer = asyncio.get_running_loop().call_later(
                    timeout_s, self._timed_out, name
                )
            self._dirty = True
        subscription.users.add(user)
        return subscription, created

    def remove_user(self, user: Hashable) -> None:
        """`user` needs none of its names any more; a name left without users goes at the
        flush."""
        for name, subscription in self.by_name.items():
            subscription.users.discard(user)
            if not subscription.users:
                self._unused.add(name)

    def answered(self, subscription: Subscription) -> None:
        """A copy (or Delta's "does not exist") arrived, or a NACK: the initial fetch is over."""
        if subscription.timer is not None:
            subscription.timer.cancel()
            subscription.timer = None

    def of_client(self, client: NamedClient) -> list[Subscription]:
        """The subscriptions `client` asks for, oldest first."""
        return [s for s in self.by_name.values() if s.client is client]

    def flush(self) -> None:
        """Let go of the names without users; send the name lists that changed."""
        for name in self._unused:
            subscription = self.by_name.get(name)
            if subscription is not None and not subscription.users:
                self._release(subscription)
        self._unused.clear()
        if not self._dirty:
            return
        self._dirty = False
        names = [s.name for s in reversed(self.by_name.values()) if s.aggregated]
        if self._ads_client is None and names:
            if self._ads_stream() is None and self._ads_coming():
                self._dirty = True  # flushed again once the ADS stream carries CDS and LDS
            else:
                self._start_ads(names)
        elif self._ads_client is not None:
            self._ads_client.change_names(names)
        for subscription in self.by_name.values():
            if subscription.aggregated:
                subscription.client = self._ads_client
            elif subscription.task is None:
                self._start_plain(subscription)

    def resume(self) -> None:
        """The server's ADS stream is open (or will not be): send what waited for it."""
        self._dirty = True
        self.flush()

    def close(self) -> None:
        for subscription in self.by_name.values():
            if subscription.timer is not None:
                subscription.timer.cancel()
            if subscription.task is not None:
                subscription.task.cancel()
        if self._own_ads_task is not None:
            self._own_ads_task.cancel()

    # -- internals ------------------------------------------------------------------------------

    def _release(self, subscription: Subscription) -> None:
        del self.by_name[subscription.name]
        if subscription.timer is not None:
            subscription.timer.cancel()
        if subscription.task is not None:
            subscription.task.cancel()  # a plain source: its stream ends
        self._dirty = True
        self._on_released(subscription)

    def _timed_out(self, name: str) -> None:
        subscription = self.by_name.get(name)
        if subscription is None or subscription.timer is None:
            return
        subscription.timer = None
        log.warning(
            "%s: initial fetch timed out for %s (%s)",
            self._kind.short_name,
            self._kind.type_url,
            name,
        )
        self._on_timeout(subscription)

    def _server(self, subscription: Subscription) -> XdsServer:
        path = f"{self._kind.short_name}.config_source"
        return source_server(self._bootstrap, subscription.source, path)

    def _new_client(self, subscription: Subscription) -> NamedClient:
        return NamedClient(
            self._kind,
            self._server(subscription),
            self._bootstrap.node,
            self._stats,
            self._sink,
            self._applied,
        )

    def _start_ads(self, names: list[str]) -> None:
        first = next(s for s in self.by_name.values() if s.aggregated)
        client = self._new_client(first)
        client.change_names(names)
        self._ads_client = client
        stream = self._ads_stream()
        if stream is not None:
            stream.add(client)  # after CDS and LDS on the one ADS stream
            return
        self._own_ads_task = asyncio.create_task(client.run(), name=f"{self._kind.short_name}-ads")

    def _start_plain(self, subscription: Subscription) -> None:
        client = self._new_client(subscription)
        client.change_names([subscription.name])
        subscription.client = client
        name = f"{self._kind.short_name}-{subscription.name}"
        if client.server.rest is None:
            subscription.task = asyncio.create_task(client.run(), name=name)
            return
        hooks = rest.RestHooks(
            not_modified=lambda: self._on_not_modified(subscription), failed=client.stream_lost
        )
        subscription.task = asyncio.create_task(
            rest.RestPoller(client, hooks=hooks).run(), name=name + "-rest"
        )
