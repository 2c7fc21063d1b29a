"""The hot-restart protocol on real Unix domain sockets, parent and child in one event loop.

Every test uses its own random base id, so tests (and other processes) never meet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket

import pytest

from tests.helpers.procs import free_port
from tests.helpers.waiting import wait_until
from xds_proxy import hot_restart
from xds_proxy.errors import ConfigError
from xds_proxy.hot_restart import (
    HOT_RESTART_VERSION,
    HotRestart,
    ParentConnection,
    ParentEndpoint,
    ParentHooks,
    domain_socket_name,
)
from xds_proxy.listener.manager import ReserveSockets
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.stats import Stats

TIMEOUT = 3.0


def unique_base_id() -> int:
    return random.randrange(1_000_000, 2**31)


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except ConnectionRefusedError:
        return False


class FakeServer:
    """The parent server's side of the hooks: a real socket pool, recorded drain/terminate."""

    def __init__(self, ports: int = 2) -> None:
        self.pool = ListenSocketPool()
        for version in range(1, ports + 1):
            self.pool.reserve(ReserveSockets(version, (("127.0.0.1", free_port()),), None))
            self.pool.listen(version)
        self.drained = asyncio.Event()
        self.terminated = asyncio.Event()
        self.admin_closed = asyncio.Event()
        self.connections = 7
        self.started_at = 1000.0

    async def total_connections(self) -> int:
        return self.connections

    def hooks(self) -> ParentHooks:
        return ParentHooks(
            listen_sockets=self.pool.listen_sockets,
            drain=self.drained.set,
            terminate=self.terminated.set,
            shutdown_admin=self.admin_closed.set,
            connections=self.total_connections,
            started_at_all_epochs=lambda: self.started_at,
        )


@pytest.fixture
async def parent():
    server = FakeServer()
    endpoint = ParentEndpoint(unique_base_id(), 0, server.hooks())
    await endpoint.start()
    yield server, endpoint
    await endpoint.close()
    server.pool.close_all()


def test_domain_socket_names_differ_by_base_id_and_epoch() -> None:
    names = {domain_socket_name(b, e) for b in (0, 1, 10) for e in (0, 1, 10)}
    assert len(names) == 9
    assert all(name.startswith(b"\0") for name in names)  # abstract: nothing on disk


async def test_child_receives_the_parents_kernel_sockets(parent) -> None:
    server, endpoint = parent
    child = await ParentConnection.connect(endpoint.base_id, 0)
    try:
        info = await asyncio.wait_for(child.hello(1), TIMEOUT)
        assert (info.epoch, info.version, info.started_at_all_epochs) == (
            0,
            HOT_RESTART_VERSION,
            1000.0,
        )
        received = await asyncio.wait_for(child.listen_sockets(), TIMEOUT)
        expected = server.pool.listen_sockets()
        assert set(received) == set(expected) and len(received) == 2
        for address, sock in received.items():
            assert inode(sock) == inode(expected[address])  # the same kernel socket
            assert sock.fileno() != expected[address].fileno()
            assert not os.get_inheritable(sock.fileno())
            assert sock.type == socket.SOCK_STREAM and sock.family == socket.AF_INET
        # the child accepts on the handed-over socket while the parent's copy is closed
        server.pool.close_after_hand_over()
        (ip, port), sock = next(iter(received.items()))
        sock.setblocking(True)
        with socket.create_connection((ip, port), timeout=1):
            accepted, _ = sock.accept()
            accepted.close()
        for sock in received.values():
            sock.close()
        assert not connect(port)  # the last holder closed it: refused
    finally:
        child.close()


async def test_child_can_ask_for_chosen_addresses(parent) -> None:
    server, endpoint = parent
    child = await ParentConnection.connect(endpoint.base_id, 0)
    try:
        wanted = sorted(server.pool.listen_sockets())[:1]
        received = await asyncio.wait_for(
            child.listen_sockets([*wanted, ("127.0.0.1", 1)]), TIMEOUT
        )
        assert list(received) == wanted
        for sock in received.values():
            sock.close()
    finally:
        child.close()


async def test_many_sockets_cross_in_batches(monkeypatch) -> None:
    monkeypatch.setattr(hot_restart, "FDS_PER_MESSAGE", 3)
    server = FakeServer(ports=7)
    endpoint = ParentEndpoint(unique_base_id(), 4, server.hooks())
    await endpoint.start()
    child = await ParentConnection.connect(endpoint.base_id, 4)
    try:
        received = await asyncio.wait_for(child.listen_sockets(), TIMEOUT)
        assert len(received) == 7
        expected = server.pool.listen_sockets()
        assert {a: inode(s) for a, s in received.items()} == {
            a: inode(s) for a, s in expected.items()
        }
        for sock in received.values():
            sock.close()
    finally:
        child.close()
        await endpoint.close()
        server.pool.close_all()


