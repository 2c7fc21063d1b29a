"""The HTTP/2 connection (xds_proxy/http/http2.py) on a real loopback socket, in-process:
an asyncio server in a thread, the raw-frame client of tests/helpers/h2_client.py.

Drain signals are pushed by the test the way the listener runtime pushes them (`on_drain`,
`close_at_deadline`, `drain_close()`), so frame order and timing are checked exactly."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from tests.helpers.h2_client import PREFACE, H2Client
from tests.helpers.listeners import hcm
from xds_proxy.config.hcm import Codec
from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError
from xds_proxy.http.conn_manager import build_http_connection_manager
from xds_proxy.http.http1 import Http1Connection
from xds_proxy.http.http2 import MAX_STREAM_ID, Http2Connection
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.stats import Stats

NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM = 0, 1, 2, 7
FLOW_CONTROL_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 3, 9, 11


class Decision:
    def __init__(self) -> None:
        self.close = False

    def drain_close(self) -> bool:
        return self.close


class Server:
    """An HCM listener on 127.0.0.1:0 in its own event loop thread."""

    def __init__(
        self,
        codec: str = "HTTP2",
        body: str = "hello",
        max_body: int = 0,
        use_uvloop: bool = False,
        **options: Any,
    ) -> None:
        typed = hcm(body, stat_prefix="web", codec_type=codec, **options)["typed_config"]
        typed = {k: v for k, v in typed.items() if k != "@type"}
        if max_body:
            typed["route_config"]["max_direct_response_body_size_bytes"] = max_body
        message = json_format.ParseDict(typed, hcm_pb2.HttpConnectionManager())
        self.stats = Stats()
        self.decision = Decision()
        self.connections: list[Any] = []
        self.ctx = FilterChainContext(
            stats=self.stats,
            listener_name="web",
            drain_decision=self.decision,
            register=self.connections.append,
            unregister=self.connections.remove,
        )
        self.config = build_http_connection_manager(message, "hcm", self.stats)
        self.loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def _factory(self) -> asyncio.Protocol:
        if self.config.codec is Codec.HTTP2:
            return Http2Connection(self.config, self.ctx)
        return Http1Connection(self.config, self.ctx)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            self.loop.create_server(self._factory, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the server's loop and return its result."""

        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def drain_all(self) -> None:
        self.call(lambda: [conn.on_drain() for conn in list(self.connections)])

    def deadline_all(self) -> None:
        self.call(lambda: [conn.close_at_deadline() for conn in list(self.connections)])

    def stat(self, name: str) -> int | str | None:
        return self.call(lambda: self.stats.value(f"http.web.{name}"))

    def stop(self) -> None:
        self.call(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(**kwargs: Any) -> Server:
        server = Server(**kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def connected(server: Server, **kwargs: Any) -> H2Client:
    client = H2Client(server.port, timeout=3, **kwargs)
    client.wait_frame(lambda r: isinstance(r.frame, SettingsFrame))
    return client


def test_request_gets_direct_response(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        response = client.response(client.request("/x"))
        assert response.status == 200
        assert response.body == b"hello"
        assert response.header("content-length") == "5"
        assert response.header("content-type") == "text/plain"
        assert response.header("server") == "envoy"
        assert response.header("date")
    assert server.stat("downstream_cx_http2_total") == 1
    assert server.stat("downstream_rq_http2_total") == 1
    assert server.stat("downstream_rq_2xx") == 1


def test_server_settings_advertise_max_concurrent_streams(make_server) -> None:
    server = make_server(http2_protocol_options={"max_concurrent_streams": 3})
    with connected(server) as client:
        settings = client.wait_frame(lambda r: isinstance(r.frame, SettingsFrame)).frame
        assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 3


def test_streams_above_max_concurrent_are_refused_not_the_connection(make_server) -> None:
    server = make_server(http2_protocol_options={"max_concurrent_streams": 2})
    with connected(server) as client:
        open_streams = [client.request(end_stream=False) for _ in range(2)]
        extra = client.request(end_stream=True)
        assert client.response(extra).reset_code == REFUSED_STREAM
        for stream in open_streams:
            client.send_data(stream, b"", end_stream=True)
            assert client.response(stream).status == 200
        assert client.response(client.request()).status == 200  # a slot is free again
        assert not client.goaways()


def test_many_streams_on_one_connection(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        streams = [client.request(f"/{n}") for n in range(50)]
        assert all(client.response(s).status == 200 for s in streams)
    assert server.stat("downstream_rq_total") == 50
    assert server.stat("downstream_rq_active") == 0


def test_request_with_large_body_and_trailers(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        stream = client.request("/upload", method="POST", end_stream=False)
        chunk = b"x" * 16384
        for _ in range(64):  # 1 MiB: more than the default 64 KiB windows
            client.send_data(stream, chunk)
        client.send_trailers(stream, [("x-checksum", "1")])
        assert client.response(stream).status == 200


def test_large_response_body_follows_flow_control(make_server) -> None:
    body = "y" * 200_000
    server = make_server(body=body, max_body=300_000)
    with connected(server, auto_window_update=False) as client:
        stream = client.request()

        def data_bytes() -> int:
            return sum(len(r.frame.data) for r in client.frames if r.kind == "DATA")

        client.wait(lambda: data_bytes() >= 65535)
        with pytest.raises(TimeoutError):
            client.wait(lambda: data_bytes() > 65535, timeout=0.3)
        client.window_update(0, 200_000)
        client.window_update(stream, 200_000)
        response = client.response(stream)
        assert response.body == body.encode()


def test_head_has_no_body(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        response = client.response(client.request(method="HEAD"))
        assert response.status == 200
        assert response.body == b""
        assert response.header("content-length") == "5"


def test_oversized_headers_reset_only_that_stream(make_server) -> None:
    server = make_server(max_request_headers_kb=1)
    with connected(server) as client:
        big = client.request(headers=[("x-big", "a" * 2000)])
        assert client.response(big).reset_code == INTERNAL_ERROR
        assert client.response(client.request()).status == 200
    assert server.stat("http2.header_overflow") == 1


def test_protocol_error_gets_goaway_and_closes(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        client.request(stream_id=2)  # even stream ids are the server's
        goaway = client.wait_frame(lambda r: isinstance(r.frame, GoAwayFrame)).frame
        assert goaway.error_code == PROTOCOL_ERROR
        client.wait_closed()
    assert server.stat("downstream_cx_protocol_error") == 1


def test_flow_control_violation_is_a_connection_error(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        client.request(end_stream=False)
        client.window_update(0, 2**31 - 1)  # the connection window above 2^31-1
        goaway = client.wait_frame(lambda r: isinstance(r.frame, GoAwayFrame)).frame
        assert goaway.error_code == FLOW_CONTROL_ERROR
        client.wait_closed()


def test_oversized_frame_gets_one_goaway_frame_size_error(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        stream = client.request(end_stream=False)
        client.send_frame_unchecked(stream, b"a" * 20000)
        client.wait_closed()
        assert [(g.frame.error_code) for g in client.goaways()] == [6]  # FRAME_SIZE_ERROR


def test_client_goaway_lets_its_streams_finish(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        stream = client.request(end_stream=False)
        client.goaway(last_stream_id=0)
        client.send_data(stream, b"body", end_stream=True)
        assert client.response(stream).status == 200
        client.wait_closed()
        assert not client.goaways()


def test_client_goaway_when_idle_closes(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        assert client.response(client.request()).status == 200
        client.goaway(last_stream_id=0)
        client.wait_closed()


def test_not_http2_is_closed_with_goaway(make_server) -> None:
    server = make_server()
    with connected_raw(server) as client:
        client.wait_closed()
        assert [r.kind for r in client.frames][-1] == "GOAWAY"


def connected_raw(server: Server) -> H2Client:
    client = H2Client(server.port, timeout=3, send_preface=False)
    client.send_raw(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    return client


def test_rapid_reset_is_bounded(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        with contextlib.suppress(OSError):  # the server may close before the last ones
            for _ in range(300):
                stream = client.request(end_stream=False)
                client.reset(stream)
        client.wait_closed()
        # The GOAWAY may be lost to the reset that closing with unread input causes.
        assert [g.frame.error_code for g in client.goaways()] in ([], [ENHANCE_YOUR_CALM])
    assert server.stat("downstream_rq_too_many_premature_resets") == 1
    # Other connections are unaffected.
    with connected(server) as other:
        assert other.response(other.request()).status == 200


def test_ping_flood_is_bounded(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        with contextlib.suppress(OSError):  # the server may close before the last ones
            client.send_raw(b"".join(_ping() for _ in range(5000)))
        client.wait_closed()
        # The GOAWAY may be lost to the reset that closing with unread input causes.
        assert [g.frame.error_code for g in client.goaways()] in ([], [ENHANCE_YOUR_CALM])
        assert sum(1 for r in client.frames if r.kind == "PING") < 5000
    assert server.stat("http2.inbound_control_flood") == 1


def _ping() -> bytes:
    from hyperframe.frame import PingFrame

    return PingFrame(0, opaque_data=b"12345678").serialize()


def test_few_pings_are_answered(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        for _ in range(10):
            client.ping()
        client.wait(lambda: sum(1 for r in client.frames if r.kind == "PING") == 10)
        assert client.response(client.request()).status == 200


def test_stream_idle_timeout_answers_408_then_resets(make_server) -> None:
    server = make_server(stream_idle_timeout="0.3s")
    with connected(server) as client:
        stalled = client.request(method="POST", end_stream=False)
        started = time.monotonic()
        response = client.response(stalled)
        assert (response.status, response.body) == (408, b"stream timeout")
        assert 0.25 <= time.monotonic() - started < 1.5
        client.wait(lambda: any(r.kind == "RSTSTREAM" for r in client.frames))
        assert client.response(client.request()).status == 200  # the connection lives on
    assert server.stat("downstream_rq_idle_timeout") == 1


def test_request_timeout_counts_from_the_headers(make_server) -> None:
    server = make_server(request_timeout="0.4s")
    with connected(server) as client:
        slow = client.request(method="POST", end_stream=False)
        client.send_data(slow, b"x")  # not idle (stream_idle_timeout is 300 s), just slow
        started = time.monotonic()
        response = client.response(slow)
        assert time.monotonic() - started < 1.5
        assert (response.status, response.body) == (408, b"request timeout")
    assert server.stat("downstream_rq_timeout") == 1


# -- drain -----------------------------------------------------------------------------------


def test_drain_of_idle_connection_sends_goaway_pair_then_closes(make_server) -> None:
    server = make_server(drain_timeout="0.3s", delayed_close_timeout="0.2s")
    with connected(server) as client:
        assert client.response(client.request()).status == 200
        server.drain_all()
        first, final = client.wait_goaways(2)
        assert (first.frame.last_stream_id, first.frame.error_code) == (MAX_STREAM_ID, NO_ERROR)
        assert (final.frame.last_stream_id, final.frame.error_code) == (1, NO_ERROR)
        assert 0.25 <= final.at - first.at <= 0.6
        closed = client.wait_closed()
        assert 0.15 <= closed - final.at <= 0.5
    assert server.stat("downstream_cx_drain_close") == 1
    assert server.stat("downstream_cx_delayed_close_timeout") == 1


def test_drain_of_connection_without_any_stream(make_server) -> None:
    server = make_server(drain_timeout="0.2s", delayed_close_timeout="0.1s")
    with connected(server) as client:
        server.drain_all()
        _first, final = client.wait_goaways(2)
        assert final.frame.last_stream_id == 0
        client.wait_closed()


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_streams_after_first_goaway_are_served_and_above_final_refused(
    make_server, use_uvloop
) -> None:
    server = make_server(drain_timeout="0.5s", delayed_close_timeout="0.2s", use_uvloop=use_uvloop)
    with connected(server) as client:
        in_flight = client.request(end_stream=False)
        server.drain_all()
        client.wait_goaways(1)
        after_first = client.request()
        assert client.response(after_first).status == 200
        final = client.wait_goaways(2)[1].frame
        assert final.last_stream_id == after_first
        refused = client.request()
        assert client.response(refused).reset_code == REFUSED_STREAM
        client.send_data(in_flight, b"done", end_stream=True)
        assert client.response(in_flight).status == 200
        client.wait_closed()
        sequence = client.sequence()
        assert sequence.index(f"GOAWAY({MAX_STREAM_ID},0)") < sequence.index("HEADERS(3)")
        assert sequence.index(f"GOAWAY({after_first},0)") < sequence.index("RST_STREAM(5,7)")


def test_first_response_with_drain_close_sends_goaway_before_headers(make_server) -> None:
    server = make_server(drain_timeout="0.3s", delayed_close_timeout="0.1s")
    with connected(server) as client:
        server.decision.close = True
        stream = client.request()
        assert client.response(stream).status == 200
        kinds = [r.kind for r in client.frames if r.kind in ("GOAWAY", "HEADERS")]
        assert kinds[:2] == ["GOAWAY", "HEADERS"]
        client.wait_goaways(2)
        client.wait_closed()
    assert server.stat("downstream_cx_drain_close") == 1


def test_connection_stays_until_in_flight_stream_ends(make_server) -> None:
    server = make_server(drain_timeout="0.2s", delayed_close_timeout="0.1s")
    with connected(server) as client:
        stream = client.request(end_stream=False)
        server.drain_all()
        client.wait_goaways(2)
        with pytest.raises(TimeoutError):
            client.wait_closed(timeout=0.4)  # an active stream keeps it open
        client.send_data(stream, b"", end_stream=True)
        assert client.response(stream).status == 200
        client.wait_closed()


def test_deadline_closes_with_final_goaway(make_server) -> None:
    server = make_server(drain_timeout="10s")
    with connected(server) as client:
        client.request(end_stream=False)
        server.drain_all()
        client.wait_goaways(1)
        server.deadline_all()
        goaways = client.wait_goaways(2)
        assert goaways[1].frame.last_stream_id == 1
        client.wait_closed()


def test_idle_timeout_runs_drain_sequence(make_server) -> None:
    server = make_server(
        drain_timeout="0.1s",
        delayed_close_timeout="0.1s",
        common_http_protocol_options={"idle_timeout": "0.2s"},
    )
    with connected(server) as client:
        assert client.response(client.request()).status == 200
        client.wait_goaways(1, timeout=2)
        client.wait_closed(timeout=2)
    assert server.stat("downstream_cx_idle_timeout") == 1


# -- codec selection -------------------------------------------------------------------------


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_auto_hands_preface_to_http2(make_server, use_uvloop) -> None:
    server = make_server(codec="AUTO", use_uvloop=use_uvloop)
    with connected(server) as client:
        assert client.response(client.request()).status == 200
    assert server.stat("downstream_cx_http2_total") == 1
    assert server.stat("downstream_cx_http1_total") == 0
    assert server.stat("downstream_cx_total") == 1
    assert len(server.connections) <= 1


@pytest.mark.parametrize("use_uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_auto_preface_split_over_reads(make_server, use_uvloop) -> None:
    server = make_server(codec="AUTO", use_uvloop=use_uvloop)
    client = H2Client(server.port, timeout=3, send_preface=False)
    client.answer_settings = False
    with client:
        for byte in PREFACE[:20]:
            client.send_raw(bytes([byte]))
        client.send_raw(PREFACE[20:] + SettingsFrame(0).serialize())
        client.answer_settings = True
        assert client.response(client.request()).status == 200


def test_codec_http2_is_accepted_and_bad_limit_refused() -> None:
    typed = hcm("x", codec_type="HTTP2")["typed_config"]
    typed = {k: v for k, v in typed.items() if k != "@type"}
    message = json_format.ParseDict(typed, hcm_pb2.HttpConnectionManager())
    assert build_http_connection_manager(message, "hcm", Stats()).codec is Codec.HTTP2
    message.http2_protocol_options.max_concurrent_streams.value = 0
    with pytest.raises(ConfigError, match="max_concurrent_streams"):
        require_valid(message, "hcm")  # the PGV rules (config/) refuse it before building


def test_headers_frame_types_are_recorded(make_server) -> None:
    server = make_server()
    with connected(server) as client:
        client.response(client.request())
        assert any(isinstance(r.frame, HeadersFrame) and r.headers for r in client.frames)
        assert not any(isinstance(r.frame, RstStreamFrame) for r in client.frames)
