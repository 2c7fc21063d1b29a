"""The listen socket pool on real loopback sockets: bind apart from listen, sharing, deferred
closes, bind errors."""

from __future__ import annotations

import socket

import pytest

from xds_proxy.listener.manager import BindError, ReserveSockets
from xds_proxy.listener.sockets import ListenSocketPool


def connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except ConnectionRefusedError:
        return False


def test_port_zero_binds_and_reports_the_real_port():
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (("127.0.0.1", 0),), None))
    (ip, port) = pool.bound_addresses(1)[0]
    assert ip == "127.0.0.1" and port > 0
    pool.listen(1)
    assert connect(port)
    pool.close_all()


def test_a_reserved_socket_is_bound_but_listens_only_once_started():
    """As Envoy's warming listener: the address is taken, and connects are refused until
    the version starts (`listen`)."""
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (("127.0.0.1", 0),), None))
    port = pool.bound_addresses(1)[0][1]
    assert not connect(port)
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    pool.listen(1)
    assert connect(port)
    pool.listen(1)  # listening twice is harmless
    assert connect(port)
    pool.close_all()


def test_shared_socket_survives_until_last_holder_and_flush():
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (("127.0.0.1", 0),), None))
    pool.listen(1)
    port = pool.bound_addresses(1)[0][1]
    pool.reserve(ReserveSockets(2, (("127.0.0.1", 0),), 1))
    assert pool.bound_addresses(2) == pool.bound_addresses(1)
    pool.release(1)
    pool.flush()
    assert connect(port)
    pool.release(2)
    assert connect(port)  # closes are deferred until flush
    pool.flush()
    assert not connect(port)


def test_remove_then_add_on_same_address_takes_the_socket_over():
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (("127.0.0.1", 0),), None))
    pool.listen(1)
    address = pool.bound_addresses(1)[0]
    original = pool.sockets_for(1)[0]
    pool.release(1)
    pool.reserve(ReserveSockets(2, (address,), None))  # same explicit address, before the flush
    pool.flush()
    assert pool.sockets_for(2)[0] is original
    assert connect(address[1])
    pool.close_all()


def test_bind_error_names_the_address():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    pool = ListenSocketPool()
    with pytest.raises(BindError, match=rf"cannot bind '127.0.0.1:{port}': Address already in use"):
        pool.reserve(ReserveSockets(1, (("127.0.0.1", port),), None))
    holder.close()


def test_ipv6_loopback():
    pool = ListenSocketPool()
    try:
        pool.reserve(ReserveSockets(1, (("::1", 0),), None))
    except BindError:
        pytest.skip("no IPv6 loopback on this machine")
    ip, port = pool.bound_addresses(1)[0]
    assert ip == "::1"
    pool.listen(1)
    with socket.create_connection(("::1", port), timeout=1):
        pass
    pool.close_all()
