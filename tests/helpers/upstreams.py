"""Test upstream servers on 127.0.0.1:0, each on its own event loop in a background thread,
so sync tests (driving a proxy process) and async tests alike can use them.

- `Http1Echo`: HTTP/1.1 keep-alive server answering a JSON echo of the request
  (`{"method", "path", "headers", "body", "server"}`); request headers steer it:
  `x-delay-ms` (answer later), `x-status`, `x-response-server` (a `server` header),
  `x-body-size` (a body of N bytes instead of the echo), `x-chunked` (chunked response),
  `x-close` (`connection: close`), `x-eof-body` (no framing: the body ends when the
  connection closes).
- `Http2Echo`: the same over HTTP/2 (h2, prior knowledge); `content-type: application/grpc`
  requests get the body echoed back as one gRPC message with `grpc-status: 0` trailers;
  `goaway()` sends a GOAWAY whose `last_stream_id` is the highest stream seen, keeps serving
  the streams below it and refuses later ones.
- `Flaky`: an Http1Echo whose first N requests fail (a status, or a closed connection);
  `RefusingHttp2`: an Http2Echo that refuses its first N streams (REFUSED_STREAM).
- `Resetter`: reads the request, then closes (`rst=True`: with a TCP RST).
- `TcpEcho`: echoes bytes; on the client's FIN it answers `mode`-specific data then FINs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

import h2.config
import h2.connection
import h2.events
import httptools
from hyperframe.frame import GoAwayFrame

from tests.helpers.waiting import wait_until


class LoopThread:
    """One event loop in a daemon thread; `run(coro)` executes on it and returns the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class _Server:
    """Common start/stop and connection bookkeeping."""

    name = "upstream"

    def __init__(self) -> None:
        self._thread = LoopThread()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0  # accepted so far
        self.open_transports: set[asyncio.BaseTransport] = set()
        self.requests: list[dict[str, Any]] = []
        self._stopped = False
        self.ssl_context: Any = None  # an ssl.SSLContext makes it a TLS server

    def protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    def start(self) -> _Server:
        async def start() -> asyncio.AbstractServer:
            return await asyncio.get_running_loop().create_server(
                self.protocol, "127.0.0.1", 0, ssl=self.ssl_context
            )

        self._server = self._thread.run(start())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self.open_transports):
                transport.abort()

        try:
            self._thread.run(stop())
        finally:
            self._thread.stop()

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- HTTP/1.1


class _Http1EchoProtocol(asyncio.Protocol):
    def __init__(self, server: Http1Echo) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: list[asyncio.Future] = []
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_transports.discard(self.transport)  # type: ignore[arg-type]
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode().lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        headers = dict(self.headers)
        request = {
            "method": self.parser.get_method().decode(),
            "path": self.url.decode("latin-1"),
            "headers": self.headers,
            "body": self.body.decode("latin-1"),
            "server": self.server.label,
        }
        self.server.requests.append(request)
        keep_alive = self.parser.should_keep_alive()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.queue.append(done)
        delay = self.server.delay_for(headers)
        response = self.server.render(request, headers, keep_alive)
        loop.call_later(delay, done.set_result, response)
        done.add_done_callback(lambda _: self._flush())

    def _flush(self) -> None:
        while self.queue and self.queue[0].done():
            response, close = self.queue.pop(0).result()
            if self.transport is None:
                return
            self.transport.write(response)
            if close:
                self.transport.close()
                return


