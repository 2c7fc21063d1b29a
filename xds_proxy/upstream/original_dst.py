"""The hosts of an ORIGINAL_DST cluster, made on demand.

A request's destination is the `use_http_header` header's `ip:port` (the first value; one that
does not parse counts `original_dst_host_invalid`), else the downstream connection's restored
local address (none here: no listener restores one yet, so such a request finds no host, as on
Envoy without an original-destination listener); `upstream_port_override` replaces its port.
The first request to a destination adds a host named `<cluster><ip:port>` (Envoy's name); every
`cleanup_interval` the hosts that no connection or request uses any more are removed. The
cluster (upstream/cluster.py) keeps the host list and its membership stats; this module
decides which hosts it holds.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from xds_proxy.config.original_dst import OriginalDstConfig
from xds_proxy.upstream.host import Host

if TYPE_CHECKING:
    from xds_proxy.stats import Counter

Address = tuple[str, int]
Header = tuple[bytes, bytes]
# The cluster's hosts as (address, hostname), in order; the cluster builds the Host objects.
SetHosts = Callable[[list[tuple[Address, str]]], None]


def parse_destination(text: str) -> Address | None:
    """`ip:port` or `[ipv6]:port` (Envoy's parseInternetAddressAndPort); None if invalid."""
    if text.startswith("["):
        ip, separator, port = text[1:].partition("]:")
        if not separator:
            return None
        family = 6
    else:
        ip, separator, port = text.rpartition(":")
        family = 4
        if not separator:
            return None
    if not port.isdigit() or int(port) > 65535:
        return None
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if parsed.version != family:
        return None
    return str(parsed), int(port)


def host_name(cluster_name: str, address: Address) -> str:
    ip, port = address
    return f"{cluster_name}[{ip}]:{port}" if ":" in ip else f"{cluster_name}{ip}:{port}"


def in_use(host: Host) -> bool:
    """A connection or a request still holds the host (Envoy: its connection pools)."""
    stats = host.stats
    return bool(stats.cx_active or stats.rq_active or stats.rq_pending_active)


class OriginalDstHosts:
    def __init__(
        self,
        cluster_name: str,
        config: OriginalDstConfig,
        invalid: Counter,
        hosts: Callable[[], list[Host]],
        set_hosts: SetHosts,
    ) -> None:
        self._name = cluster_name
        self._config = config
        self._header = config.header_name.encode() if config.header_name else None
        self._invalid = invalid  # cluster.<name>.original_dst_host_invalid
        self._hosts = hosts
        self._set_hosts = set_hosts
        self._timer: asyncio.TimerHandle | None = None

    def destination(
        self, headers: Sequence[Header], restored_local: Address | None = None
    ) -> Address | None:
        found: Address | None = None
        if self._header is not None:
            for name, value in headers:
                if name == self._header:  # only the first value counts
                    found = parse_destination(value.decode("latin-1"))
                    if found is None:
                        self._invalid.inc()
                    break
        if found is None:
            found = restored_local
        if found is not None and self._config.port_override is not None:
            found = (found[0], self._config.port_override)
        return found

    def pick(self, headers: Sequence[Header], restored_local: Address | None = None) -> Host | None:
        """The host of the request's destination, added now if the cluster has none yet."""
        address = self.destination(headers, restored_local)
        if address is None:
            return None
        for host in self._hosts():
            if host.address == address:
                return host
        current = [(host.address, host.hostname) for host in self._hosts()]
        self._set_hosts([*current, (address, host_name(self._name, address))])
        for host in self._hosts():
            if host.address == address:
                return host
        return None  # pragma: no cover - the cluster always takes the new host

    def cleanup(self) -> None:
        """Remove the hosts nothing uses any more (Envoy's periodic cleanup)."""
        hosts = self._hosts()
        kept = [host for host in hosts if in_use(host)]
        if len(kept) != len(hosts):
            self._set_hosts([(host.address, host.hostname) for host in kept])

    # -- the cleanup timer (the cluster starts and stops it) --------------------------------

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            self._config.cleanup_interval_s, self._on_timer
        )

    def _on_timer(self) -> None:
        self.cleanup()
        self.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
