"""The examples work: the typed-dataclass author script pushes a listener the stub serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2  # noqa: F401 - registers types
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane_stub.probe import XdsProbe
from tests.helpers.stub import REPO_ROOT, StubProcess, stub_env


async def test_author_listener_example_pushes_a_typed_listener(tmp_path: Path) -> None:
    stub = StubProcess(tmp_path).start()
    probe = await XdsProbe(stub.xds_address, "author", auto_ack=True).start()
    try:
        probe.subscribe()
        await probe.next()
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(REPO_ROOT / "examples" / "author_listener.py"),
                "--control",
                stub.control_address,
                "--port",
                "10555",
                "--body",
                "typed!\n",
                "--wait",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **stub_env()},
        )
        assert result.returncode == 0, result.stderr
        assert "ACKed" in result.stdout
        response = await probe.next()
        [body] = response.resources
        listener = listener_pb2.Listener()
        body.Unpack(listener)
        assert listener.name == "authored"
        assert listener.address.socket_address.port_value == 10555
        manager = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        route = manager.route_config.virtual_hosts[0].routes[0]
        assert route.direct_response.body.inline_string == "typed!\n"
    finally:
        await probe.close()
        stub.stop()
