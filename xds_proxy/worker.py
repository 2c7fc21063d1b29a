"""A worker process of `--concurrency N`: `python -m xds_proxy.worker CONTROL_FD SOCKETS_FD
MAIN_PID COUNT_FD PACING_FD LIMITS_FD EVENTS_FD`, started by the main process
(`workers/supervisor.py`), never by hand.

It is a whole xds-proxy server (listener manager, drain manager, clusters, connections) with
three differences: its one control plane is the main process's relay (every ConfigSource
means it), its listen sockets come from the main process (the same kernel sockets, so every
worker accepts on them and no update re-binds), and it has no admin endpoint and no hot
restart of its own (the main process has them and asks the worker for its state over the
control channel). Its clusters run no active health check and decide no outlier ejection:
the main process does, and tells it (upstream/shared_health.py, over the events channel).
It exits when the main process dies (parent-death signal) or closes the control channel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import replace

import uvloop
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2

from xds_proxy.cli import configure_logging
from xds_proxy.errors import ConfigError
from xds_proxy.listener.actions import SocketAddress
from xds_proxy.listener.manager import BindError
from xds_proxy.listener.shared_count import SharedCount, SharedCounts
from xds_proxy.listener.shared_pacing import SharedPacing
from xds_proxy.options import Options
from xds_proxy.server import Server
from xds_proxy.upstream.host import HOST_STAT_NAMES, host_address_text
from xds_proxy.workers.channel import MAX_LINE, Events, ask_for_socket, encode, read_start
from xds_proxy.workers.merge import HostCounts
from xds_proxy.xds.source import use_worker_relay

log = logging.getLogger("xds_proxy.workers")

PR_SET_PDEATHSIG = 1


def worker_bootstrap(bootstrap: bootstrap_pb2.Bootstrap) -> bootstrap_pb2.Bootstrap:
    """The main process's bootstrap as a worker runs it: no admin; listeners and clusters
    over ADS (the relay); static resources as they are."""
    mine = bootstrap_pb2.Bootstrap()
    mine.CopyFrom(bootstrap)
    mine.ClearField("admin")
    mine.ClearField("dynamic_resources")
    ads = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )
    mine.dynamic_resources.lds_config.CopyFrom(ads)
    mine.dynamic_resources.cds_config.CopyFrom(ads)
    return mine


def _die_with_parent(main_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != main_pid:  # the main process died before the signal was set
        os._exit(1)


class _SocketSource:
    """The worker's listen sockets: asked of the main process, one at a time."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel

    def __call__(self, address: SocketAddress, listener: str) -> socket.socket:
        try:
            sock = ask_for_socket(self._channel, listener, address)
        except OSError as error:
            raise BindError(f"listener '{listener}': {error}") from None
        sock.setblocking(False)
        return sock


async def _serve_control(server: Server, control: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=control, limit=MAX_LINE)
    while True:
        line = await reader.readline()
        if not line:
            break
        request = json.loads(line)
        try:
            answer = _answer(server, request)
        except Exception as error:  # the main process logs nothing of ours: say it here
            log.exception("worker: request %r failed", request)
            answer = {"error": f"{type(error).__name__}: {error}"}
        writer.write(encode({"id": request.get("id"), "answer": answer}))
    server.request_shutdown()  # the main process is gone


def _host_counts(server: Server) -> HostCounts:
    """This worker's per-host stats (`/clusters`), for the main process to add up."""
    return {
        name: {
            host_address_text(host.address): [getattr(host.stats, stat) for stat in HOST_STAT_NAMES]
            for host in cluster.hosts
        }
        for name, cluster in server.clusters.clusters.items()
    }


def _answer(server: Server, request: dict) -> object:
    """One request of the main process (`workers/channel.py`)."""
    op = request.get("op")
    if op == "state":
        active = {name: version.id for name, version in server.manager.active.items()}
        return {
            "stats": server.stats.snapshot(),
            "drains": server.runtime.drain_report(),
            "serving": server.runtime.serving_connections(active),
            "hosts": _host_counts(server),
        }
    if op == "drains":
        return server.runtime.drain_report()
    if op == "connections":
        return server.stats.gauge("server.total_connections").value
    commands = server.worker_commands()
    if op == "call" and request.get("name") in commands:
        commands[request["name"]](*request.get("args", []))
        return {"ok": True}
    return {"error": f"unknown request {request!r}"}


async def _serve(
    options: Options,
    bootstrap: bootstrap_pb2.Bootstrap,
    index: int,
    workers: int,
    control: socket.socket,
    sockets: socket.socket,
    connections: SharedCount,
    pacing: SharedPacing,
    limits: SharedCounts,
    events_socket: socket.socket,
) -> int:
    server = Server(
        options,
        bootstrap,
        is_worker=True,
        worker_index=index,
        workers_in_all=workers,
        socket_opener=_SocketSource(sockets),
        shared_connections=connections,
        shared_pacing=pacing,
        shared_counts=limits,
    )
    # The main process's decisions (host health, EDS fetches ended), applied as they come
    # (the clusters follow the main process before the first one arrives).
    events = Events(server.clusters.follow)
    server.clusters.follow_main(events.send)
    await events.attach(events_socket)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.request_shutdown)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the main process decides
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    try:
        await server.start()
    except ConfigError as error:
        log.error("worker %d: %s", index, error)
        events.close()
        await server.stop()
        return 1
    control_task = asyncio.create_task(_serve_control(server, control), name="worker-control")
    await server.shutdown_requested.wait()
    control_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await control_task
    events.close()
    await server.stop()
    return 0


def main(argv: list[str]) -> int:
    control_fd, sockets_fd, main_pid, count_fd, pacing_fd, limits_fd, events_fd = (
        int(arg) for arg in argv
    )
    _die_with_parent(main_pid)
    control = socket.socket(fileno=control_fd)
    sockets = socket.socket(fileno=sockets_fd)
    start = read_start(control)  # before the event loop
    options = replace(
        Options(**start["options"]),
        concurrency=1,
        disable_hot_restart=True,
        admin_address_path=None,
        drain_on_sigterm=False,
    )
    configure_logging(options)
    bootstrap = bootstrap_pb2.Bootstrap.FromString(base64.b64decode(start["bootstrap"]))
    use_worker_relay(start["relay"], start["index"])
    connections = SharedCount(count_fd, start["workers"], start["index"])
    return uvloop.run(
        _serve(
            options,
            worker_bootstrap(bootstrap),
            start["index"],
            start["workers"],
            control,
            sockets,
            connections,
            SharedPacing(pacing_fd),
            SharedCounts(limits_fd, start["workers"], start["index"]),
            socket.socket(fileno=events_fd),
        )
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
