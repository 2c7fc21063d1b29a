"""What one request (or one TCP connection) leaves for its access-log line: filled in by the
codec and the upstream exchange as the request goes, read by the compiled format
(format.py) once the request is complete. Only built when an access log is configured."""

from __future__ import annotations

import os

Header = tuple[bytes, bytes]


def request_id() -> bytes:
    """A random (version 4) UUID, as Envoy generates for `x-request-id`."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex().encode()
    return b"%s-%s-%s-%s-%s" % (text[:8], text[8:12], text[12:16], text[16:20], text[20:])


class Downstream:
    """A downstream connection's addresses, formatted once per connection."""

    __slots__ = ("local", "local_ip", "local_port", "remote", "remote_ip", "remote_port")

    def __init__(self, peer: object, sockname: object) -> None:
        self.remote_ip, self.remote_port, self.remote = _address(peer)
        self.local_ip, self.local_port, self.local = _address(sockname)


def format_address(value: object) -> str | None:
    """A socket address (ip, port, ...) as Envoy prints it: `ip:port`, `[ip6]:port`."""
    return _address(value)[2]


def _address(value: object) -> tuple[str | None, int | None, str | None]:
    if not isinstance(value, tuple) or len(value) < 2:
        return None, None, None
    ip, port = value[0], value[1]
    shown = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return ip, port, shown


class LogRecord:
    """One request's facts. Times are event-loop (monotonic) seconds, except `start_wall`."""

    __slots__ = (
        "authority",
        "bytes_received",
        "bytes_sent",
        "details",
        "downstream",
        "end",
        "first_upstream_rx",
        "flags",
        "generate_id",
        "method",
        "path",
        "protocol",
        "remote_from_xff",
        "request_end",
        "request_headers",
        "request_id",
        "response_headers",
        "route_name",
        "scheme",
        "server",
        "start",
        "start_wall",
        "status",
        "termination",
        "trailers",
        "upstream_cluster",
        "upstream_failure",
        "upstream_host",
        "upstream_local",
        "upstream_remote",
    )

    def __init__(self, downstream: Downstream, start: float, start_wall: float) -> None:
        self.downstream = downstream
        self.start = start
        self.start_wall = start_wall
        self.protocol: str | None = "HTTP/1.1"  # None: a TCP connection (`-`)
        self.method: bytes | None = None
        self.path: bytes | None = None
        self.authority: bytes | None = None
        self.scheme: bytes | None = None  # set once the HCM accepted the request's headers
        self.request_headers: list[Header] = []
        self.request_id: bytes | None = None
        self.generate_id = False
        self.remote_from_xff = False  # use_remote_address off: x-forwarded-for is the peer
        self.status = 0
        self.response_headers: list[Header] | None = None
        self.trailers: list[Header] | None = None
        self.flags = ""
        self.details: str | None = None
        self.termination: str | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.request_end: float | None = None
        self.first_upstream_rx: float | None = None
        self.end: float | None = None
        self.upstream_host: str | None = None
        self.upstream_cluster: str | None = None
        self.upstream_local: str | None = None
        self.upstream_remote: str | None = None  # set once a connection to the host exists
        self.upstream_failure: str | None = None
        self.route_name: str | None = None
        self.server = b"envoy"  # the HCM's server_name (the `server` response header)

    def add_flag(self, flag: str) -> None:
        self.flags = f"{self.flags},{flag}" if self.flags else flag

    def local_reply(self, status: int, body_size: int, server: bytes, date: bytes) -> None:
        """A response made here: its headers as Envoy's header map has them."""
        self.status = status
        headers: list[Header] = [(b":status", b"%d" % status)]
        if body_size:
            headers.append((b"content-length", b"%d" % body_size))
            headers.append((b"content-type", b"text/plain"))
        headers.append((b"date", date))
        headers.append((b"server", server))
        self.response_headers = headers
