"""Envoy's per-worker listener stats, `listener.<address>.worker_<N>.downstream_cx_total` and
`...downstream_cx_active`, on Envoy 1.40 and on ours with `--concurrency 1` (so `worker_0`),
the same bootstrap and the same connections: one listener named by its address and one with
a `stat_prefix`. Compared in `/stats` and in `/stats/prometheus` (the worker id is a label
there), with the listener's port written as PORT. Then across LDS updates: a full update and
an in-place update, with connections opened on each version and closed after the next.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.http_client import HttpConnection, get
from tests.helpers.listeners import chain, http_listener, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

pytestmark = pytest.mark.envoy

WORKER_STATS = r"^listener\..*\.worker_\d+\."


def listener(name: str, port: int, **fields: object) -> dict:
    """A direct-response listener whose HCM's stat_prefix is its name."""
    return http_listener(name, port, chains=[chain("ok", stat_prefix=name)], **fields)


def observe(process_type: type[EnvoyProcess], workdir: Path) -> tuple[dict, list[str]]:
    """Three closed connections to the address-named listener and one open connection to the
    stat_prefix one; the per-worker stats and their Prometheus lines then."""
    by_address, prefixed = free_port(), free_port()
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener("web", by_address),
                listener("inbound", prefixed, stat_prefix="inbound_prefix"),
            ]
        },
    }
    process = process_type(bootstrap, workdir).start()
    kept: HttpConnection | None = None
    try:
        process.wait_ready()
        assert [get(by_address).status for _ in range(3)] == [200, 200, 200]
        kept = HttpConnection(prefixed)
        assert kept.request().status == 200
        address_scope = f"listener.127.0.0.1_{by_address}."
        wait_for(
            lambda: process.stat(address_scope + "downstream_cx_active") == 0,
            what="the three closed connections closed on the proxy",
        )
        wait_for(
            lambda: process.stat("listener.inbound_prefix.downstream_cx_active") == 1,
            what="the kept connection counted",
        )
        stats = {
            name.replace(str(by_address), "PORT"): value
            for name, value in process.stats(WORKER_STATS).items()
        }
        _, prometheus = process.get("/stats/prometheus")
        # Envoy writes the counter families before the gauge families: compare the lines.
        worker_lines = sorted(
            line.replace(str(by_address), "PORT")
            for line in prometheus.splitlines()
            if re.match(r"(# TYPE )?envoy_listener_worker_", line)
        )
        return stats, worker_lines
    finally:
        if kept is not None:
            kept.close()
        process.stop()


def test_worker_0_listener_stats_as_envoy_with_concurrency_1(tmp_path: Path) -> None:
    envoy = observe(EnvoyProcess, tmp_path / "envoy")
    assert envoy[0] == {
        "listener.127.0.0.1_PORT.worker_0.downstream_cx_active": "0",
        "listener.127.0.0.1_PORT.worker_0.downstream_cx_total": "3",
        "listener.inbound_prefix.worker_0.downstream_cx_active": "1",
        "listener.inbound_prefix.worker_0.downstream_cx_total": "1",
    }
    assert (
        'envoy_listener_worker_downstream_cx_active{envoy_worker_id="0",'
        'envoy_listener_address="inbound_prefix"} 1'
    ) in envoy[1]
    ours = observe(ProxyProcess, tmp_path / "ours")
    assert ours == envoy


def observe_updates(process_type: type[EnvoyProcess], workdir: Path) -> tuple[dict, dict]:
    """One listener pushed, fully updated, then updated in place (its other chain changes);
    a kept connection on each version, closed by the client after the next push (the one on
    the second version has moved to the third); the listener's stats and its worker_0 stats
    once every connection has closed."""
    port = free_port()
    scope = f"listener.127.0.0.1_{port}."
    stub = StubProcess(workdir / "stub").start()
    process = process_type(lds_bootstrap(stub.xds_address), workdir / "proxy")
    kept: list[HttpConnection] = []
    try:
        process.start()
        process.wait_ready()
        served = chain("served", name="served", source_prefix="127.0.0.1/32")
        limit = {"per_connection_buffer_limit_bytes": 65536}
        versions = [
            http_listener("web", port, chains=[served, chain("a", name="other")]),
            http_listener("web", port, chains=[served, chain("a", name="other")], **limit),
            # in place: the served chain and its connection move to the new version
            http_listener("web", port, chains=[served, chain("b", name="other")], **limit),
        ]
        for number, config in enumerate(versions, start=1):
            stub.client.set_resources(listeners=[config], version=f"v{number}")
            stub.client.wait(f"v{number}", timeout=10)
            for conn in kept:
                conn.close()
            assert get(port).status == 200
            kept = [HttpConnection(port)]
            assert kept[0].request().status == 200
        assert process.stat("listener_manager.listener_in_place_updated") == 1
        kept.pop().close()
        wait_for(
            lambda: process.stat(scope + "worker_0.downstream_cx_active") == 0,
            what="every connection closed on the proxy",
        )
        listener_stats = {
            name.replace(str(port), "PORT"): value
            for name, value in process.stats(
                rf"^{re.escape(scope)}downstream_cx_(total|active)$"
            ).items()
        }
        worker_stats = {
            name.replace(str(port), "PORT"): value
            for name, value in process.stats(WORKER_STATS).items()
        }
        return listener_stats, worker_stats
    finally:
        for conn in kept:
            conn.close()
        process.stop()
        stub.stop()


def test_worker_0_listener_stats_across_lds_updates_as_envoy(tmp_path: Path) -> None:
    envoy = observe_updates(EnvoyProcess, tmp_path / "envoy")
    assert envoy[1] == {
        "listener.127.0.0.1_PORT.worker_0.downstream_cx_active": "0",
        "listener.127.0.0.1_PORT.worker_0.downstream_cx_total": "6",
    }
    assert envoy[0]["listener.127.0.0.1_PORT.downstream_cx_total"] == "6"
    ours = observe_updates(ProxyProcess, tmp_path / "ours")
    assert ours == envoy
