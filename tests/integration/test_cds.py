"""CDS through the real stub, the real proxy and real upstreams: a cluster and a listener
routing to it pushed in one resource set (the listener validates its clusters, so it is only
accepted if CDS is applied before LDS), then the cluster modified, an invalid one NACKed
while the valid ones still apply, and the cluster removed.

`run_scenario` takes the process class so the interop test runs the same with Envoy 1.40.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CDS = "cluster_manager.cds."
CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def routed_listener(port: int, cluster: str) -> dict[str, Any]:
    """An HTTP listener whose inline route table names `cluster` (validate_clusters is on
    by default for inline tables: an unknown cluster rejects the listener)."""
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                }
            ],
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    return {
        "name": f"http_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def cds_bootstrap(xds_address: str, delta: bool = False, ads: bool = True) -> dict[str, Any]:
    """LDS and CDS (SotW or Delta) over ADS, as Envoy is most often configured, or each over
    its own `api_config_source` (`ads=False`)."""
    document = lds_bootstrap(xds_address, ads=ads)
    dynamic = document["dynamic_resources"]
    source = dynamic["ads_config"] if ads else dynamic["lds_config"]["api_config_source"]
    if delta:
        source["api_type"] = "DELTA_GRPC"
    dynamic["cds_config"] = {"resource_api_version": "V3", "initial_fetch_timeout": "5s"}
    if ads:
        dynamic["cds_config"]["ads"] = {}
    else:
        dynamic["cds_config"]["api_config_source"] = dict(source)
    return document


def get_upstream(port: int) -> tuple[int, str]:
    """One GET /; returns (status, the answering upstream's label or "")."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head = received.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    label = next(
        (line.split(":", 1)[1].strip() for line in head if line.lower().startswith("x-upstream:")),
        "",
    )
    return status, label


def cds_counts(process: EnvoyProcess) -> tuple[int | None, int | None]:
    return process.stat(CDS + "update_success"), process.stat(CDS + "update_rejected")


def wait_counts(process: EnvoyProcess, success: int, rejected: int) -> None:
    wait_for(
        lambda: cds_counts(process) == (success, rejected),
        timeout=5,
        what=f"{process.name} CDS success={success} rejected={rejected}",
    )


def nack_head(stub: StubProcess) -> tuple[int, str]:
    """The cluster NACK the stub holds: its code and the text up to the cluster's reason
    (Envoy's per-cluster reasons are worded differently from ours after that point)."""
    for node in stub.client.status()["nodes"]:
        for stream in node["streams"]:
            if stream["type_url"] == CLUSTER_TYPE_URL and stream["nack"]:
                nack = stream["nack"]
                return nack["code"], nack["message"].split(": ")[0]
    return 0, ""


def stream_types(stub: StubProcess) -> list[list[str]]:
    """The type URLs each open stream carries, in the order the stub saw them."""
    streams: dict[int, list[str]] = {}
    for node in stub.client.status()["nodes"]:
        for ledger in node["streams"]:
            streams.setdefault(ledger["stream"], []).append(ledger["type_url"].rsplit(".", 1)[1])
    return list(streams.values())


