"""The compiled text formats (xds_proxy/access_log/text.py) against a plain renderer made here
from the operators' getters, over random templates and records; and the sink's buffer
(writer.py) that the compiled loggers append to."""

from __future__ import annotations

import asyncio
import calendar

import pytest
from hpack import HeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.waiting import wait_until
from xds_proxy.access_log.getters import getter
from xds_proxy.access_log.record import Downstream, LogRecord
from xds_proxy.access_log.text import compile_text, compile_text_logger
from xds_proxy.access_log.writer import FILES, FLUSH_SIZE
from xds_proxy.config.access_log import (
    DEFAULT_FORMAT,
    HEADER_OPERATORS,
    PLAIN_OPERATORS,
    Command,
    Template,
    parse_format,
)
from xds_proxy.config.hcm import ProxyPolicy

WALL = calendar.timegm((2026, 12, 6, 17, 19, 51)) + 0.561234


def reference(template: Template, omit_empty: bool):
    """Each piece through its getter: None is the marker (`-`, or nothing with
    omit_empty_values), header values are the bytes as they came, other text UTF-8;
    `max_length` cuts the bytes."""
    empty = b"" if omit_empty else b"-"
    getters = [piece if isinstance(piece, str) else getter(piece) for piece in template]

    def render(record: LogRecord) -> bytes:
        out = []
        for piece, get in zip(template, getters, strict=True):
            if isinstance(piece, str):
                out.append(piece.encode())
                continue
            value = get(record)  # type: ignore[operator]
            if value is None:
                text = empty
            elif piece.name in HEADER_OPERATORS:
                text = value.encode("latin-1")
            else:
                text = str(value).encode()
            out.append(text if piece.max_length is None else text[: piece.max_length])
        return b"".join(out)

    return render


HEADER_NAMES = [
    "user-agent",
    "x-forwarded-for",
    "x-request-id",
    "x-forwarded-proto",
    "x-envoy-original-path",
    "content-length",
    "content-type",
    "date",
    "server",
    ":status",
    ":method",
    ":path",
    ":authority",
    ":scheme",
    ":other",
    "host",
    "x-a",
]
TIME_PATTERNS = [
    "",
    "%Y-%m-%dT%H:%M:%E3SZ",
    "%s.%3f",
    "%s",
    "%E6S|%1f",
    "%f",
    "%d/%b/%Y:%H:%M:%S %z",
]

lengths = st.none() | st.integers(0, 12)
literals = st.text(st.sampled_from('ab -"[]%é\n'), min_size=1, max_size=4)
headers = st.builds(
    Command,
    st.sampled_from(sorted(HEADER_OPERATORS)),
    st.sampled_from(HEADER_NAMES),
    st.sampled_from(["", *HEADER_NAMES]),
    lengths,
)
times = st.builds(
    Command, st.just("START_TIME"), st.sampled_from(TIME_PATTERNS), st.just(""), lengths
)
plains = st.builds(
    Command, st.sampled_from(sorted(PLAIN_OPERATORS)), st.just(""), st.just(""), lengths
)
templates = st.lists(literals | headers | times | plains, max_size=12).map(tuple)

header_values = st.binary(max_size=6) | st.sampled_from([b"-", b"1.2.3.4, 5.6.7.8", b"\xe9t\xe9"])
texts = st.none() | st.sampled_from(["", "via_upstream", "r\u00e9", "10.0.0.2:80", "UF,URX"])
numbers = st.integers(0, 3000)
times_after = st.none() | st.floats(-0.5, 5.0)


