"""What a caller (the router) and an upstream stream say to each other.

The router builds a `RequestHead`, implements `ResponseHandler` and calls
`Cluster.new_stream(head, handler, end_stream)`; it gets an `UpstreamStream` to send the body
(`send_data`), trailers, and to cancel (`reset`). Everything is callbacks on the event loop, no
per-request task: the same shape for HTTP/1.1 and HTTP/2 upstreams.

Back-pressure both ways: the stream calls `handler.pause_request_body()` when the upstream
does not take bytes fast enough (and `resume_request_body()` later); the router calls
`stream.pause_response()` / `resume_response()` when the downstream does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Header = tuple[bytes, bytes]

# Envoy's reset reason strings (`Http::Utility::resetReasonToString`), as they appear in
# `upstream connect error or disconnect/reset before headers. reset reason: ...`.
CONNECTION_FAILURE = "remote connection failure"
CONNECTION_TIMEOUT = "connection timeout"
CONNECTION_TERMINATION = "connection termination"
LOCAL_RESET = "local reset"
OVERFLOW = "overflow"
REMOTE_RESET = "remote reset"
REMOTE_REFUSED_STREAM_RESET = "remote refused stream reset"
PROTOCOL_ERROR = "protocol error"


@dataclass(slots=True)
class RequestHead:
    """A request as the upstream codec sends it. Header names are lowercase; `headers` holds
    no pseudo-headers, no `host` and no hop-by-hop headers (`HOP_BY_HOP`; the codec adds its
    own). A `content-length` header selects fixed-length framing for an HTTP/1.1 upstream,
    otherwise a body is sent chunked; `te: trailers` is kept (gRPC needs it)."""

    method: bytes
    path: bytes
    authority: bytes
    headers: list[Header] = field(default_factory=list)
    scheme: bytes = b"http"
    # An HTTP/1.1 upgrade (`connection: upgrade` kept): sent without framing; after a 101 the
    # connection carries raw bytes both ways (upstream/http1_tunnel.py).
    upgrade: bool = False
    # `auto_host_rewrite`: the cluster sets the authority to the chosen host's hostname (when
    # it has one), adding `x-envoy-original-host` unless the router suppresses Envoy headers.
    host_from_upstream: bool = False
    keep_original_host: bool = True

    def use_host_name(self, hostname: str) -> None:
        """The chosen host's name becomes the authority (`auto_host_rewrite`)."""
        if not self.host_from_upstream or not hostname:
            return
        if self.keep_original_host:
            self.headers.append((b"x-envoy-original-host", self.authority))
        self.authority = hostname.encode()


class ResponseHandler:
    """The caller's side of one upstream stream; override what you need."""

    def on_response_headers(self, status: int, headers: list[Header], end_stream: bool) -> None:
        """Response headers (1xx informational responses are not reported)."""

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        """A piece of the response body."""

    def on_response_trailers(self, trailers: list[Header]) -> None:
        """Trailers end the response (HTTP/2 only: gRPC status)."""

    def on_whole_response(self, status: int, headers: list[Header], body: bytes) -> bool:
        """A whole response that arrived at once (headers, then `body` ending it): True if
        taken here as `on_response_headers` then `on_response_data` would have taken it;
        False to have it delivered through those two instead."""
        return False

    def on_reset(self, reason: str) -> None:
        """The stream failed; `reason` is one of the Envoy reset reason strings above. Called
        at most once, and never after the response ended."""

    def pause_request_body(self) -> None:
        """The upstream is not keeping up: stop reading the request body for a while."""

    def resume_request_body(self) -> None:
        """The upstream caught up."""


class UpstreamStream(Protocol):
    def send_data(self, data: bytes, end_stream: bool) -> None: ...

    def send_trailers(self, trailers: list[Header]) -> None: ...

    def reset(self) -> None:
        """Cancel: no more callbacks; the connection is closed (HTTP/1.1) or the stream is
        reset with CANCEL (HTTP/2)."""
        ...

    def pause_response(self) -> None: ...

    def resume_response(self) -> None: ...


# Headers the router drops before a request goes upstream (RFC 9110 section 7.6.1; `te` other
# than `trailers` is dropped too).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
# An allowed upgrade request keeps `connection` and `upgrade` (Envoy forwards them verbatim).
UPGRADE_HOP_BY_HOP = HOP_BY_HOP - {b"connection", b"upgrade"}
_UPGRADE_RESPONSE_DROPPED = frozenset(
    {b"keep-alive", b"proxy-connection", b"transfer-encoding", b"server"}
)
_RESPONSE_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"server"}
)


def upgrade_response_headers(status: int, headers: list[Header]) -> list[Header]:
    """The response to an upgrade request as Envoy forwards it: one that accepts the upgrade
    (`connection: upgrade` and an `upgrade` header) keeps both, any other loses them."""
    accepted = any(name == b"upgrade" for name, _ in headers) and any(
        name == b"connection" and b"upgrade" in value.lower() for name, value in headers
    )
    dropped = _UPGRADE_RESPONSE_DROPPED if accepted else _RESPONSE_HOP_BY_HOP
    return [(n, v) for n, v in headers if n not in dropped]
