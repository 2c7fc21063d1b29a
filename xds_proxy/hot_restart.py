"""Hot restart: a new process takes over the listen sockets of the running one.

As in Envoy, every process of epoch N listens on a Unix domain
socket named from `--base-id` and N (abstract namespace, so nothing is left on disk); the child
of epoch N+1 connects to it. Messages are JSON, one per SOCK_SEQPACKET datagram (the kernel keeps
the boundaries); listen sockets cross as SCM_RIGHTS (`socket.send_fds`), so the child accepts
on the very kernel sockets the parent bound and no SYN is refused during the hand-over.

    child (epoch N+1)                        parent (epoch N)
    hello {epoch}                       ->   closes its admin listener (the child binds it
                                             next) and tells its own parent, if still
                                             there, to exit: at most two epochs run
                                        <-   hello {version, started_at_all_epochs}
    get_sockets                         ->
                                        <-   sockets {addresses, last} + fds   (in batches)
    ... serves; once initialized (first LDS response, or no LDS):
    drain                               ->   stops accepting, drains everything over DT
    stats (every second)                ->
                                        <-   stats {connections}
    ... after --parent-shutdown-time-s:
    terminate                           ->   exits

The child is a new process started by exec (a restarter script), never a fork: grpc.aio is
not fork-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xds_proxy.errors import ConfigError
from xds_proxy.listener.manager import SocketAddress
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.stats import Stats

log = logging.getLogger("xds_proxy.main")

HOT_RESTART_VERSION = "1.1"  # bump when the protocol changes; parent and child must agree
PARENT_TIMEOUT_S = 5.0  # Envoy 1.40: a parent that does not answer within 5 s is given up
PARENT_STATS_INTERVAL_S = 1.0
READY_TIMEOUT_S = 2.0  # how long the child waits for its listeners to accept before `drain`
FDS_PER_MESSAGE = 200  # below the kernel's SCM_MAX_FD (253)
MAX_MESSAGE_BYTES = 1 << 16


class HotRestartError(Exception):
    """The other side broke the protocol or went away."""


def domain_socket_name(base_id: int, epoch: int) -> bytes:
    """The abstract-namespace address that the process of `epoch` listens on."""
    return f"\0xds-proxy.hot-restart.{base_id}.{epoch}".encode()


class Channel:
    """One SOCK_SEQPACKET connection: whole JSON messages, optionally with file descriptors."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        while True:
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
                return
            except BlockingIOError:
                await self._wait(writable=True)
            except OSError as error:  # EPIPE, ECONNRESET, EBADF
                raise HotRestartError(f"send: {error.strerror or error}") from None

    async def receive(self) -> tuple[dict[str, Any], list[int]] | None:
        """The next message and the descriptors that came with it; None once the peer left."""
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE_BYTES, FDS_PER_MESSAGE)
            except BlockingIOError:
                await self._wait(writable=False)
                continue
            except (ConnectionResetError, OSError):
                return None
            for fd in fds:
                os.set_inheritable(fd, False)
            if not data:
                _close_fds(fds)
                return None
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                _close_fds(fds)
                raise HotRestartError("message or descriptors truncated")
            try:
                message = json.loads(data)
            except ValueError:
                _close_fds(fds)
                raise HotRestartError("message is not JSON") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                _close_fds(fds)
                raise HotRestartError("message without a type")
            return message, fds

    async def _wait(self, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self.sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if writable:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            if writable:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    def close(self) -> None:
        self.sock.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the parent side: serves the next epoch ---------------------------------------------------


@dataclass
class ParentHooks:
    """What the parent side needs from the server."""

    listen_sockets: Callable[[], dict[SocketAddress, socket.socket]]
    drain: Callable[[], None]
    terminate: Callable[[], None]
    shutdown_admin: Callable[[], None]
    connections: Callable[[], Awaitable[int]]  # every process's (a worker's too)
    started_at_all_epochs: Callable[[], float]


class ParentEndpoint:
    """The domain socket of epoch N, where the child of epoch N+1 connects."""

    def __init__(
        self,
        base_id: int,
        epoch: int,
        hooks: ParentHooks,
        child_started: Callable[[], None] = lambda: None,
    ) -> None:
        self.base_id = base_id
        self.epoch = epoch
        self.hooks = hooks
        self.child_started = child_started
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        """Bind the domain socket; a second process with the same base id and epoch fails
        here, as Envoy's does."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(domain_socket_name(self.base_id, self.epoch))
            sock.listen(4)
        except OSError as error:
            sock.close()
            raise ConfigError(
                f"--base-id: unable to bind the hot restart domain socket with base_id="
                f"{self.base_id}, epoch={self.epoch}: {error.strerror} (another xds-proxy with "
                "the same --base-id and --restart-epoch runs; use another --base-id or "
                "--disable-hot-restart)"
            ) from None
        sock.setblocking(False)
        self._listener = sock
        self._spawn(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            uid = _peer_uid(conn)
            if uid not in (os.getuid(), 0):
                # the abstract namespace has no file permissions: check who connects
                log.warning("hot restart: refused a connection from uid %s", uid)
                conn.close()
                continue
            self._spawn(self._serve(Channel(conn)))

    async def _serve(self, channel: Channel) -> None:
        try:
            while True:
                received = await channel.receive()
                if received is None:
                    return
                message, fds = received
                _close_fds(fds)  # a child sends none
                await self._handle(channel, message)
        except HotRestartError as error:
            log.warning("hot restart: child connection: %s", error)
        finally:
            channel.close()

    async def _handle(self, channel: Channel, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello":
            log.info("hot restart: child (epoch %s) connected", message.get("epoch"))
            self.hooks.shutdown_admin()  # as Envoy: the child binds the admin address next
            self.child_started()
            await channel.send(
                {
                    "type": "hello",
                    "version": HOT_RESTART_VERSION,
                    "epoch": self.epoch,
                    "started_at_all_epochs": self.hooks.started_at_all_epochs(),
                }
            )
        elif kind == "get_sockets":
            await self._send_sockets(channel, message.get("addresses"))
        elif kind == "drain":
            log.info("hot restart: the child took over; draining every listener")
            self.hooks.drain()
        elif kind == "stats":
            await channel.send({"type": "stats", "connections": await self.hooks.connections()})
        elif kind == "terminate":
            log.info("hot restart: the child asked us to exit (parent shutdown time)")
            self.hooks.terminate()
        else:
            await channel.send({"type": "error", "reason": f"unknown message type {kind!r}"})

    async def _send_sockets(self, channel: Channel, wanted: Any) -> None:
        sockets = self.hooks.listen_sockets()
        if isinstance(wanted, list):
            keys = {_address(item) for item in wanted}
            sockets = {a: s for a, s in sockets.items() if a in keys}
        items = sorted(sockets.items())
        for start in range(0, max(len(items), 1), FDS_PER_MESSAGE):
            batch = items[start : start + FDS_PER_MESSAGE]
            last = start + FDS_PER_MESSAGE >= len(items)
            await channel.send(
                {"type": "sockets", "addresses": [list(a) for a, _ in batch], "last": last},
                [s.fileno() for _, s in batch],
            )
        log.info("hot restart: handed %d listen socket(s) to the child", len(items))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        credentials = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", credentials)[1]


def _address(item: Any) -> SocketAddress:
    if not (isinstance(item, list) and len(item) == 2):
        raise HotRestartError(f"bad address {item!r}")
    ip, port = item
    if not isinstance(ip, str) or not isinstance(port, int):
        raise HotRestartError(f"bad address {item!r}")
    return (ip, port)


# -- the child side: talks to epoch N-1 --------------------------------------------------------


@dataclass(frozen=True)
class ParentInfo:
    epoch: int
    version: str
    started_at_all_epochs: float


class ParentConnection:
    """The child's connection to its parent. Requests with a reply are serialised by a lock
    (the stats poll and the start-up requests share the one connection)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, base_id: int, parent_epoch: int) -> ParentConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                sock, domain_socket_name(base_id, parent_epoch)
            )
        except OSError:
            sock.close()
            raise
        return cls(Channel(sock))

    async def hello(self, epoch: int) -> ParentInfo:
        reply = await self._request({"type": "hello", "epoch": epoch}, "hello")
        try:
            return ParentInfo(
                int(reply["epoch"]), str(reply["version"]), float(reply["started_at_all_epochs"])
            )
        except (KeyError, TypeError, ValueError):
            raise HotRestartError(f"bad hello reply {reply!r}") from None

    async def listen_sockets(
        self, addresses: list[SocketAddress] | None = None
    ) -> dict[SocketAddress, socket.socket]:
        """Every listen socket the parent has (or those at `addresses`), as our own sockets."""
        received: dict[SocketAddress, socket.socket] = {}
        async with self._lock:
            wanted = None if addresses is None else [list(a) for a in addresses]
            await self.channel.send({"type": "get_sockets", "addresses": wanted})
            try:
                while True:
                    reply, fds = await self._reply("sockets")
                    listed = reply.get("addresses")
                    try:
                        if not isinstance(listed, list) or len(listed) != len(fds):
                            raise HotRestartError("sockets reply: addresses and fds differ")
                        addresses_received = [_address(item) for item in listed]
                    except HotRestartError:
                        _close_fds(fds)
                        raise
                    for address, fd in zip(addresses_received, fds, strict=True):
                        received[address] = socket.socket(fileno=fd)
                    if reply.get("last", True):
                        return received
            except BaseException:
                for sock in received.values():
                    sock.close()
                raise

    async def tell(self, kind: str) -> None:
        """A message without a reply: `drain`, `terminate`."""
        await self.channel.send({"type": kind})

    async def connections(self) -> int:
        reply = await self._request({"type": "stats"}, "stats")
        value = reply.get("connections")
        if not isinstance(value, int):
            raise HotRestartError(f"bad stats reply {reply!r}")
        return value

    async def _request(self, message: dict[str, Any], reply_type: str) -> dict[str, Any]:
        """One request and its reply (which carries no descriptors)."""
        async with self._lock:
            await self.channel.send(message)
            reply, fds = await self._reply(reply_type)
        _close_fds(fds)
        return reply

    async def _reply(self, reply_type: str) -> tuple[dict[str, Any], list[int]]:
        received = await self.channel.receive()
        if received is None:
            raise HotRestartError("the parent closed the connection")
        reply, fds = received
        if reply["type"] != reply_type:
            _close_fds(fds)
            raise HotRestartError(f"expected a {reply_type} reply, got {reply!r}")
        return reply, fds

    def close(self) -> None:
        self.channel.close()


