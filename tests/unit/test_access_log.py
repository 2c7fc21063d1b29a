"""Access-log formats, filters and the format parser, on records built by hand (the lines as
Envoy prints them are checked against a real Envoy in tests/interop/test_access_log_interop.py)."""

from __future__ import annotations

import calendar
import json
import random

import pytest

from xds_proxy.access_log.filters import compile_filter
from xds_proxy.access_log.format import compile_format
from xds_proxy.access_log.record import Downstream, LogRecord
from xds_proxy.config.access_log import (
    DEFAULT_FORMAT,
    OPERATORS,
    AndFilter,
    Command,
    DurationFilter,
    JsonFormat,
    JsonObject,
    OrFilter,
    ResponseFlagFilter,
    RuntimeFilter,
    StatusCodeFilter,
    TextFormat,
    parse_format,
)
from xds_proxy.errors import ConfigError

# 2026-12-06T17:19:51.561234Z
WALL = calendar.timegm((2026, 12, 6, 17, 19, 51)) + 0.561234


def record(**fields: object) -> LogRecord:
    made = LogRecord(Downstream(("10.0.0.1", 5555), ("127.0.0.1", 10000)), 100.0, WALL)
    made.method, made.path, made.authority, made.scheme = b"GET", b"/a?b", b"host.example", b"http"
    made.request_headers = [(b"user-agent", b"curl"), (b"x-forwarded-for", b"1.2.3.4, 5.6.7.8")]
    made.request_id = b"rid"
    made.status = 200
    made.end = 100.0125
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def text(template: str, omit_empty: bool = False):
    render = compile_format(TextFormat(parse_format(template, "f")), omit_empty)
    return lambda record: render(record).decode("latin-1")


def test_default_format() -> None:
    line = text(DEFAULT_FORMAT)(record(bytes_received=5, bytes_sent=7))
    assert line == (
        '[2026-12-06T17:19:51.561Z] "GET /a?b HTTP/1.1" 200 - 5 7 12 - "1.2.3.4, 5.6.7.8" '
        '"curl" "rid" "host.example" "-"\n'
    )


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("%Y/%m/%d %H:%M:%S", "2026/12/06 17:19:51"),
        ("%s.%3f", "1796577591.561"),
        ("%f", "561234000"),
        ("%6f|%1f|%9f", "561234|5|561234000"),
        ("%E3S", "51.561"),
        ("%Es", "1796577591"),
        ("%%|%z", "%|+0000"),
    ],
)
def test_start_time_patterns(pattern: str, expected: str) -> None:
    assert text(f"%START_TIME({pattern})%")(record()) == expected


def test_headers_alternatives_and_truncation() -> None:
    render = text("%REQ(X-MISSING?USER-AGENT)% %REQ(:PATH):2% %REQ(HOST)% %RESP(X-A)%")
    assert render(record()) == "curl /a host.example -"
    assert render(record(response_headers=[(b"x-a", b"1")])) == "curl /a host.example 1"


def test_remote_address_from_x_forwarded_for_unless_use_remote_address() -> None:
    render = text("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%")
    assert render(record(remote_from_xff=True)) == "5.6.7.8:0 10.0.0.1:5555"
    assert render(record()) == "10.0.0.1:5555 10.0.0.1:5555"


def test_omit_empty_values_in_text() -> None:
    assert text("[%UPSTREAM_HOST%]", omit_empty=True)(record()) == "[]"


def test_json_typing_nesting_and_omit_empty() -> None:
    root = JsonObject(
        (
            ("code", parse_format("%RESPONSE_CODE%", "f")),
            ("text", parse_format("code %RESPONSE_CODE%", "f")),
            ("host", parse_format("%UPSTREAM_HOST%", "f")),
            ("nested", JsonObject((("ua", parse_format("%REQ(USER-AGENT)%", "f")),))),
            ("constant", 3),
        )
    )
    assert json.loads(compile_format(JsonFormat(root), False)(record()).decode()) == {
        "code": 200,
        "text": "code 200",
        "host": None,
        "nested": {"ua": "curl"},
        "constant": 3,
    }
    assert "host" not in json.loads(compile_format(JsonFormat(root), True)(record()).decode())


