"""The HTTP/1.1 connection manager on real loopback sockets, driven by raw-socket clients.

The server side runs in the test's event loop (`loop.create_server` with the factory that
`build_filter_chain` returns), exactly as the listener runtime uses it.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from envoy.config.listener.v3 import listener_components_pb2
from google.protobuf import json_format

from tests.helpers.clocks import JumpClockLoop, JumpClockPolicy, settle
from tests.helpers.loops import event_loop_policy  # noqa: F401 - runs each test on both loops
from tests.helpers.waiting import wait_until
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.network_filters import build_filter_chain
from xds_proxy.stats import Stats

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
ROUTES = {
    "virtual_hosts": [
        {
            "name": "example",
            "domains": ["example.com"],
            "routes": [
                {
                    "match": {"prefix": "/"},
                    "direct_response": {"status": 200, "body": {"inline_string": "example\n"}},
                }
            ],
        },
        {
            "name": "any",
            "domains": ["*"],
            "routes": [
                {
                    "match": {"path": "/empty"},
                    "direct_response": {"status": 204},
                },
                {
                    "match": {"prefix": "/hello"},
                    "direct_response": {"status": 200, "body": {"inline_string": "hello\n"}},
                },
                {
                    "match": {"prefix": "/teapot"},
                    "direct_response": {"status": 418, "body": {"inline_string": "tea\n"}},
                },
            ],
        },
    ]
}
TIMEOUT = 3.0


def hcm_filter(**overrides: object) -> dict:
    config = {
        "@type": HCM_TYPE,
        "stat_prefix": "web",
        "route_config": ROUTES,
        "http_filters": [ROUTER],
    }
    config.update(overrides)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def filters_from(dicts: list[dict]) -> list[listener_components_pb2.Filter]:
    return [json_format.ParseDict(d, listener_components_pb2.Filter()) for d in dicts]


class SwitchDecision:
    """A drain decision the test flips."""

    def __init__(self) -> None:
        self.close = False

    def drain_close(self) -> bool:
        return self.close


@dataclass
class Served:
    port: int
    stats: Stats
    ctx: FilterChainContext
    decision: SwitchDecision
    connections: list = field(default_factory=list)

    def stat(self, name: str) -> int | str | None:
        return self.stats.value(f"http.web.{name}")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future]]:
    servers: list[asyncio.Server] = []

    async def start(filters: list[dict] | None = None, **hcm: object) -> Served:
        stats = Stats()
        decision = SwitchDecision()
        served = Served(0, stats, None, decision)  # type: ignore[arg-type]
        ctx = FilterChainContext(
            stats=stats,
            listener_name="web",
            drain_decision=decision,
            register=served.connections.append,
            unregister=served.connections.remove,
        )
        served.ctx = ctx
        chain = filters if filters is not None else [hcm_filter(**hcm)]
        factory = build_filter_chain(filters_from(chain), ctx)
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        servers.append(server)
        served.port = server.sockets[0].getsockname()[1]
        return served

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class Client:
    """A raw HTTP/1.1 client over a real socket: sends bytes, parses responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, head_only: bool = False) -> Response:
        raw_head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [tuple(line.split(": ", 1)) for line in lines[1:] if line]
        response = Response(status, headers, b"", raw_head)  # type: ignore[arg-type]
        length = response.header("content-length")
        if length and not head_only:
            response.body = await asyncio.wait_for(self.reader.readexactly(int(length)), TIMEOUT)
        return response

    async def at_eof(self) -> bool:
        """True when the server closed its side and nothing else was sent."""
        data = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        return data == b""

    def close(self) -> None:
        self.writer.close()


