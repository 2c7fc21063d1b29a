"""A cluster at run time: its hosts (resolved for DNS types), load balancer, circuit-breaker
accounting and one connection pool per host.

Hosts keep their identity (and their pools) across DNS refreshes, so a refresh that returns
the same addresses changes nothing. A cluster that is replaced or removed is `retire()`d: its
idle connections close at once, busy ones when their last stream ends; new streams go to the
replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from xds_proxy.config.cluster import (
    ClusterConfig,
    DiscoveryType,
    DnsFamily,
    EndpointAddress,
    LbPolicy,
    UpstreamProtocol,
)
from xds_proxy.upstream.hashing import Maglev, RingHash
from xds_proxy.upstream.health_check import HealthChecker
from xds_proxy.upstream.host import Host, Resources
from xds_proxy.upstream.http1_pool import Http1Pool
from xds_proxy.upstream.http2_pool import Http2Pool
from xds_proxy.upstream.lb import LeastRequest, LoadBalancer, Random, RoundRobin
from xds_proxy.upstream.outlier import OutlierDetector, Result
from xds_proxy.upstream.retry import HostExclusion
from xds_proxy.upstream.stats import ClusterStats, register_circuit_breaker_gauges
from xds_proxy.upstream.stream import OVERFLOW, RequestHead, ResponseHandler, UpstreamStream

if TYPE_CHECKING:
    from xds_proxy.stats import Stats

# Envoy's default overprovisioning factor (1.4): the healthy share is scaled by it before it
# is compared with the panic threshold.
_OVERPROVISIONING = 1.4

log = logging.getLogger("xds_proxy.upstream")


class Cluster:
    def __init__(
        self,
        config: ClusterConfig,
        stats: Stats,
        rng: random.Random | None = None,
        resolve: Callable[[EndpointAddress, DnsFamily], asyncio.Future] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.stats = ClusterStats(stats, config.stat_name)
        self.resources = Resources()
        register_circuit_breaker_gauges(
            stats,
            config.stat_name,
            config.circuit_breakers,
            self.resources,
            lambda: sum(len(host.pools) for host in self.hosts),
        )
        self.hosts: list[Host] = []
        self.retired = False
        self._resolve = resolve or resolve_endpoint
        self._dns_task: asyncio.Task | None = None
        # Set once the first hosts are known (DNS) and checked (health checks): the cluster is
        # warm. None for a static cluster without health checks: warm from the start.
        warms = config.discovery is not DiscoveryType.STATIC or bool(config.health_checks)
        self.resolved = asyncio.Event() if warms else None
        self._rng = rng or random.Random()
        self.lb: LoadBalancer = _load_balancer(config, self._rng, stats)
        self._health_checker = (
            HealthChecker(
                config.stat_name,
                config.health_checks[0],
                stats,
                config.tls,
                had_traffic=lambda: self.stats.upstream_cx_total.value > 0,
                on_change=self._health_changed,
                rng=self._rng,
                on_healthy_check=self._healthy_check,
            )
            if config.health_checks
            else None
        )
        self._outliers = (
            OutlierDetector(
                config.stat_name, config.outlier_detection, stats, self._health_changed, self._rng
            )
            if config.outlier_detection is not None
            else None
        )
        self._started = False
        self._routable: list[Host] = []  # the hosts the balancer picks from
        self._panic = False
        if config.discovery is DiscoveryType.STATIC:
            self._set_hosts([((e.host, e.port), "") for e in config.endpoints])

    # -- hosts ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start DNS resolution (DNS types) and health checks; needs the running loop."""
        if self._started:
            return
        self._started = True
        if self._outliers is not None:
            self._outliers.start()
        if self.config.discovery is not DiscoveryType.STATIC:
            self._dns_task = asyncio.get_running_loop().create_task(
                self._dns_loop(), name=f"dns:{self.name}"
            )
        elif self._health_checker is not None:
            self._health_checker.add_hosts(self.hosts)
            self._warm_after_first_checks()

    def _warm_after_first_checks(self) -> None:
        """The cluster is warm once every host had its first check, as Envoy's is."""
        checker, resolved = self._health_checker, self.resolved
        assert checker is not None and resolved is not None

        async def wait() -> None:
            await checker.first_round()
            resolved.set()

        asyncio.get_running_loop().create_task(wait(), name=f"hc-warm:{self.name}")

    async def _dns_loop(self) -> None:
        config = self.config
        while not self.retired:
            addresses: list[tuple[tuple[str, int], str]] = []  # (address, DNS name)
            for endpoint in config.endpoints:
                try:
                    found = await self._resolve(endpoint, config.dns_family)
                except OSError as error:
                    log.warning(
                        "cluster %s: cannot resolve %s: %s", self.name, endpoint.host, error
                    )
                    found = None
                if found is None:
                    # Envoy keeps the last good answer of an endpoint whose lookup failed.
                    found = [h.address for h in self.hosts if h.address[1] == endpoint.port]
                if config.discovery is DiscoveryType.LOGICAL_DNS:
                    found = found[:1]
                known = {address for address, _ in addresses}
                addresses += [(a, endpoint.host) for a in found if a not in known]
            self._set_hosts(addresses)
            if self.resolved is not None and not self.resolved.is_set():
                if self._health_checker is None:
                    self.resolved.set()
                else:
                    self._warm_after_first_checks()
            jitter = self._rng.uniform(0, config.dns_jitter_s) if config.dns_jitter_s else 0.0
            await asyncio.sleep(config.dns_refresh_s + jitter)

    def _set_hosts(self, addresses: list[tuple[tuple[str, int], str]]) -> None:
        """The hosts are now `addresses` ((ip, port), DNS name), in order."""
        current = {host.address: host for host in self.hosts}
        if [h.address for h in self.hosts] == [address for address, _ in addresses]:
            return
        checked = self._health_checker is not None
        hosts = [
            current.get(address) or Host(address, name, health_checked=checked)
            for address, name in addresses
        ]
        kept = {h.address for h in hosts}
        removed = [host for host in self.hosts if host.address not in kept]
        for host in removed:
            for pool in host.pools.values():
                pool.retire()
        added = [host for host in hosts if host.address not in current]
        self.hosts = hosts
        self.stats.membership_change.value += 1
        self.stats.membership_total.value = len(hosts)
        if self._health_checker is not None and self._started:
            self._health_checker.remove_hosts(removed)
            self._health_checker.add_hosts(added)
        if self._outliers is not None:
            self._outliers.set_hosts(hosts)
        self._health_changed()

    def _healthy_check(self, host: Host) -> None:
        if self._outliers is not None:
            self._outliers.health_check_passed(host)

    def report_status(self, host: Host, status: int) -> None:
        """An upstream response's status, for outlier detection."""
        if self._outliers is not None:
            self._outliers.put_http_status(host, status)

    def report_result(self, host: Host, result: Result) -> None:
        """A local-origin result (connect failure, timeout, reset, connect success)."""
        if self._outliers is not None:
            self._outliers.put_result(host, result)

    def _health_changed(self) -> None:
        """Hosts came, went or changed health: what the balancer picks from, and whether the
        cluster is in panic (too few healthy hosts: Envoy then ignores health)."""
        healthy = [
            host
            for host in self.hosts
            if not host.failed_active_hc and not host.failed_outlier_check
        ]
        self.stats.membership_healthy.value = len(healthy)
        threshold = self.config.healthy_panic_threshold_percent
        share = 100.0 * len(healthy) / len(self.hosts) if self.hosts else 0.0
        self._panic = bool(self.hosts) and min(100.0, share * _OVERPROVISIONING) < threshold
        self._routable = self.hosts if self._panic else healthy

    def pick_host(
        self, hash_key: int | None = None, exclude: HostExclusion | None = None
    ) -> Host | None:
        """The balancer's host; `hash_key` is the request's hash (route `hash_policy`), used
        by the hashing balancers (none: a random one, as Envoy). `exclude` (a retry's
        `previous_hosts`): pick again while it rejects the host, the last pick stands."""
        if self._panic:
            self.stats.lb_healthy_panic.value += 1
        host = self.lb.pick(self._routable, hash_key)
        if exclude is not None:
            for _ in range(exclude.reselect):
                if host is None or not exclude.rejects(host):
                    break
                host = self.lb.pick(self._routable, hash_key)
        return host

    # -- HTTP streams -----------------------------------------------------------------------

    def new_stream(
        self,
        head: RequestHead,
        handler: ResponseHandler,
        end_stream: bool,
        downstream_http2: bool = False,
        hash_key: int | None = None,
        exclude: HostExclusion | None = None,
    ) -> UpstreamStream | None:
        """Start a request to a host chosen by the load balancer. None: no host at all (the
        router answers 503 `no healthy upstream`). Failures after this (connect errors,
        overflow, resets) arrive as `handler.on_reset(reason)`, never synchronously."""
        host = self.pick_host(hash_key, exclude)
        if host is None:
            self.stats.upstream_cx_none_healthy.value += 1
            return None
        protocol = self.config.protocol
        if protocol is UpstreamProtocol.DOWNSTREAM:
            protocol = UpstreamProtocol.HTTP2 if downstream_http2 else UpstreamProtocol.HTTP1
        pool = host.pools.get(protocol)
        if pool is None:
            pool = host.pools[protocol] = self._new_pool(host, protocol)
        if self.resources.requests >= self.config.circuit_breakers.max_requests:
            self.stats.upstream_rq_pending_overflow.value += 1
            return FailedStream(handler, OVERFLOW)
        return pool.new_stream(head, handler, end_stream)

    def _new_pool(self, host: Host, protocol: UpstreamProtocol) -> Http1Pool | Http2Pool:
        if protocol is UpstreamProtocol.HTTP2:
            return Http2Pool(self, host)
        return Http1Pool(self, host)

    # -- lifecycle --------------------------------------------------------------------------

    def retire(self) -> None:
        """This cluster was replaced or removed: no new streams; connections close when idle."""
        self.retired = True
        if self._health_checker is not None:
            self._health_checker.stop()
        if self._outliers is not None:
            self._outliers.stop()
        if self._dns_task is not None:
            self._dns_task.cancel()
            self._dns_task = None
        for host in self.hosts:
            for pool in host.pools.values():
                pool.retire()

    def close(self) -> None:
        """Shutdown: every connection closes now."""
        self.retire()
        for host in self.hosts:
            for pool in host.pools.values():
                pool.close()


