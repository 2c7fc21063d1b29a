"""`use_original_dst` with `bind_to_port: false` listeners, through a real Envoy 1.40 and
through xds-proxy: connections redirected by iptables go to the listener of their original
destination (exact address first, then the wildcard address), or stay with the listener that
accepted them when none matches; the handed-over connection's local address is its original
destination. Each run is in a network namespace of its own (tests/interop/netns_original_dst.py);
iptables (Debian's package) is installed on first use, as the bench's load generators are;
the test is skipped where the namespace cannot be made (not root, no `unshare` or `ip`,
iptables not installable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.tools import ensure_tool

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]
_MISSING = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]


def _run(kind: str, directory: Path) -> dict[str, str]:
    command = ["unshare", "-n", sys.executable, "-m", "tests.interop.netns_original_dst"]
    done = subprocess.run(
        [*command, kind, str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace with iptables needs root")
@pytest.mark.skipif(bool(_MISSING), reason=f"missing tools: {', '.join(_MISSING)}")
def test_redirected_connections_reach_the_listener_of_their_original_destination(
    tmp_path: Path,
) -> None:
    try:
        ensure_tool("iptables", "iptables")
    except RuntimeError as error:
        pytest.skip(str(error))
    theirs = _run("envoy", tmp_path / "envoy")
    mine = _run("ours", tmp_path / "ours")
    assert mine == theirs
    assert theirs["80"] == "HTTP/1.1 200 OK | exact"
    assert theirs["81"] == "wildcard"
    assert theirs["90"] == theirs["15001"] == "outbound"
    assert theirs["log"] == "127.0.0.1:80 200\n"
