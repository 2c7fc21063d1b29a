"""A cluster's `per_connection_buffer_limit_bytes` bounds what an upstream connection buffers:
a request body to an upstream that does not read pauses the downstream once the connection's
buffer passes the limit (HTTP/1.1 and HTTP/2 pools, real sockets on loopback)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from hyperframe.frame import SettingsFrame, WindowUpdateFrame

from tests.helpers.upstreams import Collector, cluster_message
from xds_proxy.config.cluster import build_cluster_config
from xds_proxy.stats import Stats
from xds_proxy.upstream.cluster import Cluster
from xds_proxy.upstream.stream import RequestHead

MIB = 1024 * 1024
CHUNK = b"x" * 65536
GIVE_UP = 40 * MIB
# An HTTP/2 server's SETTINGS and WINDOW_UPDATE that let the client send 2 GiB without waiting
# (so that only the connection's buffer limit can pause it, not flow control).
_MAX_WINDOW = 2**31 - 1
OPEN_WINDOWS = (
    SettingsFrame(settings={SettingsFrame.INITIAL_WINDOW_SIZE: _MAX_WINDOW}).serialize()
    + WindowUpdateFrame(0, window_increment=_MAX_WINDOW - 65535).serialize()
)


class Sink:
    """An upstream that accepts connections (an HTTP/2 one opens its flow-control windows
    wide) and never reads: the kernel buffers fill, then the proxy's."""

    def __init__(self, http2: bool) -> None:
        self.http2 = http2
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.http2:
                conn.sendall(OPEN_WINDOWS)
            self.accepted.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture(params=[False, True], ids=["http1", "http2"])
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    server = Sink(request.param)
    yield server
    server.close()


async def _bytes_before_pause(port: int, http2: bool, **fields: object) -> int:
    message = cluster_message("c", [port], http2=http2, **fields)
    cluster = Cluster(build_cluster_config(message, "c"), Stats())
    collector = Collector()
    head = RequestHead(b"POST", b"/", b"t", [(b"content-length", b"%d" % (GIVE_UP * 2))])
    stream = cluster.new_stream(head, collector, False)
    assert stream is not None
    sent = 0
    assert collector.reset_reason is None
    try:
        while not collector.request_pauses and sent < GIVE_UP:
            stream.send_data(CHUNK, False)
            sent += len(CHUNK)
            await asyncio.sleep(0.001)
        assert collector.reset_reason is None
    finally:
        cluster.close()
    return sent


async def test_the_limit_pauses_the_request_body(sink: Sink) -> None:
    small = await _bytes_before_pause(
        sink.port, sink.http2, per_connection_buffer_limit_bytes=16384
    )
    large = await _bytes_before_pause(
        sink.port, sink.http2, per_connection_buffer_limit_bytes=24 * MIB
    )
    # The kernel takes a few MiB (the sender's buffer grows to 4 MiB on loopback) before the
    # connection's own buffer grows: a 16 KiB limit pauses soon after, a 24 MiB one far later.
    assert small < 8 * MIB, small
    assert large > 24 * MIB, large
