"""bench/churn.py's report: the table and the PNG plot, from a made-up run (no processes)."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

from bench.churn import (
    GRACEFUL,
    IN_PLACE_RENAMES,
    OTHER_ROUTES,
    PHASES,
    ROUTES_ONLY,
    ROUTES_ONLY_AGAIN,
    SETTLING,
    ChurnResult,
    Push,
    Tally,
    plot,
    rss_curve,
    table,
)


def made_up_result() -> ChurnResult:
    start = 1000.0
    h1 = Tally(sent=5, ok=3, retried=1, connections=2, latencies=[0.001, 0.002, 0.003])
    h1.failures = Counter({"reset": 1})
    h1.events = [(start + 0.1, "ok"), (start + 0.2, "ok"), (start + 0.3, "ok")]
    h1.events += [(start + 2.1, "reset"), (start + 3.1, "retried")]
    h2 = Tally(sent=1, ok=1, connections=1, latencies=[0.004], events=[(start + 0.4, "ok")])
    return ChurnResult(
        proxy="made-up",
        h1=h1,
        h2=h2,
        started=start,
        seconds=4.0,
        pushes=[Push(start + 0.5 * i, PHASES[i % 4], f"v{i}", 0.01) for i in range(8)],
        phase_starts=[(start + i, name) for i, name in enumerate(PHASES)],
        outage=(start + 1.5, start + 1.8),
        reconnect_s=0.2,
        graceful_at=start + 4.0,
        peak_listeners_draining=3,
        peak_chains_draining=1,
        fds_before=10,
        fds_after=11,
        rss_before_kib=2048,
        rss_after_kib=3072,
        backend_requests=5,
        rss_load_warm_kib=1024,
        rss_samples=[(start + 1, 2560), (start + 2, 4096), (start + 3, 3584)],
    )


def test_table_counts_by_protocol_and_reason() -> None:
    rows = {line[3:37].strip(): line[37:].strip() for line in table([made_up_result()])[1:]}
    assert rows["h1 requests sent"] == "5"
    assert rows["all succeeded"] == "4"
    assert rows["all failed: reset"] == "1"
    assert rows["all failed: refused"] == "0"
    assert rows["all retried (not processed)"] == "1"
    assert rows["answered, response lost"] == "1"
    assert rows["pushes: full modify"] == "2 (2 acked)"
    assert rows["RSS MiB before / after"] == "2.0 / 3.0"
    assert rows["RSS after vs before %"] == "+50.0"
    assert rows["RSS MiB after load-only warm-up"] == "1.0"
    assert rows["RSS MiB peak while churning"] == "4.0"
    assert rss_curve(made_up_result()) == "2.5 4.0 3.5"


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB rows without filter bytes) of a PNG written by `plot`."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat = 8, b""
    width = height = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"  # 8-bit truecolour
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    return width, height, b"".join(raw[y * stride + 1 : (y + 1) * stride] for y in range(height))


def test_plot_marks_the_failure_bucket_in_red(tmp_path: Path) -> None:
    result = made_up_result()
    path = tmp_path / "churn.png"
    plot([result], path)
    width, height, pixels = png_pixels(path.read_bytes())
    span = result.graceful_at - result.started + 2  # the plot's time axis (+ drain time)
    red = (220, 30, 30)

    def pixel(x: int, y: int) -> tuple[int, ...]:
        return tuple(pixels[(y * width + x) * 3 : (y * width + x) * 3 + 3])

    middle = height // 2
    failure_x = int(2.1 / span * (width - 1))
    assert pixel(failure_x, middle) == red
    assert pixel(int(0.9 / span * (width - 1)), middle) != red


def test_rds_table_groups_what_the_clients_were_told() -> None:
    result = made_up_result()
    result.rds = True
    result.pushes = [
        Push(1000.0, ROUTES_ONLY, "v1", 0.01, kind="routes"),
        Push(1000.2, IN_PLACE_RENAMES, "v2", 0.02, kind="listeners"),
        Push(1000.4, IN_PLACE_RENAMES, "v3", None, kind="routes"),
    ]
    result.h1.told_to_leave = Counter(
        {
            ("main-routes-", IN_PLACE_RENAMES): 3,
            ("main-routes-", SETTLING): 1,
            (OTHER_ROUTES, IN_PLACE_RENAMES): 2,  # a listener no update touches: route-only
            ("main-routes-", GRACEFUL): 5,
        }
    )
    result.h2.told_to_leave = Counter({("main-routes-", ROUTES_ONLY_AGAIN): 1})
    result.h1.route_generations = {1, 2, 3}
    rows = {line[3:37].strip(): line[37:].strip() for line in table([result])[1:]}
    assert rows["h1 conn: close, route-only"] == "2"
    assert rows["h1 conn: close, renames"] == "4"
    assert rows["h1 conn: close, graceful"] == "5"
    assert rows["h2 GOAWAY frames, route-only"] == "1"
    assert rows["h2 GOAWAY frames, renames"] == "0"
    assert rows["pushes: routes + in-place renames"] == "2 (1 acked, 1 LDS)"
    assert rows["route generations answered"] == "3 of 4"
    assert "backend answered" not in rows
