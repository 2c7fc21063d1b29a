"""The stub benchmark runs end to end (small size) and reports what `make bench` prints."""

from __future__ import annotations

from bench.stub_push import build_listeners, run
from control_plane_stub.resources import decode_resource


def test_bench_listeners_are_real_listeners() -> None:
    resources = build_listeners(3)
    assert [r.name for r in resources] == ["bench-0", "bench-1", "bench-2"]
    assert decode_resource(resources[2]).address.socket_address.port_value == 20002


def test_bench_run_reports_times_and_memory() -> None:
    lines = run(large=False)
    text = "\n".join(lines)
    assert "1,000 listeners" in text and "10 SotW LDS clients" in text
    assert "stub recorded all ACKs" in text and "MiB" in text
