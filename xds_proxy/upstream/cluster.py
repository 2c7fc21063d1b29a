"""A cluster at run time: its hosts (resolved for DNS types, assigned by EDS), load balancer,
circuit-breaker accounting and one connection pool per host.

Hosts keep their identity (and their pools) across DNS refreshes and EDS assignments, so an
update that returns the same endpoints changes nothing; a host whose weight, priority,
locality or EDS health changed is the same host with new attributes. A removed host's pools
retire: in-flight requests finish, idle connections close, new requests go to the current
hosts. With active health checks and without `ignore_health_on_host_removal`, a removed host
that still passes its checks stays (`/pending_dynamic_removal`) until it fails one, as Envoy's.

Which host takes a request: upstream/priority.py picks the priority (its load, panic) and,
with `locality_weighted_lb_config`, the locality; then the cluster's balancer picks among
that source's hosts (one balancer per source, as Envoy's; hosts of unequal weights: the EDF
balancers of upstream/lb.py).

A cluster that is replaced or removed is `retire()`d: its idle connections close at once,
busy ones when their last stream ends; new streams go to the replacement.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from xds_proxy.config.cluster import (
    ClusterConfig,
    DiscoveryType,
    EndpointAddress,
    LbPolicy,
    UpstreamProtocol,
)
from xds_proxy.config.endpoints import Assignment, Locality
from xds_proxy.lazy import lazy_import
from xds_proxy.upstream.dns import AddressLookup, Lookup, choose_lookup, next_lookup_delay_s
from xds_proxy.upstream.hashing import Maglev, RingHash
from xds_proxy.upstream.host import HealthRole, Host, Resources
from xds_proxy.upstream.http1_pool import Http1Pool
from xds_proxy.upstream.lb import LeastRequest, LoadBalancer, Random, RoundRobin
from xds_proxy.upstream.outlier import OutlierDetector, Result
from xds_proxy.upstream.priority import (
    HostSet,
    PriorityLoad,
    choose_priority,
    host_sets,
    priority_load,
)
from xds_proxy.upstream.retry import HostExclusion
from xds_proxy.upstream.stats import ClusterStats, register_circuit_breaker_gauges
from xds_proxy.upstream.stream import (
    OVERFLOW,
    Header,
    RequestHead,
    ResponseHandler,
    UpstreamStream,
)

if TYPE_CHECKING:
    from xds_proxy.stats import Counter, Stats
    from xds_proxy.upstream import health_check, http2_pool, original_dst
else:  # loaded by the first cluster whose config needs them (xds_proxy/lazy.py)
    health_check = lazy_import("xds_proxy.upstream.health_check")
    http2_pool = lazy_import("xds_proxy.upstream.http2_pool")
    original_dst = lazy_import("xds_proxy.upstream.original_dst")

# One host entry: its endpoint, its address, and its name (the DNS name it was resolved from,
# else the endpoint's hostname).
HostEntry = tuple[EndpointAddress, tuple[str, int], str]
# A balancer's source of hosts, as Envoy's HostsSource: (priority, kind, locality index).
SourceKey = tuple[int, str, int]

log = logging.getLogger("xds_proxy.upstream")

_DNS_TYPES = (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS)
# Read once: an enum member read from its class costs EnumType.__getattr__ on Python 3.11.
_DOWNSTREAM = UpstreamProtocol.DOWNSTREAM
_HTTP1 = UpstreamProtocol.HTTP1
_HTTP2 = UpstreamProtocol.HTTP2


class Cluster:
    def __init__(
        self,
        config: ClusterConfig,
        stats: Stats,
        rng: random.Random | None = None,
        resolve: AddressLookup | None = None,
        health: HealthRole | None = None,
    ) -> None:
        """`health`: who decides the hosts' health (None: this cluster's own checker and
        detector; upstream/manager.py's roles for `--concurrency N`)."""
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
        self._resolve = resolve  # tests inject one; None: upstream/dns.py chooses
        self._dns_tasks: list[asyncio.Task] = []
        # DNS: each endpoint's last good addresses (by index); the endpoints not looked up yet.
        self._dns_found: dict[int, list[tuple[str, int]]] = {}
        self._dns_first: set[int] = set()
        # Set once the first hosts are known (DNS, EDS) and checked (health checks): the
        # cluster is warm. None for a static cluster without health checks: warm from the start.
        warms = config.discovery in (*_DNS_TYPES, DiscoveryType.EDS) or bool(config.health_checks)
        self.resolved = asyncio.Event() if warms else None
        self._rng = rng or random.Random()
        self._stats_store = stats
        self.lb: LoadBalancer = _load_balancer(config, self._rng, stats)
        self._health_checker = (
            (health.checker if health is not None else health_check.HealthChecker)(
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
            (health.detector if health is not None else OutlierDetector)(
                config.stat_name, config.outlier_detection, stats, self._health_changed, self._rng
            )
            if config.outlier_detection is not None
            else None
        )
        self._started = False
        self._overprovisioning = config.overprovisioning_factor
        self._locality_weights: dict[tuple[int, Locality], int] = {}
        self._entries: tuple = ()  # what the hosts were built from (an identical update: no-op)
        self._sets: list[HostSet] = host_sets([], {}, self._overprovisioning)
        self._load = PriorityLoad((100,), (0,), (False,))
        self._balancers: dict[SourceKey, LoadBalancer] = {}  # kept across updates
        self._fast: tuple[LoadBalancer, list[Host]] | None = None  # all load on P0's healthy
        self.assigned = False  # EDS: an assignment (or the end of the initial fetch) arrived
        self._original_dst = (
            original_dst.OriginalDstHosts(
                config.name,
                config.original_dst,
                stats.counter(f"cluster.{config.stat_name}.original_dst_host_invalid"),
                lambda: self.hosts,
                lambda pairs: self._set_hosts(
                    [(EndpointAddress(*address), address, name) for address, name in pairs]
                ),
            )
            if config.original_dst is not None
            else None
        )
        if config.discovery is DiscoveryType.STATIC:
            self._set_hosts([(e, (e.host, e.port), e.hostname) for e in config.endpoints])
        else:
            self._health_changed()  # no hosts yet: Envoy's (total panic, nothing to pick)

    # -- hosts ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start DNS resolution (DNS types) and health checks; needs the running loop."""
        if self._started:
            return
        self._started = True
        if self._outliers is not None:
            self._outliers.start()
        if self._original_dst is not None:
            self._original_dst.start()
        if self.config.discovery is DiscoveryType.EDS:
            if self.assigned:  # the assignment arrived before the start
                self._warm()
        elif self.config.discovery in _DNS_TYPES:
            self._start_dns()
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

    def _warm(self) -> None:
        """The first hosts are known: warm now, or after their first health checks."""
        if self.resolved is None or self.resolved.is_set():
            return
        if self._health_checker is None:
            self.resolved.set()
        elif self._started:
            self._health_checker.add_hosts(self.hosts)
            self._warm_after_first_checks()

    # -- EDS --------------------------------------------------------------------------------

    def set_assignment(self, assignment: Assignment) -> bool:
        """An EDS assignment (built by config/endpoints.py): the hosts become its endpoints.
        False when nothing changed (Envoy's `update_no_rebuild`)."""
        self._overprovisioning = assignment.overprovisioning_factor
        entries = [(e, (e.host, e.port), e.hostname) for e in assignment.endpoints]
        changed = self._set_hosts(entries)
        first = not self.assigned
        self.assigned = True
        if first and self._started:
            self._warm()
        return changed

    def initial_fetch_over(self) -> None:
        """EDS: the initial fetch timed out, or Delta said the assignment does not exist: the
        cluster is warm with the hosts it has (none at first), as Envoy's."""
        if not self.assigned:
            self.assigned = True
            if self._started:
                self._warm()

    # -- DNS --------------------------------------------------------------------------------

    def _start_dns(self) -> None:
        """One lookup loop per endpoint, each on its own timer, as Envoy's resolve targets."""
        endpoints = self.config.endpoints
        if not endpoints:  # nothing to look up: warm with no hosts
            self._dns_changed()
            return
        lookup = choose_lookup(self.config, self._resolve)
        # An answer that changes no host (Envoy's count for DNS clusters too).
        no_rebuild = self._stats_store.counter(f"cluster.{self.config.stat_name}.update_no_rebuild")
        self._dns_first = set(range(len(endpoints)))
        loop = asyncio.get_running_loop()
        self._dns_tasks = [
            loop.create_task(
                self._dns_target(index, endpoint, lookup, no_rebuild), name=f"dns:{self.name}"
            )
            for index, endpoint in enumerate(endpoints)
        ]

    async def _dns_target(
        self, index: int, endpoint: EndpointAddress, lookup: Lookup, no_rebuild: Counter
    ) -> None:
        config = self.config
        while not self.retired:
            self.stats.update_attempt.inc()
            try:
                answer = await lookup(endpoint, config.dns_family)
            except OSError as error:
                log.warning("cluster %s: cannot resolve %s: %s", self.name, endpoint.host, error)
                answer = None
            if answer is None:
                # Envoy keeps the last good answer of an endpoint whose lookup failed.
                self.stats.update_failure.inc()
            else:
                self.stats.update_success.inc()
                found = list(answer.addresses)
                if config.discovery is DiscoveryType.LOGICAL_DNS:
                    found = found[:1]
                self._dns_found[index] = found
            self._dns_first.discard(index)
            if not self._dns_changed() and answer is not None:
                no_rebuild.inc()
            await asyncio.sleep(next_lookup_delay_s(answer, config, self._rng))

    def _dns_changed(self) -> bool:
        """An endpoint's lookup ended: the hosts are every endpoint's last good addresses, in
        endpoint order; warm once every endpoint had its first lookup (answered or not).
        False when the hosts stay the same."""
        entries: list[HostEntry] = []
        for index, endpoint in enumerate(self.config.endpoints):
            known = {address for _, address, _ in entries}
            found = self._dns_found.get(index, [])
            entries += [(endpoint, a, endpoint.host) for a in found if a not in known]
        changed = self._set_hosts(entries)
        if self._dns_first or self.resolved is None or self.resolved.is_set():
            return changed
        if self._health_checker is None:
            self.resolved.set()
        else:
            self._warm_after_first_checks()
        return changed

    def _set_hosts(self, entries: list[HostEntry]) -> bool:
        """The hosts are now those of `entries`, in order (the first entry of an address
        wins). False when nothing changed."""
        wanted: dict[tuple[str, int], tuple[EndpointAddress, str]] = {}
        for endpoint, address, name in entries:
            wanted.setdefault(address, (endpoint, name))
        key = (self._overprovisioning, tuple(wanted.items()))
        if key == self._entries:
            return False
        self._entries = key
        checked = self._health_checker is not None
        current = {host.address: host for host in self.hosts}
        before = _addresses_by_priority(self.hosts)
        hosts: list[Host] = []
        added: list[Host] = []
        for address, (endpoint, name) in wanted.items():
            host = current.get(address)
            if host is None:
                host = Host(address, name, health_checked=checked, weight=endpoint.weight)
                added.append(host)
            host.hostname = name
            host.weight = endpoint.weight
            host.priority = endpoint.priority
            host.locality = endpoint.locality
            host.eds_health = endpoint.health
            host.health_check_port = endpoint.health_check_port
            host.pending_dynamic_removal = False
            hosts.append(host)
        # Envoy keeps a removed host that still passes active health checks, unless
        # `ignore_health_on_host_removal`; it goes when it fails one (`_drop_failed_removals`).
        keep_passing = checked and not self.config.ignore_health_on_host_removal
        removed: list[Host] = []
        for host in self.hosts:
            if host.address in wanted:
                continue
            if keep_passing and not (host.failed_active_hc or host.failed_eds_health):
                host.pending_dynamic_removal = True
                hosts.append(host)
            else:
                removed.append(host)
        self._locality_weights = {
            (endpoint.priority, endpoint.locality): endpoint.locality_weight
            for endpoint, _ in wanted.values()
        }
        self._replace_hosts(hosts, added, removed, before)
        return True

    def _replace_hosts(
        self,
        hosts: list[Host],
        added: list[Host],
        removed: list[Host],
        before: dict[int, set[tuple[str, int]]],
    ) -> None:
        for host in removed:
            for pool in host.pools.values():
                pool.retire()  # in-flight requests finish; idle connections close
        self.hosts = hosts
        after = _addresses_by_priority(hosts)
        changed = [p for p in set(before) | set(after) if before.get(p) != after.get(p)]
        self.stats.membership_change.value += len(changed)
        self.stats.membership_total.value = len(hosts)
        if self._health_checker is not None and self._started:
            self._health_checker.remove_hosts(removed)
            self._health_checker.add_hosts(added)
        if self._outliers is not None:
            self._outliers.set_hosts(hosts)
        self._health_changed()

    def locality_weight(self, priority: int, locality: Locality) -> int:
        """The `load_balancing_weight` of a locality at a priority (0: unset)."""
        return self._locality_weights.get((priority, locality), 0)

    @property
    def overprovisioning_factor(self) -> int:
        return self._overprovisioning

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
        """Hosts came, went or changed health: the priorities' load, panic and the balancers'
        sources are computed again (Envoy's refresh)."""
        if any(h.pending_dynamic_removal and h.failed_active_hc for h in self.hosts):
            asyncio.get_running_loop().call_soon(self._drop_failed_removals)
        self._sets = host_sets(self.hosts, self._locality_weights, self._overprovisioning)
        self._load = priority_load(
            self._sets, self._overprovisioning, self.config.healthy_panic_threshold_percent
        )
        self._fast = None
        load = self._load
        if load.single and not load.panic[0] and not self.config.locality_weighted:
            healthy = self._sets[0].healthy  # the usual case: one balancer, no draws
            self._fast = (self._balancer((0, "healthy", 0)), healthy)
        self.stats.membership_healthy.value = sum(len(s.healthy) for s in self._sets)
        self.stats.membership_degraded.value = sum(len(s.degraded) for s in self._sets)

    def _drop_failed_removals(self) -> None:
        """Hosts kept after their removal that now fail their health checks go."""
        removed = [h for h in self.hosts if h.pending_dynamic_removal and h.failed_active_hc]
        if not removed or self.retired:
            return
        before = _addresses_by_priority(self.hosts)
        hosts = [h for h in self.hosts if h not in removed]
        self._replace_hosts(hosts, [], removed, before)

    def pick_host(
        self,
        hash_key: int | None = None,
        request_headers: Sequence[Header] = (),
        exclude: HostExclusion | None = None,
    ) -> Host | None:
        """The host for the next request; `exclude` (a retry's `previous_hosts`): pick again
        while it rejects the host, the last pick stands."""
        host = self._choose(hash_key, request_headers)
        if exclude is not None:
            for _ in range(exclude.reselect):
                if host is None or not exclude.rejects(host):
                    break
                host = self._choose(hash_key, request_headers)
        return host

    def _choose(self, hash_key: int | None, request_headers: Sequence[Header]) -> Host | None:
        """The priority (its load, panic), the locality, then the balancer; `hash_key` is the
        request's hash (route `hash_policy`), used by the hashing balancers (none: a random
        one, as Envoy). An ORIGINAL_DST cluster picks (or adds) the request's destination
        host instead (original_dst.py)."""
        if self._original_dst is not None:
            return self._original_dst.pick(request_headers)
        fast = self._fast
        if fast is not None:
            return fast[0].pick(fast[1], hash_key)
        load = self._load
        if load.single and not load.panic[0]:
            priority, degraded = 0, False
        else:
            priority, degraded = choose_priority(load, self._rng.getrandbits(32))
        host_set = self._sets[priority]
        if load.panic[priority]:
            self.stats.lb_healthy_panic.value += 1
            return self._pick((priority, "all", 0), host_set.hosts, hash_key)
        if self.config.locality_weighted:
            locality = host_set.choose_locality(degraded)
            if locality is not None:
                if degraded:
                    hosts = host_set.degraded_per_locality[locality]
                    return self._pick((priority, "locality_degraded", locality), hosts, hash_key)
                hosts = host_set.healthy_per_locality[locality]
                return self._pick((priority, "locality_healthy", locality), hosts, hash_key)
        if degraded:
            return self._pick((priority, "degraded", 0), host_set.degraded, hash_key)
        return self._pick((priority, "healthy", 0), host_set.healthy, hash_key)

    def _pick(self, source: SourceKey, hosts: list[Host], hash_key: int | None) -> Host | None:
        return self._balancer(source).pick(hosts, hash_key)

    def _balancer(self, source: SourceKey) -> LoadBalancer:
        """One balancer per source of hosts, kept across host changes (a balancer rebuilds
        its weighted schedule, ring or table when it is given a new list)."""
        balancer = self._balancers.get(source)
        if balancer is None:
            balancer = self._balancers[source] = (
                self.lb
                if source == (0, "healthy", 0)
                else _load_balancer(self.config, self._rng, self._stats_store)
            )
        return balancer

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
        host = self.pick_host(hash_key, head.headers, exclude)
        if host is None:
            self.stats.upstream_cx_none_healthy.value += 1
            return None
        head.use_host_name(host.hostname)
        protocol = self.config.protocol
        if protocol is _DOWNSTREAM:
            protocol = _HTTP2 if downstream_http2 else _HTTP1
        key = 2 if protocol is _HTTP2 else 1  # (an int: an enum member hashes in Python)
        pool = host.pools.get(key)
        if pool is None:
            pool = host.pools[key] = self._new_pool(host, protocol)
        if self.resources.requests >= self.config.circuit_breakers.max_requests:
            self.stats.upstream_rq_pending_overflow.value += 1
            return FailedStream(handler, OVERFLOW)
        return pool.new_stream(head, handler, end_stream)

    def _new_pool(self, host: Host, protocol: UpstreamProtocol) -> Http1Pool | http2_pool.Http2Pool:
        if protocol is UpstreamProtocol.HTTP2:
            return http2_pool.Http2Pool(self, host)
        return Http1Pool(self, host)

    # -- lifecycle --------------------------------------------------------------------------

    def retire(self) -> None:
        """This cluster was replaced or removed: no new streams; connections close when idle."""
        self.retired = True
        if self._original_dst is not None:
            self._original_dst.stop()
        if self._health_checker is not None:
            self._health_checker.stop()
        if self._outliers is not None:
            self._outliers.stop()
        for task in self._dns_tasks:
            task.cancel()
        self._dns_tasks = []
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


def _addresses_by_priority(hosts: list[Host]) -> dict[int, set[tuple[str, int]]]:
    by_priority: dict[int, set[tuple[str, int]]] = {}
    for host in hosts:
        by_priority.setdefault(host.priority, set()).add(host.address)
    return by_priority


def _load_balancer(config: ClusterConfig, rng: random.Random, stats: Stats) -> LoadBalancer:
    hashing = config.hashing
    base = f"cluster.{config.stat_name}."
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
