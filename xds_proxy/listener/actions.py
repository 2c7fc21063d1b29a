"""The plain data the listener manager exchanges with the runtime, the route registry and the
secret store: the actions it emits, the events it is told, and the values both sides name (a
version's sockets, a route configuration's or secret's state, what a warming version waits
for). Plain frozen dataclasses naming listener versions by
id, so that they can cross a process boundary (docs/architecture.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from xds_proxy.listener.drain_policy import NO_POLICY, ListenerDrainPolicy

DEFAULT_CHAIN = -1  # the index that names `default_filter_chain` in UpdateFilterChains


class DrainTrigger(enum.StrEnum):
    LDS_UPDATE = "lds_update"
    LDS_REMOVE = "lds_remove"
    IN_PLACE_UPDATE = "in_place_update"


class RouteState(enum.Enum):
    """A route configuration as the registry holds it (or a secret as the store holds it)."""

    PENDING = "pending"  # not received yet
    READY = "ready"  # a valid copy is held
    FAILED = "failed"  # not received, and its response was NACKed or its fetch timed out


class DependencyKind(enum.StrEnum):
    ROUTES = "rds"  # a route configuration (the route registry)
    SECRET = "sds"  # a TLS secret (the secret store)


class Dependency(NamedTuple):
    """One named resource a warming listener version waits for."""

    kind: DependencyKind
    name: str

    def __str__(self) -> str:
        """As `/drain_status` shows it: a route configuration by its name, a secret as
        `secret:<name>`."""
        return self.name if self.kind is DependencyKind.ROUTES else f"secret:{self.name}"


@dataclass(frozen=True)
class PipeAddress:
    """A listener on a UNIX stream socket (`address.pipe`): `path`, or with a leading `@` a
    name in the abstract namespace. Equal by path only, as Envoy compares pipes: a pushed
    `mode` change alone keeps the socket (and the mode it was bound with)."""

    path: str
    mode: int = field(default=0, compare=False)


# An IP listener's (ip in canonical text form, port), or a pipe.
SocketAddress = tuple[str, int] | PipeAddress


def fixed_address(address: SocketAddress) -> bool:
    """One listener at a time may hold it (port 0 binds anew each time; a pipe never)."""
    return isinstance(address, PipeAddress) or address[1] != 0


class DrainCause(NamedTuple):
    """Why a drain started: the LDS push (its version and nonce) and what it changed (up to
    10 field paths that differ between the old and the new config; empty for a removal)."""

    version_info: str
    nonce: str
    changed: tuple[str, ...] = ()

    def report(self) -> dict:
        return {
            "version_info": self.version_info,
            "nonce": self.nonce,
            "changed": list(self.changed),
        }


NO_CAUSE = DrainCause("", "")


@dataclass(frozen=True)
class ReserveSockets:
    """Give `version_id` listen sockets, bound but not yet listening: those of `share_from`
    (same addresses), else a socket still open on that address, else fresh binds."""

    version_id: int
    addresses: tuple[SocketAddress, ...]
    share_from: int | None
    listener: str = ""  # the listener's name (a worker process asks the main one by it)


@dataclass(frozen=True)
class StartListener:
    version_id: int
    version_info: str
    # The listener's own drain policy (metadata "xds_proxy.drain"; NO_POLICY: the global one).
    policy: ListenerDrainPolicy = field(default=NO_POLICY, compare=False)


@dataclass(frozen=True)
class StopAccepting:
    version_id: int


@dataclass(frozen=True)
class DrainListener:
    version_id: int
    trigger: DrainTrigger
    policy: ListenerDrainPolicy = field(default=NO_POLICY, compare=False)
    cause: DrainCause = field(default=NO_CAUSE, compare=False)


@dataclass(frozen=True)
class UpdateFilterChains:
    old_version_id: int
    version_id: int
    version_info: str
    group_id: int
    draining_chains: tuple[int, ...]
    policy: ListenerDrainPolicy = field(default=NO_POLICY, compare=False)
    cause: DrainCause = field(default=NO_CAUSE, compare=False)


@dataclass(frozen=True)
class UpdatePolicy:
    """A change confined to the drain-policy metadata: the running version takes the new
    config's `version_info` and policy; nothing starts, stops or drains."""

    version_id: int
    version_info: str
    policy: ListenerDrainPolicy


@dataclass(frozen=True)
class ReleaseSockets:
    version_id: int


@dataclass(frozen=True)
class CloseSockets:
    version_id: int


@dataclass(frozen=True)
class HandOverSockets:
    pass


@dataclass(frozen=True)
class ForgetVersion:
    version_id: int


@dataclass(frozen=True)
class WatchRoutes:
    version_id: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class UnwatchRoutes:
    version_id: int


@dataclass(frozen=True)
class WatchSecrets:
    """The version's TLS contexts use these SDS secrets (the secret store subscribes)."""

    version_id: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class UnwatchSecrets:
    version_id: int


Action = (
    StartListener
    | StopAccepting
    | DrainListener
    | UpdateFilterChains
    | ReleaseSockets
    | CloseSockets
    | HandOverSockets
    | ForgetVersion
    | WatchRoutes
    | UnwatchRoutes
    | UpdatePolicy
    | WatchSecrets
    | UnwatchSecrets
)


@dataclass(frozen=True)
class ListenerDrained:
    """A draining version's last connection closed, or its drain window ended."""

    version_id: int


@dataclass(frozen=True)
class ChainsDrained:
    group_id: int


@dataclass(frozen=True)
class StartFailed:
    """The runtime could not start a version it was told to start (listen() failed)."""

    version_id: int


@dataclass(frozen=True)
class RoutesReady:
    """The route registry holds a valid copy of `name` (the first, or after a failure)."""

    name: str


@dataclass(frozen=True)
class RoutesFailed:
    """`name` was NACKed or its initial fetch timed out before any copy was held."""

    name: str


@dataclass(frozen=True)
class SecretsReady:
    """The secret store holds a valid copy of secret `name`."""

    name: str


@dataclass(frozen=True)
class SecretsFailed:
    """Secret `name` was NACKed, does not exist (Delta), or its initial fetch timed out,
    before any copy was held."""

    name: str


ListenerEvent = (
    ListenerDrained
    | ChainsDrained
    | StartFailed
    | RoutesReady
    | RoutesFailed
    | SecretsReady
    | SecretsFailed
)
