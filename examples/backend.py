"""A small upstream HTTP/1.1 server for the demo and docker-compose: it answers every request
with one JSON line saying who answered what, so a client can tell which backend served it.

    python examples/backend.py --port 8080 [--host 0.0.0.0] [--name backend] [--port-file F]

Standard library only (the demo must run on a machine with nothing but Python): keep-alive,
`content-length` bodies, `connection: close` honoured. `--port 0` picks a free port; the port
goes to `--port-file` once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from pathlib import Path

MAX_HEAD_BYTES = 64 * 1024


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection ends."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        if len(head) > MAX_HEAD_BYTES:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, version = ([*request_line.split(" "), "", "", ""])[:3]
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        self.requests += 1
        closes = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        answer = {
            "backend": self.name,
            "method": method,
            "path": path,
            "host": headers.get("host", ""),
            "body_bytes": len(body),
            "request": self.requests,
        }
        payload = (json.dumps(answer) + "\n").encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\n".encode()
            + (b"connection: close\r\n" if closes else b"")
            + b"\r\n"
            + payload
        )
        await writer.drain()
        return not closes


async def serve(host: str, port: int, name: str, port_file: Path | None) -> None:
    backend = Backend(name)
    server = await asyncio.start_server(backend.serve_connection, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"backend {name}: listening on {host}:{bound}", flush=True)
    if port_file is not None:
        port_file.write_text(str(bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backend.py", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--port-file", type=Path)
    arguments = parser.parse_args(argv)
    asyncio.run(serve(arguments.host, arguments.port, arguments.name, arguments.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
