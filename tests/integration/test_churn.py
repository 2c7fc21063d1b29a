"""Zero downtime under churn (issue 10), the short version: the real xds-proxy behind
control-plane-stub, HTTP/1.1 and HTTP/2 clients on, a few pushes of each kind (full modify,
in-place chain change, remove/re-add, 10 % of a 100-listener fleet), the control plane killed
and restarted, a graceful drain at the end. Not a single failed request, not a single refused
connection. bench/churn.py runs the long version side by side with Envoy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.churn import PHASES, ChurnRun


@pytest.mark.timeout(120)  # the churn benchmark's phases: ~8 s, CPU-bound
def test_churn_loses_no_request_and_refuses_no_connection(tmp_path: Path) -> None:
    result = ChurnRun(tmp_path, envoy=False, seconds=4.0, outage_s=0.5, warmup_s=0.5).run()
    total = result.total()
    errors = "\n".join(total.errors)

    assert total.failures["refused"] == 0, errors
    assert total.failed == 0, errors
    # No retried request had in fact been processed: the backend answered exactly what the
    # clients received.
    assert result.answered_but_lost == 0, (result.backend_requests, total.ok)
    # The load really ran on both protocols, across the pushes.
    assert result.h1.ok > 100 and result.h2.ok > 100
    for phase in PHASES:
        pushed = [push for push in result.pushes if push.phase == phase]
        assert len(pushed) >= 2, phase
        assert all(push.nack is None for push in pushed), [push.nack for push in pushed]
    # The pushes made things drain (otherwise this test proves nothing).
    assert result.peak_listeners_draining >= 1
    assert result.peak_chains_draining >= 1
    # Connections were told to go away and came back: more than one per client.
    assert result.h1.connections > 5 and result.h2.connections > 3
