"""A pre-started next epoch (`xds-proxy-restarter --prestart`, docs/cli.md).

The restarter starts SCRIPT for epoch N+1 as soon as epoch N runs, with `STANDBY_ENV` naming
one end of a socket pair. `xds-proxy` then stands by (`stand_by`): it does every import the
serving path needs, compiles the checks of the first messages it will check (they depend on
no config), says `ready`, and blocks until the restarter says `go` (on SIGHUP). Only then
does it read its flags' config files, connect to its parent and take the sockets, as a cold
child does, so a SIGHUP costs the start-up without the interpreter and the imports.

While it waits it holds no bound socket, runs no thread and has not touched the hot-restart
domain; it is named `xds-standby` (`ps -o comm`, `top`, `pgrep`) until `go`; it dies with the
restarter (PR_SET_PDEATHSIG, and the end of the socket pair) and on SIGTERM or SIGINT.

Hot restart is how new versions are deployed, so on `go` the files of every imported module
(and the interpreter) are compared with what they were once imported (inode, mtime, ctime and
size: ~2 ms for ~800 files); when one changed, the process runs itself again from scratch
(`exec_cold`), logged.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import socket
import sys
import types
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)

from xds_proxy.config import pgv

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
STANDBY_NAME = b"xds-standby"
READY = b"ready\n"
# A file's ctime lags the change by up to a kernel tick, and the first few modules (the CLI's)
# were imported before the standby read the clock: a file whose ctime is this close to the
# start counts as changed during the imports (a cold start, never a half-old process).
IMPORT_SLACK_NS = 100_000_000
GO = b"go\n"
# What serving needs at once; the modules these import lazily are loaded too (_load_lazy).
SERVING_MODULES = ("xds_proxy.bootstrap", "xds_proxy.server")
# The messages a start checks first (the bootstrap, then what xDS brings; the connection
# manager is in nearly every listener): their PGV plans, and those of every message type they
# contain, are compiled while standing by (`_compile_checks`), not after `go`.
FIRST_CHECKED = (
    bootstrap_pb2.Bootstrap,
    listener_pb2.Listener,
    http_connection_manager_pb2.HttpConnectionManager,
    route_pb2.RouteConfiguration,
    cluster_pb2.Cluster,
    endpoint_pb2.ClusterLoadAssignment,
)


@dataclass(frozen=True)
class ModuleFiles:
    """What every imported module's file (and the interpreter) was: `_signature`; and, with
    `since_ns`, when the imports began: a file changed after that (its ctime) may have been
    imported before the change, after it, or half of each."""

    stats: dict[str, tuple[int, int, int, int]]
    since_ns: int | None = None

    @classmethod
    def now(cls, since_ns: int | None = None) -> ModuleFiles:
        paths = {sys.executable}
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                paths.add(path)
        return cls({path: _signature(path) for path in paths}, since_ns)

    def changed(self) -> list[str]:
        """The files that are not what they were, or were changed while they were imported,
        sorted."""
        since = self.since_ns
        return sorted(
            path
            for path, seen in self.stats.items()
            if _signature(path) != seen or (since is not None and seen[2] >= since)
        )


def _signature(path: str) -> tuple[int, int, int, int]:
    """Inode, mtime, ctime and size: ctime and the inode also catch a file put back with its
    old mtime and size (`tar x`, `rsync -a`, `cp -p`), which mtime alone would miss."""
    try:
        found = os.stat(path)
    except OSError:
        return (-1, -1, -1, -1)
    return (found.st_ino, found.st_mtime_ns, found.st_ctime_ns, found.st_size)


def stand_by(channel_fd: int, started_ns: int) -> list[str]:
    """Import the serving path, say `ready` on the channel, wait for `go`; then return the
    module files changed meanwhile, or while they were imported (since `started_ns`, the
    wall clock before the imports, less IMPORT_SLACK_NS; empty: go on in this process).
    Exits, silently, when the restarter is gone."""
    channel = socket.socket(fileno=channel_fd)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    own_name = _comm()
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(STANDBY_NAME), 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no traceback when a terminal's ^C hits us
    for name in SERVING_MODULES:
        importlib.import_module(name)
    _load_lazy()
    _compile_checks()
    files = ModuleFiles.now(since_ns=started_ns - IMPORT_SLACK_NS)
    with contextlib.suppress(OSError):  # the restarter may have said `go` meanwhile: read below
        channel.sendall(READY)
    if _read_line(channel) != GO:
        os._exit(0)  # the restarter is gone (or sent nonsense): never start
    channel.close()
    libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)  # from here on, a child like any other
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(own_name), 0, 0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return files.changed()


def exec_cold() -> None:
    """Run this process's command line again from scratch, in this process (same pid)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _read_line(channel: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        try:
            more = channel.recv(64)
        except OSError:
            return b""
        if not more:
            return b""
        data += more
    return data


def _load_lazy() -> None:
    """Load our modules bound with `lazy_import` (xds_proxy/lazy.py) that nothing has read
    yet, and those they bind in turn: a standby has the time, a child does not."""
    tried: set[str] = set()
    while True:
        pending = [
            name
            for name, module in list(sys.modules.items())
            if name.startswith("xds_proxy.")
            and type(module) is not types.ModuleType
            and name not in tried
        ]
        if not pending:
            return
        for name in pending:
            tried.add(name)
            getattr(sys.modules[name], "__name__")  # the first read executes it  # noqa: B009


def _compile_checks() -> None:
    """The PGV plan of every message type the FIRST_CHECKED messages can contain (~360
    types, ~20 ms here; ~6 ms less CPU after `go`): a plan depends on the type only, never on
    the config."""
    seen: set[str] = set()
    pending = [message.DESCRIPTOR for message in FIRST_CHECKED]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        pgv.plan_for(descriptor)
        pending.extend(f.message_type for f in descriptor.fields if f.message_type is not None)


def _comm() -> bytes:
    try:
        with open("/proc/self/comm", "rb") as comm:
            return comm.read().strip()[:15]
    except OSError:
        return b"python3"
