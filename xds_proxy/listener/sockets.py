"""Listen sockets and who holds them.

One kernel socket per bound address, held by every listener version that serves on it; each
version accepts on its own `dup()`, so that stopping one version's accept loop (which closes
its dup) leaves the socket open for the others. The pool carries out the listener manager's
reservations (`ReserveSockets`: bind, or share, but do not listen yet) and listens when the
runtime starts the version (`listen`), as Envoy binds a warming listener and listens only
once it serves. It counts the holders and closes a socket only at `flush()`, after a whole
LDS response has been applied, so that a remove and an add on one address in one response
hand the socket over instead of re-binding. A socket is never `shutdown()`: other dups may
still accept on it.

A pipe (UNIX stream socket) is keyed by its path as Envoy compares pipes: a changed `mode`
shares the socket. Binding it first removes a file at the path (a stale socket), then applies
`mode` with chmod, as Envoy does; the file stays after the socket closes, as in Envoy. Pipes
are not handed to a hot-restart child: the child binds the path anew.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from xds_proxy.listener.actions import PipeAddress, fixed_address
from xds_proxy.listener.manager import BindError, ReserveSockets, SocketAddress

LISTEN_BACKLOG = 1024  # Envoy's default tcp_backlog_size


@dataclass(eq=False)
class _SharedSocket:
    sock: socket.socket
    config_address: SocketAddress
    listening: bool
    holders: set[int] = field(default_factory=set)
    # Cached (hot restart): the kernel socket may be closed after the hand-over to a child
    # while draining versions still hold the entry.
    bound_address: SocketAddress = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.config_address, PipeAddress):
            self.bound_address = self.config_address
            return
        ip, port = self.sock.getsockname()[:2]
        self.bound_address = (ip, port)


class ListenSocketPool:
    def __init__(self, opener: Callable[[SocketAddress, str], socket.socket] | None = None) -> None:
        """`opener(address, listener name)`: where a socket not held yet comes from; by
        default it is bound here (a worker process asks the main process for it instead)."""
        self._opener = opener or (lambda address, _listener: bind_socket(address))
        self._by_address: dict[SocketAddress, _SharedSocket] = {}
        self._by_version: dict[int, list[_SharedSocket]] = {}
        self._unheld: list[_SharedSocket] = []
        self._inherited: dict[SocketAddress, socket.socket] = {}  # hot restart, not yet taken

    def reserve(self, request: ReserveSockets) -> None:
        """Sockets for `request.version_id`: bound (or shared), not listening; BindError."""
        version_id, share_from = request.version_id, request.share_from
        shared = self._by_version.get(share_from) if share_from is not None else None
        if shared is None:
            shared = []
            try:
                for address in request.addresses:
                    shared.append(self._open_or_reuse(address, request.listener))
            except BindError:
                for entry in shared:
                    if not entry.holders:
                        self._unheld.append(entry)
                raise
        for entry in shared:
            entry.holders.add(version_id)
        self._by_version[version_id] = list(shared)

    def listen(self, version_id: int) -> None:
        """The version starts serving: its sockets listen (most already do); OSError."""
        for entry in self._by_version.get(version_id, []):
            if not entry.listening:
                entry.sock.listen(LISTEN_BACKLOG)
                entry.listening = True

    def release(self, version_id: int) -> None:
        for entry in self._by_version.pop(version_id, []):
            entry.holders.discard(version_id)
            if not entry.holders:
                self._unheld.append(entry)

    def flush(self) -> None:
        """Close every socket that no version holds any more: new SYNs are refused from now."""
        for entry in self._unheld:
            if entry.holders:
                continue  # taken over by a later reservation
            if self._by_address.get(entry.bound_address) is entry:
                del self._by_address[entry.bound_address]
            entry.sock.close()
        self._unheld.clear()

    def close_sockets(self, version_id: int) -> None:
        """`/drain_listeners` stopped this version: close its listen sockets now, so new
        connects are refused, and forget them by address, so a later listener on the same
        address binds afresh. The version keeps its bookkeeping (it stays listed)."""
        for entry in self._by_version.get(version_id, []):
            entry.sock.close()
            if self._by_address.get(entry.bound_address) is entry:
                del self._by_address[entry.bound_address]

    def sockets_for(self, version_id: int) -> list[socket.socket]:
        return [entry.sock for entry in self._by_version.get(version_id, [])]

    def held_socket(self, address: SocketAddress) -> socket.socket | None:
        """The open socket on a fixed address (a pipe's path), for a worker process."""
        entry = self._by_address.get(address)
        return entry.sock if entry is not None and entry.sock.fileno() >= 0 else None

    def bound_addresses(self, version_id: int) -> list[SocketAddress]:
        return [entry.bound_address for entry in self._by_version.get(version_id, [])]

    def close_all(self) -> None:
        for entry in {id(e): e for e in self._by_address.values()}.values():
            entry.sock.close()
        self._by_address.clear()
        self._by_version.clear()
        self._unheld.clear()
        self.close_unclaimed_inherited()

    # -- hot restart (xds_proxy/hot_restart.py) ---------------------------------------------

    def adopt(self, sockets: dict[SocketAddress, socket.socket]) -> None:
        """Listen sockets inherited from the parent process: a later reservation of one of
        these addresses takes the inherited socket instead of binding."""
        for address, sock in sockets.items():
            sock.setblocking(False)
            previous = self._inherited.pop(address, None)
            if previous is not None:
                previous.close()
            self._inherited[address] = sock

    def close_unclaimed_inherited(self) -> list[SocketAddress]:
        """Once initialized, close the inherited sockets no listener took; returns them."""
        unclaimed = list(self._inherited)
        for sock in self._inherited.values():
            sock.close()
        self._inherited.clear()
        return unclaimed

    def listen_sockets(self) -> dict[SocketAddress, socket.socket]:
        """Every open listen socket by bound address, for a hot-restart child. Port-0 binds
        are left out: a child's port-0 listener binds afresh, as in Envoy."""
        found = dict(self._inherited)
        for address, entry in self._by_address.items():
            if isinstance(address, PipeAddress):
                continue
            if entry.config_address[1] != 0 and entry.sock.fileno() >= 0:
                found[address] = entry.sock
        return found

    def close_after_hand_over(self) -> None:
        """The parent of a hot restart: close our copy of every listen socket (a child that
        took one keeps it listening; addresses nobody took refuse from now). The holders'
        bookkeeping stays, so draining versions finish as usual."""
        for entry in self._by_address.values():
            entry.sock.close()
        for entry in self._unheld:
            entry.sock.close()
        self.close_unclaimed_inherited()

    def _open_or_reuse(self, address: SocketAddress, listener: str) -> _SharedSocket:
        if fixed_address(address):
            existing = self._by_address.get(address)
            if existing is not None:
                return existing  # still open (held by a draining version or pending close)
        inherited = self._inherited.pop(address, None) if fixed_address(address) else None
        sock = inherited if inherited is not None else self._opener(address, listener)
        entry = _SharedSocket(sock, address, listening=inherited is not None)
        self._by_address[entry.bound_address] = entry
        return entry


def bind_socket(address: SocketAddress) -> socket.socket:
    """A TCP socket bound to `address`, not listening yet; BindError names the address."""
    if isinstance(address, PipeAddress):
        return bind_pipe(address)
    ip, port = address
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, port))
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        shown = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        raise BindError(f"cannot bind '{shown}': {error.strerror}") from None
    return sock


def bind_pipe(address: PipeAddress) -> socket.socket:
    """A UNIX stream socket bound to the pipe's path (a leading `@`: abstract), the file
    there first removed and `mode` applied; not listening yet; BindError names the path."""
    path = address.path
    abstract = path.startswith("@")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if abstract:
            sock.bind("\0" + path[1:])
        else:
            with contextlib.suppress(OSError):  # nothing there, or bind says why
                os.unlink(path)
            sock.bind(path)
            if address.mode:
                os.chmod(path, address.mode)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise BindError(f"cannot bind '{path}': {error.strerror}") from None
    return sock
