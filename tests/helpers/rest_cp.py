"""A scripted REST xDS control plane on loopback, for the bad answers a real one rarely gives.

It serves keep-alive HTTP/1.1 `POST /v3/discovery:<type>`: every request is recorded (path,
headers, JSON body, the connection it came on) and answered with the next scripted answer,
or a 304 once the script is empty -- or, when `respond` is set, with what it returns for each
request (a scenario that answers by path and version; `by_type` makes one from a dict).
Answers: `Reply(status, body)`, `Hang()` (headers and half a body, then nothing: a response
that never ends), `Drop()` (close without a byte).
It runs on an asyncio loop: the test's own (`await start()`) or a `LoopThread`'s.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""


@dataclass(frozen=True)
class Hang:
    """Headers promising a body, half of it, then silence."""


@dataclass(frozen=True)
class Drop:
    """Close the connection without answering."""


Answer = Reply | Hang | Drop


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    connection: int


def discovery_json(version: str, resources: list[dict[str, Any]], type_url: str = "") -> bytes:
    """A DiscoveryResponse in JSON (`type_url` omitted unless given, as sovereign)."""
    doc: dict[str, Any] = {"version_info": version, "resources": resources}
    if type_url:
        doc["type_url"] = type_url
    return json.dumps(doc).encode()


Scripted = Reply | tuple[str, list[dict[str, Any]]]


def by_type(answers: dict[str, Scripted]) -> Callable[[Seen], Answer]:
    """A `respond` answering each request from `answers[<type in the path>]` as it is then
    ("listeners", "endpoints", ...): a Reply as it is, or (version, resources): a 200 with
    them, or a 304 when the poll already carries that version."""

    def respond(seen: Seen) -> Answer:
        answer = answers[seen.path.rsplit(":", 1)[-1]]
        if isinstance(answer, Reply):
            return answer
        version, resources = answer
        if seen.body.get("version_info") == version:
            return Reply(304)
        return Reply(200, discovery_json(version, resources))

    return respond


@dataclass
class RestControlPlane:
    answers: deque[Answer] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    respond: Callable[[Seen], Answer] | None = None
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def script(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    async def start(self) -> RestControlPlane:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                path, headers, body = request
                seen = Seen(path, headers, json.loads(body or b"{}"), number)
                self.seen.append(seen)
                if self.respond is not None:
                    answer = self.respond(seen)
                else:
                    answer = self.answers.popleft() if self.answers else Reply(304)
                if isinstance(answer, Drop):
                    return
                if isinstance(answer, Hang):
                    writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"version')
                    await writer.drain()
                    await asyncio.sleep(3600)
                    return
                reason = {200: "OK", 304: "Not Modified"}.get(answer.status, "Other")
                head = f"HTTP/1.1 {answer.status} {reason}\r\n"
                if answer.status != 304:
                    head += f"Content-Length: {len(answer.body)}\r\n"
                    head += "Content-Type: application/json\r\n"
                writer.write(
                    head.encode() + b"\r\n" + (b"" if answer.status == 304 else answer.body)
                )
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


class _Request:
    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    request = _Request()
    parser = httptools.HttpRequestParser(request)
    while not request.done:
        chunk = await reader.read(65536)
        if not chunk:
            return None
        parser.feed_data(chunk)
    return request.url.decode(), request.headers, bytes(request.body)
