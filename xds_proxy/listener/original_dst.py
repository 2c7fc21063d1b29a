"""`use_original_dst`: a connection redirected to a listener by iptables (`REDIRECT`,
`TPROXY`) is handed to the listener whose address is the connection's original destination
(`SO_ORIGINAL_DST`): the one bound to that exact IP and port, else one on the wildcard
address and that port, whether it binds a socket or not (`bind_to_port: false`). With no
such listener, the listener that accepted it serves it, as in Envoy. The handed-over
connection reports its original destination as its local address (chain matching, access
logs)."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

from xds_proxy.codec.wrapped_transport import ForwardingProtocol, WrappedTransport

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h (and IP6T_SO_ORIGINAL_DST)
_WILDCARDS = ("0.0.0.0", "::")


def original_destination(transport: asyncio.BaseTransport) -> tuple[str, int] | None:
    """The destination the client connected to before a redirect (None: not known)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    return socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


class ListenersByAddress:
    """The accepting listener versions by configured address (the runtime keeps it)."""

    def __init__(self) -> None:
        self._by_address: dict[tuple[str, int], dict[int, Any]] = {}
        # Each version's addresses, so that removing one touches only those (not all 1,000).
        self._addresses: dict[int, list[tuple[str, int]]] = {}

    def add(self, version_id: int, addresses: list[tuple[str, int]], instance: Any) -> None:
        for address in addresses:
            self._by_address.setdefault(address, {})[version_id] = instance
        self._addresses.setdefault(version_id, []).extend(addresses)

    def remove(self, version_id: int) -> None:
        for address in self._addresses.pop(version_id, ()):
            versions = self._by_address.get(address)
            if versions is None:
                continue
            versions.pop(version_id, None)
            if not versions:
                del self._by_address[address]

    def find(self, ip: str, port: int) -> Any | None:
        """The newest listener version on (ip, port), else on a wildcard address and port."""
        for candidate in ((ip, port), *((wildcard, port) for wildcard in _WILDCARDS)):
            versions = self._by_address.get(candidate)
            if versions:
                return versions[max(versions)]
        return None


class RedirectedTransport(WrappedTransport):
    """A redirected connection as the listener it was handed to sees it: its local address is
    its original destination."""

    __slots__ = ("_forward", "_original")

    def __init__(self, raw: asyncio.Transport, original: tuple[str, int]) -> None:
        super().__init__(raw)
        self._original = original
        self._forward = ForwardingProtocol()
        raw.set_protocol(self._forward)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._original
        return super().get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._forward.inner = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._forward.inner  # type: ignore[return-value]
