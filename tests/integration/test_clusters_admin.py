"""`/clusters` (text and JSON) and the clusters of `/config_dump` on a real proxy: a static
cluster and one pushed by CDS, three requests routed through a listener to a real upstream.

`clusters_scenario` takes the process class so the interop test runs it on Envoy 1.40 too.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_cds import cds_bootstrap, routed_listener

CLUSTER_DUMP = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"


def three_requests(port: int) -> list[int]:
    """Three keep-alive GETs on one downstream connection; their statuses."""
    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            status = int(reader.readline().split()[1])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            reader.read(length)
            statuses.append(status)
    return statuses


def comparable_lines(text: str) -> list[str]:
    """`/clusters` text lines, sorted (Envoy's cluster order is a hash map's), without the
    xDS cluster's host lines (Envoy's own gRPC client counts its ADS stream there; ours is
    gRPC's library and is not counted)."""
    kept = []
    for line in text.splitlines():
        cluster, subject = line.split("::")[:2]
        if cluster == "xds_cluster" and ":" in subject:  # a host line of the xDS cluster
            continue
        kept.append(line)
    return sorted(kept)


def clusters_scenario(process_class: type[EnvoyProcess], workdir: Path) -> dict[str, Any]:
    with Http1Echo("a") as backend:
        stub = StubProcess(workdir, xds=f"127.0.0.1:{free_port()}").start()
        process = None
        try:
            port = free_port()
            pushed = stub.client.set_resources(
                listeners=[routed_listener(port, "dyn")],
                clusters=[cluster_dict("dyn", [backend.port], max_connections=7)],
                version="v1",
            )
            document = cds_bootstrap(stub.xds_address)
            unused = free_port()
            document["static_resources"]["clusters"].append(
                cluster_dict("fixed", [backend.port, unused])
            )
            process = process_class(document, workdir, "warning")
            process.start()
            process.wait_ready()
            stub.client.wait(pushed["listeners"], timeout=5)
            statuses = three_requests(port)
            wait_for(
                lambda: (
                    f"dyn::127.0.0.1:{backend.port}::rq_success::3" in process.get("/clusters")[1]
                ),
                timeout=5,
                what="the upstream requests counted",
            )

            def get(path: str) -> str:  # ports named, so that two runs compare
                body = process.get(path)[1]
                return body.replace(str(backend.port), "BACKEND").replace(str(unused), "UNUSED")

            text = get("/clusters")
            status_json = json.loads(process.get("/clusters?format=json")[1])
            port_names = {backend.port: "BACKEND", unused: "UNUSED"}
            dump = json.loads(process.get("/config_dump")[1])
            only_dynamic = json.loads(
                process.get("/config_dump?resource=dynamic_active_clusters")[1]
            )
            return {
                "statuses": statuses,
                "text": comparable_lines(text),
                "json": [
                    (
                        status["name"],
                        status.get("added_via_api", False),
                        status["circuit_breakers"],
                        [
                            (
                                port_names[host["address"]["socket_address"]["port_value"]],
                                {s["name"]: s.get("value", 0) for s in host["stats"]},
                                host["health_status"],
                                host["weight"],
                            )
                            for host in status.get("host_statuses", [])
                        ]
                        if status["name"] != "xds_cluster"
                        else None,
                    )
                    for status in sorted(status_json["cluster_statuses"], key=lambda s: s["name"])
                ],
                "dump": summarize_dump(dump),
                "dynamic_only": [
                    (item["version_info"], item["cluster"]["name"])
                    for item in only_dynamic["configs"]
                ],
            }
        finally:
            if process is not None:
                process.stop()
            stub.stop()


def summarize_dump(dump: dict[str, Any]) -> Any:
    """The clusters part of a config dump: its position and what it holds."""
    types = [config["@type"] for config in dump["configs"]]
    clusters = dump["configs"][types.index(CLUSTER_DUMP)]
    return (
        types[: types.index(CLUSTER_DUMP) + 1],
        clusters.get("version_info"),
        sorted(item["cluster"]["name"] for item in clusters.get("static_clusters", [])),
        [
            (item["version_info"], item["cluster"]["name"], bool(item.get("last_updated")))
            for item in clusters.get("dynamic_active_clusters", [])
        ],
    )


def test_clusters_endpoint_and_dump(tmp_path: Path) -> None:
    seen = clusters_scenario(ProxyProcess, tmp_path)
    assert seen["statuses"] == [200, 200, 200]
    lines = seen["text"]
    assert "dyn::added_via_api::true" in lines
    assert "fixed::added_via_api::false" in lines
    assert "dyn::default_priority::max_connections::7" in lines
    assert "dyn::high_priority::max_retries::3" in lines
    assert "dyn::127.0.0.1:BACKEND::rq_total::3" in lines
    assert "dyn::127.0.0.1:BACKEND::cx_total::1" in lines
    assert "fixed::127.0.0.1:UNUSED::rq_total::0" in lines
    assert seen["dump"][1:] == ("v1", ["fixed", "xds_cluster"], [("v1", "dyn", True)])
    assert seen["dynamic_only"] == [("v1", "dyn")]
