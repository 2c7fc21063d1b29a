"""The HCM's route table behind a handle: swapped under live connections (what RDS does), the
next request of a connection uses the new table, a request in progress keeps the table it
started with. HTTP/1.1 and HTTP/2, real loopback sockets."""

from __future__ import annotations

from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from tests.helpers.listeners import hcm
from tests.unit.test_http2 import connected, make_server  # noqa: F401 - a fixture
from tests.unit.test_http_conn import Client, serve, wait_until  # noqa: F401 - a fixture
from xds_proxy.http.router import RouteTable, build_route_table


def table(body: str) -> RouteTable:
    """A route table answering every request with 200 and `body`."""
    config = hcm(body)["typed_config"]["route_config"]
    return build_route_table(json_format.ParseDict(config, route_pb2.RouteConfiguration()), "r")


def post_head(length: int) -> bytes:
    return f"POST /hello HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n".encode()


async def test_http1_next_request_uses_the_swapped_table(serve) -> None:  # noqa: F811
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(post_head(0))
    first = await client.response()
    [connection] = served.connections
    handle = connection._config.routes
    handle.current = table("second")
    await client.send(post_head(0))
    second = await client.response()
    assert (first.status, second.status) == (200, 200)
    assert (first.body, second.body) == (b"hello\n", b"second")
    assert len(served.connections) == 1  # the same connection served both
    client.close()


async def test_http1_request_in_progress_keeps_its_table(serve) -> None:  # noqa: F811
    served = await serve()
    client = await Client.connect(served.port)
    await client.send(post_head(4) + b"ab")
    await wait_until(lambda: served.stat("downstream_rq_total") == 1)  # the headers are in
    [connection] = served.connections
    connection._config.routes.current = table("later")
    await client.send(b"cd")
    response = await client.response()
    assert (response.status, response.body) == (200, b"hello\n")  # the table it started with
    await client.send(post_head(0))
    assert (await client.response()).body == b"later"
    client.close()


def test_http2_streams_use_the_table_of_their_start(make_server) -> None:  # noqa: F811
    server = make_server(body="first")
    handle = server.config.routes
    with connected(server) as client:
        early = client.request("/x", end_stream=False)  # headers in, body still to come
        client.wait(lambda: server.stat("downstream_rq_total") == 1)
        server.call(lambda: setattr(handle, "current", table("second")))
        client.send_data(early, b"body", end_stream=True)
        assert client.response(early).body == b"first"
        assert client.response(client.request("/x")).body == b"second"
