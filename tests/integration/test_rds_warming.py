"""xds-proxy with control-plane-stub over RDS, where we do better than Envoy (the warming
spec's section 0): no connection is refused at an address that was serving when a listener
removed and a listener added on the same address in one LDS response must warm; and
`/drain_status` shows a warming listener, what it waits for and since when."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.helpers.envoy import load_bootstrap, with_xds_address
from tests.helpers.http_client import get, refused
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.interop.test_stub_rds_interop import without_retry_policy
from tests.interop.test_warming_interop import DRAIN_ARGS, listener, routes


def test_remove_and_add_on_one_address_refuses_nothing_while_the_new_one_warms(
    tmp_path: Path,
) -> None:
    node = "warming-node"
    port = free_port()
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    proxy = ProxyProcess(without_retry_policy(bootstrap), tmp_path / "proxy", extra_args=DRAIN_ARGS)
    proxy.start()
    proxy.wait_ready()
    outcomes: list[object] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            outcomes.append("refused" if refused(port) else get(port).text)
            time.sleep(0.01)

    try:
        pushed = stub.client.set_resources(
            listeners=[listener("A", port, "RA")], routes=[routes("RA", "A-v1")]
        )
        stub.client.wait(pushed["listeners"], node=node, timeout=10)
        wait_for(lambda: not refused(port), timeout=5, what="A serving")
        thread = threading.Thread(target=probe)
        thread.start()
        # A removed and B added on A's address, B's routes not served yet: B warms.
        swapped = stub.client.set_resources(listeners=[listener("B", port, "RB")])
        stub.client.wait(swapped["listeners"], node=node, timeout=10)
        wait_for(
            lambda: proxy.stat("listener_manager.total_listeners_warming") == 1,
            timeout=5,
            what="B warming",
        )
        time.sleep(0.5)
        _, body = proxy.get("/drain_status")
        warming = json.loads(body)["warming"]
        assert [(w["listener"], w["waiting_for"]) for w in warming] == [("B", ["RB"])]
        assert warming[0]["since"].endswith("Z") and warming[0]["timeout_at"] is None
        stub.client.set_resources(routes=[routes("RA", "A-v1"), routes("RB", "B-v1")])
        wait_for(lambda: get(port).text == "B-v1", timeout=5, what="B serving")
        time.sleep(0.2)
        stop.set()
        thread.join()
        assert "refused" not in outcomes
        assert set(outcomes) == {"A-v1", "B-v1"}
        assert proxy.listeners().keys() == {"B"}
    finally:
        stop.set()
        proxy.stop()
        stub.stop()
