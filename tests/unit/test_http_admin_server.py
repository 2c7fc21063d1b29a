"""The admin HTTP transport on a real loopback socket."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from xds_proxy.admin.server import AdminResponse, parse_query, start_admin_server

TIMEOUT = 3.0


@pytest.fixture
async def admin():
    calls: list[tuple[str, str, dict[str, list[str]]]] = []
    release = asyncio.Event()

    async def handler(method: str, path: str, query: dict[str, list[str]]) -> AdminResponse:
        calls.append((method, path, query))
        if path == "/slow":
            await release.wait()
            return AdminResponse(200, "slow\n")
        if path == "/json":
            return AdminResponse(200, '{"a": 1}\n', content_type="application/json")
        if path == "/boom":
            raise RuntimeError("handler broke")
        if path == "/headers":
            return AdminResponse(200, b"", headers=[("x-extra", "1")])
        return AdminResponse(200, f"{method} {path}\n")

    def sync_handler(method: str, path: str, query: dict[str, list[str]]) -> AdminResponse:
        calls.append((method, path, query))
        return AdminResponse(405, "Method GET not allowed, POST required.")

    servers = []

    async def start(sync: bool = False):
        server = await start_admin_server("127.0.0.1", 0, sync_handler if sync else handler)
        servers.append(server)
        return server.sockets[0].getsockname()[1], calls, release

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("graceful", {"graceful": [""]}),
        ("graceful=false", {"graceful": ["false"]}),
        ("graceful&inboundonly", {"graceful": [""], "inboundonly": [""]}),
        ("filter=%5Ehttp%5C.", {"filter": ["^http\\."]}),
        ("format=json&filter=a&filter=b", {"format": ["json"], "filter": ["a", "b"]}),
        ("", {}),
    ],
)
def test_parse_query_counts_flags_by_presence(raw: str, parsed: dict) -> None:
    assert parse_query(raw) == parsed


async def test_handler_gets_method_path_and_query(admin) -> None:
    port, calls, _ = await admin()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.post("/drain_listeners?graceful&inboundonly")
        assert response.status_code == 200
        assert response.text == "POST /drain_listeners\n"
        assert response.headers["content-type"] == "text/plain; charset=UTF-8"
        assert response.headers["server"] == "envoy"
        response = await client.get("/json")
        assert response.json() == {"a": 1}
        assert response.headers["content-type"] == "application/json"
        response = await client.get("/headers")
        assert response.headers["x-extra"] == "1"
    assert calls[0] == ("POST", "/drain_listeners", {"graceful": [""], "inboundonly": [""]})


async def test_sync_handler_and_status(admin) -> None:
    port, calls, _ = await admin(sync=True)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/quitquitquit")
    assert response.status_code == 405
    assert response.text == "Method GET not allowed, POST required."
    assert calls == [("GET", "/quitquitquit", {})]


async def test_handler_error_is_a_500_and_the_server_goes_on(admin) -> None:
    port, _, _ = await admin()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/boom")
        assert response.status_code == 500
        assert response.text == "RuntimeError: handler broke\n"
        assert (await client.get("/ready")).status_code == 200


async def test_pipelined_requests_keep_their_order(admin) -> None:
    port, _, release = await admin()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    # /fast waits behind /slow although its handler would answer at once.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.2)
    release.set()
    data = b""
    while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"GET /fast\n"):
        chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        assert chunk
        data += chunk
    assert data.index(b"slow\n") < data.index(b"GET /fast\n")
    writer.close()


async def test_connection_close_and_bad_request(admin) -> None:
    port, _, _ = await admin()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), TIMEOUT)  # until EOF
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in data
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"NOT HTTP\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
