"""`--concurrency N`: an EDS fetch that ends in the main process without an assignment (here a
NACKed one) ends in every worker too. The relay has no assignment to give the workers, and the
cluster's `initial_fetch_timeout` is 0 (none): without being told, a worker's cluster would warm
for ever, and the proxy would never go LIVE."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.envoy import load_bootstrap, with_xds_address
from tests.helpers.http_client import HttpConnection, get
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo
from tests.integration.test_workers_health import WORKERS, _one_per_worker
from tests.interop.test_stub_eds_sds_interop import MODES, assignment, eds_cluster, listener
from tests.interop.test_stub_rds_interop import without_retry_policy


def test_an_eds_fetch_nacked_in_the_main_process_ends_in_every_worker(tmp_path: Path) -> None:
    node = "workers-eds"
    port = free_port()
    bad = assignment("C-svc", 1)
    bad["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = (
        "not-an-ip"
    )
    with Http1Echo("a") as upstream:
        stub = StubProcess(tmp_path / "stub").start()
        proxy = None
        try:
            stub.client.set_resources(
                clusters=[eds_cluster("C", "C-svc", MODES["ads-sotw"][1])],
                listeners=[listener("L", port, {"route": {"cluster": "C"}})],
                endpoints=[bad],
            )
            bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
            bootstrap["dynamic_resources"]["cds_config"] = {"resource_api_version": "V3", "ads": {}}
            proxy = ProxyProcess(without_retry_policy(bootstrap), tmp_path / "proxy")
            proxy.concurrency = WORKERS
            proxy.start()
            proxy.wait_ready()  # every worker's C is warm: with no hosts, as the main process's
            assert proxy.stat("cluster.C.update_rejected") == 1
            conns = _one_per_worker(proxy, port)
            for conn in conns.values():
                conn.sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
                response = conn.read_response()
                assert response.status == 503
                assert response.body == b"no healthy upstream"
                conn.close()

            placed = stub.client.set_resources(endpoints=[assignment("C-svc", upstream.port)])
            stub.client.wait(placed["endpoints"], node=node, timeout=10, section="endpoints")
            wait_for(lambda: get(port).status == 200, what="C's endpoint")
            conns = _one_per_worker(proxy, port)
            for conn in conns.values():
                assert _served(conn)
        finally:
            if proxy is not None:
                proxy.stop()
            stub.stop()


def _served(conn: HttpConnection) -> bool:
    conn.sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
    served = conn.read_response().status == 200
    conn.close()
    return served
