"""GoAwayCutter (xds_proxy/http/h2_frames.py): client GOAWAY frames are cut out of the
inbound byte stream however it is split into reads; everything else passes unchanged."""

from __future__ import annotations

from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.h2_client import PREFACE
from xds_proxy.http.h2_frames import GoAwayCutter


def run(chunks: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    cutter = GoAwayCutter()
    out, goaways = b"", []
    for chunk in chunks:
        data, found = cutter.feed(chunk)
        out += data
        goaways += found
    return out, goaways


FRAMES = st.one_of(
    st.builds(
        lambda sid, size: DataFrame(sid * 2 + 1, data=b"d" * size).serialize(),
        st.integers(0, 50),
        st.integers(0, 40000),
    ),
    st.builds(
        lambda sid: HeadersFrame(sid * 2 + 1, data=b"\x82", flags=["END_HEADERS"]).serialize(),
        st.integers(0, 50),
    ),
    st.just(PingFrame(0, opaque_data=b"\x07" * 8).serialize()),
    st.just(SettingsFrame(0).serialize()),
    st.builds(
        lambda last, code, debug: (
            "goaway",
            (last, code),
            GoAwayFrame(0, last_stream_id=last, error_code=code, additional_data=debug).serialize(),
        ),
        st.integers(0, 2**31 - 1),
        st.integers(0, 13),
        st.binary(max_size=20),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAMES, max_size=12), st.lists(st.integers(1, 70000), max_size=8))
def test_any_split_gives_the_stream_without_goaways(frames, cuts) -> None:
    stream = PREFACE
    expected_bytes = PREFACE
    expected_goaways = []
    for frame in frames:
        if isinstance(frame, tuple):
            _, goaway, raw = frame
            stream += raw
            expected_goaways.append(goaway)
        else:
            stream += frame
            expected_bytes += frame
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert run(chunks) == (expected_bytes, expected_goaways)


def test_frame_aligned_reads_pass_unchanged() -> None:
    cutter = GoAwayCutter()
    first = PREFACE + SettingsFrame(0).serialize()
    data, goaways = cutter.feed(first)
    assert data is first and goaways == []
    second = HeadersFrame(1, data=b"\x82", flags=["END_HEADERS"]).serialize()
    assert cutter.feed(second) == (second, [])


def test_goaway_between_frames_is_cut() -> None:
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    goaway = GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
    assert run([PREFACE + ping + goaway + ping]) == (PREFACE + ping + ping, [(0, 0)])


def test_pings_and_settings_are_counted_acks_not() -> None:
    cutter = GoAwayCutter()
    ping = PingFrame(0, opaque_data=b"12345678").serialize()
    ack = PingFrame(0, opaque_data=b"12345678", flags=["ACK"]).serialize()
    settings_ack = SettingsFrame(0, flags=["ACK"]).serialize()
    stream = PREFACE + SettingsFrame(0).serialize() + ping * 3 + ack + settings_ack
    for start in range(0, len(stream), 7):
        cutter.feed(stream[start : start + 7])
    assert cutter.control_frames == 4


def test_short_goaway_is_left_for_h2() -> None:
    bad = b"\x00\x00\x04\x07\x00\x00\x00\x00\x00" + b"\x00" * 4
    assert run([PREFACE + bad]) == (PREFACE + bad, [])