def run_scenario(
    process_class: type[EnvoyProcess], workdir: Path, delta: bool = False, ads: bool = True
) -> list[Any]:
    """Returns what was observed at each step (compared between Envoy and ours)."""
    seen: list[Any] = []
    with Http1Echo("a") as first, Http1Echo("b") as second:
        stub = StubProcess(workdir, xds=f"127.0.0.1:{free_port()}").start()
        process = None
        try:
            port = free_port()
            listeners = stub.client.set_resources(
                listeners=[routed_listener(port, "dyn")],
                clusters=[cluster_dict("dyn", [first.port])],
            )["listeners"]
            document = cds_bootstrap(stub.xds_address, delta, ads)
            process = process_class(document, workdir, "warning")
            process.start()
            process.wait_ready()
            stub.client.wait(listeners, timeout=5)  # accepted: CDS came first
            wait_counts(process, 1, 0)
            seen.append(
                ("pushed", get_upstream(port), process.stat("cluster_manager.active_clusters"))
            )
            seen.append(("streams", stream_types(stub)))

            # A listener and the new cluster it routes to, in one push: over one ADS stream
            # the cluster is applied first, so the listener is accepted (over two streams
            # the stub sends the clusters first too; their order is then not guaranteed).
            other = free_port()
            together = stub.client.set_resources(
                listeners=[routed_listener(port, "dyn"), routed_listener(other, "dyn2")],
                clusters=[cluster_dict("dyn", [first.port]), cluster_dict("dyn2", [second.port])],
            )
            stub.client.wait(together["listeners"], timeout=5)
            wait_counts(process, 2, 0)
            seen.append(("together", get_upstream(other), nack_head(stub)))

            accepted = stub.client.set_resources(
                listeners=[routed_listener(port, "dyn")],
                clusters=[cluster_dict("dyn", [second.port])],
            )["clusters"]
            wait_counts(process, 3, 0)
            seen.append(
                ("modified", get_upstream(port), process.stat("cluster_manager.cluster_modified"))
            )

            bad = cluster_dict("bad", [first.port], host="not-an-ip")
            extra = cluster_dict("extra", [first.port])
            stub.client.set_resources(clusters=[cluster_dict("dyn", [first.port]), bad, extra])
            wait_counts(process, 3, 1)
            seen.append(
                (
                    "nacked",
                    get_upstream(port),  # the valid clusters of the rejected set still apply
                    process.stat("cluster_manager.active_clusters"),
                    process.stats("^" + CDS + "version_text$")[CDS + "version_text"]
                    == f'"{accepted}"',  # the NACK keeps the last accepted version
                    nack_head(stub),
                )
            )

            stub.client.set_resources(clusters=[])
            wait_counts(process, 4, 1)
            seen.append(
                (
                    "removed",
                    get_upstream(port)[0],
                    process.stat("cluster_manager.active_clusters"),
                    process.stat("cluster_manager.cluster_removed"),
                )
            )
        finally:
            if process is not None:
                process.stop()
            stub.stop()
    return seen


@pytest.mark.parametrize(
    ("delta", "ads"),
    [(False, True), (True, True), (False, False), (True, False)],
    ids=["sotw-ads", "delta-ads", "sotw-plain", "delta-plain"],
)
def test_cds_pushes_modifies_rejects_and_removes_clusters(
    tmp_path: Path, delta: bool, ads: bool
) -> None:
    seen = run_scenario(ProxyProcess, tmp_path, delta, ads)
    assert seen == [
        ("pushed", (200, "a"), 2),
        ("streams", [["Cluster", "Listener"]] if ads else [["Cluster"], ["Listener"]]),
        ("together", (200, "b"), (0, "")),
        ("modified", (200, "b"), 1),
        ("nacked", (200, "a"), 3, True, (13, "Error adding/updating cluster(s) bad")),
        # Delta: the stub takes a NACK as "nothing of it applied", so `extra` (applied all
        # the same, as Envoy does) is never named in removed_resources and stays (Envoy alike).
        ("removed", 503, 2, 2) if delta else ("removed", 503, 1, 3),
    ]


def run_unanswered_cds(process_class: type[EnvoyProcess], workdir: Path) -> list[Any]:
    """CDS from a source that never answers (nothing listens on its port): LDS starts once
    CDS's initial_fetch_timeout passes, and its listener serves."""
    with Http1Echo("static") as backend:
        stub = StubProcess(workdir, xds=f"127.0.0.1:{free_port()}").start()
        process = None
        try:
            port = free_port()
            listeners = stub.client.set_resources(listeners=[routed_listener(port, "fixed")])
            document = lds_bootstrap(stub.xds_address)
            clusters = document["static_resources"]["clusters"]
            clusters.append(cluster_dict("fixed", [backend.port]))
            clusters.append(cluster_dict("nobody", [free_port()], http2=True))
            source = dict(document["dynamic_resources"]["lds_config"]["api_config_source"])
            source["grpc_services"] = [{"envoy_grpc": {"cluster_name": "nobody"}}]
            document["dynamic_resources"]["cds_config"] = {
                "api_config_source": source,
                "resource_api_version": "V3",
                "initial_fetch_timeout": "0.3s",
            }
            process = process_class(document, workdir, "warning")
            process.start()
            process.wait_ready()
            stub.client.wait(listeners["listeners"], timeout=5)
            return [
                get_upstream(port),
                process.stat(CDS + "init_fetch_timeout"),
                process.stat(CDS + "update_success"),
                (process.stat(CDS + "update_failure") or 0) > 0,
                process.stat(CDS + "control_plane.connected_state"),
            ]
        finally:
            if process is not None:
                process.stop()
            stub.stop()


def test_cds_initial_fetch_timeout_lets_lds_start(tmp_path: Path) -> None:
    assert run_unanswered_cds(ProxyProcess, tmp_path) == [(200, "static"), 1, 0, True, 0]
