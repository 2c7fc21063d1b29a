"""What one request (or one TCP connection) leaves for its access-log line: filled in by the
codec and the upstream exchange as the request goes, read by the compiled format
(format.py) once the request is complete. Only built when an access log is configured."""

from __future__ import annotations

import random
from collections.abc import Iterator

from xds_proxy.codec.responses import HTTP_DATE

Header = tuple[bytes, bytes]

# Request ids of requests answered here (only made when a format reads x-request-id): a
# version-4 UUID whose first 80 bits are random per process and whose last 48 count, so
# they are unique without drawing 122 random bits per request.
_prefix = "%020x" % (
    (random.SystemRandom().getrandbits(80) & ~(0xF << 28 | 0x3 << 14)) | (0x4 << 28 | 0x2 << 14)
)
ID_SHAPE = f"{_prefix[:8]}-{_prefix[8:12]}-{_prefix[12:16]}-{_prefix[16:20]}-%012x".encode()

# The last three hex digits of an id, made once: an id is its head (the same for 4096 ids in a
# row) and one of these.
_LOW_DIGITS = tuple(b"%03x" % low for low in range(4096))


def counted_ids(first: int, shape: bytes = ID_SHAPE) -> Iterator[bytes]:
    """`shape % n` for n = first, first + 1, ... (`shape` ends with `%012x`), each made with
    one concatenation."""
    high, low = divmod(first, 4096)
    while True:
        head = (shape % (high << 12))[:-3]
        for digits in _LOW_DIGITS[low:]:
            yield head + digits
        high, low = high + 1, 0


# Every id of the process (2^48 - 2^40 ids before the counter needs a 13th digit). Only the
# event loop's thread takes ids.
request_ids = counted_ids(random.SystemRandom().getrandbits(40))


def request_id() -> bytes:
    """A version-4 UUID, unique in this process, for a request without `x-request-id`."""
    return next(request_ids)


# A pipe connection's "port" in the access log: Envoy prints an empty string.
PIPE_PORT = ""


class Downstream:
    """A downstream connection's addresses, formatted once per connection."""

    __slots__ = ("local", "local_ip", "local_port", "remote", "remote_ip", "remote_port")

    def __init__(self, peer: object, sockname: object) -> None:
        self.remote_ip, self.remote_port, self.remote = _address(peer)
        self.local_ip, self.local_port, self.local = _address(sockname)
        if isinstance(sockname, str) and sockname:
            # A pipe: Envoy prints its path for both ends (the peer is unnamed), no port.
            self.local_ip = self.local = self.remote_ip = self.remote = sockname
            self.local_port = self.remote_port = PIPE_PORT  # type: ignore[assignment]


def format_address(value: object) -> str | None:
    """A socket address (ip, port, ...) as Envoy prints it: `ip:port`, `[ip6]:port`."""
    return _address(value)[2]


def _address(value: object) -> tuple[str | None, int | None, str | None]:
    if not isinstance(value, tuple) or len(value) < 2:
        return None, None, None
    ip, port = value[0], value[1]
    shown = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return ip, port, shown


LOCAL_REPLY_HEADERS = frozenset(
    {b":status", b"content-length", b"content-type", b"date", b"server"}
)


class LogRecord:
    """One request's facts. Times are monotonic seconds, except `start_wall`.

    The defaults are class attributes (no __slots__): a record sets only what its request
    had, which keeps making one cheap (a record is made per request when logging is on); the
    few that every line of the default format reads are set in the instance too."""

    protocol: str | None = "HTTP/1.1"  # None: a TCP connection (`-`)
    method: bytes | None = None
    path: bytes | None = None
    authority: bytes | None = None
    scheme: bytes | None = None  # set once the HCM accepted the request's headers
    request_id: bytes | None = None
    generate_id = False
    remote_from_xff = False  # use_remote_address off: x-forwarded-for is the peer
    xff_skip = 0  # x-forwarded-for entries after the peer's (xff_num_trusted_hops)
    status = 0
    response_headers: list[Header] | None = None
    local: tuple[int, int, bytes] | None = None  # a local reply's status, body size, server
    trailers: list[Header] | None = None
    flags = ""
    details: str | None = None
    termination: str | None = None
    bytes_received = 0
    bytes_sent = 0
    request_end: float | None = None
    first_upstream_rx: float | None = None
    end: float | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local: str | None = None
    upstream_remote: str | None = None  # set once a connection to the host exists
    upstream_failure: str | None = None
    route_name: str | None = None
    attempt_count = 0  # upstream attempts made (UPSTREAM_REQUEST_ATTEMPT_COUNT)
    server = b"envoy"  # the HCM's server_name (the `server` response header)

    def __init__(self, downstream: Downstream, start: float, start_wall: float) -> None:
        self.downstream = downstream
        self.start = start
        self.start_wall = start_wall
        self.request_headers: list[Header] = []
        # Read by the default format for every request: kept in the instance (read without a
        # look-up in the class).
        self.request_id = self.response_headers = self.upstream_host = None
        self.protocol, self.flags, self.bytes_received = "HTTP/1.1", "", 0

    def add_flag(self, flag: str) -> None:
        self.flags = f"{self.flags},{flag}" if self.flags else flag

    def local_reply(self, status: int, body_size: int, server: bytes) -> None:
        """A response made here (its headers are built only if a format reads them; `date`
        then, within the same second)."""
        self.status = status
        self.local = (status, body_size, server)

    def response_header(self, name: bytes) -> bytes | None:
        """One response header (a local reply's are built only for the names it has)."""
        headers = self.response_headers
        if headers is None:
            if self.local is None or name not in LOCAL_REPLY_HEADERS:
                return None
            headers = self.response_header_list()
        for header, value in headers:  # type: ignore[union-attr]
            if header == name:
                return value
        return None

    def response_header_list(self) -> list[Header] | None:
        """The response headers as Envoy's header map has them."""
        headers = self.response_headers
        if headers is None and self.local is not None:
            status, body_size, server = self.local
            headers = [(b":status", b"%d" % status)]
            if body_size:
                headers.append((b"content-length", b"%d" % body_size))
                headers.append((b"content-type", b"text/plain"))
            headers.append((b"date", HTTP_DATE.now()))
            if server:
                headers.append((b"server", server))
            self.response_headers = headers
        return headers
