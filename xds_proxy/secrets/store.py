"""The secret store: SDS subscriptions per secret name, the bootstrap's static secrets, and the
TLS context holders that use them.

Who uses what: a filter chain's `DownstreamTls` or a cluster's `UpstreamTls` (config/tls.py)
asks for its secrets' material here and `follow`s them (held weakly: a discarded listener
version's holder simply goes). Listener versions subscribe through the listener manager's
`WatchSecrets(version_id, names)` / `UnwatchSecrets` actions, executed by the runtime, and
clusters through `watch` / `unwatch` by the cluster manager; `flush()` then sends the new name
lists (xds/subscriptions.py: over ADS one client on the shared stream, after CDS and LDS; with
a plain `api_config_source` one stream per name, as Envoy).

A pushed `Secret` is built (config/secrets.py) before anything changes: a response with one
that does not build is NACKed with Envoy's text, every subscription of that stream counts
`update_rejected`, and the secrets held keep serving. A valid new version replaces the
material, and every holder that uses it rebuilds its SSL context: the next handshake uses it,
open connections keep theirs, nothing drains (as Envoy 1.40; docs/secrets.md).

It reports to the listener manager (`on_event`): `SecretsReady(name)` at a name's first valid
copy, `SecretsFailed(name)` when the response is NACKed, Delta says the name does not exist,
or `initial_fetch_timeout` expires before any copy (Envoy then starts the listener, whose TLS
handshakes are refused until the secret arrives).

Stats: `sds.<name>.*`, as Envoy 1.40 lists them.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from envoy.admin.v3 import config_dump_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from xds_proxy.config.secrets import (
    SECRET_TYPE_URL,
    SecretMaterial,
    SecretRef,
    ValidationMaterial,
    build_secret,
    redacted,
)
from xds_proxy.config.tls import SecretUser
from xds_proxy.errors import ConfigError
from xds_proxy.listener.actions import ListenerEvent, RouteState, SecretsFailed, SecretsReady
from xds_proxy.listener.followed_failures import FollowedFailures
from xds_proxy.stats import Stats
from xds_proxy.xds.named import NamedClient, ResourceType
from xds_proxy.xds.source import source_server
from xds_proxy.xds.subscriptions import NamedSubscriptions, Subscription, UpdateStats
from xds_proxy.xds.transport import XdsStream

log = logging.getLogger("xds_proxy.sds")

SECRETS = ResourceType(
    "sds",
    SECRET_TYPE_URL,
    secret_pb2.Secret,
    sds_pb2_grpc.SecretDiscoveryServiceStub,
    "StreamSecrets",
    "DeltaSecrets",
)

_ADS = config_source_pb2.ConfigSource(ads={})
UNINITIALIZED = "uninitialized"  # a warming secret's version_info in /config_dump (Envoy's)


class SdsStats(UpdateStats):
    """`sds.<name>.*`, as Envoy 1.40 lists them (its `update_duration` histogram aside)."""

    def __init__(self, stats: Stats, name: str) -> None:
        super().__init__(stats, f"sds.{name}.")
        self.key_rotation_failed = self.counter("key_rotation_failed")


@dataclass
class SecretEntry:
    """One subscribed secret name."""

    subscription: Subscription
    stats: SdsStats
    state: RouteState = RouteState.PENDING
    secret: secret_pb2.Secret | None = None
    material: SecretMaterial | None = None
    version_info: str = ""
    last_updated: float | None = None  # wall clock of the last change

    @property
    def name(self) -> str:
        return self.subscription.name


@dataclass(frozen=True)
class StaticSecret:
    secret: secret_pb2.Secret
    material: SecretMaterial


@dataclass
class _Followers:
    holders: weakref.WeakSet = field(default_factory=weakref.WeakSet)


class SecretStore:
    def __init__(
        self,
        stats: Stats,
        bootstrap: bootstrap_pb2.Bootstrap,
        on_event: Callable[[ListenerEvent], None],
        applied: Callable[[], Awaitable[None]] | None = None,
        ads_stream: Callable[[], XdsStream | None] = lambda: None,
        ads_coming: Callable[[], bool] = lambda: False,
        wall_clock: Callable[[], float] = time.time,
        follow_main: bool = False,
    ) -> None:
        """`follow_main`: a worker process of `--concurrency N`, whose names fail when the
        main process says so (`followed.fail`), never by a timer of its own."""
        self._stats = stats
        self._bootstrap = bootstrap
        self._on_event = on_event
        self._wall_clock = wall_clock
        # static_resources.secrets (add_static), by (is a validation context, name): a
        # certificate and a validation context may share a name, as in Envoy
        self.static: dict[tuple[bool, str], StaticSecret] = {}
        self.subscriptions = NamedSubscriptions(
            SECRETS,
            bootstrap,
            stats,
            self,
            on_timeout=self._timed_out,
            on_released=self._unsubscribed,
            on_not_modified=self._not_modified,
            applied=applied,
            ads_stream=ads_stream,
            ads_coming=ads_coming,
            wall_clock=wall_clock,
            timers=not follow_main,
        )
        self.entries: dict[str, SecretEntry] = {}  # subscribed names, oldest first
        # A worker's names fail when the main process's do (`--concurrency N`).
        self.followed = FollowedFailures(
            self.entries, lambda name: self._emit([SecretsFailed(name)])
        )
        self._sources: dict[str, config_source_pb2.ConfigSource] = {}  # the first ref's
        self._followers: dict[str, _Followers] = {}

    def add_static(self, bootstrap: bootstrap_pb2.Bootstrap) -> None:
        """The bootstrap's `static_resources.secrets`; raises ConfigError (start-up fails)."""
        for index, secret in enumerate(bootstrap.static_resources.secrets):
            path = f"static_resources.secrets[{index}]"
            try:
                material = build_secret(secret, path)
            except ConfigError as error:
                text = str(error)
                raise ConfigError(text if text.startswith(path) else f"{path}: {text}") from None
            validation = isinstance(material, ValidationMaterial)
            if (validation, secret.name) in self.static:
                kind = "CertificateValidationContext" if validation else "TlsCertificate"
                raise ConfigError(f"{path}: Duplicate static {kind} secret name {secret.name}")
            self.static[(validation, secret.name)] = StaticSecret(secret, material)

    # -- the TLS holders' port (config/tls.py TlsSecrets) ---------------------------------------

    def material(self, ref: SecretRef) -> SecretMaterial | None:
        if not ref.dynamic:
            held = self.static.get((ref.validation, ref.name))
            if held is None:
                raise ref.unknown_static()
            return held.material
        entry = self.entries.get(ref.name)
        return entry.material if entry is not None else None

    def follow(self, ref: SecretRef, holder: SecretUser) -> None:
        """Raises ConfigError for a source we cannot subscribe with (that listener or
        cluster is NACKed)."""
        if ref.source is not None:
            source_server(self._bootstrap, ref.source, f"{ref.path}.sds_config")  # usable?
            self._sources.setdefault(ref.name, ref.source)
        self._followers.setdefault(ref.name, _Followers()).holders.add(holder)

    # -- the listener manager's read port -------------------------------------------------------

    def state(self, name: str) -> RouteState:
        return self.followed.state(name)

    # -- users: listener versions (actions, executed by the runtime) and clusters ---------------

    def watch(self, user: Hashable, names: tuple[str, ...]) -> None:
        for name in names:
            source = self._sources.get(name, _ADS)
            subscription, created = self.subscriptions.add_user(user, name, source)
            if created:
                entry = SecretEntry(subscription, SdsStats(self._stats, name))
                entry.stats.update_attempt.inc()  # Envoy counts the subscription's start
                self.entries[name] = entry
                self.followed.watched(name, entry)

    def unwatch(self, user: Hashable) -> None:
        """The last user gone, the name is let go at the flush."""
        self.subscriptions.remove_user(user)

    def flush(self) -> None:
        self.subscriptions.flush()

    def resume(self) -> None:
        """The server's ADS stream is open (or will not be): send what waited for it."""
        self.subscriptions.resume()

    def close(self) -> None:
        self.subscriptions.close()

    # -- from the SDS clients (the NamedSink port) ----------------------------------------------

    def apply_named(
        self,
        client: NamedClient,
        version_info: str,
        secrets: list[tuple[secret_pb2.Secret, str]],
        removed: list[str],
    ) -> str | None:
        received = {secret.name: (secret, version) for secret, version in secrets}
        mine = [self.entries[s.name] for s in self.subscriptions.of_client(client)]
        try:  # every secret is built before any is installed
            built = {
                entry.name: build_secret(received[entry.name][0])
                for entry in reversed(mine)  # newest subscription first, as Envoy
                if entry.name in received
            }
        except ConfigError as error:
            events: list[ListenerEvent] = []
            for entry in mine:
                entry.stats.rejected()
                if entry.state is RouteState.PENDING:
                    entry.state = RouteState.FAILED
                    self.subscriptions.answered(entry.subscription)
                    events.append(SecretsFailed(entry.name))
            self._emit(events)
            return str(error).lstrip(".")
        now_ms = int(self._wall_clock() * 1000)
        events = []
        for entry in reversed(mine):
            if entry.name in built:
                secret, version = received[entry.name]
                self._install(entry, secret, version, built[entry.name], events)
                entry.stats.success(version, now_ms)
            elif entry.name in removed:
                # Delta's "does not exist": Envoy 1.40 counts a success and ends the initial
                # fetch: a listener waiting for it starts without it.
                entry.stats.success(version_info, now_ms)
                self.subscriptions.answered(entry.subscription)
                if entry.state is RouteState.PENDING:
                    entry.state = RouteState.FAILED
                    events.append(SecretsFailed(entry.name))
        self._emit(events)
        return None

    def stream_lost(self, client: NamedClient) -> None:
        for subscription in self.subscriptions.of_client(client):
            stats = self.entries[subscription.name].stats
            stats.failed()

    # -- what admin reads -----------------------------------------------------------------------

    def config_dump(self) -> config_dump_pb2.SecretsConfigDump:
        """`SecretsConfigDump`, private keys `[redacted]`: the static secrets (no
        `last_updated`, as Envoy's); each subscribed
        secret held (active, with the version and time of the copy held) or not yet (warming,
        `uninitialized`, since it was subscribed), as Envoy 1.40's."""
        dump = config_dump_pb2.SecretsConfigDump()
        for (_, name), held in self.static.items():
            dump.static_secrets.add(name=name).secret.Pack(redacted(held.secret))
        for entry in self.entries.values():
            if entry.secret is not None:
                item = dump.dynamic_active_secrets.add(
                    name=entry.name, version_info=entry.version_info
                )
                item.secret.Pack(redacted(entry.secret))
                updated = entry.last_updated or entry.subscription.subscribed_at
            else:
                item = dump.dynamic_warming_secrets.add(name=entry.name, version_info=UNINITIALIZED)
                item.secret.Pack(secret_pb2.Secret(name=entry.name))
                updated = entry.subscription.subscribed_at
            item.last_updated.FromMilliseconds(int(updated * 1000))
        return dump

    def timeout_at(self, names: set[str] | frozenset[str]) -> float | None:
        deadlines = [
            deadline
            for name in names
            if name in self.entries
            and (deadline := self.entries[name].subscription.timeout_at) is not None
        ]
        return min(deadlines) if deadlines else None

    # -- internals ------------------------------------------------------------------------------

    def _install(
        self,
        entry: SecretEntry,
        secret: secret_pb2.Secret,
        version: str,
        material: SecretMaterial,
        events: list[ListenerEvent],
    ) -> None:
        changed = entry.material != material
        entry.secret = secret
        entry.version_info = version
        if changed:
            entry.material = material
            entry.last_updated = self._wall_clock()
            followers = self._followers.get(entry.name)
            for holder in list(followers.holders) if followers is not None else []:
                holder.secret_updated()  # the next handshake uses the new context
        if entry.state is not RouteState.READY:
            entry.state = RouteState.READY
            self.subscriptions.answered(entry.subscription)
            events.append(SecretsReady(entry.name))

    def _unsubscribed(self, subscription: Subscription) -> None:
        self.entries.pop(subscription.name, None)
        followers = self._followers.get(subscription.name)
        if followers is not None and not followers.holders:
            del self._followers[subscription.name]
            self._sources.pop(subscription.name, None)

    def _not_modified(self, subscription: Subscription) -> None:
        """REST: a 304 counts an attempt of the secret (a failed fetch counts as a lost
        stream: the secret keeps waiting, as in Envoy 1.40)."""
        self.entries[subscription.name].stats.update_attempt.inc()

    def _timed_out(self, subscription: Subscription) -> None:
        entry = self.entries[subscription.name]
        if entry.state is not RouteState.PENDING:
            return
        entry.stats.timed_out()
        entry.state = RouteState.FAILED
        self._emit([SecretsFailed(entry.name)])

    def _emit(self, events: list[ListenerEvent]) -> None:
        for event in events:
            if isinstance(event, SecretsFailed):
                followers = self._followers.get(event.name)
                for holder in list(followers.holders) if followers is not None else []:
                    holder.secret_failed()
            self._on_event(event)
