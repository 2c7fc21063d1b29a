"""A raw-socket HTTP/1.1 client: sees exactly what the proxy writes (headers, FIN, resets)."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class HttpConnection:
    """One keep-alive connection; `request()` sends a GET and reads one whole response."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None):
        self.sock = socket.create_connection(
            (host, port), timeout=5, source_address=(source, 0) if source else None
        )
        self._buffer = b""

    def request(self, path: str = "/", host: str = "example.com") -> Response:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
        return self.read_response()

    def read_response(self) -> Response:
        while b"\r\n\r\n" not in self._buffer:
            self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._fill()
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Response(status, headers, body)

    def closed_by_peer(self, timeout: float = 3.0) -> bool:
        """True when the proxy closed the connection (FIN) within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the proxy")
        self._buffer += data

    def close(self) -> None:
        self.sock.close()


def get(port: int, path: str = "/", source: str | None = None, host: str = "127.0.0.1") -> Response:
    conn = HttpConnection(port, host=host, source=source)
    try:
        return conn.request(path)
    finally:
        conn.close()


def refused(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
