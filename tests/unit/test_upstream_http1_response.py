"""Forwarded responses rendered for an HTTP/1.1 downstream (pure: a recording owner)."""

from __future__ import annotations

import re

from xds_proxy.upstream.http1_response import Http1ForwardSink, status_line


class Owner:
    def __init__(self, close: bool = False) -> None:
        self.written = b""
        self.done: list[bool] = []
        self.resets = 0
        self.close = close
        self.counted: list[int] = []
        self.paused = 0

    def forward_write(self, response, data: bytes) -> None:
        self.written += data

    def forward_done(self, response, close: bool) -> None:
        self.done.append(close)

    def forward_reset(self, response) -> None:
        self.resets += 1

    def forward_close_decision(self, response) -> bool:
        return self.close or response.close_requested

    def forward_pause_reading(self) -> None:
        self.paused += 1

    def forward_resume_reading(self) -> None:
        self.paused -= 1

    def forward_count(self, status: int) -> None:
        self.counted.append(status)


def sink(owner: Owner, head_only: bool = False, http10: bool = False) -> Http1ForwardSink:
    return Http1ForwardSink(owner, head_only, http10, b"envoy")


def head_of(data: bytes) -> list[str]:
    text = data.split(b"\r\n\r\n", 1)[0].decode()
    return [re.sub(r"^date: .*$", "date: *", line) for line in text.split("\r\n")]


async def test_fixed_length_response_keeps_upstream_order_then_date_and_server() -> None:
    owner = Owner()
    response = sink(owner)
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"x-envoy-upstream-service-time", b"3"),
    ]
    response.send_response_headers(200, headers, False)
    response.send_response_data(b"hello", True)
    assert head_of(owner.written) == [
        "HTTP/1.1 200 OK",
        "content-type: text/plain",
        "content-length: 5",
        "x-envoy-upstream-service-time: 3",
        "date: *",
        "server: envoy",
    ]
    assert owner.written.endswith(b"\r\n\r\nhello")
    assert owner.done == [False] and owner.counted == [200]


async def test_unknown_length_is_chunked_and_trailers_end_the_body() -> None:
    owner = Owner()
    response = sink(owner)
    response.send_response_headers(200, [(b"date", b"upstream-date")], False)
    response.send_response_data(b"abc", False)
    response.send_response_trailers([(b"grpc-status", b"0")])
    assert head_of(owner.written) == [
        "HTTP/1.1 200 OK",
        "date: *",
        "server: envoy",
        "transfer-encoding: chunked",
    ]
    assert b"\r\ndate: upstream-date\r\n" in owner.written  # the upstream's date is kept
    assert owner.written.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert response.complete


async def test_empty_body_gets_content_length_zero_and_close() -> None:
    owner = Owner(close=True)
    sink(owner).send_response_headers(404, [], True)
    assert head_of(owner.written)[-2:] == ["connection: close", "content-length: 0"]
    assert owner.done == [True]


async def test_no_body_statuses_and_head() -> None:
    owner = Owner()
    sink(owner).send_response_headers(204, [], True)
    assert "content-length: 0" not in head_of(owner.written)
    head = Owner()
    response = sink(head, head_only=True)
    response.send_response_headers(200, [(b"content-length", b"10")], True)
    response.send_response_data(b"ignored", True)
    assert head.written.endswith(b"content-length: 10\r\ndate: " + head.written.split(b"date: ")[1])
    assert b"ignored" not in head.written


async def test_http10_client_without_length_reads_until_close() -> None:
    owner = Owner()
    response = sink(owner, http10=True)
    response.send_response_headers(200, [], False)
    response.send_response_data(b"body", True)
    lines = head_of(owner.written)
    assert lines[0] == "HTTP/1.0 200 OK"
    assert "connection: close" in lines and "transfer-encoding: chunked" not in lines
    assert owner.written.endswith(b"\r\n\r\nbody")
    assert owner.done == [True]


async def test_http10_keep_alive_with_length() -> None:
    owner = Owner()
    sink(owner, http10=True).send_response_headers(200, [(b"content-length", b"0")], True)
    assert "connection: keep-alive" in head_of(owner.written)


async def test_local_reply_with_extra_headers() -> None:
    owner = Owner()
    sink(owner).send_local_reply(503, b"upstream connect error", [(b"x-envoy-overloaded", b"true")])
    assert head_of(owner.written) == [
        "HTTP/1.1 503 Service Unavailable",
        "x-envoy-overloaded: true",
        "content-length: 22",
        "content-type: text/plain",
        "date: *",
        "server: envoy",
    ]
    assert owner.written.endswith(b"\r\n\r\nupstream connect error")
    assert owner.counted == [503]


async def test_reset_after_headers_tells_the_owner_once() -> None:
    owner = Owner()
    response = sink(owner)
    response.send_response_headers(200, [], False)
    response.reset_downstream()
    response.reset_downstream()
    assert owner.resets == 1


async def test_request_body_back_pressure_goes_to_the_owner() -> None:
    owner = Owner()
    response = sink(owner)
    response.pause_request_body()
    assert owner.paused == 1
    response.resume_request_body()
    assert owner.paused == 0


def test_status_lines() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(503, http10=True) == b"HTTP/1.0 503 Service Unavailable\r\n"


async def test_headers_wait_one_loop_iteration_for_the_body_at_most() -> None:
    import asyncio

    owner = Owner()
    response = sink(owner)
    response.send_response_headers(200, [], False)
    assert owner.written == b""  # held for the body that usually comes in the same read
    await asyncio.sleep(0)
    assert owner.written.startswith(b"HTTP/1.1 200 OK\r\n")
    written = len(owner.written)
    response.send_response_data(b"late", True)
    assert owner.written[written:] == b"4\r\nlate\r\n0\r\n\r\n"
