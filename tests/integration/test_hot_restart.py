"""Hot restart end to end: control-plane-stub + `xds-proxy-restarter` + real xds-proxy epochs.

Under continuous HTTP/1.1 load (clients honour `connection: close`), three SIGHUPs in a row:
no refused connection, no failed request, each epoch serves, every old epoch exits once the
parent shutdown time has passed, and every listen socket (a static one and an LDS one) is the
same kernel socket from epoch 0 to epoch 3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from bench.churn import Load
from bench.hot_restart import (
    HttpLoad,
    RestarterRun,
    bootstrap_with_static,
    listen_inodes,
    socket_inodes,
)
from tests.helpers.listeners import http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import REPO_ROOT, StubProcess, stub_env

BODY = "served across restarts"
PARENT_SHUTDOWN_S = 2
DRAIN_TIME_S = 1


@pytest.fixture
def stub(tmp_path):
    process = StubProcess(tmp_path / "stub").start()
    yield process
    process.stop()


def restarter(tmp_path, bootstrap: dict, **kwargs) -> RestarterRun:
    """xds-proxy epochs under `xds-proxy-restarter`, with the suite's worker processes
    (`XDS_PROXY_TEST_CONCURRENCY`: `make test` runs this suite with two as well)."""
    return RestarterRun(tmp_path, bootstrap, concurrency=ProxyProcess.concurrency, **kwargs)


def served(run: RestarterRun, epoch: int) -> int:
    return run.stat(epoch, "http.ingress_http.downstream_rq_total") or 0


def test_the_child_counts_the_parents_open_connections(tmp_path, stub):
    """`server.parent_connections` in the child: the parent's open downstream connections,
    its workers' with `--concurrency N` (they hold them all)."""
    lds_port = free_port()
    stub.client.set_resources(listeners=[http_listener("dynamic", lds_port, BODY)])
    bootstrap = bootstrap_with_static(stub.xds_address, free_port(), BODY)
    run = restarter(tmp_path, bootstrap, parent_shutdown_time_s=30)
    held: list[socket.socket] = []
    try:
        run.wait_live(0)
        wait_for(lambda: lds_port in listen_inodes(), what="the LDS listener bound")
        for _ in range(6):  # requests still coming: the parent's drain cannot close them
            client = socket.create_connection(("127.0.0.1", lds_port))
            client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
            held.append(client)
        wait_for(
            lambda: (run.stat(0, "http.ingress_http.downstream_cx_active") or 0) >= 6,
            what="epoch 0 holding the six connections",
        )
        assert run.restart() == 1
        run.wait_live(1)
        wait_for(
            lambda: (run.stat(1, "server.parent_connections") or 0) >= 6,
            what="epoch 1 counting its parent's connections",
        )
    finally:
        for client in held:
            client.close()
        run.stop()


@pytest.mark.timeout(120)  # three restarts under load: ~9 s, CPU-bound
def test_three_hot_restarts_under_load_lose_nothing(tmp_path, stub):
    static_port, lds_port, admin_port = free_port(), free_port(), free_port()
    stub.client.set_resources(listeners=[http_listener("dynamic", lds_port, BODY)])
    bootstrap = bootstrap_with_static(stub.xds_address, static_port, BODY)
    # one admin port for every epoch: each parent closes its admin when its child says hello
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    run = restarter(
        tmp_path, bootstrap, drain_time_s=DRAIN_TIME_S, parent_shutdown_time_s=PARENT_SHUTDOWN_S
    )
    load = h2_load = None
    try:
        run.wait_live(0)
        wait_for(lambda: lds_port in listen_inodes(), what="the LDS listener bound")
        inodes = {port: listen_inodes()[port] for port in (static_port, lds_port)}
        assert all(len(found) == 1 for found in inodes.values())
        assert all(found <= socket_inodes(run.pid(0)) for found in inodes.values())
        load = HttpLoad([static_port, lds_port], BODY.encode()).start()
        # HTTP/2 clients that honour GOAWAY, on both listeners too
        h2_load = Load([], [static_port, lds_port], body=BODY.encode()).start()
        wait_for(lambda: served(run, 0) >= 20, what="epoch 0 serving the load")

        for epoch in (1, 2, 3):
            assert run.restart() == epoch
            run.wait_live(epoch)
            assert run.admin(epoch) == f"127.0.0.1:{admin_port}"
            assert run.stat(epoch, "server.hot_restart_epoch") == epoch
            info = json.loads(run.get(epoch, "/server_info")[1])
            assert info["command_line_options"]["restart_epoch"] == epoch
            # the child serves on the very kernel sockets epoch 0 bound
            pid = run.pid(epoch)
            for port, found in inodes.items():
                assert listen_inodes().get(port) == found, f"port {port} re-bound"
                assert found <= socket_inodes(pid), f"epoch {epoch} lacks port {port}'s socket"
            # the parent stopped accepting and drains: only the child takes connections now
            wait_for(
                lambda e=epoch: run.log().count("the child took over; draining every") == e,
                what=f"epoch {epoch - 1} draining",
            )
            wait_for(lambda e=epoch: served(run, e) >= 20, what=f"epoch {epoch} serving")
            # the parent exits once the parent shutdown time is over (the child starts that
            # timer after its SIGHUP, so the parent's lifetime from the SIGHUP is longer)
            wait_for(
                lambda e=epoch: run.exit_status(e - 1) is not None,
                timeout=PARENT_SHUTDOWN_S + 8,
                what=f"epoch {epoch - 1} exit",
            )
            assert run.exit_status(epoch - 1) == 0
            lifetime = run.exited_at[epoch - 1] - run.restarted_at[epoch]
            assert lifetime >= PARENT_SHUTDOWN_S, (epoch - 1, lifetime)

        assert run.exit_status(3) is None
        counts = load.stop()
        load = None
        _, h2_counts = h2_load.stop()
        h2_load = None
        assert h2_counts.failed == 0, h2_counts
        assert h2_counts.ok >= 100
        assert counts.refused == 0, counts.errors
        assert counts.failed == 0, counts.errors
        assert counts.ok >= 200
        log = run.log()
        assert "going on alone" not in log
        assert log.count("hot restart: told the parent to drain") == 3
        assert log.count("shutting down admin due to child startup") == 3
    finally:
        for running in (load, h2_load):
            if running is not None:
                running.stop()
        status = run.stop()
    assert status == 0, run.log()[-3000:]
    assert run.log().count("exited with status 0") == 4  # epoch 3 on SIGTERM too