class Http1Echo(_Server):
    def __init__(self, label: str = "h1") -> None:
        super().__init__()
        self.label = label

    def protocol(self) -> asyncio.Protocol:
        return _Http1EchoProtocol(self)

    def delay_for(self, headers: dict[str, str]) -> float:
        """How long the answer to a request with `headers` waits (`x-delay-ms`)."""
        return int(headers.get("x-delay-ms", "0")) / 1000

    def render(
        self, request: dict[str, Any], headers: dict[str, str], keep_alive: bool
    ) -> tuple[bytes, bool]:
        status = int(headers.get("x-status", "200"))
        if "x-body-size" in headers:
            body = b"x" * int(headers["x-body-size"])
            content_type = b"application/octet-stream"
        else:
            body = json.dumps(request).encode()
            content_type = b"application/json"
        close = not keep_alive or "x-close" in headers
        lines = [b"HTTP/1.1 %d OK\r\n" % status, b"content-type: " + content_type + b"\r\n"]
        lines.append(b"x-upstream: " + self.label.encode() + b"\r\n")
        if "x-response-server" in headers:  # a `server` response header of the upstream's
            lines.append(b"server: " + headers["x-response-server"].encode() + b"\r\n")
        if close:
            lines.append(b"connection: close\r\n")
        if request["method"] == "HEAD":
            lines.append(b"content-length: %d\r\n\r\n" % len(body))
            return b"".join(lines), close
        if "x-eof-body" in headers:  # no length, no chunking: the body ends at close
            if not close:
                lines.append(b"connection: close\r\n")
            lines.append(b"\r\n")
            lines.append(body)
            return b"".join(lines), True
        if "x-chunked" in headers:
            lines.append(b"transfer-encoding: chunked\r\n\r\n")
            half = len(body) // 2
            for piece in (body[:half], body[half:]):
                if piece:
                    lines.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            lines.append(b"0\r\n\r\n")
        else:
            lines.append(b"content-length: %d\r\n\r\n" % len(body))
            lines.append(body)
        return b"".join(lines), close


class Flaky(Http1Echo):
    """An Http1Echo whose first `failures` requests fail (all of them with `failures=-1`):
    answered with `status`, with `headers` added, after `delay_ms`; or, with `reset=True`,
    by closing the connection without an answer. `requests` records every one."""

    def __init__(
        self,
        label: str = "flaky",
        failures: int = 1,
        status: int = 503,
        reset: bool = False,
        delay_ms: int = 0,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(label)
        self.failures = failures
        self.status = status
        self.reset = reset
        self.delay_ms = delay_ms
        self.failure_headers = headers
        self.failed = 0

    def render(
        self, request: dict[str, Any], headers: dict[str, str], keep_alive: bool
    ) -> tuple[bytes, bool]:
        if self.failures >= 0 and self.failed >= self.failures:
            return super().render(request, headers, keep_alive)
        self.failed += 1
        if self.reset:
            return b"", True
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.failure_headers)
        head = (
            f"HTTP/1.1 {self.status} Failed\r\ncontent-length: 0\r\n"
            f"x-upstream: {self.label}\r\n{extra}\r\n"
        )
        return head.encode(), False

    def delay_for(self, headers: dict[str, str]) -> float:
        """The first (failing) answers come after `delay_ms`."""
        failing = self.failures < 0 or self.failed < self.failures
        return self.delay_ms / 1000 if failing else super().delay_for(headers)


# ----------------------------------------------------------------------------- HTTP/2


