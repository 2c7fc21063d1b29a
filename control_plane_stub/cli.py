"""`control-plane-stub serve | push | status | wait | plan` (docs/control-plane-stub.md).

`serve` runs the servers; `push`, `status` and `wait` are thin clients of the control API;
`plan` (and `push --dry-run`) asks an xds-proxy's admin what a push would do.
Exit codes: 0 success; 1 refused input, unreachable stub or timeout; 2 `wait` saw a NACK, or
`plan` predicts one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

PROG = "control-plane-stub"
# The resource file's sections, in its order (what `wait --type` takes).
SECTIONS = ("listeners", "clusters", "routes", "endpoints", "secrets")
DEFAULT_XDS = "127.0.0.1:18000"
DEFAULT_CONTROL = "127.0.0.1:18001"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 1 (2 means a NACK for `wait`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="A small, real xDS control plane for tests and demos.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="serve xDS and the control API")
    serve.add_argument("--xds", default=DEFAULT_XDS, help="xDS address (port 0: any free port)")
    serve.add_argument("--control", default=DEFAULT_CONTROL, help="control API address")
    serve.add_argument("--resources", type=Path, help="initial resource file (YAML or JSON)")
    serve.add_argument("--watch", action="store_true", help="push again when the file changes")
    serve.add_argument("--raw", action="store_true", help="serve the file without validation")
    serve.add_argument(
        "--ready-file", type=Path, help='write {"xds": ..., "control": ...} once serving'
    )
    serve.add_argument("--tls-cert", type=Path, help="serve xDS over TLS with this certificate")
    serve.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    serve.add_argument(
        "--tls-ca", type=Path, help="require client certificates signed by this CA (mTLS)"
    )
    serve.add_argument(
        "-l", "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )

    push = commands.add_parser("push", help="replace the default (or a node's) resource set")
    push.add_argument("--control", default=DEFAULT_CONTROL, help="the stub's control API")
    push.add_argument("--node", help="replace this node's own set instead of the default")
    push.add_argument("--raw", action="store_true", help="send exactly as given, unvalidated")
    push.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the push would do to the proxy at --admin; push nothing",
    )
    push.add_argument("--admin", help="an xds-proxy's admin address (HOST:PORT), for --dry-run")
    push.add_argument("file", type=Path)

    plan = commands.add_parser(
        "plan", help="what pushing FILE would do to an xds-proxy (nothing changes)"
    )
    plan.add_argument("--admin", required=True, help="the xds-proxy's admin address, HOST:PORT")
    plan.add_argument("--json", action="store_true", help="the plan document")
    plan.add_argument("file", type=Path)

    status = commands.add_parser("status", help="what each node was sent and ACKed/NACKed")
    status.add_argument("--control", default=DEFAULT_CONTROL, help="the stub's control API")
    status.add_argument("--json", action="store_true", help="the JSON document")

    wait = commands.add_parser("wait", help="wait until a version of a type is ACKed")
    wait.add_argument("--control", default=DEFAULT_CONTROL, help="the stub's control API")
    wait.add_argument("--node", help="this node only (default: every connected node)")
    wait.add_argument("--version", required=True, help="the version to wait for")
    wait.add_argument(
        "--type",
        dest="section",
        default="listeners",
        choices=list(SECTIONS),
        help="whose version (default: listeners)",
    )
    wait.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before exit 1 (default 30)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        arguments = build_parser().parse_args(argv)
    except UsageError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    handlers = {
        "serve": run_serve,
        "push": run_push,
        "status": run_status,
        "wait": run_wait,
        "plan": run_plan,
    }
    try:
        return handlers[arguments.command](arguments)
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- serve


def run_serve(arguments: argparse.Namespace) -> int:
    logging.basicConfig(
        level=arguments.log_level.upper(),
        format=f"%(asctime)s {PROG} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_serve(arguments))
    except _ServeError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1


class _ServeError(Exception):
    pass


async def _serve(arguments: argparse.Namespace) -> int:
    from control_plane_stub.resources import ResourceError
    from control_plane_stub.server import AddressError, ServerTls, StubServer

    xds_tls = None
    if arguments.tls_cert is not None or arguments.tls_key is not None:
        if arguments.tls_cert is None or arguments.tls_key is None:
            raise _ServeError("--tls-cert and --tls-key go together")
        try:
            xds_tls = ServerTls.from_files(arguments.tls_cert, arguments.tls_key, arguments.tls_ca)
        except AddressError as error:
            raise _ServeError(str(error)) from None
    elif arguments.tls_ca is not None:
        raise _ServeError("--tls-ca needs --tls-cert and --tls-key")
    server = StubServer(arguments.xds, arguments.control, xds_tls=xds_tls)
    if arguments.resources is not None:
        try:
            server.load(arguments.resources, raw=arguments.raw)
        except ResourceError as error:
            raise _ServeError(str(error)) from None
    try:
        bound = await server.start()
    except AddressError as error:
        await server.stop(None)
        raise _ServeError(str(error)) from None
    logging.getLogger("control_plane_stub").info(
        "serving xDS on %s, control API on %s", bound["xds"], bound["control"]
    )
    if arguments.ready_file is not None:
        _write_atomically(arguments.ready_file, json.dumps(bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    watcher = None
    if arguments.watch and arguments.resources is not None:
        watcher = asyncio.create_task(server.watch(arguments.resources))
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await server.stop(0.2)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# ---------------------------------------------------------------- clients


def _client(arguments: argparse.Namespace):
    from control_plane_stub.client import StubClient

    return StubClient(arguments.control)


def run_plan(arguments: argparse.Namespace) -> int:
    from control_plane_stub.plan import PlanError, fetch_plan, format_plan_table
    from control_plane_stub.resources import ResourceError

    try:
        document = fetch_plan(arguments.admin, arguments.file)
    except (PlanError, ResourceError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    if getattr(arguments, "json", False):
        print(json.dumps(document, indent=2))
    else:
        print(format_plan_table(document))
    return 0 if document["would_ack"] else 2


def run_push(arguments: argparse.Namespace) -> int:
    from control_plane_stub.client import StubError

    if arguments.dry_run:
        if not arguments.admin:
            print(f"{PROG}: --dry-run needs --admin HOST:PORT (the proxy to ask)", file=sys.stderr)
            return 1
        return run_plan(arguments)

    with _client(arguments) as client:
        try:
            versions = client.push_file(arguments.file, node=arguments.node, raw=arguments.raw)
        except StubError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
    for section, version in versions.items():
        print(f"{section} {version}")
    return 0


def run_status(arguments: argparse.Namespace) -> int:
    from control_plane_stub.client import StubError

    with _client(arguments) as client:
        try:
            document = client.status()
        except StubError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
    if arguments.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_status_table(document))
    return 0


def run_wait(arguments: argparse.Namespace) -> int:
    from control_plane_stub.client import StubError, StubNack

    with _client(arguments) as client:
        try:
            client.wait(
                arguments.version,
                node=arguments.node,
                timeout=arguments.timeout,
                section=arguments.section,
            )
        except StubNack as error:
            print(f"{PROG}: {error.detail}", file=sys.stderr)
            return 2
        except TimeoutError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
        except StubError as error:
            print(f"{PROG}: {error}", file=sys.stderr)
            return 1
    who = f"node {arguments.node!r}" if arguments.node else "every connected node"
    print(f"{arguments.section} version {arguments.version} ACKed by {who}")
    return 0


def format_status_table(document: dict) -> str:
    """One row per node, stream and type (SUBSCRIBED: the names asked for, "*" the
    wildcard); a NACK's message on its own indented line."""
    header = (
        "NODE",
        "STREAM",
        "TYPE",
        "MODE",
        "CONNECTED SINCE",
        "SENT",
        "NONCE",
        "ACKED",
        "SUBSCRIBED",
    )
    rows: list[tuple[str, ...]] = []
    notes: dict[int, str] = {}
    for entry in document["nodes"]:
        for stream in entry["streams"]:
            sent = stream["sent"] or {"version": "-", "nonce": "-"}
            rows.append(
                (
                    entry["node"] or '""',
                    str(stream["stream"]),
                    stream["type_url"].rsplit(".", 1)[-1],
                    stream["mode"],
                    stream["connected_since"],
                    sent["version"],
                    sent["nonce"],
                    stream["acked_version"] or "-",
                    ",".join(stream.get("subscribed") or ()) or "-",
                )
            )
            nack = stream["nack"]
            if nack is not None:
                notes[len(rows) - 1] = (
                    f"    NACK of version {nack['version']} (nonce {nack['nonce']}, "
                    f"code {nack['code']}): {nack['message']}"
                )
    if not rows:
        return "no node connected"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()
    ]
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if index in notes:
            lines.append(notes[index])
    return "\n".join(lines)
