"""Merging the workers' stats and drain reports into one proxy's (xds_proxy/workers/merge.py):
plain data in, plain data out. Snapshots come from real stores filled by the real stat
owners (cluster stats, circuit breakers, subscriptions) where the names matter."""

from __future__ import annotations

import copy
import json

import pytest

from xds_proxy.config.cluster import CircuitBreakers
from xds_proxy.stats import Stats, StatsSnapshot
from xds_proxy.upstream.stats import ClusterStats, register_circuit_breaker_gauges
from xds_proxy.workers.merge import (
    MERGE_RULES,
    Merge,
    merge_rule,
    merge_stats,
)
from xds_proxy.xds.sotw import SubscriptionStats
from xds_proxy.xds.subscriptions import UpdateStats

# -- which rule takes each name ---------------------------------------------------------------

RULES_BY_NAME = {
    # server state is main's; connections are every worker's
    "server.total_connections": Merge.SUM,
    "server.live": Merge.MAIN,
    "server.state": Merge.MAIN,
    "server.concurrency": Merge.MAIN,
    "server.hot_restart_epoch": Merge.MAIN,
    "server.parent_connections": Merge.MAIN,
    # managers and their subscriptions
    "listener_manager.listener_added": Merge.MAIN,
    "listener_manager.total_listeners_active": Merge.MAIN,
    "listener_manager.workers_started": Merge.MAIN,
    "listener_manager.lds.update_success": Merge.MAIN,
    "listener_manager.lds.version_text": Merge.MAIN,
    "listener_manager.lds.control_plane.connected_state": Merge.MAIN,
    "cluster_manager.active_clusters": Merge.MAIN,
    "cluster_manager.cds.update_rejected": Merge.MAIN,
    "cluster_manager.cds.control_plane.identifier": Merge.MAIN,
    "control_plane.connected_state": Merge.MAIN,
    "control_plane.rate_limit_enforced": Merge.MAIN,
    "runtime.load_success": Merge.MAIN,
    "http.admin.downstream_rq_total": Merge.MAIN,
    "listener.admin.downstream_cx_total": Merge.MAIN,
    # RDS, EDS, SDS subscriptions (plain streams have <type>.control_plane.*)
    "http.ingress.rds.routes_a.update_attempt": Merge.MAIN,
    "http.ingress.rds.routes_a.config_reload": Merge.MAIN,
    "http.ingress.rds.routes_a.config_reload_time_ms": Merge.MAIN,
    "http.ingress.rds.routes.v1.version": Merge.MAIN,  # a route configuration name with a dot
    "http.ingress.rds.routes_a.version_text": Merge.MAIN,
    "http.ingress.rds.routes_a.init_fetch_timeout": Merge.MAIN,
    "rds.control_plane.connected_state": Merge.MAIN,
    "eds.control_plane.pending_requests": Merge.MAIN,
    "sds.control_plane.identifier": Merge.MAIN,
    "sds.server_cert.update_success": Merge.MAIN,
    "sds.server_cert.key_rotation_failed": Merge.MAIN,
    "cluster.backend.update_attempt": Merge.MAIN,
    "cluster.backend.update_no_rebuild": Merge.MAIN,
    "cluster.backend.update_empty": Merge.MAIN,
    "cluster.backend.update_time": Merge.MAIN,
    "cluster.backend.version": Merge.MAIN,
    "cluster.backend.version_text": Merge.MAIN,
    "cluster.backend.init_fetch_timeout": Merge.MAIN,
    "cluster.backend.assignment_stale": Merge.MAIN,
    # an Istio-style cluster name full of dots and bars
    "cluster.outbound|80||svc.ns.svc.cluster.local.update_success": Merge.MAIN,
    "cluster.outbound|80||svc.ns.svc.cluster.local.upstream_rq_total": Merge.SUM,
    "cluster.outbound|80||svc.ns.svc.cluster.local.membership_total": Merge.SHARED,
    # hosts, health and config-derived gauges: the same in every process
    "cluster.backend.membership_total": Merge.SHARED,
    "cluster.backend.membership_healthy": Merge.SHARED,
    "cluster.backend.membership_degraded": Merge.SHARED,
    "cluster.backend.membership_change": Merge.SHARED,
    "cluster.backend.max_host_weight": Merge.SHARED,
    "cluster.backend.warming_state": Merge.SHARED,
    "cluster.backend.health_check.healthy": Merge.SHARED,
    "cluster.backend.health_check.degraded": Merge.SHARED,
    "cluster.backend.client_ssl_socket_factory.ssl_context_update_by_sds": Merge.SHARED,
    "listener.127.0.0.1_443.server_ssl_socket_factory.ssl_context_update_by_sds": Merge.SHARED,
    # circuit breakers and balancer tables
    "cluster.backend.circuit_breakers.default.cx_open": Merge.MAX,
    "cluster.backend.circuit_breakers.default.cx_pool_open": Merge.MAX,
    "cluster.backend.circuit_breakers.high.rq_retry_open": Merge.MAX,
    "cluster.backend.circuit_breakers.default.remaining_cx": Merge.MIN,
    "cluster.backend.circuit_breakers.default.remaining_cx_pools": Merge.MIN,
    "cluster.backend.circuit_breakers.default.remaining_retries": Merge.MIN,
    "cluster.backend.ring_hash_lb.size": Merge.MAX,
    "cluster.backend.ring_hash_lb.max_hashes_per_host": Merge.MAX,
    "cluster.backend.maglev_lb.min_entries_per_host": Merge.MAX,
    "overload.envoy.resource_monitors.global_downstream_max_connections.pressure": Merge.MAX,
    # counted where it happens
    "overload.envoy.resource_monitors.global_downstream_max_connections.failed_updates": (
        Merge.SUM
    ),
    "cluster.backend.upstream_cx_total": Merge.SUM,
    "cluster.backend.upstream_cx_active": Merge.SUM,
    "cluster.backend.upstream_rq_active": Merge.SUM,
    "cluster.backend.upstream_rq_pending_active": Merge.SUM,
    "cluster.backend.upstream_rq_503": Merge.SUM,
    "cluster.backend.retry.upstream_rq_5xx": Merge.SUM,
    "cluster.backend.upstream_rq_retry": Merge.SUM,
    "cluster.backend.lb_healthy_panic": Merge.SUM,
    "cluster.backend.original_dst_host_invalid": Merge.SUM,
    "cluster.backend.health_check.attempt": Merge.SUM,
    "cluster.backend.outlier_detection.ejections_active": Merge.SUM,
    "cluster.backend.outlier_detection.ejections_enforced_total": Merge.SUM,
    "cluster.backend.client_ssl_socket_factory.upstream_context_secrets_not_ready": Merge.SUM,
    "listener.127.0.0.1_10000.downstream_cx_total": Merge.SUM,
    "listener.127.0.0.1_10000.downstream_cx_active": Merge.SUM,
    "listener.127.0.0.1_10000.worker_1.downstream_cx_total": Merge.SUM,
    "listener.[__1]_10000.worker_0.downstream_cx_active": Merge.SUM,
    "listener.my_prefix.no_filter_chain_match": Merge.SUM,
    "listener.127.0.0.1_10000.ssl.handshake": Merge.SUM,
    "listener.127.0.0.1_443.server_ssl_socket_factory.downstream_context_secrets_not_ready": (
        Merge.SUM
    ),
    "http.ingress.downstream_cx_active": Merge.SUM,
    "http.ingress.downstream_rq_2xx": Merge.SUM,
    "http.ingress.downstream_cx_drain_close": Merge.SUM,
    "http.ingress.http2.header_overflow": Merge.SUM,
    "http1.dropped_headers_with_underscores": Merge.SUM,
    "tcp.db.downstream_cx_total": Merge.SUM,
    "tcp.db.upstream_flush_active": Merge.SUM,
    "connection_limit.web.active_connections": Merge.SUM,
    "connection_limit.web.limited_connections": Merge.SUM,
    "tls_inspector.tls_found": Merge.SUM,
    "http_inspector.http11_found": Merge.SUM,
    # an HCM whose stat_prefix is "rds" is not an RDS subscription; nor is one named "server"
    "http.rds.downstream_rq_total": Merge.SUM,
    "http.server.downstream_rq_total": Merge.SUM,
    "http.rds.rds.r.update_success": Merge.MAIN,
}


