"""Prometheus names and labels as Envoy's tag extractors make them."""

from __future__ import annotations

from xds_proxy.stats import Stats


def test_prefixes_become_labels_as_in_envoy() -> None:
    stats = Stats()
    stats.counter("connection_limit.web.limited_connections").inc()
    stats.gauge("http.ingress.downstream_cx_active")
    stats.counter("listener.127.0.0.1_80.downstream_cx_total")
    stats.counter("cluster.backend.upstream_rq_total")
    lines = stats.render_prometheus(None).splitlines()
    assert (
        'envoy_connection_limit_limited_connections{envoy_connection_limit_prefix="web"} 1' in lines
    )
    assert 'envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix="ingress"} 0' in lines
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_80"} 0' in lines
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"} 0' in lines
    assert "# TYPE envoy_connection_limit_limited_connections counter" in lines


def test_listener_labels_for_ipv6_stat_prefixes_and_pipes_as_envoy_1_40() -> None:
    stats = Stats()
    stats.counter("listener.[__1]_80.downstream_cx_total")
    stats.counter("listener.mine.downstream_cx_total")
    stats.counter("listener./run/mesh/l.sock.downstream_cx_total")
    stats.counter("listener.admin.downstream_cx_total")
    lines = stats.render_prometheus(None).splitlines()
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="[__1]_80"} 0' in lines
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="mine"} 0' in lines
    # A pipe's path up to its first dot is the label, the rest stays in the name (Envoy 1.40).
    assert 'envoy_listener_sock_downstream_cx_total{envoy_listener_address="/run/mesh/l"} 0' in (
        lines
    )
    assert "envoy_listener_admin_downstream_cx_total{} 0" in lines