async def test_port_zero_sockets_are_not_handed_over() -> None:
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (("127.0.0.1", 0),), None))
    assert pool.listen_sockets() == {}
    pool.close_all()


async def test_stats_drain_and_terminate_reach_the_parent(parent) -> None:
    server, endpoint = parent
    child = await ParentConnection.connect(endpoint.base_id, 0)
    try:
        assert await asyncio.wait_for(child.connections(), TIMEOUT) == 7
        server.connections = 3
        assert await asyncio.wait_for(child.connections(), TIMEOUT) == 3
        await child.tell("drain")
        await asyncio.wait_for(server.drained.wait(), TIMEOUT)
        assert not server.terminated.is_set()
        await child.tell("terminate")
        await asyncio.wait_for(server.terminated.wait(), TIMEOUT)
    finally:
        child.close()


async def test_unknown_message_gets_an_error_reply(parent) -> None:
    _, endpoint = parent
    child = await ParentConnection.connect(endpoint.base_id, 0)
    try:
        await child.channel.send({"type": "bogus"})
        reply, fds = await asyncio.wait_for(child.channel.receive(), TIMEOUT)
        assert reply == {"type": "error", "reason": "unknown message type 'bogus'"}
        assert fds == []
    finally:
        child.close()


async def test_second_process_with_same_base_id_and_epoch_fails(parent) -> None:
    _, endpoint = parent
    other = ParentEndpoint(endpoint.base_id, 0, FakeServer(ports=0).hooks())
    with pytest.raises(ConfigError, match=r"^--base-id: unable to bind the hot restart domain"):
        await other.start()
    different_epoch = ParentEndpoint(endpoint.base_id, 1, FakeServer(ports=0).hooks())
    await different_epoch.start()  # epochs have their own names
    await different_epoch.close()


def make_hot_restart(base_id: int, epoch: int, pool: ListenSocketPool, **kwargs) -> HotRestart:
    options = {"disabled": False, "parent_shutdown_time_s": 0.3, "started_at": 5000.0}
    options.update(kwargs)
    return HotRestart(base_id, epoch, stats=Stats(), pool=pool, **options)


async def test_child_takes_over_drains_and_terminates_the_parent(parent) -> None:
    server, endpoint = parent
    child_pool = ListenSocketPool()
    child = make_hot_restart(endpoint.base_id, 1, child_pool)
    assert child.stats.gauge("server.hot_restart_epoch").value == 1
    await asyncio.wait_for(child.start(FakeServer(ports=0).hooks()), TIMEOUT)
    try:
        assert child.started_at_all_epochs == 1000.0  # the parent's, the earlier one
        addresses = sorted(server.pool.listen_sockets())
        # a listener of the child reserves the first address: the inherited socket, no bind
        child_pool.reserve(ReserveSockets(1, (addresses[0],), None))
        taken = child_pool.sockets_for(1)[0]
        assert inode(taken) == inode(server.pool.listen_sockets()[addresses[0]])
        accepting = asyncio.Event()
        child.initialized(accepting.wait)
        await asyncio.sleep(0.05)  # a moment in which a wrong child would already have told
        assert not server.drained.is_set()  # not before the child's listeners accept
        accepting.set()
        await asyncio.wait_for(server.drained.wait(), TIMEOUT)
        # the address no listener took is closed in the child once it is initialized
        assert child_pool.listen_sockets() == {addresses[0]: taken}
        gauge = child.stats.gauge("server.parent_connections")
        await wait_until(lambda: gauge.value == 7, TIMEOUT)
        await asyncio.wait_for(server.terminated.wait(), TIMEOUT)
        # the parent exits: the child notices and reports no parent connections
        await endpoint.close()
        await wait_until(lambda: child.parent is None, TIMEOUT)
        assert gauge.value == 0
    finally:
        await child.close()
        child_pool.close_all()


async def test_parent_not_running_child_goes_on_alone(caplog) -> None:
    pool = ListenSocketPool()
    child = make_hot_restart(unique_base_id(), 3, pool)
    with caplog.at_level(logging.WARNING, logger="xds_proxy.main"):
        await asyncio.wait_for(child.start(FakeServer(ports=0).hooks()), TIMEOUT)
    assert child.parent is None
    assert "parent (epoch 2" in caplog.text and "going on alone" in caplog.text
    assert child.endpoint is not None  # it still serves its own child later
    child.initialized(lambda: asyncio.sleep(0))  # nothing to tell anybody
    await child.close()