@pytest.mark.parametrize(("name", "expected"), sorted(RULES_BY_NAME.items()))
def test_each_stat_name_merges_by_its_rule(name: str, expected: Merge) -> None:
    assert merge_rule(name) is expected


def test_every_rule_decides_at_least_one_name_in_the_table() -> None:
    """A rule added to MERGE_RULES without a name above is a rule nobody checked."""
    deciding = set()
    for name in RULES_BY_NAME:
        matching = [i for i, rule in enumerate(MERGE_RULES) if rule.pattern.match(name)]
        deciding.update(matching[:1])
        first = MERGE_RULES[matching[0]].merge if matching else Merge.SUM
        assert merge_rule(name) is first, name  # the one combined pattern agrees
    assert deciding == set(range(len(MERGE_RULES)))


def test_every_rule_says_why() -> None:
    assert all(rule.why for rule in MERGE_RULES)


# -- merge_stats ------------------------------------------------------------------------------


def snapshot(
    counters: dict[str, int] | None = None,
    gauges: dict[str, int] | None = None,
    texts: dict[str, str] | None = None,
) -> StatsSnapshot:
    return {"counters": counters or {}, "gauges": gauges or {}, "text_readouts": texts or {}}


def test_counters_of_connections_and_requests_add_up() -> None:
    name = "http.ingress.downstream_rq_total"
    main = snapshot({name: 0, "server.total_connections": 0})
    workers = [snapshot({name: 5}), snapshot({name: 7}), snapshot({name: 0})]
    assert merge_stats(main, workers)["counters"][name] == 12


