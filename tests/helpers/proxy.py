"""Run the real `xds-proxy` process for tests, with the same admin helpers as EnvoyProcess.

Both take the same bootstrap and flags, so a scenario can run against either:

    proxy = ProxyProcess(bootstrap, tmp_path, extra_args=["--drain-time-s", "2"]).start()
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import wait_for
from tests.helpers.stub import stub_env


class ProxyProcess(EnvoyProcess):
    name = "xds-proxy"
    # `XDS_PROXY_TEST_CONCURRENCY=2 pytest ...` runs a suite with two worker processes.
    concurrency = int(os.environ.get("XDS_PROXY_TEST_CONCURRENCY", "1"))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "xds_proxy", "-c", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        return stub_env()


def start_with_workers(bootstrap: dict[str, Any], workdir: Path, workers: int) -> ProxyProcess:
    """xds-proxy with `--concurrency workers`, ready and with every worker serving (stopped
    again if it does not get there)."""
    proxy = ProxyProcess(bootstrap, workdir)
    proxy.concurrency = workers
    proxy.start()
    try:
        proxy.wait_ready()
        wait_for(lambda: proxy.stat("xds_proxy.workers.active") == workers, timeout=10)
    except Exception:
        proxy.stop()
        raise
    return proxy
