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
