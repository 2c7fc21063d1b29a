"""The admin transport reads a request body for the listed paths only, up to its limit (413
above it), on a real loopback socket; and the plan endpoint's body formats."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from xds_proxy.admin.plan_input import PLAN_VERSION, PlanInputError, parse_plan_body
from xds_proxy.admin.server import MAX_BODY_BYTES, AdminResponse, start_admin_server

LISTENER = {
    "name": "l",
    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
}


async def test_a_body_is_read_for_the_listed_paths_only_and_413_above_the_limit() -> None:
    seen: list[tuple[str, bytes | None]] = []

    def handler(method: str, path: str, query: dict, body: bytes | None = None) -> AdminResponse:
        seen.append((path, body))
        return AdminResponse(200, "ok\n")

    server = await start_admin_server("127.0.0.1", 0, handler, frozenset({"/plan"}))
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.post("/plan", content=b"abc")).status_code == 200
            assert (await client.post("/other", content=b"abc")).status_code == 200
            assert (await client.post("/plan", content=b"x" * MAX_BODY_BYTES)).status_code == 200
        assert seen == [("/plan", b"abc"), ("/other", None), ("/plan", b"x" * MAX_BODY_BYTES)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = MAX_BODY_BYTES + 1
        writer.write(f"POST /plan HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n".encode())
        writer.write(b"y" * size)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # answered, then closed
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert len(seen) == 3
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_the_plan_body_shapes() -> None:
    as_list = parse_plan_body(json.dumps([LISTENER]).encode(), delta=False)
    assert (as_list.version_info, as_list.removed) == (PLAN_VERSION, None)
    assert [listener.name for listener in as_list.listeners] == ["l"]
    stub_file = parse_plan_body(b"version: v9\nlisteners:\n- name: l\nclusters: []\n", False)
    assert stub_file.version_info == "v9" and stub_file.listeners[0].name == "l"
    typed = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **LISTENER}
    response = parse_plan_body(
        json.dumps({"version_info": "3", "resources": [typed]}).encode(), False
    )
    assert (
        response.version_info == "3"
        and response.listeners[0].address.socket_address.port_value == 1
    )
    delta = {"resources": [{"name": "l", "resource": typed}], "removed_resources": ["old"]}
    parsed = parse_plan_body(json.dumps(delta).encode(), delta=True)
    assert parsed.removed == ["old"] and parsed.listeners[0].name == "l"
    assert parse_plan_body(b"", delta=True).removed == []  # nothing given: nothing changes


@pytest.mark.parametrize(
    ("body", "delta", "error"),
    [
        (b"\xff", False, "the body is not UTF-8 text"),
        (b"[1]", False, "listeners[0]: must be a mapping"),
        (b"7", False, "the body must be a list of listeners or a mapping"),
        (b'{"removed": ["a"]}', False, "removed: only with ?delta"),
        (b'{"removed": [1]}', True, "removed: must be a list of listener names"),
        (b'{"listeners": {"a": 1}}', False, "listeners: must be a list"),
        (b'[{"@type": "type.googleapis.com/x.Y"}]', False, "listeners[0]: expected"),
        (b'[{"name": "l", "port": 1}]', False, "listeners[0]: "),
    ],
)
def test_a_refused_body_is_one_line(body: bytes, delta: bool, error: str) -> None:
    with pytest.raises(PlanInputError) as raised:
        parse_plan_body(body, delta)
    assert str(raised.value).startswith(error)
    assert "\n" not in str(raised.value)
