"""What one request (or one TCP connection) leaves for its access-log line: the record
(`LogRecord`, compiled: native.pyx), filled in by the codec and the upstream exchange as the
request goes and read by the compiled format once the request is complete, and the
downstream connection's addresses it points to. Only built when an access log is
configured."""

from __future__ import annotations

from xds_proxy.access_log.native import LOCAL_REPLY_HEADERS, LogRecord, request_id

__all__ = ["LOCAL_REPLY_HEADERS", "Downstream", "LogRecord", "format_address", "request_id"]

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