def test_gauges_of_active_things_add_up_and_main_counts_too() -> None:
    main = snapshot(gauges={"server.total_connections": 0, "cluster.xds.upstream_cx_active": 1})
    workers = [
        snapshot(gauges={"server.total_connections": 3, "cluster.xds.upstream_cx_active": 0}),
        snapshot(gauges={"server.total_connections": 4, "cluster.xds.upstream_cx_active": 2}),
    ]
    gauges = merge_stats(main, workers)["gauges"]
    assert gauges["server.total_connections"] == 7
    assert gauges["cluster.xds.upstream_cx_active"] == 3


def test_control_side_takes_mains_value_and_drops_the_workers_replicas() -> None:
    main = snapshot(
        {"listener_manager.listener_added": 3, "listener_manager.lds.update_success": 2},
        {"server.state": 0, "listener_manager.total_listeners_active": 2},
        {"listener_manager.lds.version_text": "v2"},
    )
    replica = snapshot(
        {"listener_manager.listener_added": 3, "listener_manager.lds.update_success": 9},
        {"server.state": 3, "listener_manager.total_listeners_active": 2},
        {"listener_manager.lds.version_text": "local-7"},
    )
    merged = merge_stats(main, [replica, copy.deepcopy(replica)])
    assert merged == main


def test_a_control_side_name_only_workers_have_is_left_out() -> None:
    """A worker's view of the local channel (main uses a plain gRPC LDS stream, the worker an
    aggregated one to the main process) must not show as the proxy's ADS stream."""
    main = snapshot(gauges={"listener_manager.lds.control_plane.connected_state": 1})
    worker = snapshot(
        {"control_plane.rate_limit_enforced": 0},
        {"control_plane.connected_state": 1, "eds.control_plane.pending_requests": 0},
        {"control_plane.identifier": "xds-proxy main"},
    )
    assert merge_stats(main, [worker]) == main