def get(path: str = "/hello", host: str = "h", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


# Timeout tests run on a loop whose clock jumps: 30 s timeouts, reached at once, with margins
# that a loaded machine's scheduling delays cannot eat into.
JUMP_CLOCK = pytest.mark.parametrize("event_loop_policy", [JumpClockPolicy()], ids=["jump-clock"])


async def jump(seconds: float) -> None:
    """Move the loop's clock forward and let the timers it passed fire."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, JumpClockLoop)
    loop.jump(seconds)
    await settle()


def _unread_bytes(sock: socket.socket, request: int) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"))[0]


async def read_by_the_server(client: Client, served: Served) -> None:
    """Wait until what the client sent has reached the server's connection: nothing left in
    the client's buffers or unacknowledged, nothing unread in the server socket."""
    (connection,) = served.connections
    client_sock = client.writer.get_extra_info("socket")
    server_sock = connection.transport.get_extra_info("socket")
    await wait_until(
        lambda: (
            client.writer.transport.get_write_buffer_size() == 0
            and _unread_bytes(client_sock, termios.TIOCOUTQ) == 0
            and _unread_bytes(server_sock, termios.FIONREAD) == 0
        ),
        what="the bytes read by the server",
    )


# -- keep-alive, pipelining, bodies --------------------------------------------------------


async def test_keep_alive_serves_many_requests_on_one_connection(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    for _ in range(3):
        await client.send(get())
        response = await client.response()
        assert response.status == 200 and response.body == b"hello\n"
        assert response.header("connection") is None
    assert served.stat("downstream_cx_total") == 1
    assert served.stat("downstream_cx_active") == 1
    assert served.stat("downstream_cx_http1_total") == 1
    assert served.stat("downstream_rq_total") == 3
    assert served.stat("downstream_rq_http1_total") == 3
    assert served.stat("downstream_rq_2xx") == 3
    client.close()
    await wait_until(lambda: served.stat("downstream_cx_active") == 0)
    assert served.stat("downstream_cx_destroy") == 1
    assert served.connections == []


async def test_response_bytes_match_envoy(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(get())
    response = await client.response()
    assert [name for name, _ in response.headers] == [
        "content-length",
        "content-type",
        "date",
        "server",
    ]
    assert response.header("content-type") == "text/plain"
    assert response.header("server") == "envoy"
    assert response.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
    await client.send(get("/nothing-here"))
    not_found = await client.response()
    assert not_found.status == 404 and not_found.body == b""
    assert [name for name, _ in not_found.headers] == ["date", "server", "content-length"]
    assert served.stat("downstream_rq_4xx") == 1
    assert served.stat("no_route") == 1


async def test_pipelined_requests_are_answered_in_order(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    paths = ["/hello", "/teapot", "/nothing", "/empty", "/hello"]
    await client.send(b"".join(get(path) for path in paths))
    statuses = [(await client.response()).status for _ in paths]
    assert statuses == [200, 418, 404, 204, 200]
    assert served.stat("downstream_rq_total") == 5


async def test_requests_split_into_single_bytes(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    data = get("/teapot") + get("/hello", host="example.com")
    for index in range(len(data)):
        await client.send(data[index : index + 1])
    first, second = await client.response(), await client.response()
    assert (first.status, first.body) == (418, b"tea\n")
    assert (second.status, second.body) == (200, b"example\n")


async def test_request_bodies_chunked_and_content_length(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(
        b"POST /hello HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n"
        b"PUT /teapot HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nxy"
    )
    assert (await client.response()).status == 200
    await client.send(b"zzzGET /nothing HTTP/1.1\r\nHost: h\r\n\r\n")
    # The body bytes "xy" + "zzz" are not taken for a request; the next request is.
    assert (await client.response()).status == 418
    assert (await client.response()).status == 404


async def test_expect_100_continue(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(
        b"POST /hello HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    continue_line = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert continue_line == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"abc")
    assert (await client.response()).status == 200


async def test_head_request_has_no_body(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(b"HEAD /hello HTTP/1.1\r\nHost: h\r\n\r\n" + get("/teapot"))
    head = await client.response(head_only=True)
    assert head.status == 200 and head.header("content-length") == "6"
    assert (await client.response()).status == 418  # nothing was sent between them


async def test_httpx_client_keeps_one_connection(serve) -> None:
    served = await serve()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
        for _ in range(5):
            response = await client.get("/hello")
            assert response.status_code == 200 and response.text == "hello\n"
            assert response.http_version == "HTTP/1.1"
        response = await client.post("/teapot", content=b"x" * 100_000)
        assert response.status_code == 418
    assert served.stat("downstream_cx_total") == 1
    assert served.stat("downstream_rq_total") == 6


# -- connection close ----------------------------------------------------------------------


async def test_client_connection_close_is_honoured(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(get(extra="Connection: close\r\n") + get("/teapot"))
    response = await client.response()
    assert response.status == 200
    assert response.headers[-1] == ("connection", "close")
    assert await client.at_eof()  # the pipelined request after it is not processed
    assert served.stat("downstream_rq_total") == 1
    assert served.stat("downstream_cx_drain_close") == 0


async def test_http10_is_refused_like_envoy(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(b"GET /hello HTTP/1.0\r\nHost: h\r\n\r\n")
    response = await client.response()
    assert (response.status, response.body) == (426, b"Upgrade Required")
    assert response.header("connection") == "close"
    assert await client.at_eof()


async def test_http10_when_accepted(serve) -> None:
    served = await serve(
        http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "example.com"}
    )
    client = await Client.connect(served.port)
    await client.send(b"GET /x HTTP/1.0\r\n\r\n")
    response = await client.response()
    # Envoy 1.40: an HTTP/1.0 status line, and the connection's fate spelled out.
    assert response.raw_head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert response.body == b"example\n"
    assert response.headers[-1] == ("connection", "close")
    assert await client.at_eof()


async def test_http10_keep_alive(serve) -> None:
    served = await serve(http_protocol_options={"accept_http_10": True})
    client = await Client.connect(served.port)
    keep = b"GET /hello HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
    await client.send(keep + b"GET /teapot HTTP/1.0\r\nHost: h\r\n\r\n")
    first, second = await client.response(), await client.response()
    assert first.raw_head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert first.headers[-1] == ("connection", "keep-alive")
    assert second.raw_head.startswith(b"HTTP/1.0 418 Unknown\r\n")
    assert second.headers[-1] == ("connection", "close")
    assert await client.at_eof()


# -- bad requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "body"),
    [
        (b"GARBAGE\r\n\r\n", 400, b"Bad Request"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n", 400, b"Bad Request"),
        (b"GET /hello HTTP/1.1\r\n\r\n", 400, b""),  # HTTP/1.1 needs a Host
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n", 403, b""),
        (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 404, b""),
    ],
)
async def test_bad_requests_get_an_error_and_close(serve, request_bytes, status, body) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(get() + request_bytes)
    assert (await client.response()).status == 200  # the request before it is answered
    response = await client.response()
    assert (response.status, response.body) == (status, body)
    assert response.header("connection") == "close"
    assert await client.at_eof()
    # The server keeps serving other connections.
    other = await Client.connect(served.port)
    await other.send(get())
    assert (await other.response()).status == 200
    assert served.stat(f"downstream_rq_{status // 100}xx") == 1


def url_of_length(length: int) -> bytes:
    return b"GET /" + b"a" * (length - 1) + b" HTTP/1.1\r\nHost: h\r\n\r\n"


def header_of_length(length: int, before: bytes = b"") -> bytes:
    return b"GET / HTTP/1.1\r\nHost: h\r\n" + before + b"X: " + b"a" * length + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # Envoy 1.40 with max_request_headers_kb 1, measured: the limit is on the raw header
        # block (request line, header lines, final CRLF), 1024 bytes. (404: no route for them.)
        (url_of_length(998), 404),
        (url_of_length(999), 431),
        (header_of_length(992), 404),
        (header_of_length(993), 431),
        (header_of_length(986, b"X: b\r\n"), 404),
        (header_of_length(987, b"X: b\r\n"), 431),
        (url_of_length(5000), 431),
    ],
)
async def test_request_header_size_limit(serve, request_bytes, status) -> None:
    served = await serve(max_request_headers_kb=1)
    client = await Client.connect(served.port)
    await client.send(request_bytes)
    response = await client.response()
    assert response.status == status
    if status == 431:
        assert response.body == b"Request Header Fields Too Large"
        assert response.header("connection") == "close"
        assert await client.at_eof()


async def test_huge_header_line_sent_in_pieces_is_refused(serve) -> None:
    served = await serve(max_request_headers_kb=4)
    client = await Client.connect(served.port)

    async def send_forever() -> None:
        # 4 MiB without a line end: httptools would buffer all of it without our bound.
        await client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX: ")
        for _ in range(256):
            await client.send(b"a" * 16384)

    sender = asyncio.create_task(send_forever())
    try:
        response = await client.response()
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert response.status == 431


async def test_too_many_headers(serve) -> None:
    served = await serve(common_http_protocol_options={"max_headers_count": 3})
    client = await Client.connect(served.port)
    await client.send(get(extra="A: 1\r\nB: 2\r\n"))
    assert (await client.response()).status == 200
    await client.send(get(extra="A: 1\r\nB: 2\r\nC: 3\r\n"))
    assert (await client.response()).status == 431


async def test_http2_preface_is_handed_to_http2(serve) -> None:
    """Codec AUTO: a prior-knowledge HTTP/2 client (whole or split preface) gets the
    server's SETTINGS frame; anything else stays HTTP/1.1."""
    served = await serve()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for pieces in ([preface], [preface[:8], preface[8:]]):
        client = await Client.connect(served.port)
        for piece in pieces:
            await client.send(piece)
        header = await asyncio.wait_for(client.reader.readexactly(9), TIMEOUT)
        assert header[3] == 0x4 and header[4] == 0  # SETTINGS, not an ACK
        client.close()
    third = await Client.connect(served.port)
    await third.send(b"GE")
    await third.send(b"T /hello HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await third.response()).status == 200


@JUMP_CLOCK
async def test_idle_timeout_closes_idle_connections(serve, event_loop_policy) -> None:  # noqa: F811
    served = await serve(common_http_protocol_options={"idle_timeout": "30s"})
    client = await Client.connect(served.port)
    await client.send(get())
    assert (await client.response()).status == 200
    await jump(29)
    assert served.stat("downstream_cx_idle_timeout") == 0
    await jump(2)
    assert await client.at_eof()
    assert served.stat("downstream_cx_idle_timeout") == 1


async def test_drain_decision_adds_connection_close(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(get())
    assert (await client.response()).header("connection") is None
    served.decision.close = True
    await client.send(get("/nothing") + get())
    response = await client.response()
    assert response.status == 404
    assert response.headers[-2:] == [("connection", "close"), ("content-length", "0")]
    assert await client.at_eof()
    assert served.stat("downstream_cx_drain_close") == 1
    assert served.stat("downstream_rq_total") == 2
    client.close()
    await wait_until(lambda: served.stat("downstream_cx_active") == 0)
    assert served.stat("downstream_cx_delayed_close_timeout") == 0


async def test_delayed_close_timeout_when_client_keeps_its_side_open(serve) -> None:
    served = await serve(delayed_close_timeout="0.2s")
    served.decision.close = True
    client = await Client.connect(served.port)
    await client.send(get())
    assert (await client.response()).header("connection") == "close"
    assert await client.at_eof()  # our FIN; the client does not answer with its own
    await wait_until(lambda: served.stat("downstream_cx_active") == 0)
    assert served.stat("downstream_cx_delayed_close_timeout") == 1
    client.close()


async def test_on_drain_closes_idle_connections_at_once(serve) -> None:
    served = await serve()
    idle = await Client.connect(served.port)
    await idle.send(get())
    assert (await idle.response()).status == 200
    busy = await Client.connect(served.port)
    await busy.send(b"GET /hello HTTP/1.1\r\nHo")  # part of a request: not idle
    # counted from its first byte, as Envoy
    await wait_until(lambda: served.stat("downstream_rq_active") == 1)
    assert sum(not c.is_idle for c in served.connections) == 1
    for connection in list(served.connections):
        connection.on_drain()
    assert await idle.at_eof()
    await busy.send(b"st: h\r\n\r\n")
    response = await busy.response()
    assert response.status == 200 and response.header("connection") == "close"
    assert await busy.at_eof()
    assert served.stat("downstream_cx_drain_close") == 2
    assert served.stat("downstream_rq_active") == 0


async def test_close_at_deadline_flushes_and_closes(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(b"GET /hello HTTP/1.1\r\nHost: h\r\n")  # never finished
    await wait_until(lambda: served.stat("downstream_rq_active") == 1)
    served.connections[0].close_at_deadline()
    assert await client.at_eof()
    await wait_until(lambda: served.stat("downstream_cx_active") == 0)


async def test_a_connection_before_its_first_request_is_not_closed_by_a_drain(serve) -> None:
    """Its client is about to send: the request is answered, with `connection: close`."""
    served = await serve()
    fresh = await Client.connect(served.port)
    await wait_until(lambda: len(served.connections) == 1)
    served.connections[0].on_drain()
    await fresh.send(get())
    response = await fresh.response()
    assert response.status == 200 and response.header("connection") == "close"
    assert await fresh.at_eof()


async def test_half_closed_client_gets_its_answer(serve) -> None:
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(get())
    client.writer.write_eof()
    assert (await client.response()).status == 200
    assert await client.at_eof()


# -- direct_response network filter and chains --------------------------------------------

DIRECT_TYPE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"


async def test_direct_response_filter_writes_and_closes(serve) -> None:
    served = await serve(
        [
            {
                "name": "envoy.filters.network.direct_response",
                "typed_config": {"@type": DIRECT_TYPE, "response": {"inline_string": "direct\n"}},
            }
        ]
    )
    client = await Client.connect(served.port)
    assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b"direct\n"
    client.close()
    client = await Client.connect(served.port)
    await client.send(b"GET / HTTP/1.1\r\n\r\n")  # ignored
    assert await asyncio.wait_for(client.reader.read(), TIMEOUT) == b"direct\n"
    await wait_until(lambda: served.connections == [])


async def test_empty_filter_chain_closes_connections(serve) -> None:
    served = await serve([])
    client = await Client.connect(served.port)
    assert await client.at_eof()


# -- request timeouts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "parts", "body", "stat"),
    [
        (
            "request_headers_timeout",
            [b"GET /hello HTTP/1.1\r\nHo"],
            b"request header timeout",
            "downstream_rq_header_timeout",
        ),
        (
            "request_timeout",
            [b"POST /hello HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab"],
            b"request timeout",
            "downstream_rq_timeout",
        ),
        (
            "stream_idle_timeout",
            [b"POST /hello HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab"],
            b"stream timeout",
            "downstream_rq_idle_timeout",
        ),
    ],
)
@JUMP_CLOCK
async def test_request_timeouts_answer_408(
    serve,
    event_loop_policy,  # noqa: F811
    option,
    parts,
    body,
    stat,
) -> None:
    served = await serve(**{option: "30s"})
    client = await Client.connect(served.port)
    for part in parts:
        await client.send(part)
    await wait_until(lambda: served.stat("downstream_rq_total") == 1, what="the request read")
    await jump(29)
    assert served.stat(stat) == 0
    await jump(2)
    response = await client.response()
    assert (response.status, response.body) == (408, body)
    assert response.header("connection") == "close"
    assert await client.at_eof()
    assert served.stat(stat) == 1
    assert served.stat("downstream_rq_4xx") == 1


@JUMP_CLOCK
async def test_stream_idle_timeout_restarts_with_each_read(serve, event_loop_policy) -> None:  # noqa: F811
    served = await serve(stream_idle_timeout="30s")
    client = await Client.connect(served.port)
    await client.send(b"POST /hello HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\n")
    await wait_until(lambda: served.stat("downstream_rq_total") == 1, what="the request read")
    for _ in range(5):  # 100 s in total, never 30 s without a byte
        await jump(20)
        await client.send(b"a")
        await read_by_the_server(client, served)
    await client.send(b"a")
    assert (await client.response()).status == 200
    assert served.stat("downstream_rq_idle_timeout") == 0


@JUMP_CLOCK
async def test_request_timeouts_do_not_touch_idle_connections(serve, event_loop_policy) -> None:  # noqa: F811
    served = await serve(request_headers_timeout="30s", request_timeout="30s")
    client = await Client.connect(served.port)
    await client.send(get())
    assert (await client.response()).status == 200
    await jump(60)
    assert served.stat("downstream_rq_header_timeout") == 0
    assert served.stat("downstream_rq_timeout") == 0
    assert served.stat("downstream_cx_active") == 1
    await client.send(get())
    assert (await client.response()).status == 200
