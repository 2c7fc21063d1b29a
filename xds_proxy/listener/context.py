"""What a connection sees of the listener that accepted it.

The listener runtime accepts a socket, matches a filter chain, and hands the connection to
the chain's network filter (HTTP connection manager, tcp_proxy, direct_response). The filter's
protocol object receives a `FilterChainContext` and talks to the rest of the proxy only
through it:

- `register(conn)` / `unregister(conn)` when the connection opens and closes, so that the
  listener version (and its filter chain) can count, drain and finally close its connections;
- `drain_decision.drain_close()` before each response: True means "this response tells the
  client to go away" (HTTP/1.1 `connection: close`, HTTP/2 GOAWAY). The drain manager
  (`drain_manager.py`) decides, composing the filter chain's drain, the listener's, the
  server-wide ones (`/drain_listeners`, hot restart) and `/healthcheck/fail`;
- the stats store, for `http.<stat_prefix>.*` and similar.

The connection object implements `DrainableConnection`: the runtime pushes `on_drain()` to
every connection of a listener or chain when a drain covering it starts (each at once, or at
its own moment on the idle schedule of a gradual drain; idle connections then close), and
`close_at_deadline()` when the drain window ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from xds_proxy.stats import Stats

if TYPE_CHECKING:
    from xds_proxy.listener.shared_count import SharedCounts
    from xds_proxy.upstream.manager import ClusterManager


class DrainDecision(Protocol):
    def drain_close(self) -> bool:
        """Should the response being written now tell the client to go away?"""
        ...


class NeverDrain:
    """The decision of a listener that is not draining."""

    def drain_close(self) -> bool:
        return False


class DrainableConnection(Protocol):
    def on_drain(self) -> None:
        """A drain that covers this connection started (idle connections may close now)."""
        ...

    def close_at_deadline(self) -> None:
        """The drain window ended: flush what was already written, then close with FIN."""
        ...


@dataclass
class FilterChainContext:
    stats: Stats
    listener_name: str
    drain_decision: DrainDecision = field(default_factory=NeverDrain)
    register: Callable[[DrainableConnection], None] = lambda conn: None
    unregister: Callable[[DrainableConnection], None] = lambda conn: None
    # A connection moved to a successor protocol (HTTP/1.1 -> HTTP/2), which registered as
    # well: the socket is counted once in the listener's `downstream_cx_total`.
    handed_over: Callable[[], None] = lambda: None
    # Worker processes (`--concurrency N`): counts kept across the workers (the
    # `connection_limit` filter's), and what names this listener version alike in all of them.
    shared_counts: SharedCounts | None = None
    instance_key: str = ""
    # Seconds a drained HTTP connection may live after its final drain signal; set from
    # --drain-time-s by the runtime.
    drain_time_s: float = 600.0
    # The clusters that routes and tcp_proxy forward to (None: no upstreams, e.g. in tests).
    clusters: ClusterManager | None = None
    # The route handles of HCMs with `rds` (http/conn_manager.py `RouteProvider`: the route
    # registry's `handle`); None: no RDS.
    routes: Callable[..., Any] | None = None
