"""RDS churn under HTTP/1.1 and HTTP/2 load (issue 19's "done when", as a test): route updates
every 200 ms reach kept connections with no `connection: close`, no GOAWAY and no failure;
then listener updates that name new route configurations (each warms until its routes are
there, then the old chain drains): no request fails and no connection is refused."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from tests.helpers.envoy import load_bootstrap, with_xds_address
from tests.helpers.h2_client import H2Client
from tests.helpers.http_client import HttpConnection
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.interop.test_stub_rds_interop import without_retry_policy
from tests.interop.test_warming_interop import DRAIN_ARGS, listener, routes


class H1Client(threading.Thread):
    """Keep-alive GETs; a new connection after `connection: close` or the proxy's FIN."""

    def __init__(self, port: int, stop: threading.Event, tally: Counter) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.tally = port, stop, tally
        self.bodies: list[str] = []

    def run(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = HttpConnection(self.port)
                response = conn.request()
            except ConnectionRefusedError:
                self.tally["refused"] += 1
                conn = None
                continue
            except OSError:
                self.tally["h1 closed by the proxy"] += 1
                conn = None
                continue
            self.tally["ok" if response.status == 200 else "failed"] += 1
            self.bodies.append(response.text)
            if response.closes:
                self.tally["connection: close"] += 1
                conn.close()
                conn = None
            time.sleep(0.01)
        if conn is not None:
            conn.close()


class H2Loop(threading.Thread):
    """Streams on one HTTP/2 connection; a new connection after a GOAWAY."""

    def __init__(self, port: int, stop: threading.Event, tally: Counter) -> None:
        super().__init__(daemon=True)
        self.port, self.stop, self.tally = port, stop, tally

    def run(self) -> None:
        client = H2Client(self.port)
        while not self.stop.is_set():
            if client.goaways():
                self.tally["goaway"] += 1
                client.close()
                client = H2Client(self.port)
            try:
                response = client.response(client.request("/"), timeout=5)
            except Exception:
                if client.goaways():
                    continue  # refused above the GOAWAY's last stream: retried
                self.tally["h2 failed"] += 1
                continue
            self.tally["h2 ok" if response.status == 200 else "h2 failed"] += 1
            time.sleep(0.01)
        client.close()


def test_route_churn_tells_no_connection_to_leave_and_listener_churn_fails_nothing(
    tmp_path: Path,
) -> None:
    node = "churn-node"
    port = free_port()
    stub = StubProcess(tmp_path / "stub").start()
    bootstrap = with_xds_address(load_bootstrap("ads-sotw"), stub.xds_address, node_id=node)
    proxy = ProxyProcess(without_retry_policy(bootstrap), tmp_path / "proxy", extra_args=DRAIN_ARGS)
    proxy.start()
    proxy.wait_ready()
    stop = threading.Event()
    tally: Counter = Counter()
    try:
        first = stub.client.set_resources(
            listeners=[listener("L", port, "R0")], routes=[routes("R0", "r0")]
        )
        stub.client.wait(first["routes"], node=node, timeout=10, section="routes")
        wait_for(lambda: proxy.stat("listener_manager.total_listeners_active") == 1, timeout=5)
        clients = [H1Client(port, stop, tally) for _ in range(2)]
        h2 = H2Loop(port, stop, tally)
        for client in [*clients, h2]:
            client.start()
        wait_for(lambda: tally["ok"] > 10 and tally["h2 ok"] > 5, timeout=10, what="load")
        # 1. route-only updates every 200 ms
        before = proxy.stats("^listener_manager\\.")
        for revision in range(1, 16):
            stub.client.set_resources(routes=[routes("R0", f"r{revision}")])
            time.sleep(0.2)
        wait_for(lambda: clients[0].bodies[-1] == "r15", timeout=5, what="the last routes")
        route_phase = dict(tally)
        assert proxy.stats("^listener_manager\\.") == before
        assert route_phase.get("connection: close", 0) == 0, route_phase
        assert route_phase.get("goaway", 0) == 0, route_phase
        assert route_phase.get("h1 closed by the proxy", 0) == 0, route_phase
        assert {f"r{n}" for n in (1, 15)} <= set(clients[0].bodies) | set(clients[1].bodies)
        # 2. listener updates that name new route configurations, pushed with them
        for revision in range(1, 4):
            name = f"R{revision}"
            stub.client.set_resources(
                listeners=[listener("L", port, name)], routes=[routes(name, f"l{revision}")]
            )
            time.sleep(0.5)
        wait_for(lambda: clients[0].bodies[-1] == "l3", timeout=5, what="the last listener")
        wait_for(
            lambda: (
                proxy.stat("listener_manager.total_listeners_draining") == 0
                and proxy.stat("listener_manager.total_filter_chains_draining") == 0
            ),
            timeout=5,
            what="the last drain ended",
        )
    finally:
        stop.set()
        for thread in threading.enumerate():
            if isinstance(thread, H1Client | H2Loop):
                thread.join(timeout=10)
        proxy.stop()
        stub.stop()
    assert tally["refused"] == 0, tally
    assert tally["failed"] == 0 and tally["h2 failed"] == 0, tally
    assert tally["ok"] > 100 and tally["h2 ok"] > 50, tally
    assert tally["connection: close"] + tally["goaway"] > 0, tally  # the listener changes drained