def test_shared_values_are_mains_else_the_first_workers() -> None:
    main = snapshot(gauges={"cluster.backend.membership_total": 3})
    workers = [
        snapshot(
            {"listener.127.0.0.1_443.server_ssl_socket_factory.ssl_context_update_by_sds": 2},
            {"cluster.backend.membership_total": 2, "cluster.backend.health_check.healthy": 2},
        ),
        snapshot(
            {"listener.127.0.0.1_443.server_ssl_socket_factory.ssl_context_update_by_sds": 2},
            {"cluster.backend.membership_total": 2, "cluster.backend.health_check.healthy": 1},
        ),
    ]
    merged = merge_stats(main, workers)
    assert merged["gauges"] == {
        "cluster.backend.membership_total": 3,
        "cluster.backend.health_check.healthy": 2,
    }
    assert merged["counters"] == {
        "listener.127.0.0.1_443.server_ssl_socket_factory.ssl_context_update_by_sds": 2
    }


def test_open_breakers_and_balancer_tables_take_the_largest_value() -> None:
    cx_open = "cluster.backend.circuit_breakers.default.cx_open"
    ring = "cluster.backend.ring_hash_lb.size"
    main = snapshot(gauges={cx_open: 0, ring: 0})  # main never balances a request
    workers = [snapshot(gauges={cx_open: 1, ring: 1024}), snapshot(gauges={cx_open: 1, ring: 0})]
    assert merge_stats(main, workers)["gauges"] == {cx_open: 1, ring: 1024}
    closed = [snapshot(gauges={cx_open: 0}), snapshot(gauges={cx_open: 0})]
    assert merge_stats(snapshot(gauges={cx_open: 0}), closed)["gauges"] == {cx_open: 0}


def test_remaining_room_is_the_fullest_workers() -> None:
    remaining = "cluster.backend.circuit_breakers.default.remaining_cx"
    main = snapshot(gauges={remaining: 7})
    workers = [snapshot(gauges={remaining: 6}), snapshot(gauges={remaining: 4})]
    assert merge_stats(main, workers)["gauges"] == {remaining: 4}


def test_names_only_a_worker_has_are_included() -> None:
    main = snapshot(
        {"listener.127.0.0.1_10000.downstream_cx_total": 0},
        {"listener.127.0.0.1_10000.downstream_cx_active": 0},
    )
    workers = [
        snapshot(
            {
                "listener.127.0.0.1_10000.downstream_cx_total": 2,
                "listener.127.0.0.1_10000.worker_0.downstream_cx_total": 2,
                "cluster.backend.upstream_rq_200": 2,
            },
            {
                "listener.127.0.0.1_10000.downstream_cx_active": 1,
                "listener.127.0.0.1_10000.worker_0.downstream_cx_active": 1,
            },
        ),
        snapshot(
            {
                "listener.127.0.0.1_10000.downstream_cx_total": 3,
                "listener.127.0.0.1_10000.worker_1.downstream_cx_total": 3,
                "cluster.backend.upstream_rq_200": 1,
            },
            {
                "listener.127.0.0.1_10000.downstream_cx_active": 0,
                "listener.127.0.0.1_10000.worker_1.downstream_cx_active": 0,
            },
        ),
    ]
    merged = merge_stats(main, workers)
    assert merged["counters"] == {
        "listener.127.0.0.1_10000.downstream_cx_total": 5,
        "listener.127.0.0.1_10000.worker_0.downstream_cx_total": 2,
        "listener.127.0.0.1_10000.worker_1.downstream_cx_total": 3,
        "cluster.backend.upstream_rq_200": 3,
    }
    assert merged["gauges"] == {
        "listener.127.0.0.1_10000.downstream_cx_active": 1,
        "listener.127.0.0.1_10000.worker_0.downstream_cx_active": 1,
        "listener.127.0.0.1_10000.worker_1.downstream_cx_active": 0,
    }


