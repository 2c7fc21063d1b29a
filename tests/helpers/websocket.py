"""A small WebSocket (RFC 6455) echo upstream and a raw-socket client, for upgrade tests.

- `WebSocketEcho`: answers an `Upgrade: websocket` request with `101 Switching Protocols`
  (with `x-status: N`: a plain N response with a short body; with `x-silent`: nothing),
  records each request head (`requests`: method, path, headers as received), then echoes
  every data frame back unmasked. A text frame `close-me` makes it send a close frame and
  close the connection; a close frame from the client is answered with one and the
  connection closed; the client's FIN (`eofs`) is answered with `after-eof` as a text
  frame, then a FIN. A text frame `pause` stops reading that connection until
  `resume_reading()`.
- `WsClient`: a blocking socket doing the handshake by hand, sending masked frames and
  reading frames back (`recv_frame`), so tests see exactly what crosses the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from typing import Any

from tests.helpers.upstreams import _Server

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode_frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    head = bytearray([0x80 | opcode])
    flag = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head.append(flag | size)
    elif size < 65536:
        head.append(flag | 126)
        head += struct.pack("!H", size)
    else:
        head.append(flag | 127)
        head += struct.pack("!Q", size)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + _unmask(payload, key)


def _unmask(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def decode_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """Take one whole frame off the front of `buffer` (masked or not)."""
    if len(buffer) < 2:
        return None
    opcode, size, masked = buffer[0] & 0x0F, buffer[1] & 0x7F, buffer[1] & 0x80
    offset = 2
    if size == 126:
        if len(buffer) < 4:
            return None
        size, offset = struct.unpack("!H", buffer[2:4])[0], 4
    elif size == 127:
        if len(buffer) < 10:
            return None
        size, offset = struct.unpack("!Q", buffer[2:10])[0], 10
    key = b""
    if masked:
        key, offset = bytes(buffer[offset : offset + 4]), offset + 4
    if len(buffer) < offset + size:
        return None
    payload = bytes(buffer[offset : offset + size])
    del buffer[: offset + size]
    return opcode, _unmask(payload, key) if masked else payload


class _WsEchoProtocol(asyncio.Protocol):
    def __init__(self, server: WebSocketEcho) -> None:
        self.server = server
        self.buffer = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.open_transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            method, path, _ = head[0].split(" ", 2)
            headers = [tuple(line.split(": ", 1)) for line in head[1:]]
            self.server.requests.append({"method": method, "path": path, "headers": headers})
            by_name = {name.lower(): value for name, value in headers}
            if "x-silent" in by_name:
                return  # never answers
            status = by_name.get("x-status")
            if status is not None:
                self.transport.write(
                    b"HTTP/1.1 %s Nope\r\ncontent-length: 4\r\n\r\nnope" % status.encode()
                )
                return
            key = by_name.get("sec-websocket-key", "").encode()
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                b"connection: Upgrade\r\nsec-websocket-accept: " + accept_key(key) + b"\r\n\r\n"
            )
            self.upgraded = True
        while (frame := decode_frame(self.buffer)) is not None:
            opcode, payload = frame
            if opcode == CLOSE:
                self.transport.write(encode_frame(CLOSE, payload, False))
                self.transport.close()
                return
            if opcode == TEXT and payload == b"pause":
                self.transport.pause_reading()  # until the test calls `resume_reading()`
                self.server.paused.append(self.transport)
                continue
            if opcode == TEXT and payload == b"close-me":
                self.transport.write(encode_frame(CLOSE, b"\x03\xe8", False))
                self.transport.close()
                return
            self.transport.write(encode_frame(opcode, payload, False))

    def eof_received(self) -> bool:
        self.server.eofs += 1
        self.transport.write(encode_frame(TEXT, b"after-eof", False))
        self.transport.write_eof()
        return True


class WebSocketEcho(_Server):
    name = "websocket"

    def __init__(self) -> None:
        super().__init__()
        self.eofs = 0
        self.paused: list[asyncio.Transport] = []

    def protocol(self) -> asyncio.Protocol:
        return _WsEchoProtocol(self)

    def resume_reading(self) -> None:
        """Read again on every connection a `pause` frame stopped."""
        for transport in self.paused:
            self._thread.call(transport.resume_reading)
        self.paused.clear()


class WsClient:
    """One raw client connection; `handshake()` returns the response head and keeps whatever
    followed it for `recv_frame()`."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()

    def handshake(
        self, path: str = "/ws", extra: str = "", upgrade: str = "websocket", key: str = ""
    ) -> str:
        key = key or base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nhost: ws.example\r\nconnection: Upgrade\r\n"
                f"upgrade: {upgrade}\r\nsec-websocket-key: {key}\r\n"
                f"sec-websocket-version: 13\r\n{extra}\r\n"
            ).encode()
        )
        return self.read_head()

    def read_head(self) -> str:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            head, self.buffer = bytes(self.buffer), bytearray()
            return head.decode("latin-1")
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head.decode("latin-1")

    def read_rest(self) -> bytes:
        """Everything until the proxy closes the connection."""
        while data := self.sock.recv(65536):
            self.buffer += data
        rest, self.buffer = bytes(self.buffer), bytearray()
        return rest

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        self.sock.sendall(encode_frame(opcode, payload, True))

    def recv_frame(self) -> tuple[int, bytes] | None:
        """The next frame, or None when the connection closed first."""
        while (frame := decode_frame(self.buffer)) is None:
            data = self.sock.recv(262144)
            if not data:
                return None
            self.buffer += data
        return frame

    def closed_by_peer(self) -> bool:
        """True once the proxy's FIN arrives with nothing before it."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def status_of(head: str) -> int:
    return int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else 0


def headers_of(head: str) -> dict[str, Any]:
    lines = head.split("\r\n")[1:]
    return {name.lower(): value for name, value in (line.split(": ", 1) for line in lines if line)}