# -- the server's view --------------------------------------------------------------------------


class HotRestart:
    """Both sides for one server: its own endpoint (for its child) and, from epoch 1 on, the
    take-over from its parent. Nothing at all with `--disable-hot-restart`."""

    def __init__(
        self,
        base_id: int,
        epoch: int,
        disabled: bool,
        parent_shutdown_time_s: float,
        stats: Stats,
        pool: ListenSocketPool,
        started_at: float,
    ) -> None:
        self.base_id = base_id
        self.epoch = epoch
        self.disabled = disabled
        self.parent_shutdown_time_s = parent_shutdown_time_s
        self.stats = stats
        self.pool = pool
        self.started_at_all_epochs = started_at
        self.endpoint: ParentEndpoint | None = None
        self.parent: ParentConnection | None = None
        self._tasks: list[asyncio.Task] = []
        self._taking_over = False
        stats.gauge("server.hot_restart_epoch").set(epoch)
        stats.gauge("server.parent_connections").set(0)

    @property
    def version(self) -> str:
        """`/server_info` `hot_restart_version`."""
        return "disabled" if self.disabled else HOT_RESTART_VERSION

    async def start(self, hooks: ParentHooks) -> None:
        """Before any listener binds: our endpoint, then the parent's sockets (raises
        ConfigError when the endpoint is taken or the parent speaks another version)."""
        if self.disabled:
            return
        self.endpoint = ParentEndpoint(self.base_id, self.epoch, hooks, self._child_started)
        await self.endpoint.start()
        if self.epoch == 0:
            return
        try:
            async with asyncio.timeout(PARENT_TIMEOUT_S):
                parent = await ParentConnection.connect(self.base_id, self.epoch - 1)
                try:
                    info = await parent.hello(self.epoch)
                    if info.version != HOT_RESTART_VERSION:
                        raise ConfigError(
                            f"--restart-epoch: hot restart version mismatch: the parent speaks "
                            f"{info.version}, we speak {HOT_RESTART_VERSION}"
                        )
                    sockets = await parent.listen_sockets()
                except BaseException:
                    parent.close()
                    raise
        except (OSError, TimeoutError, HotRestartError) as error:
            reason = "no answer within 5 s" if isinstance(error, TimeoutError) else str(error)
            log.warning(
                "hot restart: parent (epoch %d, base id %d) unreachable (%s); going on alone",
                self.epoch - 1,
                self.base_id,
                reason,
            )
            return
        self.parent = parent
        self.started_at_all_epochs = min(self.started_at_all_epochs, info.started_at_all_epochs)
        self.pool.adopt(sockets)
        log.info(
            "hot restart: took %d listen socket(s) from the parent (epoch %d)",
            len(sockets),
            info.epoch,
        )

    def _child_started(self) -> None:
        """Our own child starts while our parent still drains: the parent exits now, as in
        Envoy ("terminating parent process"), so at most two epochs run at once."""
        parent = self.parent
        if parent is None:
            return

        async def terminate() -> None:
            with contextlib.suppress(HotRestartError):
                await parent.tell("terminate")
                log.info("hot restart: a new child starts; told our parent to exit now")

        self._tasks.append(asyncio.create_task(terminate()))

    def initialized(self, applied: Callable[[], Awaitable[None]]) -> None:
        """The server is initialized: once `applied()` returns (every listener update carried
        out, so every listener accepts), close the inherited sockets nobody took, tell the
        parent to drain, and to exit after the parent shutdown time."""
        if self.parent is None or self._taking_over:
            return
        self._taking_over = True
        self._tasks.append(asyncio.create_task(self._take_over(applied), name="hot-restart"))

    async def _take_over(self, applied: Callable[[], Awaitable[None]]) -> None:
        assert self.parent is not None
        parent = self.parent
        try:
            await asyncio.wait_for(applied(), READY_TIMEOUT_S)
        except TimeoutError:
            log.warning("hot restart: listeners not all started in time; taking over anyway")
        unclaimed = self.pool.close_unclaimed_inherited()
        if unclaimed:
            shown = ", ".join(f"{ip}:{port}" for ip, port in unclaimed)
            log.info("hot restart: closed inherited listen socket(s) no listener took: %s", shown)
        poll = asyncio.create_task(self._poll_parent(parent), name="hot-restart-stats")
        self._tasks.append(poll)
        try:
            await parent.tell("drain")
            log.info("hot restart: told the parent to drain")
            await asyncio.sleep(self.parent_shutdown_time_s)
            await parent.tell("terminate")
            log.info("hot restart: parent shutdown time over; told the parent to exit")
        except HotRestartError as error:
            log.info("hot restart: parent gone (%s)", error)
        await poll

    async def _poll_parent(self, parent: ParentConnection) -> None:
        gauge = self.stats.gauge("server.parent_connections")
        try:
            while True:
                gauge.set(await parent.connections())
                await asyncio.sleep(PARENT_STATS_INTERVAL_S)
        except HotRestartError:
            log.info("hot restart: the parent has exited")
        finally:
            gauge.set(0)
            parent.close()
            if self.parent is parent:
                self.parent = None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.parent is not None:
            self.parent.close()
            self.parent = None
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None
