"""The HTTP/2 common path we own (xds_proxy/codec/h2_fast.py, the whole-request split in
http/h2_frames.py, the direct answers of http/http2.py), fuzzed against h2, hpack and
hyperframe themselves:

- round trip: random header lists encoded by `encode_header_block` decode to the same list
  with hpack's `Decoder`, whatever its dynamic table holds, and leave that table unchanged;
  `ResponseFrames` parse with hyperframe to the frames they stand for;
- differential: random frame streams cut into random reads split into the same frames as
  hyperframe parses (GOAWAYs cut out, whole requests picked out exactly);
- differential: the same random client byte streams (requests with repeated and fresh header
  blocks, HEAD, bodies, resets, window updates, SETTINGS, PING, priority, client GOAWAY,
  garbage), cut into random reads, fed to an `Http2Connection` that answers directly and to
  one where h2 answers everything (from the same reads: a whole-request frame is handed to h2
  on its own) give the same frames per stream, the same connection frames, the same stats,
  the same h2 state (windows, stream ids, closed-stream records, decoder table).

`FUZZ_EXAMPLES` scales the example budget (`make fuzz`); `FUZZ_SEED` replays a failing run.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from hpack import Decoder, Encoder
from hpack.table import HeaderTable
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from xds_proxy.codec.h2_fast import ResponseFrames, encode_header_block, hpack_integer
from xds_proxy.http.conn_manager import build_http_connection_manager
from xds_proxy.http.h2_frames import GoAwayCutter
from xds_proxy.http.http2 import Http2Connection
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.stats import Stats

FUZZ_SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)  # 0: each test's own budget
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def budget(examples: int) -> int:
    return FUZZ_EXAMPLES or examples


def fuzz_settings(examples: int) -> Any:
    """Hypothesis settings for `examples` (or FUZZ_EXAMPLES), with a test timeout that grows
    with the budget (10,000 connection examples take minutes on a loaded machine)."""
    count = budget(examples)
    hypothesis_settings = settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    timeout = pytest.mark.timeout(60 + count // 10)

    def apply(test: Any) -> Any:
        return timeout(hypothesis_settings(test))

    return apply


@contextmanager
def seed_on_failure() -> Iterator[None]:
    try:
        yield
    except BaseException as error:
        error.add_note(f"replay with FUZZ_SEED={FUZZ_SEED}")
        raise


# -- HPACK round trip --------------------------------------------------------------------------

STATIC = list(HeaderTable.STATIC_TABLE)
names = st.one_of(
    st.sampled_from([name for name, _ in STATIC]),
    st.binary(min_size=1, max_size=40),
)
values = st.one_of(
    st.sampled_from([value for _, value in STATIC]),
    st.binary(max_size=300),
)
fields = st.one_of(st.sampled_from(STATIC), st.tuples(names, values))


@fuzz_settings(300)
@seed(FUZZ_SEED)
@given(
    st.lists(fields, max_size=20),
    st.lists(st.tuples(names, values), max_size=8),
    st.sampled_from([0, 256, 4096]),
)
def test_header_blocks_decode_to_their_headers_and_keep_the_table(
    headers: list[tuple[bytes, bytes]], table: list[tuple[bytes, bytes]], table_size: int
) -> None:
    with seed_on_failure():
        decoder = Decoder()
        if table:  # the peer's table as h2's encoder may have filled it
            encoder = Encoder()
            encoder.header_table_size = table_size
            decoder.header_table_size = table_size
            decoder.decode(encoder.encode(table), raw=True)
        entries = list(decoder.header_table.dynamic_entries)
        block = encode_header_block(headers)
        assert decoder.decode(block, raw=True) == headers
        assert list(decoder.header_table.dynamic_entries) == entries


@fuzz_settings(300)
@seed(FUZZ_SEED)
@given(st.integers(0, 2**24), st.integers(1, 8), st.integers(0, 255))  # hpack caps its varints
def test_hpack_integers_decode_to_their_value(value: int, prefix: int, high: int) -> None:
    from hpack.hpack import decode_integer

    first = high & ~((1 << prefix) - 1) & 0xFF
    encoded = hpack_integer(value, prefix, first)
    assert encoded[0] & ~((1 << prefix) - 1) & 0xFF == first
    assert decode_integer(encoded, prefix) == (value, len(encoded))


@fuzz_settings(200)
@seed(FUZZ_SEED)
@given(
    st.lists(st.tuples(names, values), max_size=4),
    st.lists(st.tuples(names, values), max_size=4),
    st.binary(max_size=16384),
    st.integers(1, 2**31 - 1),
    st.booleans(),
    st.binary(min_size=1, max_size=40),
)
def test_response_frames_parse_to_the_reply(
    before: list, after: list, body: bytes, stream_id: int, head_only: bool, date: bytes
) -> None:
    with seed_on_failure():
        reply = ResponseFrames(tuple(before), tuple(after), body, 200)
        wire = reply.frames(stream_id, date, head_only)
        frames = parse_all(wire)
        headers, *rest = frames
        assert isinstance(headers, HeadersFrame) and headers.stream_id == stream_id
        assert Decoder().decode(headers.data, raw=True) == [*before, (b"date", date), *after]
        if head_only or not body:
            assert headers.flags == {"END_HEADERS", "END_STREAM"} and rest == []
        else:
            assert headers.flags == {"END_HEADERS"}
            (data,) = rest
            assert isinstance(data, DataFrame) and data.stream_id == stream_id
            assert data.flags == {"END_STREAM"} and data.data == body


def parse_all(wire: bytes) -> list[Frame]:
    frames = []
    position = 0
    while position < len(wire):
        frame, length = Frame.parse_frame_header(memoryview(wire[position : position + 9]))
        frame.parse_body(memoryview(wire[position + 9 : position + 9 + length]))
        frames.append(frame)
        position += 9 + length
    return frames


# -- frame splitting ---------------------------------------------------------------------------

stream_ids = st.integers(0, 2**31 - 1)
frame_flags = st.sets(st.sampled_from(["END_STREAM", "END_HEADERS", "PADDED", "PRIORITY"]))


@st.composite
def any_frame(draw: st.DrawFn) -> Frame:
    kind = draw(st.integers(0, 8))
    sid = draw(stream_ids)
    if kind == 0:
        flags = draw(frame_flags)
        frame = HeadersFrame(max(sid, 1), data=draw(st.binary(max_size=200)))
        for flag in flags:
            frame.flags.add(flag)
        if "PADDED" in flags:
            frame.pad_length = draw(st.integers(0, 20))
        return frame
    if kind == 1:
        frame = DataFrame(max(sid, 1), data=draw(st.binary(max_size=300)))
        if draw(st.booleans()):
            frame.flags.add("END_STREAM")
        return frame
    if kind == 2:
        return GoAwayFrame(
            0,
            last_stream_id=sid,
            error_code=draw(st.integers(0, 13)),
            additional_data=draw(st.binary(max_size=20)),
        )
    if kind == 3:
        return PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
    if kind == 4:
        frame = SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 100})
        if draw(st.booleans()):
            frame = SettingsFrame(0)
            frame.flags.add("ACK")
        return frame
    if kind == 5:
        return WindowUpdateFrame(sid, window_increment=draw(st.integers(1, 2**31 - 1)))
    if kind == 6:
        return RstStreamFrame(max(sid, 1), error_code=draw(st.integers(0, 13)))
    if kind == 7:
        frame = ContinuationFrame(max(sid, 1), data=draw(st.binary(max_size=50)))
        if draw(st.booleans()):
            frame.flags.add("END_HEADERS")
        return frame
    big = HeadersFrame(max(sid, 1), data=b"h" * draw(st.sampled_from([16384, 16385, 20000])))
    big.flags.add("END_STREAM")
    big.flags.add("END_HEADERS")
    return big


def whole_request(wire: bytes) -> tuple[int, bytes] | None:
    """(stream id, frame) if hyperframe reads `wire` as a HEADERS frame carrying a whole
    request: END_STREAM and END_HEADERS, neither PADDED nor PRIORITY, at most 16 KiB."""
    frame, length = Frame.parse_frame_header(memoryview(wire[:9]))
    flags = set(frame.flags)
    if (
        isinstance(frame, HeadersFrame)
        and {"END_STREAM", "END_HEADERS"} <= flags
        and not flags & {"PADDED", "PRIORITY"}
        and length <= 16384
    ):
        return frame.stream_id, wire
    return None


@fuzz_settings(500)
@seed(FUZZ_SEED)
@given(st.lists(any_frame(), max_size=12), st.lists(st.integers(1, 400), max_size=30))
def test_split_frames_equal_hyperframes_parse(frames: list[Frame], cuts: list[int]) -> None:
    with seed_on_failure():
        wire = PREFACE + b"".join(frame.serialize() for frame in frames)
        cutter = GoAwayCutter()
        out: list[bytes] = []
        requests: list[tuple[int, bytes]] = []
        goaways: list[tuple[int, int]] = []
        position = 0
        for size in [*cuts, len(wire)]:
            chunk, position = wire[position : position + size], position + size
            pieces, cut = cutter.split(chunk)
            goaways += cut
            for piece in pieces:
                if isinstance(piece, bytes):
                    out.append(piece)
                else:
                    requests.append(piece)
                    out.append(piece[1])
            if position >= len(wire):
                break
        kept = [f for f in frames if not isinstance(f, GoAwayFrame)]
        assert b"".join(out) == PREFACE + b"".join(f.serialize() for f in kept)
        expected = [whole_request(f.serialize()) for f in kept]
        assert requests == [request for request in expected if request is not None]
        assert goaways == [
            (f.last_stream_id, f.error_code) for f in frames if isinstance(f, GoAwayFrame)
        ]
        assert cutter.control_frames == sum(
            1 for f in frames if isinstance(f, (PingFrame, SettingsFrame)) and "ACK" not in f.flags
        )


# -- the connection: direct answers against h2 doing everything ----------------------------------


def hcm_config(max_concurrent: int) -> Any:
    def route(path: str, **action: Any) -> dict[str, Any]:
        return {"match": {"path": path}, **action}

    typed = {
        "stat_prefix": "fuzz",
        "codec_type": "HTTP2",
        "max_request_headers_kb": 1,
        "http2_protocol_options": {"max_concurrent_streams": max_concurrent},
        "route_config": {
            "max_direct_response_body_size_bytes": 100000,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        route(
                            "/a",
                            direct_response={"status": 200, "body": {"inline_string": "hello"}},
                        ),
                        route(
                            "/big",
                            direct_response={"status": 200, "body": {"inline_string": "x" * 20000}},
                        ),
                        route(
                            "/mid",
                            direct_response={"status": 503, "body": {"inline_string": "m" * 700}},
                        ),
                        route("/empty", direct_response={"status": 204}),
                        route("/moved", redirect={"path_redirect": "/a"}),
                    ],
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    message = json_format.ParseDict(typed, hcm_pb2.HttpConnectionManager())
    stats = Stats()
    return build_http_connection_manager(message, "hcm", stats), stats


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        assert not self.closed
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16 * 1024, 64 * 1024)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


GET = [(":method", "GET"), (":scheme", "http"), (":authority", "x")]
REQUEST_HEADERS = [
    [*GET, (":path", "/a")],
    [*GET, (":path", "/nowhere")],
    [(":method", "HEAD"), (":scheme", "http"), (":authority", "x"), (":path", "/a")],
    [*GET, (":path", "/big")],
    [*GET, (":path", "/mid")],
    [*GET, (":path", "/empty")],
    [*GET, (":path", "/moved")],
    [(":method", "GET"), (":scheme", "http"), ("host", "y"), (":path", "/a")],
    [*GET, (":path", "/a"), ("x-big", "a" * 1100)],  # above max_request_headers_kb
    [(":method", "GET"), (":scheme", "http"), (":path", "/a"), (":authority", "x"), ("Bad", "1")],
    [*GET, (":path", "/a"), ("connection", "x")],
    [*GET, (":path", "/a"), ("cookie", "a"), ("cookie", "b")],
    [*GET, (":path", "/a"), ("content-length", "3")],
]

actions = st.one_of(
    st.tuples(st.just("request"), st.integers(0, len(REQUEST_HEADERS) - 1), st.booleans()),
    # the common case, often: the same request several times in a row (h2load -m)
    st.tuples(st.just("burst"), st.integers(0, len(REQUEST_HEADERS) - 1), st.integers(1, 12)),
    st.tuples(st.just("burst"), st.integers(0, 2), st.integers(3, 30)),
    st.tuples(st.just("fresh"), st.integers(0, 3)),  # a new literal: the decoder table moves
    st.tuples(st.just("data"), st.integers(0, 5), st.binary(max_size=70000), st.booleans()),
    st.tuples(st.just("rst"), st.integers(0, 5)),
    st.tuples(st.just("window"), st.booleans(), st.integers(0, 5), st.integers(1, 2**20)),
    st.tuples(
        st.just("settings"),
        st.sampled_from([None, 0, 100, 65535, 2**20]),
        st.sampled_from([None, 0, 64, 4096]),
        st.sampled_from([None, 16384, 20000]),
    ),
    st.tuples(st.just("ping")),
    st.tuples(st.just("priority"), st.integers(0, 5)),
    st.tuples(st.just("goaway"), st.integers(0, 2)),
    st.tuples(st.just("old_stream"), st.integers(0, 5)),
    st.tuples(st.just("padded"), st.integers(0, 1)),
    st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=20)),
)


def client_bytes(steps: list[tuple]) -> bytes:
    """A client's bytes for `steps`, encoded with hpack's encoder (as h2 and h2load would)."""
    encoder = Encoder()
    out = [PREFACE, SettingsFrame(0).serialize()]
    next_id = 1
    opened: list[int] = []

    def pick(index: int) -> int:
        return opened[index % len(opened)] if opened else 1

    def headers_frame(sid: int, headers: list, end: bool, **extra: Any) -> bytes:
        frame = HeadersFrame(sid, data=encoder.encode(headers), **extra)
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    for step in steps:
        kind = step[0]
        if kind == "burst":
            for _ in range(step[2]):
                out.append(headers_frame(next_id, REQUEST_HEADERS[step[1]], True))
                opened.append(next_id)
                next_id += 2
        elif kind in ("request", "fresh", "padded"):
            if kind == "request":
                headers, end = REQUEST_HEADERS[step[1]], step[2]
            elif kind == "fresh":
                headers, end = [*REQUEST_HEADERS[0], (f"x-{next_id}", str(step[1]))], True
            else:
                headers, end = REQUEST_HEADERS[step[1]], True
            if kind == "padded":
                out.append(headers_frame(next_id, headers, end, pad_length=3))
            else:
                out.append(headers_frame(next_id, headers, end))
            opened.append(next_id)
            next_id += 2
        elif kind == "data":
            data = DataFrame(pick(step[1]), data=step[2][:16384])
            if step[3]:
                data.flags.add("END_STREAM")
            out.append(data.serialize())
        elif kind == "rst":
            out.append(RstStreamFrame(pick(step[1]), error_code=8).serialize())
        elif kind == "window":
            sid = pick(step[2]) if step[1] else 0
            out.append(WindowUpdateFrame(sid, window_increment=step[3]).serialize())
        elif kind == "settings":
            values = {}
            if step[1] is not None:
                values[SettingsFrame.INITIAL_WINDOW_SIZE] = step[1]
            if step[2] is not None:
                values[SettingsFrame.HEADER_TABLE_SIZE] = step[2]
            if step[3] is not None:
                values[SettingsFrame.MAX_FRAME_SIZE] = step[3]
            out.append(SettingsFrame(0, settings=values).serialize())
        elif kind == "ping":
            out.append(PingFrame(0, opaque_data=b"12345678").serialize())
        elif kind == "priority":
            out.append(PriorityFrame(pick(step[1]), depends_on=0, stream_weight=16).serialize())
        elif kind == "goaway":
            out.append(GoAwayFrame(0, last_stream_id=0, error_code=step[1]).serialize())
        elif kind == "old_stream":
            out.append(headers_frame(pick(step[1]), REQUEST_HEADERS[0], True))
        else:
            out.append(step[1])
    return b"".join(out)


def serve(wire: bytes, cuts: list[int], direct: bool, max_concurrent: int) -> dict[str, Any]:
    config, stats = hcm_config(max_concurrent)

    async def run() -> dict[str, Any]:
        connection = Http2Connection(config, FilterChainContext(stats=stats, listener_name="f"))
        connection.DIRECT_ANSWERS = direct  # type: ignore[misc]
        transport = Transport()
        connection.connection_made(transport)
        position = 0
        for size in [*cuts, len(wire)]:
            if transport.closed or position >= len(wire):
                break
            connection.data_received(wire[position : position + size])
            position += size
        conn = connection._h2
        _ = conn.open_inbound_streams  # h2's sweep of closed streams, on both
        state = {
            "closed": transport.closed,
            "highest": conn.highest_inbound_stream_id,
            "send_window": conn.outbound_flow_control_window,
            "receive_window": conn.inbound_flow_control_window,
            "streams": sorted((sid, s.state_machine.state) for sid, s in conn.streams.items()),
            "closed_streams": dict(conn._closed_streams),
            "decoder_table": list(conn.decoder.header_table.dynamic_entries),
            "ours": sorted(connection._streams),
            "blocked": sorted(connection._blocked),
        }
        connection.connection_lost(None)
        state["stats"] = {name: stat.value for name, stat in stats.counters.items()}
        state["gauges"] = {name: stat.value for name, stat in stats.gauges.items()}
        state["frames"] = server_frames(bytes(transport.out))
        return state

    return asyncio.run(run())


def server_frames(wire: bytes) -> dict[int, list[tuple]]:
    """The server's frames per stream id, in order; header blocks decoded (dates masked)."""
    decoder = Decoder()
    per_stream: dict[int, list[tuple]] = {}
    for frame in parse_all(wire):
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            headers = decoder.decode(frame.data, raw=True) if frame.data else []
            shown: Any = [(n, b"<date>" if n == b"date" else v) for n, v in headers]
        elif isinstance(frame, DataFrame):
            shown = frame.data
        elif isinstance(frame, GoAwayFrame):
            shown = (frame.last_stream_id, frame.error_code)
        elif isinstance(frame, RstStreamFrame):
            shown = frame.error_code
        elif isinstance(frame, WindowUpdateFrame):
            shown = frame.window_increment
        elif isinstance(frame, SettingsFrame):
            shown = sorted(frame.settings.items())
        elif isinstance(frame, PingFrame):
            shown = frame.opaque_data
        else:
            shown = frame.serialize_body()
        per_stream.setdefault(frame.stream_id, []).append(
            (type(frame).__name__, sorted(frame.flags), shown)
        )
    return per_stream