class FailedStream:
    """A stream that failed before it started (overflow): reports the reset on the next loop
    iteration, so the caller never sees a callback inside `new_stream`."""

    def __init__(self, handler: ResponseHandler, reason: str) -> None:
        self._handle: asyncio.Handle | None = asyncio.get_running_loop().call_soon(
            handler.on_reset, reason
        )

    def send_data(self, data: bytes, end_stream: bool) -> None:
        pass

    def send_trailers(self, trailers: list) -> None:
        pass

    def reset(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def pause_response(self) -> None:
        pass

    def resume_response(self) -> None:
        pass


_FAMILIES = {
    DnsFamily.V4_ONLY: (socket.AF_INET,),
    DnsFamily.V6_ONLY: (socket.AF_INET6,),
    DnsFamily.AUTO: (socket.AF_INET6, socket.AF_INET),
    DnsFamily.V4_PREFERRED: (socket.AF_INET, socket.AF_INET6),
}


async def resolve_endpoint(
    endpoint: EndpointAddress, family: DnsFamily
) -> list[tuple[str, int]] | None:
    """Addresses of a DNS endpoint in Envoy's family order; None when the lookup failed."""
    loop = asyncio.get_running_loop()
    families = _FAMILIES.get(family, (socket.AF_INET6, socket.AF_INET))
    found: list[tuple[str, int]] = []
    for one_family in families:
        with contextlib.suppress(socket.gaierror):
            infos = await loop.getaddrinfo(
                endpoint.host, endpoint.port, family=one_family, type=socket.SOCK_STREAM
            )
            for info in infos:
                address = (info[4][0], endpoint.port)
                if address not in found:
                    found.append(address)
        if found and family is not DnsFamily.ALL:
            break
    if family is DnsFamily.ALL and not found:
        return None
    return found or None


def _load_balancer(config: ClusterConfig, rng: random.Random, stats: Stats) -> LoadBalancer:
    hashing = config.hashing
    base = f"cluster.{config.name}."
    if config.lb_policy is LbPolicy.RING_HASH:
        ring = base + "ring_hash_lb."
        gauges = (
            stats.gauge(ring + "size"),
            stats.gauge(ring + "min_hashes_per_host"),
            stats.gauge(ring + "max_hashes_per_host"),
        )
        return RingHash(
            hashing.minimum_ring_size,
            hashing.maximum_ring_size,
            hashing.murmur_hash_2,
            rng,
            gauges,
        )
    if config.lb_policy is LbPolicy.MAGLEV:
        table = base + "maglev_lb."
        maglev_gauges = (
            stats.gauge(table + "min_entries_per_host"),
            stats.gauge(table + "max_entries_per_host"),
        )
        return Maglev(hashing.maglev_table_size, rng, maglev_gauges)
    if config.lb_policy is LbPolicy.LEAST_REQUEST:
        return LeastRequest(config.least_request_choices, rng)
    if config.lb_policy is LbPolicy.RANDOM:
        return Random(rng)
    return RoundRobin(rng)
