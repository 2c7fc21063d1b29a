"""The main process's side of `--concurrency N`: it starts N worker processes, feeds them
through the relay, hands them listen sockets, asks them for their state, and restarts one
that dies.

A worker is `python -m xds_proxy.worker` with three UNIX socket pairs
(`workers/channel.py`); its first control message is its start-up data: its index, the
relay's path, the options and the bootstrap as the main process loaded them. It dies with
the main process (parent-death signal). A worker that exits on its own is logged, counted
(`xds_proxy.workers.restarted`) and started again with the same index; it catches up from
the relay's snapshot and accepts on the same kernel sockets, so only its own connections were
lost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2

from xds_proxy.listener.actions import SocketAddress
from xds_proxy.listener.shared_count import SharedCount, SharedCounts
from xds_proxy.listener.shared_pacing import SharedPacing
from xds_proxy.options import Options
from xds_proxy.stats import Stats
from xds_proxy.workers.channel import (
    ControlClient,
    Events,
    address_from_json,
    answer_socket,
    encode,
    start_message,
)
from xds_proxy.workers.published import Snapshot
from xds_proxy.workers.relay import Relay

log = logging.getLogger("xds_proxy.workers")

ANSWER_TIMEOUT_S = 5.0  # a worker that does not answer the relay by then is not waited for
STATE_TIMEOUT_S = 2.0  # nor one that does not report its state
READY_TIMEOUT_S = 60.0  # the server goes LIVE without the workers not started by then
STOP_TIMEOUT_S = 2.0  # a worker not gone by then after SIGTERM is killed
RESTART_PAUSE_S = 0.05  # between a worker's exit and its replacement

SocketFinder = Callable[[str, SocketAddress], socket.socket | None]


@dataclasses.dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    control: ControlClient
    sockets: socket.socket  # the main process's end of the sockets pair
    events: Events  # the main process's end of the events pair
    buffer: bytearray = dataclasses.field(default_factory=bytearray)


class Workers:
    def __init__(
        self,
        count: int,
        options: Options,
        bootstrap: bootstrap_pb2.Bootstrap,
        stats: Stats,
        find_socket: SocketFinder,
        on_started: Callable[[int], None] = lambda index: None,
        on_event: Callable[[int, dict], None] = lambda index, message: None,
    ) -> None:
        """`on_started(index)`: a worker was (re)started (its control channel is open);
        `on_event(index, message)`: a worker sent a message on its events pair."""
        self.count = count
        self._options = options
        self._bootstrap = bootstrap
        self._find_socket = find_socket
        self._on_started = on_started
        self._on_event = on_event
        self.relay = Relay()
        self._workers: dict[int, _Worker] = {}
        self._watchers: list[asyncio.Task] = []
        self._calls: set[asyncio.Task] = set()  # `call_one` requests on their way
        self._dir = ""
        self._stopping = False
        # The global connection limit's count, a cell per worker (emptied when one dies).
        self.connection_count = SharedCount.create(count)
        self.pacing = SharedPacing.create()  # the paced drains' slots, for all workers
        self.limits = SharedCounts.create(count)  # the connection_limit filters' counts
        self._restarted = stats.counter("xds_proxy.workers.restarted")
        self._active = stats.gauge("xds_proxy.workers.active")

    async def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="xds-proxy-")  # mode 0700: ours alone
        await self.relay.start(os.path.join(self._dir, "relay.sock"))
        for index in range(self.count):
            await self._spawn(index)

    async def stop(self) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        for worker in list(self._workers.values()):
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        await asyncio.gather(*(self._stop(worker) for worker in list(self._workers.values())))
        await self.relay.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _stop(self, worker: _Worker) -> None:
        """The worker exits after writing what it buffered (access logs); else killed."""
        try:
            await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()
        self._forget(worker)

    # -- configuration -----------------------------------------------------------------------

    async def sync(self, snapshot: Snapshot) -> None:
        """Publish what the main process holds; return once every worker has answered it
        (or at the timeout, logged)."""
        self.publish(snapshot)
        await self.wait_answered()

    async def wait_answered(self) -> None:
        """Until every connected worker has answered what it was sent (a worker still
        starting catches up from the snapshot when it connects)."""
        if not await self.relay.wait_answered(ANSWER_TIMEOUT_S, 0):
            log.warning("not every worker answered the relay within %.0f s", ANSWER_TIMEOUT_S)

    async def wait_ready(self) -> None:
        """Until every worker is connected and has applied the snapshot (start-up)."""
        if not await self.relay.wait_answered(READY_TIMEOUT_S, self.count):
            log.warning("not every worker was ready within %.0f s", READY_TIMEOUT_S)

    def publish(self, snapshot: Snapshot) -> bool:
        """True if anything changed."""
        changed = False
        for type_url, (version_info, resources) in snapshot.items():
            changed = self.relay.publish(type_url, resources, version_info) or changed
        return changed

    # -- what the admin endpoints read, and the commands they fan out ------------------------

    async def states(self) -> list[dict]:
        """Every live worker's `{"stats": ..., "drains": [...]}`; one that does not answer
        in time is left out."""
        workers = list(self._workers.values())
        answers = await asyncio.gather(
            *(w.control.ask({"op": "state"}, STATE_TIMEOUT_S) for w in workers),
            return_exceptions=True,
        )
        return [answer for answer in answers if isinstance(answer, dict) and "stats" in answer]

    async def connections(self) -> int:
        """The downstream connections open in all live workers."""
        workers = list(self._workers.values())
        answers = await asyncio.gather(
            *(w.control.ask({"op": "connections"}, STATE_TIMEOUT_S) for w in workers),
            return_exceptions=True,
        )
        return sum(answer for answer in answers if isinstance(answer, int))

    async def drain_reports(self) -> list[list[dict]]:
        """Every live worker's drains in progress (`/drain_status` entries)."""
        workers = list(self._workers.values())
        answers = await asyncio.gather(
            *(w.control.ask({"op": "drains"}, STATE_TIMEOUT_S) for w in workers),
            return_exceptions=True,
        )
        return [answer for answer in answers if isinstance(answer, list)]

    async def call(self, name: str, *args: Any) -> None:
        """Run one of the server's admin commands in every worker."""
        workers = list(self._workers.values())
        await asyncio.gather(
            *(
                w.control.ask({"op": "call", "name": name, "args": list(args)}, STATE_TIMEOUT_S)
                for w in workers
            ),
            return_exceptions=True,
        )

    def call_one(self, index: int, name: str, *args: Any) -> None:
        """Send one admin command to one worker (it runs once it has started; its answer is
        not waited for)."""
        worker = self._workers.get(index)
        if worker is not None:
            request = {"op": "call", "name": name, "args": list(args)}
            task = asyncio.create_task(self._ask_quietly(worker, request))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def tell(self, message: dict) -> None:
        """Send one message to every worker on its events pair (not answered)."""
        line = encode(message)
        for worker in self._workers.values():
            worker.events.send_line(line)

    def tell_one(self, index: int, message: dict) -> None:
        worker = self._workers.get(index)
        if worker is not None:
            worker.events.send(message)

    async def _ask_quietly(self, worker: _Worker, request: dict) -> None:
        with contextlib.suppress(Exception):
            await worker.control.ask(request, READY_TIMEOUT_S)

    # -- processes ---------------------------------------------------------------------------

    async def _spawn(self, index: int) -> None:
        control_ours, control_theirs = socket.socketpair()
        sockets_ours, sockets_theirs = socket.socketpair()
        events_ours, events_theirs = socket.socketpair()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "xds_proxy.worker",
            str(control_theirs.fileno()),
            str(sockets_theirs.fileno()),
            str(os.getpid()),
            str(self.connection_count.fd),
            str(self.pacing.fd),
            str(self.limits.fd),
            str(events_theirs.fileno()),
            pass_fds=(
                control_theirs.fileno(),
                sockets_theirs.fileno(),
                events_theirs.fileno(),
                self.connection_count.fd,
                self.pacing.fd,
                self.limits.fd,
            ),
        )
        control_theirs.close()
        sockets_theirs.close()
        events_theirs.close()
        control_ours.sendall(start_message(self._start_message(index)))
        events = Events(functools.partial(self._on_event, index))
        await events.attach(events_ours)
        worker = _Worker(
            index, process, await ControlClient.open(control_ours), sockets_ours, events
        )
        sockets_ours.setblocking(False)
        asyncio.get_running_loop().add_reader(sockets_ours, self._on_socket_request, worker)
        self._workers[index] = worker
        self._active.set(len(self._workers))
        self._watchers.append(asyncio.create_task(self._watch(worker), name=f"worker-{index}"))
        self._on_started(index)
        log.info("worker %d started (pid %d)", index, process.pid)

    def _start_message(self, index: int) -> dict:
        return {
            "index": index,
            "workers": self.count,
            "relay": os.path.join(self._dir, "relay.sock"),
            "options": dataclasses.asdict(self._options),
            "bootstrap": base64.b64encode(self._bootstrap.SerializeToString()).decode(),
        }

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        self._forget(worker)
        self.connection_count.clear(worker.index)  # its connections died with it
        self.limits.clear(worker.index)
        if self._stopping:
            return
        self._restarted.inc()
        log.warning(
            "worker %d (pid %d) exited with %s; starting it again",
            worker.index,
            worker.process.pid,
            code,
        )
        await asyncio.sleep(RESTART_PAUSE_S)
        if not self._stopping:
            await self._spawn(worker.index)

    def _forget(self, worker: _Worker) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        self._active.set(len(self._workers))
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.sockets)
        worker.sockets.close()
        worker.control.close()
        worker.events.close()

    def _on_socket_request(self, worker: _Worker) -> None:
        try:
            data = worker.sockets.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(worker.sockets)
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, _, rest = bytes(worker.buffer).partition(b"\n")
            worker.buffer = bytearray(rest)
            self._answer(worker, line)

    def _answer(self, worker: _Worker, line: bytes) -> None:
        request = json.loads(line)
        address = address_from_json(request["address"])
        found = self._find_socket(request["listener"], address)
        worker.sockets.setblocking(True)
        try:
            answer_socket(worker.sockets, found, "the main process holds no such listen socket")
        finally:
            worker.sockets.setblocking(False)
