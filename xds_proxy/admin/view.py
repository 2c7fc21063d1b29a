"""What the admin endpoints may see of the server, and what they may ask it to do.

The server builds one `AdminView` (read-only: values and getters) and one `AdminCommands`
(the few POST endpoints that change something) and hands both to `AdminHandlers`; nothing
under `xds_proxy/admin/` imports the server. The listener manager is read through the
`ListenerState` protocol: the versions and errors that `/listeners` and `/config_dump` print.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    from xds_proxy.listener.manager import ErrorState, ListenerVersion, SocketAddress
    from xds_proxy.options import Options
    from xds_proxy.stats import Stats
    from xds_proxy.upstream.manager import ClusterManager


class ListenerState(Protocol):
    """The listener manager as the admin endpoints read it."""

    @property
    def version_info(self) -> str: ...

    @property
    def active(self) -> Mapping[str, ListenerVersion]: ...

    @property
    def draining(self) -> Mapping[int, ListenerVersion]: ...

    @property
    def errors(self) -> Mapping[str, ErrorState]: ...

    @property
    def overall_errors(self) -> Sequence[ErrorState]: ...

    @property
    def warming(self) -> Mapping[str, ListenerVersion]: ...

    @property
    def listed_warming(self) -> Sequence[ListenerVersion]:
        """Warming listeners that `/listeners` lists (before the workers start, as Envoy)."""
        ...


@dataclass(frozen=True)
class AdminView:
    version: str  # our own version, printed by `/server_info`
    options: Options
    bootstrap: bootstrap_pb2.Bootstrap
    started_at: float  # time.time() at start-up: the bootstrap's `last_updated`
    hot_restart_version: str
    stats: Stats
    clusters: ClusterManager
    listeners: ListenerState
    state: Callable[[], str]  # the server state's name: LIVE, DRAINING, ...
    uptime: Callable[[], int]
    uptime_all_epochs: Callable[[], int]
    bound_addresses: Callable[[int], list[SocketAddress]]  # of a listener version
    cds_version_info: Callable[[], str]
    drain_report: Callable[[], list[dict]]  # every drain in progress, for `/drain_status`
    lds_updates: Callable[[], list[dict]]  # the recent LDS update outcomes, for `GET /`
    # RDS: (name, version_info, RouteConfiguration, last_updated) of every route config held
    route_configs: Callable[[], list[tuple[str, str, Any, float]]] = lambda: []
    warming_report: Callable[[], list[dict]] = lambda: []  # `/drain_status` `warming`
    # `POST /listeners/plan`: (version_info, listeners, removed or None for SotW) -> the plan
    # report; it changes nothing (the manager's diff on a copy of its state).
    plan_listeners: Callable[[str, list, list[str] | None], dict] | None = None
    secrets: Callable[[], Any] | None = None  # SecretsConfigDump (private keys redacted)
    # With workers: their per-host stats added up (workers/merge.py `HostCounts`), shown in
    # `/clusters` on top of the main process's own.
    worker_host_counts: Callable[[], Mapping[str, Mapping[str, Sequence[int]]]] | None = None


@dataclass(frozen=True)
class AdminCommands:
    quit: Callable[[], None]
    set_health: Callable[[bool], None]  # failed?
    drain_listeners: Callable[[bool, bool, bool], None]  # graceful, inbound_only, skip_exit
    # `POST /drain_and_exit`: drain every listener, exit once no connection is left; returns
    # the plain-text answer.
    drain_and_exit: Callable[[], str] = lambda: "not available\n"
