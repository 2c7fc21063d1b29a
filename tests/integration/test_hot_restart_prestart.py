"""`xds-proxy-restarter --prestart` end to end: control-plane-stub + real xds-proxy epochs.

The next epoch is started ahead and stands by (xds_proxy/standby.py) until the SIGHUP: a
restart under load loses nothing and the pre-started process becomes the LIVE epoch; a
changed module or SCRIPT makes the next epoch start cold; a killed standby is replaced once,
then the next SIGHUP starts cold; SIGTERM (or the restarter's death) leaves no process behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bench.hot_restart import HttpLoad, RestarterRun, bootstrap_with_static, socket_inodes
from tests.helpers.listeners import http_listener
from tests.helpers.procs import free_port, wait_for
from tests.helpers.stub import StubProcess, stub_env

BODY = "served by a pre-started epoch"


@pytest.fixture
def stub(tmp_path):
    process = StubProcess(tmp_path / "stub").start()
    yield process
    process.stop()


def start(tmp_path: Path, stub: StubProcess, **kwargs) -> tuple[RestarterRun, int, int]:
    """A `--prestart` restarter serving a static and an LDS listener; its ports."""
    static_port, lds_port = free_port(), free_port()
    stub.client.set_resources(listeners=[http_listener("dynamic", lds_port, BODY)])
    bootstrap = bootstrap_with_static(stub.xds_address, static_port, BODY)
    run = RestarterRun(tmp_path, bootstrap, prestart=True, **kwargs)
    return run, static_port, lds_port


def gone(pid: int) -> bool:
    """No such process, or only its zombie (not yet reaped by whoever is its parent now)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.timeout(120)
def test_prestarted_epochs_take_over_under_load_and_lose_nothing(tmp_path, stub):
    run, static_port, lds_port = start(tmp_path, stub)
    load = None
    try:
        run.wait_live(0)
        load = HttpLoad([static_port, lds_port], BODY.encode()).start()
        wait_for(lambda: load.total().ok >= 20, what="load flowing")
        for epoch in (1, 2):
            standby = run.standby_pid(epoch)
            # waiting costs little: one thread, one socket (its channel to the restarter:
            # nothing bound, no hot-restart domain), and a name that says what it is
            assert comm(standby) == "xds-standby"
            assert len(os.listdir(f"/proc/{standby}/task")) == 1
            assert len(socket_inodes(standby)) == 1
            assert run.admin_path(epoch).exists() is False
            assert run.restart() == epoch
            run.wait_live(epoch)
            assert run.pid(epoch) == standby
            assert comm(standby) != "xds-standby"
            assert run.stat(epoch, "server.hot_restart_epoch") == epoch
            served = load.total().ok
            wait_for(lambda s=served: load.total().ok >= s + 20, what=f"epoch {epoch} serving")
        counts = load.stop()
        load = None
        assert counts.refused == 0, counts.errors
        assert counts.failed == 0, counts.errors
        log = run.log()
        assert "started epoch 1 pid" in log and "started epoch 2 pid" in log
        assert log.count("(pre-started)") == 2
        assert "starts cold" not in log
        assert "going on alone" not in log
        last_standby = run.standby_pid(3)
    finally:
        if load is not None:
            load.stop()
        status = run.stop()
    assert status == 0, run.log()[-3000:]
    assert f"stopping the standby for epoch 3: pid {last_standby}" in run.log()
    wait_for(lambda: gone(last_standby), what="the standby gone")


def test_sigterm_with_a_standby_waiting_exits_cleanly(tmp_path, stub):
    run, _, _ = start(tmp_path, stub)
    try:
        run.wait_live(0)
        epoch0, standby = run.pid(0), run.standby_pid(1)
    finally:
        status = run.stop()  # SIGTERM
    assert status == 0, run.log()[-3000:]
    log = run.log()
    assert f"stopping the standby for epoch 1: pid {standby}" in log
    assert log.count("exited with status") == 1  # epoch 0 only: a standby is not an epoch
    assert f"epoch 0 pid {epoch0} exited with status 0" in log
    assert "all children exited" in log
    assert gone(standby) and gone(epoch0)


def test_a_module_changed_while_standing_by_makes_the_epoch_start_cold(tmp_path, stub):
    """Hot restart is how new versions are deployed: a module file the standby imported
    changes before the SIGHUP, so it runs itself again from scratch (same pid), logged."""
    site = tmp_path / "site"
    site.mkdir()
    module = site / "sitecustomize.py"  # imported by every interpreter on this PYTHONPATH
    module.write_text("VERSION = 1\n")
    python_path = f"{site}{os.pathsep}{stub_env()['PYTHONPATH']}"
    run, _, _ = start(tmp_path, stub, env={"PYTHONPATH": python_path})
    try:
        run.wait_live(0)
        standby = run.standby_pid(1)
        module.write_text("VERSION = 2  # a new version\n")
        run.restart()
        run.wait_live(1)
        assert run.pid(1) == standby  # the same process, started again
        log = run.log()
        assert f"pre-started: {module} changed since this process imported it" in log
        assert "starting again cold" in log
    finally:
        run.stop()


