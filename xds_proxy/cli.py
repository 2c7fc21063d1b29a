"""The `xds-proxy` command line: Envoy's flag names and defaults, parsed into `Options`
(`xds_proxy/options.py`), then the bootstrap loaded and the server run.

A flag whose feature is not built yet is parsed, and a non-default value of it is refused with
`--FLAG: not supported yet` rather than silently ignored.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from xds_proxy.errors import ConfigError
from xds_proxy.lazy import lazy_import
from xds_proxy.options import Options

if TYPE_CHECKING:
    from xds_proxy import bootstrap as bootstrap_loader
    from xds_proxy import server, standby
else:  # `--version`, `--help` and a bad flag answer without importing them (xds_proxy/lazy.py)
    bootstrap_loader = lazy_import("xds_proxy.bootstrap")
    server = lazy_import("xds_proxy.server")
    standby = lazy_import("xds_proxy.standby")

log = logging.getLogger("xds_proxy")

# Set by `xds-proxy-restarter --prestart` to the fd of its channel: stand by (standby.py).
STANDBY_ENV = "XDS_PROXY_STANDBY_FD"

TRACE = 5
LOG_LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 100,
}
_LEVEL_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises one-line `--FLAG: reason` errors instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):
            flag, _, reason = message[len("argument ") :].partition(": ")
            flag = flag.split("/")[-1]
            raise ConfigError(f"{flag}: {reason}")
        if message.startswith("unrecognized arguments: "):
            first = message[len("unrecognized arguments: ") :].split(" ")[0]
            raise ConfigError(f"{first}: unknown flag")
        raise ConfigError(f"error: {message}")


def _uint32(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 4294967295, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text!r}") from None
    if not 0 <= value <= 2**32 - 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and 4294967295, got {text}")
    return value


def _choice(name: str, allowed: Sequence[str]):
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    parse.__name__ = name
    return parse


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="xds-proxy",
        description="An Envoy-compatible, LDS-driven proxy.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("-c", "--config-path", help="v3 bootstrap file, YAML or JSON")
    add("--config-yaml", help="bootstrap YAML merged over the --config-path file")
    add("--mode", type=_choice("mode", ["serve", "validate", "init_only"]), default="serve")
    add("--drain-time-s", type=_uint32, default=600)
    add("--drain-strategy", type=_choice("strategy", ["gradual", "immediate"]), default="gradual")
    add("--parent-shutdown-time-s", type=_uint32, default=900)
    add("--restart-epoch", type=_uint32, default=0)
    add("--base-id", type=_uint32, default=0)
    add("--disable-hot-restart", action="store_true")
    add("--concurrency", type=_uint32, default=1)
    add("-l", "--log-level", type=_choice("level", list(LOG_LEVELS)), default="info")
    add("--log-path")
    add("--service-node")
    add("--service-cluster")
    add("--admin-address-path")
    add("--file-flush-interval-msec", type=_uint32, default=1000)
    # Ours, names Envoy does not use (docs/cli.md): drain pacing and exit when drained.
    add("--drain-max-closes-per-second", type=_non_negative, default=0.0)
    add("--drain-on-sigterm", action="store_true")
    add("--min-drain-time-s", type=_non_negative, default=0.0)
    add("--version", action="store_true", help="print the version and exit")
    return parser


def parse_args(argv: Sequence[str]) -> Options:
    """Flags -> Options; raises ConfigError (one line) for bad or not-yet-supported flags.

    `-h`/`--help` and `--version` print and raise SystemExit(0).
    """
    args = _build_parser().parse_args(list(argv))
    if args.version:
        print(f"xds-proxy version: {_version()}")
        raise SystemExit(0)
    if args.mode == "init_only":
        raise ConfigError("--mode: init_only not supported")
    level = "warning" if args.log_level == "warn" else args.log_level
    return Options(
        config_path=args.config_path or None,
        config_yaml=args.config_yaml or None,
        mode=args.mode,
        drain_time_s=args.drain_time_s,
        drain_strategy=args.drain_strategy,
        parent_shutdown_time_s=args.parent_shutdown_time_s,
        restart_epoch=args.restart_epoch,
        base_id=args.base_id,
        disable_hot_restart=args.disable_hot_restart,
        concurrency=max(args.concurrency, 1),
        log_level=level,
        log_path=args.log_path or None,
        service_node=args.service_node or None,
        service_cluster=args.service_cluster or None,
        admin_address_path=args.admin_address_path or None,
        file_flush_interval_msec=args.file_flush_interval_msec,
        drain_max_closes_per_second=args.drain_max_closes_per_second,
        drain_on_sigterm=args.drain_on_sigterm,
        min_drain_time_s=args.min_drain_time_s,
    )


def _version() -> str:
    import importlib.metadata  # here, not at the top: ~30 ms of start-up for `--version` only

    try:
        return importlib.metadata.version("xds-proxy")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "dev"


class EnvoyLogFormatter(logging.Formatter):
    """`[2026-11-27 23:59:59.123][12][info][main] message`, as Envoy's default log format."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        millis = int(record.msecs)
        level = _LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        component = _component(record.name)
        line = (
            f"[{stamp}.{millis:03d}][{record.process}][{level}][{component}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _component(logger_name: str) -> str:
    if logger_name in ("xds_proxy", "root"):
        return "main"
    return logger_name.rsplit(".", 1)[-1]


def configure_logging(options: Options) -> None:
    """Root logging per --log-level / --log-path (stderr when no path)."""
    logging.addLevelName(TRACE, "TRACE")
    if options.log_path:
        try:
            handler: logging.Handler = logging.FileHandler(options.log_path, encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                f"--log-path: cannot open {options.log_path!r}: {error.strerror or error}"
            ) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EnvoyLogFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LOG_LEVELS[options.log_level])


def _fail(message: str, options: Options | None = None) -> int:
    """The one error line on stderr (and in the log file when logging goes to a file)."""
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    print(message, file=sys.stderr, flush=True)
    if options is not None and options.log_path:
        log.critical("%s", message)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load and check the bootstrap, then validate-and-exit or serve."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    channel_fd = os.environ.pop(STANDBY_ENV, None)
    started_ns = time.time_ns()  # (before `standby` imports anything)
    changed = standby.stand_by(int(channel_fd), started_ns) if channel_fd else []
    try:
        options = parse_args(arguments)
        configure_logging(options)
    except ConfigError as error:
        if changed:  # the new code may see it otherwise: let it say
            standby.exec_cold()
        return _fail(str(error))
    except SystemExit as done:  # --help / --version
        return done.code if isinstance(done.code, int) else 0
    if changed:
        log.warning(
            "pre-started: %s changed since this process imported it (and %d more file(s)); "
            "starting again cold",
            changed[0],
            len(changed) - 1,
        )
        standby.exec_cold()
    try:
        bootstrap = bootstrap_loader.load_bootstrap(options)
    except ConfigError as error:
        return _fail(str(error), options)
    except Exception as error:  # a bug of ours: still one line for the user, details in debug
        log.debug("loading the bootstrap failed", exc_info=True)
        return _fail(f"error: internal error while loading the bootstrap: {error!r}", options)
    if options.mode == "validate":
        print(f"configuration '{options.config_path or ''}' OK", flush=True)
        return 0
    serve = server.run  # imports the server now (--version and validate never do)
    log.info("xds-proxy starting, pid %d", os.getpid())
    return serve(options, bootstrap)