async def test_unresponsive_parent_is_given_up_after_the_timeout(monkeypatch, caplog) -> None:
    monkeypatch.setattr(hot_restart, "PARENT_TIMEOUT_S", 0.3)
    base_id = unique_base_id()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.bind(domain_socket_name(base_id, 0))
    silent.listen(1)  # accepts in the kernel, never answers
    child = make_hot_restart(base_id, 1, ListenSocketPool())
    try:
        with caplog.at_level(logging.WARNING, logger="xds_proxy.main"):
            await asyncio.wait_for(child.start(FakeServer(ports=0).hooks()), TIMEOUT)
        assert child.parent is None
        assert "no answer within 5 s" in caplog.text
    finally:
        await child.close()
        silent.close()


async def test_parent_with_another_version_is_an_error() -> None:
    base_id = unique_base_id()
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    impostor.bind(domain_socket_name(base_id, 0))
    impostor.listen(1)
    impostor.setblocking(False)
    loop = asyncio.get_running_loop()

    async def answer() -> None:
        conn, _ = await loop.sock_accept(impostor)
        await loop.sock_recv(conn, 4096)
        reply = {"type": "hello", "version": "0.0", "epoch": 0, "started_at_all_epochs": 1.0}
        await loop.sock_sendall(conn, json.dumps(reply).encode())
        await loop.sock_recv(conn, 4096)  # until the child hangs up
        conn.close()

    task = asyncio.create_task(answer())
    child = make_hot_restart(base_id, 1, ListenSocketPool())
    try:
        with pytest.raises(ConfigError, match=r"version mismatch: the parent speaks 0.0"):
            await asyncio.wait_for(child.start(FakeServer(ports=0).hooks()), TIMEOUT)
        await asyncio.wait_for(task, TIMEOUT)
    finally:
        await child.close()
        impostor.close()


async def test_disabled_opens_no_socket() -> None:
    pool = ListenSocketPool()
    child = make_hot_restart(unique_base_id(), 0, pool, disabled=True)
    await child.start(FakeServer(ports=0).hooks())
    assert child.endpoint is None and child.version == "disabled"
    enabled = make_hot_restart(unique_base_id(), 0, pool)
    assert enabled.version == HOT_RESTART_VERSION
    await child.close()


async def test_hello_closes_the_parents_admin(parent) -> None:
    server, endpoint = parent
    child = await ParentConnection.connect(endpoint.base_id, 0)
    try:
        assert not server.admin_closed.is_set()
        await asyncio.wait_for(child.hello(1), TIMEOUT)
        assert server.admin_closed.is_set()  # the child binds the admin address next
        assert not server.terminated.is_set()
    finally:
        child.close()


async def test_a_grandchild_ends_the_grandparent_at_once(parent) -> None:
    grandparent, endpoint = parent
    middle_pool = ListenSocketPool()
    middle_server = FakeServer(ports=0)
    middle = make_hot_restart(endpoint.base_id, 1, middle_pool, parent_shutdown_time_s=600)
    await asyncio.wait_for(middle.start(middle_server.hooks()), TIMEOUT)
    grandchild = await ParentConnection.connect(endpoint.base_id, 1)
    try:
        assert not grandparent.terminated.is_set()
        await asyncio.wait_for(grandchild.hello(2), TIMEOUT)
        await asyncio.wait_for(grandparent.terminated.wait(), TIMEOUT)
        assert middle_server.admin_closed.is_set() and not middle_server.terminated.is_set()
    finally:
        grandchild.close()
        await middle.close()
        middle_pool.close_all()


@pytest.mark.skipif(
    os.getuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root (and a system python) to run a peer as another user",
)
async def test_a_peer_of_another_user_is_refused(parent) -> None:
    server, endpoint = parent
    name = domain_socket_name(endpoint.base_id, 0)
    peer = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"s.connect({name!r})\n"
        "s.settimeout(3)\n"
        "try:\n"
        '    s.send(b\'{"type": "get_sockets"}\')\n'
        "    data, fds, _, _ = socket.recv_fds(s, 65536, 10)\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    data, fds = b'', []\n"
        "print('closed' if not data and not fds else 'answered')\n"
    )
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/python3",
        "-c",
        peer,
        user=65534,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd="/",
    )
    output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert output.decode().strip() == "closed"
    assert not server.admin_closed.is_set()
