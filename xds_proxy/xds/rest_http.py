"""A small keep-alive HTTP/1.1 client for REST xDS polls (one connection per subscription).

One request at a time; the connection is kept for the next poll while the server allows it
(`Connection: close`, an error or a timeout close it, and the next poll connects again). A
reused connection that the server closed while idle (it answers nothing at all) is retried
once on a fresh one, as HTTP clients do. Responses are parsed with httptools; a body larger
than `max_body_bytes` fails the request.
"""

from __future__ import annotations

import asyncio

import httptools


class HttpFailure(Exception):
    """The request got no complete answer; the text says why, in one line."""


class _Answer:
    """httptools callbacks: the status and the body of one response."""

    def __init__(self, max_body_bytes: int) -> None:
        self.body = bytearray()
        self.complete = False
        self.too_big = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None
        self._max = max_body_bytes

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > self._max:
            self.too_big = True
            return
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        if self.parser is not None:  # read now: llhttp resets its flags after this callback
            self.keep_alive = self.parser.should_keep_alive()


class HttpClient:
    """POSTs to one `host:port`, over one keep-alive connection."""

    def __init__(self, host: str, port: int, max_body_bytes: int) -> None:
        self._host = host
        self._port = port
        self._max_body = max_body_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(
        self, path: str, authority: str, body: bytes, timeout_s: float
    ) -> tuple[int, bytes]:
        """(status, body) of one POST; raises HttpFailure (also at `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                reused = self._writer is not None
                try:
                    return await self._exchange(path, authority, body)
                except _ClosedIdle:
                    if not reused:
                        raise HttpFailure("connection closed before a response") from None
                    return await self._exchange(path, authority, body)
        except TimeoutError:
            self.close()
            raise HttpFailure(f"no complete response within {timeout_s:g} s") from None
        except _ClosedIdle:
            self.close()
            raise HttpFailure("connection closed before a response") from None
        except HttpFailure:
            self.close()
            raise
        except (OSError, httptools.HttpParserError) as error:
            self.close()
            raise HttpFailure(_describe(error)) from None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _exchange(self, path: str, authority: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        writer.write(head + body)
        await writer.drain()
        answer = _Answer(self._max_body)
        parser = answer.parser = httptools.HttpResponseParser(answer)
        received_any = False
        while not answer.complete:
            chunk = await reader.read(65536)
            if not chunk:
                self.close()
                if not received_any:
                    raise _ClosedIdle()
                raise HttpFailure("connection closed in the middle of a response")
            received_any = True
            parser.feed_data(chunk)
            if answer.too_big:
                raise HttpFailure(f"a response body over {self._max_body} bytes")
        if not answer.keep_alive:
            self.close()
        return parser.get_status_code(), bytes(answer.body)


class _ClosedIdle(Exception):
    """The server closed the connection without answering a byte."""


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if str(error) else text