@st.composite
def records(draw) -> LogRecord:
    local = draw(st.sampled_from([("127.0.0.1", 10000), ("::1", 8080), "/tmp/pipe"]))
    peer = ("10.0.0.1", 5555) if not isinstance(local, str) else ""
    made = LogRecord(Downstream(peer, local), 100.0, WALL + draw(st.floats(0, 3)))
    for field in ("method", "path", "authority", "scheme", "request_id"):
        setattr(made, field, draw(st.none() | header_values))
    made.request_headers = draw(
        st.lists(st.tuples(st.sampled_from(HEADER_NAMES).map(str.encode), header_values))
    )
    made.generate_id = draw(st.booleans())
    made.remote_from_xff = draw(st.booleans())
    made.protocol = draw(st.sampled_from([None, "", "HTTP/1.1", "HTTP/1.0", "HTTP/2"]))
    made.status, made.bytes_received, made.bytes_sent = draw(numbers), draw(numbers), draw(numbers)
    made.attempt_count = draw(st.integers(0, 3))
    made.flags = draw(st.sampled_from(["", "NR", "UF,URX"]))
    for field in ("details", "termination", "upstream_host", "upstream_cluster", "route_name"):
        setattr(made, field, draw(texts))
    for field in ("upstream_local", "upstream_remote", "upstream_failure"):
        setattr(made, field, draw(texts))
    for field in ("end", "request_end", "first_upstream_rx"):
        after = draw(times_after)
        setattr(made, field, None if after is None else 100.0 + after)
    kind = draw(st.sampled_from(["none", "local", "upstream"]))
    if kind == "local":
        made.local_reply(draw(st.sampled_from([200, 404, 503])), draw(st.integers(0, 30)), b"envoy")
    elif kind == "upstream":
        made.response_headers = draw(
            st.lists(st.tuples(st.sampled_from(HEADER_NAMES).map(str.encode), header_values))
        )
    if draw(st.booleans()):
        made.trailers = draw(
            st.lists(st.tuples(st.sampled_from(HEADER_NAMES).map(str.encode), header_values))
        )
    return made


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates, st.booleans(), st.lists(records(), min_size=1, max_size=3))
def test_compiled_lines_are_the_reference_lines(template, omit_empty, made) -> None:
    compiled, plain = compile_text(template, omit_empty), reference(template, omit_empty)
    for record in made:
        line = compiled(record)  # first: a request id it makes is the record's
        assert line == plain(record)


def test_the_default_format_compiled() -> None:
    template = parse_format(DEFAULT_FORMAT, "f")
    made = LogRecord(Downstream(("10.0.0.1", 5555), ("127.0.0.1", 80)), 100.0, WALL)
    made.method, made.path, made.authority, made.scheme = b"GET", b"/", b"h", b"http"
    made.generate_id, made.end = True, 100.0021
    made.local_reply(200, 6, b"envoy")
    made.bytes_sent = 6
    line = compile_text(template)(made)
    assert line == reference(template, False)(made)
    assert line.startswith(b'[2026-12-06T17:19:51.561Z] "GET / HTTP/1.1" 200 - 0 6 2 - "-" "-" "')
    assert line.endswith(b'" "h" "-"\n') and made.request_id is not None


async def test_a_compiled_logger_fills_its_sink_and_flushes_at_the_flush_size(tmp_path) -> None:
    """Lines wait in the sink's buffer until they reach FLUSH_SIZE bytes (or the interval),
    then go to the file in one write."""
    path = tmp_path / "access.log"
    sink = FILES.get(str(path))
    log = compile_text_logger(parse_format("%RESPONSE_CODE% %REQ(X-A)%\n", "f"), False, sink)
    made = LogRecord(Downstream(("10.0.0.1", 5555), ("127.0.0.1", 80)), 100.0, WALL)
    made.status, made.request_headers = 200, [(b"x-a", b"v" * 90)]
    line = b"200 " + b"v" * 90 + b"\n"
    count = 0
    while (count + 1) * len(line) < FLUSH_SIZE:
        log(made)
        count += 1
    await asyncio.sleep(0)
    assert path.read_bytes() == b"" and len(sink.buffer) == count * len(line)  # timer armed
    log(made)  # reaches FLUSH_SIZE
    count += 1
    assert sink.buffer == b""
    await wait_until(lambda: path.stat().st_size == count * len(line))
    log(made)
    sink.flush()
    await wait_until(lambda: path.read_bytes() == line * (count + 1))


def test_header_pairs_of_any_sequence_type_are_read_alike() -> None:
    """Request headers come as tuples (HTTP/1.1), as hpack's HeaderTuple (a tuple subclass,
    HTTP/2) or as other pairs: the compiled line reads them all the same."""
    template = parse_format("%REQ(X-A)% %REQ(:AUTHORITY)% %REQ(X-B?X-A)%\n", "f")
    lines = set()
    for pair in (tuple, lambda items: HeaderTuple(*items), list):
        made = LogRecord(Downstream(("10.0.0.1", 5555), ("127.0.0.1", 80)), 100.0, WALL)
        made.took_headers(
            [pair((b":authority", b"h")), pair((b"x-a", b"1")), pair((b"x-a", b"2"))],
            "HTTP/2",
            b"http",
            ProxyPolicy(),
        )
        lines.add(compile_text(template)(made))
    assert lines == {b"1 h 1\n"}


def test_a_header_that_is_not_a_pair_is_an_error() -> None:
    made = LogRecord(Downstream(("10.0.0.1", 5555), ("127.0.0.1", 80)), 100.0, WALL)
    made.request_headers = [(b"x-a",)]
    with pytest.raises(ValueError, match="pair"):
        compile_text(parse_format("%REQ(X-A)%", "f"))(made)
    with pytest.raises(ValueError, match="pair"):
        made.took_headers([(b"x-a", b"1", b"2")], "HTTP/2", b"http", ProxyPolicy())