class _Http2EchoProtocol(asyncio.Protocol):
    def __init__(self, server: Http2Echo) -> None:
        self.server = server
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, dict[str, Any]] = {}
        self.highest_stream = 0
        self.goaway_sent_at: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.open_transports.add(transport)
        self.server.protocols.append(self)
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_transports.discard(self.transport)  # type: ignore[arg-type]
        self.transport = None

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._on_request(event)
            elif isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_end(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.streams.pop(event.stream_id, None)
        self._flush()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.goaway_sent_at is not None and stream_id > self.goaway_sent_at:
            self.conn.reset_stream(stream_id, 7)  # REFUSED_STREAM
            return
        self.highest_stream = max(self.highest_stream, stream_id)
        headers = [(n.decode(), v.decode("latin-1")) for n, v in event.headers]
        self.streams[stream_id] = {"headers": headers, "body": b""}

    def _on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        headers = dict(stream["headers"])
        delay = int(headers.get("x-delay-ms", "0")) / 1000
        asyncio.get_running_loop().call_later(delay, self._respond, stream_id)

    def _respond(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None or self.transport is None:
            return
        headers = dict(stream["headers"])
        request = {
            "method": headers.get(":method"),
            "path": headers.get(":path"),
            "headers": stream["headers"],
            "body": stream["body"].decode("latin-1"),
            "server": self.server.label,
        }
        self.server.requests.append(request)
        grpc = headers.get("content-type", "").startswith("application/grpc")
        if grpc:
            response_headers = [(":status", "200"), ("content-type", "application/grpc")]
            body = stream["body"]
        else:
            status = headers.get("x-status", "200")
            body = (
                b"x" * int(headers["x-body-size"])
                if "x-body-size" in headers
                else json.dumps(request).encode()
            )
            response_headers = [
                (":status", status),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ]
        response_headers.append(("x-upstream", self.server.label))
        self.conn.send_headers(stream_id, response_headers)
        self._send_body(stream_id, body, grpc)
        self._flush()

    def _send_body(self, stream_id: int, body: bytes, grpc: bool) -> None:
        # The echo bodies are small; send in frames the peer's window allows.
        view = memoryview(body)
        while view:
            size = min(len(view), self.conn.local_flow_control_window(stream_id), 16384)
            if size <= 0:
                break  # tests keep bodies inside the default window
            self.conn.send_data(stream_id, bytes(view[:size]))
            view = view[size:]
        if grpc:
            self.conn.send_headers(
                stream_id, [("grpc-status", "0"), ("grpc-message", "ok")], end_stream=True
            )
        else:
            self.conn.end_stream(stream_id)

    def send_goaway(self) -> None:
        """A raw GOAWAY (h2's own close would end the in-flight streams we still answer)."""
        self.goaway_sent_at = self.highest_stream
        frame = GoAwayFrame(0, last_stream_id=self.highest_stream, error_code=0)
        if self.transport is not None:
            self.transport.write(frame.serialize())


class Http2Echo(_Server):
    def __init__(self, label: str = "h2") -> None:
        super().__init__()
        self.label = label
        self.protocols: list[_Http2EchoProtocol] = []

    def protocol(self) -> asyncio.Protocol:
        return _Http2EchoProtocol(self)

    def goaway(self) -> list[int]:
        """GOAWAY on every open connection; returns the last_stream_id of each."""

        async def send() -> list[int]:
            sent = []
            for protocol in self.protocols:
                if protocol.transport is not None and protocol.goaway_sent_at is None:
                    protocol.send_goaway()
                    sent.append(protocol.highest_stream)
            return sent

        return self._thread.run(send())

    def pending_streams(self) -> int:
        async def count() -> int:
            return sum(len(p.streams) for p in self.protocols)

        return self._thread.run(count())


class _RefusingProtocol(_Http2EchoProtocol):
    def _on_request(self, event: h2.events.RequestReceived) -> None:
        server: RefusingHttp2 = self.server  # type: ignore[assignment]
        if server.refused < server.refuse:
            server.refused += 1
            self.conn.reset_stream(event.stream_id, 7)  # REFUSED_STREAM
            return
        super()._on_request(event)


class RefusingHttp2(Http2Echo):
    """An Http2Echo that refuses its first `refuse` streams with RST_STREAM(REFUSED_STREAM)."""

    def __init__(self, label: str = "h2", refuse: int = 1) -> None:
        super().__init__(label)
        self.refuse = refuse
        self.refused = 0

    def protocol(self) -> asyncio.Protocol:
        return _RefusingProtocol(self)


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(message)) + message


# ----------------------------------------------------------------------------- failures


class _ResetterProtocol(asyncio.Protocol):
    def __init__(self, server: Resetter) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.connections += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.server.rst:
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.close()


class Resetter(_Server):
    """Accepts, reads the request, closes without answering."""

    def __init__(self, rst: bool = False) -> None:
        super().__init__()
        self.rst = rst

    def protocol(self) -> asyncio.Protocol:
        return _ResetterProtocol(self)


class _TcpEchoProtocol(asyncio.Protocol):
    def __init__(self, server: TcpEcho) -> None:
        self.server = server
        self.received = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.open_transports.add(transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.transport.write(data)

    def eof_received(self) -> bool:
        # Half-close: answer after the client's FIN, then FIN ourselves. Count first: the
        # server runs on its own thread, and a test reads the count as soon as the answer lands.
        self.server.eofs += 1
        self.transport.write(b"after-eof:%d" % len(self.received))
        self.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_transports.discard(self.transport)


class TcpEcho(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.eofs = 0

    def protocol(self) -> asyncio.Protocol:
        return _TcpEchoProtocol(self)


# ----------------------------------------------------------------------------- in-process clients


class Collector:
    """A `ResponseHandler` that records one upstream response (for pool tests)."""

    def __init__(self) -> None:
        from xds_proxy.upstream.stream import ResponseHandler

        assert ResponseHandler  # the protocol this class implements
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.reset_reason: str | None = None
        self.ended = asyncio.get_running_loop().create_future()
        self.on_headers: Any = None  # called after the headers arrive
        self.request_pauses = 0

    async def wait(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.ended), timeout)

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def on_response_headers(self, status: int, headers: list, end_stream: bool) -> None:
        self.status = status
        self.headers = headers
        if self.on_headers is not None:
            self.on_headers()
        if end_stream:
            self._end()

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        self.body += data
        if end_stream:
            self._end()

    def on_response_trailers(self, trailers: list) -> None:
        self.trailers = trailers
        self._end()

    def on_reset(self, reason: str) -> None:
        self.reset_reason = reason
        self._end()

    def pause_request_body(self) -> None:
        self.request_pauses += 1

    def resume_request_body(self) -> None:
        pass


async def idle_timeout_scenario(
    cluster: Any, stats: Any, name: str, head: Any, server: Any, timeout_s: float = 0.4
) -> None:
    """A cluster configured with `idle_timeout` (`timeout_s`) keeps a connection used more
    often than that (a request every ~0.1 s for ~0.8 s), and closes it one idle timeout after
    its last response (the pools' lazy idle timer: armed once, re-armed when it fires early)."""
    loop = asyncio.get_running_loop()
    for _ in range(8):
        collector = Collector()
        cluster.new_stream(head, collector, True)
        await collector.wait()
        assert collector.status == 200
        await asyncio.sleep(0.1)  # (the pacing of the scenario, not a synchronisation)
    last_end = loop.time() - 0.1
    assert stats.value(f"cluster.{name}.upstream_cx_idle_timeout") == 0
    assert server.connections == 1
    await wait_until(lambda: stats.value(f"cluster.{name}.upstream_cx_idle_timeout") == 1)
    assert loop.time() - last_end >= timeout_s - 0.01
    await wait_until(lambda: stats.value(f"cluster.{name}.upstream_cx_active") == 0)


PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def endpoint(port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def cluster_dict(
    name: str,
    ports: Any,
    http2: bool = False,
    max_connections: int | None = None,
    max_pending: int | None = None,
    max_requests: int | None = None,
    host: str = "127.0.0.1",
    **fields: Any,
) -> dict[str, Any]:
    """A STATIC cluster of `host:port`s (proto3 JSON form), optionally HTTP/2 upstream and with
    DEFAULT circuit-breaker thresholds."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [endpoint(port, host) for port in ports]}],
        },
        **fields,
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            PROTOCOL_OPTIONS_KEY: {
                "@type": "type.googleapis.com/" + PROTOCOL_OPTIONS_KEY,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    thresholds = {
        key: value
        for key, value in (
            ("max_connections", max_connections),
            ("max_pending_requests", max_pending),
            ("max_requests", max_requests),
        )
        if value is not None
    }
    if thresholds:
        cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    return cluster


def cluster_message(name: str, ports: Any, **options: Any) -> Any:
    """The same as an xds-protos `Cluster`."""
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
    from google.protobuf import json_format

    return json_format.ParseDict(cluster_dict(name, ports, **options), cluster_pb2.Cluster())


class _StallProtocol(asyncio.Protocol):
    def __init__(self, server: Stall) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.connections += 1
        self.server.open_transports.add(transport)
        # On the next iteration: uvloop starts reading only after connection_made returns.
        asyncio.get_running_loop().call_soon(transport.pause_reading)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.server.received += len(data)


class Stall(_Server):
    """Accepts and never reads: whatever is sent piles up (back-pressure tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0  # bytes read before reading paused

    def protocol(self) -> asyncio.Protocol:
        return _StallProtocol(self)
