"""`x-forwarded-for` as Envoy reads and extends it (`use_remote_address`,
`xff_num_trusted_hops`): the address a number of trusted hops back, and the address Envoy
appends for a loopback peer (the host's first non-loopback IPv4 address, Envoy's
`Network::Utility::getLocalAddress`)."""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915
_COMMA = ord(",")  # as a byte value: `b"," in x` builds and drops a TypeError first


def last_xff_address(value: bytes, skip: int) -> str | None:
    """The address in `value` after ignoring its last `skip` entries (Envoy's
    `getLastAddressFromXFF`); None when there are not enough entries or it is no IP."""
    for _ in range(skip):
        comma = value.rfind(b",")
        if comma < 0:
            return None
        value = value[:comma]
    candidate = value[value.rfind(b",") + 1 :].strip(b" \t").decode("latin-1")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in candidate else socket.AF_INET, candidate)
    except (OSError, ValueError):  # ValueError: a NUL byte in the text
        return None
    return candidate


def single_xff_address(value: bytes) -> str | None:
    """The address of an `x-forwarded-for` value of one entry (no comma), or None: Envoy's
    `getLastAddressFromXFF` with nothing to skip reports it as a single address, the only
    case in which a request without `use_remote_address` can be internal."""
    if _COMMA in value:
        return None
    return last_xff_address(value, 0)


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


@functools.cache
def local_address() -> str:
    """The first non-loopback IPv4 address of the host's interfaces (127.0.0.1 without one),
    what Envoy appends to x-forwarded-for for a loopback peer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(answer[20:24])
            if not address.startswith("127."):
                return address
    return "127.0.0.1"