def test_a_sighup_before_the_standby_is_ready_still_uses_it(tmp_path, stub):
    """`go` waits in the channel: the standby reads it once its imports are done."""
    site = tmp_path / "site"
    site.mkdir()
    gate = tmp_path / "gate"
    # a standby (only it has the variable) is held before its imports until the gate exists
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        "if 'XDS_PROXY_STANDBY_FD' in os.environ:\n"
        f"    while not os.path.exists({str(gate)!r}):\n"
        "        time.sleep(0.01)\n"
    )
    python_path = f"{site}{os.pathsep}{stub_env()['PYTHONPATH']}"
    run, _, _ = start(tmp_path, stub, env={"PYTHONPATH": python_path})
    try:
        run.wait_live(0)
        wait_for(lambda: "standby for epoch 1: pid" in run.log(), what="the standby started")
        run.restart()
        wait_for(lambda: "(pre-started)" in run.log(), what="epoch 1 given to the standby")
        assert run.STANDBY_READY.search(run.log()) is None  # it was not ready yet
        gate.touch()
        run.wait_live(1)
        assert "starts cold" not in run.log()
    finally:
        run.stop()


def test_a_changed_script_makes_the_epoch_start_cold(tmp_path, stub):
    run, _, _ = start(tmp_path, stub)
    try:
        run.wait_live(0)
        standby = run.standby_pid(1)
        script = run.script_path()
        script.write_text(script.read_text() + "# a new line\n")
        run.restart()
        run.wait_live(1)
        assert run.pid(1) != standby
        log = run.log()
        assert f"standby for epoch 1: pid {standby} not used ({script} changed" in log
        assert "epoch 1 starts cold" in log
        wait_for(lambda: gone(standby), what="the unused standby gone")
    finally:
        run.stop()


def test_a_killed_standby_is_replaced_once_then_sighup_starts_cold(tmp_path, stub):
    run, _, _ = start(tmp_path, stub)
    try:
        run.wait_live(0)
        first = run.standby_pid(1)
        os.kill(first, signal.SIGKILL)
        # replaced, and the restart uses the replacement; the restarter did not give up
        replacement = wait_for(lambda: _newest_standby(run, 1, after=first), what="standby 2")
        run.restart()
        run.wait_live(1)
        assert run.pid(1) == replacement
        # twice in one epoch: no third standby, and the SIGHUP starts cold and still works
        second = run.standby_pid(2)
        os.kill(second, signal.SIGKILL)
        third = wait_for(lambda: _newest_standby(run, 2, after=second), what="standby 3")
        os.kill(third, signal.SIGKILL)
        wait_for(lambda: "epoch 2 will start cold" in run.log(), what="no more standbys")
        run.restart()
        run.wait_live(2)
        assert run.pid(2) not in (second, third)
        log = run.log()
        assert f"standby for epoch 1: pid {first} ended with status -9" in log
        assert f"standby for epoch 2: pid {third} ended with status -9" in log
        assert "no standby: epoch 2 starts cold" in log
        assert log.count("(pre-started)") == 1
    finally:
        status = run.stop()
    assert status == 0, run.log()[-3000:]


def _newest_standby(run: RestarterRun, epoch: int, after: int) -> int | None:
    """The pid of the standby for `epoch` started after the one with pid `after`."""
    pids = [int(pid) for e, pid in run.STANDBY_READY.findall(run.log()) if int(e) == epoch]
    later = pids[pids.index(after) + 1 :] if after in pids else []
    return later[0] if later else None


def test_standby_ends_with_the_restarter(tmp_path, stub):
    """SIGKILL to the restarter (no chance to stop anything): the standby does not linger."""
    run, _, _ = start(tmp_path, stub)
    epoch0 = None
    try:
        run.wait_live(0)
        epoch0 = run.pid(0)
        standby = run.standby_pid(1)
        run.process.popen.kill()
        run.process.popen.wait()
        wait_for(lambda: gone(standby), what="the standby gone with the restarter")
    finally:
        if epoch0 is not None and not gone(epoch0):
            os.kill(epoch0, signal.SIGTERM)  # epoch 0 itself outlives it, as Envoy's do
            wait_for(lambda: gone(epoch0), what="epoch 0 gone")
        run.stop()


def test_a_failed_epoch_takes_the_standby_down_too(tmp_path, stub):
    """An epoch killed: the restarter kills every child and exits 1, as without --prestart,
    and the standby goes with them."""
    run, _, _ = start(tmp_path, stub)
    try:
        run.wait_live(0)
        standby = run.standby_pid(1)
        os.kill(run.pid(0), signal.SIGKILL)
        wait_for(lambda: not run.process.alive(), what="the restarter exit")
        assert run.process.popen.returncode == 1
        assert gone(standby)
        assert "a child exited abnormally: killing every child" in run.log()
    finally:
        run.stop()