def test_min_and_max_of_a_name_main_lacks_start_from_the_first_worker() -> None:
    remaining = "cluster.backend.circuit_breakers.default.remaining_rq"
    rq_open = "cluster.backend.circuit_breakers.default.rq_open"
    workers = [
        snapshot(gauges={remaining: 5, rq_open: 0}),
        snapshot(gauges={remaining: 9, rq_open: 1}),
    ]
    assert merge_stats(snapshot(), workers)["gauges"] == {remaining: 5, rq_open: 1}


def test_text_readouts_are_never_added() -> None:
    main = snapshot(texts={"http.ingress.rds.routes_a.version_text": "r1"})
    workers = [
        snapshot(texts={"http.ingress.rds.routes_a.version_text": "local", "custom.note": "a"}),
        snapshot(texts={"custom.note": "b"}),
    ]
    assert merge_stats(main, workers)["text_readouts"] == {
        "http.ingress.rds.routes_a.version_text": "r1",
        "custom.note": "a",
    }


def test_no_workers_is_mains_picture_and_the_inputs_are_not_changed() -> None:
    main = snapshot({"http.x.downstream_rq_total": 1}, {"server.total_connections": 2}, {"t": "v"})
    workers = [snapshot({"http.x.downstream_rq_total": 4}, {"server.total_connections": 1})]
    before = copy.deepcopy((main, workers))
    assert merge_stats(main, []) == main
    merged = merge_stats(main, workers)
    assert (main, workers) == before
    merged["counters"]["http.x.downstream_rq_total"] = 0
    assert main["counters"]["http.x.downstream_rq_total"] == 1


def cluster_store(in_use_connections: int, requests: int) -> Stats:
    """A store with one cluster's stats as the real owners register them."""

    class InUse:
        connections = in_use_connections
        pending = 0
        requests = 0
        retries = 0

    stats = Stats()
    cluster = ClusterStats(stats, "backend")
    cluster.upstream_rq_total.inc(requests)  # type: ignore[attr-defined]
    cluster.upstream_cx_active.set(in_use_connections)  # type: ignore[attr-defined]
    cluster.membership_total.set(2)  # type: ignore[attr-defined]
    cluster.update_attempt.inc()  # type: ignore[attr-defined]
    for _ in range(requests):
        cluster.count_response(200)
    limits = CircuitBreakers(max_connections=3, track_remaining=True)
    register_circuit_breaker_gauges(stats, "backend", limits, InUse(), lambda: 1)
    subscription = SubscriptionStats.create(stats, "cluster_manager.cds.", "control_plane.")
    subscription.update_success.inc()
    subscription.version_text.set("v1")
    routes = UpdateStats(stats, "http.ingress.rds.routes.v1.")
    routes.update_attempt.inc()
    return stats


def test_real_cluster_stores_merge_as_one_proxy() -> None:
    main = cluster_store(in_use_connections=0, requests=0).snapshot()
    workers = [
        cluster_store(in_use_connections=1, requests=4).snapshot(),
        cluster_store(in_use_connections=3, requests=2).snapshot(),
    ]
    merged = merge_stats(main, json.loads(json.dumps(workers)))  # what crosses the channel
    value = {**merged["counters"], **merged["gauges"], **merged["text_readouts"]}
    base = "cluster.backend."
    assert value[base + "upstream_rq_total"] == 6
    assert value[base + "upstream_rq_200"] == 6
    assert value[base + "upstream_rq_2xx"] == 6
    assert value[base + "upstream_cx_active"] == 4
    assert value[base + "membership_total"] == 2
    assert value[base + "update_attempt"] == 1
    assert value[base + "circuit_breakers.default.cx_open"] == 1  # the second worker is full
    assert value[base + "circuit_breakers.high.cx_open"] == 0
    assert value[base + "circuit_breakers.default.remaining_cx"] == 0
    assert (
        value[base + "circuit_breakers.default.remaining_rq"]
        == main["gauges"][base + "circuit_breakers.default.remaining_rq"]
    )
    assert value["cluster_manager.cds.update_success"] == 1
    assert value["cluster_manager.cds.version_text"] == "v1"
    assert value["http.ingress.rds.routes.v1.update_attempt"] == 1
    assert set(value) == {
        *main["counters"],
        *main["gauges"],
        *main["text_readouts"],
        base + "upstream_rq_200",
        base + "upstream_rq_2xx",
    }