@fuzz_settings(300)
@seed(FUZZ_SEED)
@given(
    st.lists(actions, max_size=25),
    st.lists(st.integers(1, 200), max_size=20),
    st.sampled_from([2, 5, 100]),
)
def test_direct_answers_equal_h2s(steps: list[tuple], cuts: list[int], max_concurrent: int) -> None:
    with seed_on_failure():
        wire = client_bytes(steps)
        direct = serve(wire, cuts, True, max_concurrent)
        reference = serve(wire, cuts, False, max_concurrent)
        assert direct == reference


def test_repeated_requests_are_answered_without_h2() -> None:
    """The differential test above would pass if nothing were answered directly: this one
    shows the direct path is taken for repeated blocks (h2 never sees those streams)."""
    steps = [("request", 0, True)] * 6 + [("request", 1, True)] * 3
    wire = client_bytes(steps)
    config, stats = hcm_config(100)

    async def run() -> list[int]:
        connection = Http2Connection(config, FilterChainContext(stats=stats, listener_name="f"))
        connection.connection_made(Transport())
        seen: list[int] = []
        receive = connection._h2.receive_data

        def spy(data: bytes) -> Any:
            events = receive(data)
            seen.extend(e.stream_id for e in events if type(e).__name__ == "RequestReceived")
            return events

        connection._h2.receive_data = spy  # type: ignore[method-assign]
        connection.data_received(wire)
        return seen

    seen = asyncio.run(run())
    # h2 decodes the first block (literals: the table moves), then learns the indexed one.
    assert seen == [1, 3, 13, 15]
    assert stats.value("http.fuzz.downstream_rq_2xx") == 6
    assert stats.value("http.fuzz.downstream_rq_4xx") == 3
