"""Local responses rendered as Envoy renders them (pure)."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

import pytest

from xds_proxy.codec.responses import HTTP_DATE, LocalResponse, reason_phrase

DATE = b"Sat, 28 Nov 2026 00:00:00 GMT"


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (200, "OK"),
        (413, "Payload Too Large"),  # Envoy's words, not Python's "Request Entity Too Large"
        (414, "URI Too Long"),
        (416, "Range Not Satisfiable"),
        (418, "Unknown"),  # Envoy has no teapot
        (451, "Unknown"),
        (599, "Last Unassigned Server Error Code"),
        (299, "Unknown"),
    ],
)
def test_reason_phrases_are_envoys(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


def test_date_is_an_http_date_of_now() -> None:
    value = HTTP_DATE.now()
    assert re.fullmatch(rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", value)
    assert parsedate_to_datetime(value.decode()).tzinfo is not None
    assert HTTP_DATE.now() in (value, HTTP_DATE.now())  # cached within the second


@pytest.mark.parametrize(
    ("status", "tail"),
    [
        (304, b"server: envoy\r\n\r\n"),
        (204, b"server: envoy\r\n\r\n"),
        (200, b"server: envoy\r\ncontent-length: 0\r\n\r\n"),
    ],
)
def test_bodiless_responses(status: int, tail: bytes) -> None:
    rendered = LocalResponse(status).render(DATE, False)
    assert rendered.endswith(b"date: " + DATE + b"\r\n" + tail)
    assert LocalResponse(status).render(DATE, False, head_only=True) == rendered


def test_head_only_keeps_the_length_and_drops_the_body() -> None:
    response = LocalResponse(503, b"down\n", server="edge")
    full = response.render(DATE, True)
    head = response.render(DATE, True, head_only=True)
    assert full == head + b"down\n"
    assert head.endswith(b"server: edge\r\nconnection: close\r\n\r\n")
    assert b"content-length: 5\r\ncontent-type: text/plain\r\n" in head