# -- Stats.snapshot / Stats.load ----------------------------------------------------------------


def test_snapshot_reads_derived_gauges_now_and_is_plain_json() -> None:
    stats = Stats()
    room = [5]
    stats.derived_gauge("cluster.c.circuit_breakers.default.remaining_cx", lambda: room[0])
    stats.counter("http.x.downstream_rq_total").inc(3)
    stats.gauge("server.total_connections").set(2)
    stats.text_readout("listener_manager.lds.version_text").set("v1")
    room[0] = 4
    taken = stats.snapshot()
    room[0] = 1
    assert taken == {
        "counters": {"http.x.downstream_rq_total": 3},
        "gauges": {
            "cluster.c.circuit_breakers.default.remaining_cx": 4,
            "server.total_connections": 2,
        },
        "text_readouts": {"listener_manager.lds.version_text": "v1"},
    }
    assert json.loads(json.dumps(taken)) == taken


def test_a_loaded_snapshot_renders_as_the_store_it_came_from() -> None:
    stats = Stats()
    stats.counter("listener.127.0.0.1_80.worker_0.downstream_cx_total").inc(2)
    stats.gauge("listener.127.0.0.1_80.worker_0.downstream_cx_active").inc()
    stats.derived_gauge("cluster.c.circuit_breakers.default.cx_open", lambda: 1)
    stats.counter("cluster.c.upstream_rq_total").inc(7)
    stats.text_readout("control_plane.identifier").set('say "hi"')
    loaded = Stats.load(json.loads(json.dumps(stats.snapshot())))
    assert loaded.render_text() == stats.render_text()
    assert loaded.render_json("cluster") == stats.render_json("cluster")
    assert loaded.render_prometheus() == stats.render_prometheus()
    assert loaded.value("cluster.c.circuit_breakers.default.cx_open") == 1
    assert loaded.snapshot() == stats.snapshot()


def test_prometheus_takes_the_worker_id_as_envoy_does() -> None:
    stats = Stats()
    stats.counter("listener.127.0.0.1_80.worker_0.downstream_cx_total").inc(3)
    stats.gauge("listener.inbound_80.worker_1.downstream_cx_active").inc()
    stats.counter("listener.[__1]_80.worker_12.downstream_cx_total")
    lines = stats.render_prometheus().splitlines()
    assert (
        'envoy_listener_worker_downstream_cx_total{envoy_worker_id="0",'
        'envoy_listener_address="127.0.0.1_80"} 3'
    ) in lines
    assert (
        'envoy_listener_worker_downstream_cx_active{envoy_worker_id="1",'
        'envoy_listener_address="inbound_80"} 1'
    ) in lines
    assert (
        'envoy_listener_worker_downstream_cx_total{envoy_worker_id="12",'
        'envoy_listener_address="[__1]_80"} 0'
    ) in lines
    assert "# TYPE envoy_listener_worker_downstream_cx_total counter" in lines


def test_prometheus_worker_id_of_pipe_listeners_as_envoy_1_40() -> None:
    """A pipe's path with a dot keeps `worker_0` in the name (the address label ends at the
    dot); a dot-free path gets the worker label, as Envoy 1.40 shows them."""
    stats = Stats()
    stats.counter("listener./run/l.sock.worker_0.downstream_cx_total")
    stats.counter("listener./run/lsock.worker_0.downstream_cx_total")
    lines = stats.render_prometheus().splitlines()
    assert (
        'envoy_listener_sock_worker_0_downstream_cx_total{envoy_listener_address="/run/l"} 0'
    ) in lines
    assert (
        'envoy_listener_worker_downstream_cx_total{envoy_worker_id="0",'
        'envoy_listener_address="/run/lsock"} 0'
    ) in lines