def test_server_info_tells_hot_restart_version_and_uptime_of_all_epochs(tmp_path, stub):
    bootstrap = bootstrap_with_static(stub.xds_address, free_port(), BODY)
    run = restarter(tmp_path, bootstrap, parent_shutdown_time_s=1)
    try:
        run.wait_live(0)
        wait_for(
            lambda: json.loads(run.get(0, "/server_info")[1])["uptime_current_epoch"] != "0s",
            what="epoch 0 up for a second",
        )
        run.restart()
        run.wait_live(1)
        info = json.loads(run.get(1, "/server_info")[1])
        assert info["hot_restart_version"] not in ("", "disabled")
        current = int(info["uptime_current_epoch"].rstrip("s"))
        assert int(info["uptime_all_epochs"].rstrip("s")) > current
    finally:
        run.stop()


def test_child_without_parent_goes_on_alone(tmp_path, stub):
    """Epoch 1 started with no epoch 0 (e.g. the parent died): it binds and serves itself."""
    port = free_port()
    bootstrap = bootstrap_with_static(stub.xds_address, port, BODY)
    run = restarter(tmp_path, bootstrap)
    try:
        run.wait_live(0)
        os.kill(run.pid(0), signal.SIGKILL)  # an abnormal exit: the restarter gives up too
        wait_for(lambda: not run.process.alive(), what="restarter exit")
        assert run.process.popen.returncode == 1
        script = next(tmp_path.glob("start_*.sh"))
        admin = tmp_path / "xds-proxy-admin-1"
        result = subprocess.Popen(
            [str(script)],
            env={**os.environ, **stub_env(), "RESTART_EPOCH": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        try:
            wait_for(lambda: admin.exists() and admin.read_text(), what="epoch 1 admin")
            wait_for(lambda: port in listen_inodes(), what="epoch 1 bound the static port")
        finally:
            result.send_signal(signal.SIGTERM)
            output = result.communicate(timeout=10)[0].decode()
        assert "unreachable" in output and "going on alone" in output, output
    finally:
        run.stop()


def test_same_base_id_and_epoch_twice_fails_with_one_line(tmp_path, stub):
    bootstrap = bootstrap_with_static(stub.xds_address, free_port(), BODY)
    run = restarter(tmp_path, bootstrap)
    try:
        run.wait_live(0)
        script = next(tmp_path.glob("start_*.sh"))
        second = subprocess.run(
            [str(script)],
            env={**os.environ, **stub_env(), "RESTART_EPOCH": "0"},
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if "][info][" not in line]
        assert len(errors) == 1, second.stderr
        assert errors[0].startswith("error: --base-id: unable to bind the hot restart domain")
        assert run.get(0, "/ready") == (200, "LIVE\n")  # the first one is untouched
    finally:
        run.stop()


def test_restarter_forwards_sigterm_and_exits_when_children_are_gone(tmp_path):
    script = tmp_path / "child.sh"
    script.write_text('#!/bin/sh\necho "epoch $RESTART_EPOCH"\nexec sleep 60\n')
    script.chmod(0o755)
    log = tmp_path / "restarter.log"
    with open(log, "wb") as out:
        restarter = subprocess.Popen(
            [sys.executable, "-m", "xds_proxy.restarter", str(script)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **stub_env()},
        )
        try:
            wait_for(lambda: "epoch 0" in log.read_text(), what="epoch 0")
            restarter.send_signal(signal.SIGHUP)
            wait_for(lambda: "epoch 1" in log.read_text(), what="epoch 1")
            restarter.send_signal(signal.SIGTERM)
            assert restarter.wait(10) == 0
        finally:
            if restarter.poll() is None:
                restarter.kill()
                restarter.wait()
    text = log.read_text()
    assert "started epoch 0 pid" in text and "started epoch 1 pid" in text
    # sleep dies of the forwarded SIGTERM: status -15 for both, reported before exiting 0
    assert text.count("exited with status -15") == 2, text
