"""The socket pool's hot-restart side on real loopback sockets: adopting inherited sockets,
closing the unclaimed ones, and the parent closing its copies after the hand-over."""

from __future__ import annotations

import os
import socket

from tests.helpers.procs import free_port
from xds_proxy.listener.manager import ReserveSockets
from xds_proxy.listener.sockets import ListenSocketPool, bind_socket


def connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except ConnectionRefusedError:
        return False


def inherited(port: int) -> tuple[socket.socket, socket.socket]:
    """A bound socket (the parent's) and a dup of it (what fd passing gives the child)."""
    original = bind_socket(("127.0.0.1", port))
    original.listen()
    return original, original.dup()


def test_reserve_takes_the_inherited_socket_instead_of_binding():
    port = free_port()
    parent, copy = inherited(port)
    pool = ListenSocketPool()
    pool.adopt({("127.0.0.1", port): copy})
    pool.reserve(
        ReserveSockets(1, (("127.0.0.1", port),), None)
    )  # would fail EADDRINUSE if it bound
    (sock,) = pool.sockets_for(1)
    assert sock is copy
    assert pool.bound_addresses(1) == [("127.0.0.1", port)]
    assert os.fstat(sock.fileno()).st_ino == os.fstat(parent.fileno()).st_ino
    assert pool.close_unclaimed_inherited() == []
    parent.close()
    assert connect(port)  # the child's copy keeps it listening
    pool.close_all()
    assert not connect(port)


def test_unclaimed_inherited_sockets_close_once_initialized():
    taken_port, left_port = free_port(), free_port()
    parent_taken, copy_taken = inherited(taken_port)
    parent_left, copy_left = inherited(left_port)
    pool = ListenSocketPool()
    pool.adopt({("127.0.0.1", taken_port): copy_taken, ("127.0.0.1", left_port): copy_left})
    assert set(pool.listen_sockets()) == {("127.0.0.1", taken_port), ("127.0.0.1", left_port)}
    pool.reserve(ReserveSockets(1, (("127.0.0.1", taken_port),), None))
    assert pool.close_unclaimed_inherited() == [("127.0.0.1", left_port)]
    assert copy_left.fileno() == -1
    parent_taken.close()
    parent_left.close()
    assert connect(taken_port)
    assert not connect(left_port)  # nobody holds it any more: refused
    pool.close_all()


def test_port_zero_listener_binds_afresh_even_with_inherited_sockets():
    port = free_port()
    parent, copy = inherited(port)
    pool = ListenSocketPool()
    pool.adopt({("127.0.0.1", port): copy})
    pool.reserve(ReserveSockets(1, (("127.0.0.1", 0),), None))
    assert pool.bound_addresses(1)[0][1] not in (0, port)
    assert pool.listen_sockets() == {("127.0.0.1", port): copy}  # still unclaimed
    pool.close_all()
    assert copy.fileno() == -1
    parent.close()


def test_parent_closes_its_copies_and_draining_versions_still_finish():
    port, other = free_port(), free_port()
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (("127.0.0.1", port),), None))
    pool.reserve(ReserveSockets(2, (("127.0.0.1", other),), None))
    pool.listen(1)
    pool.listen(2)
    handed = {address: sock.dup() for address, sock in pool.listen_sockets().items()}
    assert set(handed) == {("127.0.0.1", port), ("127.0.0.1", other)}
    handed.pop(("127.0.0.1", other)).close()  # the child did not take this one
    pool.close_after_hand_over()
    assert connect(port)  # the child's copy
    assert not connect(other)  # nobody's
    assert pool.listen_sockets() == {}  # nothing left to hand to a later child
    assert pool.bound_addresses(1) == [("127.0.0.1", port)]  # bookkeeping intact
    pool.release(1)
    pool.release(2)
    pool.flush()  # closing closed sockets is fine
    pool.close_all()
    assert connect(port)
    handed[("127.0.0.1", port)].close()
    assert not connect(port)
