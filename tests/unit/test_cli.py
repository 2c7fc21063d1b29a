"""`xds-proxy` flags: Envoy's names and defaults, one-line errors, validate mode."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from xds_proxy.cli import EnvoyLogFormatter, Options, main, parse_args
from xds_proxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STATIC = str(REPO / "examples" / "bootstrap-static.yaml")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            handler.close()
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_defaults_are_envoys() -> None:
    options = parse_args(["-c", "b.yaml"])
    assert options == Options(
        config_path="b.yaml",
        config_yaml=None,
        mode="serve",
        drain_time_s=600,
        drain_strategy="gradual",
        parent_shutdown_time_s=900,
        restart_epoch=0,
        base_id=0,
        disable_hot_restart=False,
        concurrency=1,
        log_level="info",
        log_path=None,
        service_node=None,
        service_cluster=None,
        admin_address_path=None,
    )
    assert {f.name for f in fields(Options)} == set(vars(options))


def test_every_flag() -> None:
    options = parse_args(
        [
            "--config-path",
            "b.yaml",
            "--config-yaml",
            "node: {id: x}",
            "--mode",
            "validate",
            "--drain-time-s",
            "3",
            "--drain-strategy=immediate",
            "--parent-shutdown-time-s",
            "4",
            "--restart-epoch",
            "0",
            "--base-id",
            "7",
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "debug",
            "--log-path",
            "/tmp/x.log",
            "--service-node",
            "n",
            "--service-cluster",
            "c",
            "--admin-address-path",
            "/tmp/a",
        ]
    )
    assert options == Options(
        config_path="b.yaml",
        config_yaml="node: {id: x}",
        mode="validate",
        drain_time_s=3,
        drain_strategy="immediate",
        parent_shutdown_time_s=4,
        restart_epoch=0,
        base_id=7,
        disable_hot_restart=True,
        concurrency=1,
        log_level="debug",
        log_path="/tmp/x.log",
        service_node="n",
        service_cluster="c",
        admin_address_path="/tmp/a",
    )


@pytest.mark.parametrize(
    ("level", "stored"),
    [(name, name) for name in ("trace", "debug", "info", "warning", "error", "critical", "off")]
    + [("warn", "warning")],
)
def test_log_levels(level: str, stored: str) -> None:
    assert parse_args(["-c", "x", "--log-level", level]).log_level == stored


def test_concurrency_zero_means_one() -> None:
    assert parse_args(["-c", "x", "--concurrency", "0"]).concurrency == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "--bogus: unknown flag"),
        (["-c", "x", "--drain-time-s"], "--drain-time-s: expected one argument"),
        (["--drain-time-s", "x"], "--drain-time-s: must be a non-negative integer, got 'x'"),
        (["--drain-time-s", "-1"], "--drain-time-s: must be between 0 and 4294967295, got -1"),
        (
            ["--drain-time-s", "4294967296"],
            "--drain-time-s: must be between 0 and 4294967295, got 4294967296",
        ),
        (
            ["--drain-strategy", "slow"],
            "--drain-strategy: must be one of gradual, immediate, got 'slow'",
        ),
        (["--mode", "check"], "--mode: must be one of serve, validate, init_only, got 'check'"),
        (["--mode", "init_only"], "--mode: init_only not supported"),
        (
            ["-l", "loud"],
            "--log-level: must be one of trace, debug, info, warning, warn, error, critical,"
            " off, got 'loud'",
        ),
        (["--drain-time", "5"], "--drain-time: unknown flag"),  # no abbreviations
        (["extra"], "extra: unknown flag"),
    ],
)
def test_flag_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_args(argv)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("flag", "field"),
    [("--base-id", "base_id"), ("--parent-shutdown-time-s", "parent_shutdown_time_s")],
)
def test_hot_restart_flags_are_accepted(flag: str, field: str) -> None:
    options = parse_args(["-c", "x", flag, "5", "--disable-hot-restart"])
    assert getattr(options, field) == 5
    assert options.disable_hot_restart is True
    assert getattr(parse_args(["-c", "x"]), field) != 5  # the flag, not the default, set it


def test_validate_mode_prints_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mode", "validate", "-c", STATIC, "-l", "off"]) == 0
    out, err = capsys.readouterr()
    assert out == f"configuration '{STATIC}' OK\n"
    assert err == ""


def test_validate_config_yaml_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mode", "validate", "--config-yaml", "node: {id: a}"]) == 0
    assert capsys.readouterr().out == "configuration '' OK\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "--bogus: unknown flag"),
        (["--mode", "validate"], "--config-path: required unless --config-yaml is given"),
        (
            [
                "--mode",
                "validate",
                "--config-yaml",
                "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 70000}}}",
            ],
            "admin.address.socket_address.port_value: must be <= 65535, got 70000",
        ),
        (
            ["--mode", "validate", "-c", "/nonexistent/b.yaml"],
            "/nonexistent/b.yaml: cannot read: no such file",
        ),
    ],
)
def test_errors_are_one_line_on_stderr(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == message + "\n"


def test_warnings_go_to_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_path = tmp_path / "proxy.log"
    argv = [
        "--mode",
        "validate",
        "-c",
        STATIC,
        "--config-yaml",
        "stats_config: {}",
        "--log-path",
        str(log_path),
    ]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[warning\]\[config\] "
        r"stats_config: accepted and ignored \(no effect in xds-proxy\)",
        lines[0],
    ), lines[0]


def test_log_level_error_hides_warnings(tmp_path: Path) -> None:
    log_path = tmp_path / "proxy.log"
    argv = [
        "--mode",
        "validate",
        "-c",
        STATIC,
        "--config-yaml",
        "stats_config: {}",
        "--log-path",
        str(log_path),
        "-l",
        "error",
    ]
    assert main(argv) == 0
    assert log_path.read_text() == ""


def test_log_path_that_cannot_be_opened(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "no" / "such" / "dir.log"
    assert main(["--mode", "validate", "-c", STATIC, "--log-path", str(bad)]) == 1
    assert capsys.readouterr().err == (
        f"--log-path: cannot open '{bad}': No such file or directory\n"
    )


def test_log_format_matches_envoys() -> None:
    record = logging.LogRecord("xds_proxy", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    text = EnvoyLogFormatter().format(record)
    assert re.fullmatch(
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]\[\d+\]\[info\]\[main\] hello x", text
    )
    record = logging.LogRecord("xds_proxy.xds.client", logging.ERROR, __file__, 1, "m", (), None)
    assert "][error][client] m" in EnvoyLogFormatter().format(record)


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--drain-strategy" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("xds-proxy version: ")


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xds_proxy", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_python_dash_m_validate() -> None:
    done = run_module("--mode", "validate", "-c", STATIC)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"configuration '{STATIC}' OK\n",
        "",
    )


def test_python_dash_m_error_is_one_line_no_traceback() -> None:
    done = run_module("--mode", "validate", "--config-yaml", "admin: {address: [")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("--config-yaml: line 1, column ")


def test_control_characters_in_an_error_stay_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    overlay = (
        "static_resources: {listeners: [{name: l, filter_chains: [{filters: [{name: f, "
        'typed_config: {"@type": "type.googleapis.com/x\\ny"}}]}]}]}'
    )
    assert main(["--mode", "validate", "--config-yaml", overlay]) == 1
    assert capsys.readouterr().err == (
        "--config-yaml: static_resources.listeners[0].filter_chains[0].filters[0].typed_config: "
        "unknown @type 'type.googleapis.com/x\\ny'\n"
    )


def test_concurrency_above_one_runs_worker_processes() -> None:
    assert parse_args(["-c", "x", "--concurrency", "3"]).concurrency == 3