def test_parse_errors_name_the_operator() -> None:
    with pytest.raises(ConfigError, match=r"^p: command operator %NOPE% is not supported$"):
        parse_format("%NOPE%", "p")
    with pytest.raises(ConfigError, match="Couldn't find valid command at position 3"):
        parse_format("ab %", "p")
    with pytest.raises(ConfigError, match="needs a header name"):
        parse_format("%REQ()%", "p")
    assert parse_format("a%%b %PROTOCOL%", "p") == ("a%b ", Command("PROTOCOL"))


def test_every_operator_has_a_getter() -> None:
    for name in sorted(OPERATORS):
        argument = "(x)" if name in ("REQ", "RESP", "TRAILER") else ""
        assert isinstance(text(f"%{name}{argument}%")(record()), str)


def test_filters() -> None:
    server_errors = compile_filter(StatusCodeFilter(1, 500))  # GE
    assert server_errors(record(status=503)) and not server_errors(record(status=200))
    slow = compile_filter(DurationFilter(1, 10))
    assert slow(record()) and not slow(record(end=100.001))
    flagged = compile_filter(ResponseFlagFilter(frozenset({"UF"})))
    assert flagged(record(flags="UF,URX")) and not flagged(record(flags="NR"))
    assert compile_filter(ResponseFlagFilter(frozenset()))(record(flags="NR"))
    assert not compile_filter(ResponseFlagFilter(frozenset()))(record())
    both = compile_filter(AndFilter((StatusCodeFilter(0, 200), DurationFilter(2, 5))))
    assert not both(record())
    either = compile_filter(OrFilter((StatusCodeFilter(0, 200), DurationFilter(2, 5))))
    assert either(record())
    rng = random.Random(1)
    never, always = RuntimeFilter(0, 100), RuntimeFilter(100, 100)
    assert not any(compile_filter(never, rng)(record()) for _ in range(100))
    assert all(compile_filter(always, rng)(record()) for _ in range(100))
    half = compile_filter(RuntimeFilter(50, 100), rng)
    assert 30 < sum(half(record()) for _ in range(100)) < 70


def test_start_time_follows_each_request_across_ticks() -> None:
    """START_TIME is kept per millisecond (Envoy's default) or per tick of its pattern: the
    next request in another tick, or in an earlier one, gets its own time."""
    render = text("%START_TIME% %START_TIME(%s.%6f)% %START_TIME(%Y):2%")
    assert render(record()) == "2026-12-06T17:19:51.561Z 1796577591.561234 20"
    assert render(record(start_wall=WALL + 0.0004)) == (
        "2026-12-06T17:19:51.561Z 1796577591.561634 20"
    )
    assert render(record(start_wall=WALL + 0.5)) == "2026-12-06T17:19:52.061Z 1796577592.061234 20"
    assert render(record(start_wall=WALL - 60)) == "2026-12-06T17:18:51.561Z 1796577531.561234 20"


def test_local_reply_headers_and_a_generated_request_id() -> None:
    """RESP of a local reply reads the headers it would have; a request without
    x-request-id gets one id, the same for every operator and logger that prints it."""
    render = text(
        "%RESP(CONTENT-LENGTH)% %RESP(X-OTHER?CONTENT-TYPE)% %RESP(X-OTHER)% %REQ(X-REQUEST-ID)%"
    )
    other = text("%REQ(X-REQUEST-ID)%")
    made = record(request_id=None, generate_id=True)
    made.local_reply(503, 19, b"envoy")
    line = render(made)
    length, kind, missing, request_id = line.split(" ")
    assert (length, kind, missing) == ("19", "text/plain", "-")
    assert len(request_id) == 36 and request_id == other(made)
    assert text("%REQ(X-REQUEST-ID)%")(record(request_id=None)) == "-"  # ids not generated
