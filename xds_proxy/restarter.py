"""`xds-proxy-restarter SCRIPT [ARG...]`: keeps a proxy running across hot restarts.

The same pattern as Envoy's `hot-restarter.py`, so the same operations work for both:
SCRIPT (which should `exec xds-proxy ... --restart-epoch "$RESTART_EPOCH"`) is started with
RESTART_EPOCH=0; every SIGHUP starts it again with the next epoch (the new process takes the
listen sockets over from the previous one and tells it when to exit); SIGTERM and SIGINT are
forwarded as SIGTERM to every child, and the restarter exits once they are gone. When a child
exits with a non-zero status (or is killed), every other child is killed and the restarter
exits 1, as Envoy's does; when the last child exits cleanly, it exits 0.

Children are started with fork+exec by this small process that holds no gRPC state, so the
proxies themselves never fork (docs/architecture.md, "Known traps").

Ours, off by default (SCRIPT may exec a real Envoy, which would hot-restart at once):
`--prestart` starts SCRIPT for the next epoch as soon as an epoch is started, with
`XDS_PROXY_STANDBY_FD` set. That process stands by (xds_proxy/standby.py): it imports, says
`ready`, and waits; on SIGHUP it is told `go` and becomes the next epoch, saving the
interpreter's start and the imports. It is not an epoch until then: not in `children`, not
counted, its end never makes the restarter exit. One that dies is replaced once per epoch;
after that (or when SCRIPT changed on disk) the next epoch starts cold. All logged.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from xds_proxy.cli import STANDBY_ENV

TERM_TIMEOUT_S = 60.0  # after forwarding SIGTERM, SIGKILL whatever is still running
STANDBY_TERM_TIMEOUT_S = 5.0  # a standby only imports: SIGKILL it if SIGTERM did not do


@dataclass
class Child:
    epoch: int
    popen: subprocess.Popen[bytes]
    channel: socket.socket | None = None  # a former standby's; closed once it is reaped


@dataclass
class Standby:
    """SCRIPT started ahead for `epoch`, waiting for `go` on `channel`."""

    epoch: int
    popen: subprocess.Popen[bytes]
    channel: socket.socket
    script: tuple[int, int, int]  # SCRIPT's inode, mtime and size when it was started
    ready: bool = False

    def describe(self) -> str:
        return f"standby for epoch {self.epoch}: pid {self.popen.pid}"


def say(message: str) -> None:
    print(f"xds-proxy-restarter: {message}", flush=True)


class Restarter:
    def __init__(self, command: list[str], prestart: bool = False) -> None:
        self.command = command
        self.prestart = prestart
        self.children: list[Child] = []
        self.next_epoch = 0
        self.standby: Standby | None = None
        self.standby_replaced = False  # one replacement per epoch, then cold
        self.selector = selectors.DefaultSelector()

    def start_next(self) -> None:
        epoch = self.next_epoch
        self.next_epoch += 1
        standby = self.take_standby(epoch)
        if standby is not None:
            self.children.append(Child(epoch, standby.popen, standby.channel))
            say(f"started epoch {epoch} pid {standby.popen.pid} (pre-started)")
        else:
            env = {**os.environ, "RESTART_EPOCH": str(epoch)}
            try:
                popen = subprocess.Popen(self.command, env=env)
            except OSError as error:
                say(f"cannot start {self.command[0]}: {error.strerror}")
                self.kill_all()
                raise SystemExit(1) from None
            self.children.append(Child(epoch, popen))
            say(f"started epoch {epoch} pid {popen.pid}")
        self.standby_replaced = False
        if self.prestart:
            self.start_standby()

    def start_standby(self) -> None:
        """SCRIPT for the next epoch, told to stand by on its end of a socket pair."""
        ours, theirs = socket.socketpair()
        env = {
            **os.environ,
            "RESTART_EPOCH": str(self.next_epoch),
            STANDBY_ENV: str(theirs.fileno()),
        }
        try:
            popen = subprocess.Popen(self.command, env=env, pass_fds=(theirs.fileno(),))
        except OSError as error:
            say(f"cannot pre-start {self.command[0]}: {error.strerror}; the next epoch starts cold")
            ours.close()
            return
        finally:
            theirs.close()
        self.standby = Standby(self.next_epoch, popen, ours, self.script_signature())
        self.selector.register(ours, selectors.EVENT_READ)
        say(f"{self.standby.describe()} started")

    def script_signature(self) -> tuple[int, int, int]:
        try:
            found = os.stat(self.command[0])
        except OSError:
            return (-1, -1, -1)
        return (found.st_ino, found.st_mtime_ns, found.st_size)

    def take_standby(self, epoch: int) -> Standby | None:
        """The standby told `go` for `epoch`, or None (logged why) to start it cold."""
        standby, self.standby = self.standby, None
        if not self.prestart:
            return None
        if standby is None:
            if epoch > 0:
                say(f"no standby: epoch {epoch} starts cold")
            return None
        self.forget(standby.channel)
        why = ""
        if standby.popen.poll() is not None:
            why = f"it ended with status {standby.popen.returncode}"
        elif self.script_signature() != standby.script:
            why = f"{self.command[0]} changed since it started"
        else:
            try:
                standby.channel.sendall(b"go\n")
                return standby
            except OSError as error:
                why = f"cannot tell it to go: {error.strerror}"
        say(f"{standby.describe()} not used ({why}): epoch {epoch} starts cold")
        self.stop_standby(standby)
        return None

    def on_standby_message(self, channel: object) -> None:
        standby = self.standby
        if standby is None or channel is not standby.channel:
            return  # a standby taken (or replaced) by a signal handled in the same wake-up
        try:
            said = standby.channel.recv(64)
        except OSError:
            said = b""
        if said.startswith(b"ready"):
            standby.ready = True
            say(f"{standby.describe()} ready")
        elif not said:  # it closed its end: it is ending; SIGCHLD says how
            self.forget(standby.channel)

    def reap_standby(self) -> None:
        """A standby that ended is replaced once per epoch; after that the next is cold."""
        standby = self.standby
        if standby is None or standby.popen.poll() is None:
            return
        self.standby = None
        self.forget(standby.channel)
        standby.channel.close()
        say(f"{standby.describe()} ended with status {standby.popen.returncode}")
        if self.standby_replaced:
            say(f"epoch {standby.epoch} will start cold")
            return
        self.standby_replaced = True
        self.start_standby()

    def stop_standby(self, standby: Standby | None = None) -> None:
        standby = standby or self.standby
        if standby is None:
            return
        if standby is self.standby:
            self.standby = None
            self.forget(standby.channel)
        if standby.popen.poll() is None:
            say(f"stopping the {standby.describe()}")
            standby.popen.send_signal(signal.SIGTERM)
            try:
                standby.popen.wait(STANDBY_TERM_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                standby.popen.kill()
                standby.popen.wait()
        standby.channel.close()

    def forget(self, channel: socket.socket) -> None:
        if channel.fileno() in self.selector.get_map():
            self.selector.unregister(channel)

    def reap(self) -> bool:
        """Collect exited children; True when one of them failed."""
        failed = False
        for child in list(self.children):
            code = child.popen.poll()
            if code is None:
                continue
            self.children.remove(child)
            if child.channel is not None:
                child.channel.close()
            say(f"epoch {child.epoch} pid {child.popen.pid} exited with status {code}")
            failed |= code != 0
        return failed

    def terminate_all(self) -> None:
        self.stop_standby()
        for child in self.children:
            say(f"sending SIGTERM to epoch {child.epoch} pid {child.popen.pid}")
            child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERM_TIMEOUT_S
        for child in self.children:
            try:
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
        self.reap()

    def kill_all(self) -> None:
        if self.standby is not None:
            self.standby.popen.kill()
            self.stop_standby()
        for child in self.children:
            child.popen.kill()
        for child in self.children:
            child.popen.wait()
        self.reap()

    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)  # the handlers below do nothing; the fd tells us
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, lambda *_: None)
        self.selector.register(wake_read, selectors.EVENT_READ)
        self.start_next()
        while True:
            for key, _ in self.selector.select():
                if key.fileobj != wake_read:
                    self.on_standby_message(key.fileobj)
                    continue
                done = self.on_signals(os.read(wake_read, 64))
                if done is not None:
                    return done

    def on_signals(self, signums: bytes) -> int | None:
        """Act on the signals received; the exit status once the restarter is done."""
        for signum in signums:
            if signum == signal.SIGHUP:
                say("SIGHUP: hot restart")
                self.start_next()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.terminate_all()
                say("all children exited")
                return 0
            elif signum == signal.SIGCHLD:
                if self.reap():
                    say("a child exited abnormally: killing every child")
                    self.kill_all()
                    return 1
                if not self.children:
                    self.stop_standby()
                    say("no child left: exiting")
                    return 0
                self.reap_standby()
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xds-proxy-restarter",
        description="Run SCRIPT with RESTART_EPOCH=0; on SIGHUP run it again with the next "
        "epoch (hot restart); forward SIGTERM/SIGINT to every child.",
    )
    parser.add_argument(
        "--prestart",
        action="store_true",
        help="start SCRIPT for the next epoch ahead, standing by until SIGHUP (xds-proxy only)",
    )
    parser.add_argument("script", help="executable that execs xds-proxy with $RESTART_EPOCH")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for SCRIPT")
    options = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not os.access(options.script, os.X_OK):
        print(f"script: {options.script} is not an executable file", file=sys.stderr)
        return 1
    return Restarter([options.script, *options.args], prestart=options.prestart).run()


if __name__ == "__main__":
    raise SystemExit(main())
