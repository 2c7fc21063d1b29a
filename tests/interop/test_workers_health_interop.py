"""Envoy 1.40 with two worker threads and ours with two worker processes, the same clusters and
requests: one active health checker per cluster (each host checked once at `interval` 60 s,
whatever the number of workers), a host failed by that check served by no worker, and
`consecutive_5xx` counted across workers (the failing host serves exactly 5 requests, on new
connections spread over both workers, then is ejected everywhere: once the ejection shows in
`/clusters`, no worker sends it a request)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import cluster_dict
from tests.integration.test_cds import get_upstream, routed_listener
from tests.integration.test_workers_health import Upstream, _check

pytestmark = pytest.mark.envoy

WORKERS = 2
REQUESTS = 30


def _bootstrap(port: int, cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": {"id": "workers-health", "cluster": "workers-health"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [routed_listener(port, "backends")],
            "clusters": [cluster],
        },
    }


def _label(port: int) -> str:
    """One GET on a new connection: the upstream's label, or the status of a local reply."""
    status, label = get_upstream(port)
    return label or str(status)


def _flags(process: EnvoyProcess, ports: dict[int, str]) -> dict[str, str]:
    _, text = process.get("/clusters")
    found = {}
    for line in text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            found[ports[int(parts[1].rsplit(":", 1)[1])]] = parts[3]
    return found


def _run(process_class: type[EnvoyProcess], workdir: Path, kind: str) -> dict[str, Any]:
    port = free_port()
    if kind == "health_checks":
        a, b = Upstream("a"), Upstream("b", health=(503,))
    else:
        a, b = Upstream("a"), Upstream("b", status=503)
    with a, b:
        if kind == "health_checks":
            cluster = cluster_dict("backends", [a.port, b.port], health_checks=[_check("60s")])
        else:
            outlier = {"consecutive_5xx": 5, "max_ejection_percent": 100, "interval": "30s"}
            cluster = cluster_dict("backends", [a.port, b.port], outlier_detection=outlier)
        process = process_class(_bootstrap(port, cluster), workdir)
        process.concurrency = WORKERS
        process.start()
        try:
            process.wait_ready()
            if kind == "health_checks":
                wait_for(lambda: len(a.checks) + len(b.checks) >= 2, what="the first checks")
            labels: list[str] = []
            for _ in range(REQUESTS):
                labels.append(_label(port))
                if kind == "outlier_detection" and labels.count("b") == 5 and labels[-1] == "b":
                    # Until the main thread (process) has ejected B: the next request is on a
                    # new connection, maybe on the other worker, which it tells a moment later.
                    wait_for(
                        lambda: _flags(process, {a.port: "a", b.port: "b"})["b"] != "healthy",
                        timeout=5,
                        what="B's 5th 503 seen",
                    )
            stats = process.stats(r"cluster\.backends\.(health_check|outlier_detection)\.")
            return {
                "served": {label: labels.count(label) for label in sorted(set(labels))},
                "checks": (len(a.checks), len(b.checks)),
                "flags": _flags(process, {a.port: "a", b.port: "b"}),
                "stats": {
                    name: value
                    for name, value in stats.items()
                    if name.rsplit(".", 1)[1]
                    in (
                        "attempt",
                        "success",
                        "failure",
                        "healthy",
                        "ejections_active",
                        "ejections_enforced_total",
                        "ejections_detected_consecutive_5xx",
                    )
                },
            }
        finally:
            process.stop()


@pytest.mark.parametrize("kind", ["health_checks", "outlier_detection"])
def test_one_checker_and_one_detector_with_two_workers_like_envoy(
    kind: str, tmp_path: Path
) -> None:
    envoy = _run(EnvoyProcess, tmp_path / "envoy", kind)
    ours = _run(ProxyProcess, tmp_path / "ours", kind)
    assert ours == envoy
    if kind == "health_checks":
        assert envoy["checks"] == (1, 1)
        assert envoy["served"] == {"a": REQUESTS}
    else:
        assert envoy["served"] == {"a": REQUESTS - 5, "b": 5}
        assert envoy["flags"]["b"] == "/failed_outlier_check"
