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
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

TERM_TIMEOUT_S = 60.0  # after forwarding SIGTERM, SIGKILL whatever is still running


@dataclass
class Child:
    epoch: int
    popen: subprocess.Popen[bytes]


def say(message: str) -> None:
    print(f"xds-proxy-restarter: {message}", flush=True)


class Restarter:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.children: list[Child] = []
        self.next_epoch = 0

    def start_next(self) -> None:
        epoch = self.next_epoch
        self.next_epoch += 1
        env = {**os.environ, "RESTART_EPOCH": str(epoch)}
        try:
            popen = subprocess.Popen(self.command, env=env)
        except OSError as error:
            say(f"cannot start {self.command[0]}: {error.strerror}")
            self.kill_all()
            raise SystemExit(1) from None
        self.children.append(Child(epoch, popen))
        say(f"started epoch {epoch} pid {popen.pid}")

    def reap(self) -> bool:
        """Collect exited children; True when one of them failed."""
        failed = False
        for child in list(self.children):
            code = child.popen.poll()
            if code is None:
                continue
            self.children.remove(child)
            say(f"epoch {child.epoch} pid {child.popen.pid} exited with status {code}")
            failed |= code != 0
        return failed

    def terminate_all(self) -> None:
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
        self.start_next()
        while True:
            for signum in os.read(wake_read, 64):
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
                        say("no child left: exiting")
                        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xds-proxy-restarter",
        description="Run SCRIPT with RESTART_EPOCH=0; on SIGHUP run it again with the next "
        "epoch (hot restart); forward SIGTERM/SIGINT to every child.",
    )
    parser.add_argument("script", help="executable that execs xds-proxy with $RESTART_EPOCH")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for SCRIPT")
    options = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not os.access(options.script, os.X_OK):
        print(f"script: {options.script} is not an executable file", file=sys.stderr)
        return 1
    return Restarter([options.script, *options.args]).run()


if __name__ == "__main__":
    raise SystemExit(main())
