"""A raw-frame HTTP/2 client for tests: sees every frame the server writes, with timestamps.

h2 as a client ends in-flight streams when a GOAWAY arrives (docs/architecture.md#known-traps), so
drain tests cannot use it (nor httpx). This client only encodes and decodes frames
(hyperframe, hpack) and keeps no state machine: tests see both GOAWAY frames, their
`last_stream_id`, RST_STREAM codes and the moment the server closed.

    client = H2Client(port)
    stream = client.request("/hello")
    response = client.response(stream)
    assert response.status == 200
    goaways = client.goaways()
    client.close()

A reader thread records frames; it answers SETTINGS and PING (as a client must) and returns
flow-control credit for received DATA unless `auto_window_update=False`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_SIZE = 9


@dataclass
class Recorded:
    """A frame the server wrote, when we read it (time.monotonic()), and for HEADERS /
    CONTINUATION the decoded header block once complete."""

    at: float
    frame: Frame
    headers: list[tuple[str, str]] | None = None

    @property
    def kind(self) -> str:
        return type(self.frame).__name__.removesuffix("Frame").upper()

    def __repr__(self) -> str:
        extra = ""
        if isinstance(self.frame, GoAwayFrame):
            extra = f" last={self.frame.last_stream_id} code={self.frame.error_code}"
        elif isinstance(self.frame, RstStreamFrame):
            extra = f" code={self.frame.error_code}"
        flags = ",".join(sorted(self.frame.flags))
        return f"<{self.kind} s={self.frame.stream_id}{extra} [{flags}] @{self.at:.3f}>"


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False  # END_STREAM seen
    reset_code: int | None = None  # RST_STREAM error code, if the server reset the stream

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Client:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        timeout: float = 5.0,
        auto_window_update: bool = True,
        send_preface: bool = True,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.auto_window_update = auto_window_update
        # Off while a test writes the preface itself: an ACK must not land inside it.
        self.answer_settings = True
        self.frames: list[Recorded] = []
        self.closed_at: float | None = None
        self.opened_at = time.monotonic()
        self._encoder = Encoder()
        self._decoder = Decoder()
        self._next_stream = 1
        self._responses: dict[int, Response] = {}
        self._condition = threading.Condition()
        self._write_lock = threading.Lock()
        self._header_block: list[Recorded] = []
        if send_preface:
            self.send_raw(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    # -- sending ---------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        with self._write_lock:
            self.sock.sendall(data)

    def send(self, frame: Frame) -> None:
        self.send_raw(frame.serialize())

    def next_stream_id(self) -> int:
        stream_id = self._next_stream
        self._next_stream += 2
        return stream_id

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        authority: str = "example.com",
        headers: Iterable[tuple[str, str]] = (),
        end_stream: bool = True,
        stream_id: int | None = None,
    ) -> int:
        """Open a stream with a request header block; returns its id."""
        if stream_id is None:
            stream_id = self.next_stream_id()
        else:
            self._next_stream = max(self._next_stream, stream_id + 2)
        block = self._encoder.encode(
            [
                (":method", method),
                (":scheme", "http"),
                (":authority", authority),
                (":path", path),
                *list(headers),
            ]
        )
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        with self._condition:
            self._responses.setdefault(stream_id, Response())
        self.send(HeadersFrame(stream_id, data=block, flags=flags))
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """DATA frames of at most 16384 bytes (the default SETTINGS_MAX_FRAME_SIZE); the
        server's flow-control windows are not checked (our server's are large)."""
        chunks = [data[i : i + 16384] for i in range(0, len(data), 16384)] or [b""]
        frames = [DataFrame(stream_id, data=chunk) for chunk in chunks]
        if end_stream:
            frames[-1].flags.add("END_STREAM")
        self.send_raw(b"".join(frame.serialize() for frame in frames))

    def send_frame_unchecked(self, stream_id: int, data: bytes) -> None:
        """One DATA frame whatever its size (to test FRAME_SIZE_ERROR)."""
        self.send(DataFrame(stream_id, data=data))

    def send_trailers(self, stream_id: int, trailers: Iterable[tuple[str, str]]) -> None:
        block = self._encoder.encode(list(trailers))
        self.send(HeadersFrame(stream_id, data=block, flags=["END_HEADERS", "END_STREAM"]))

    def reset(self, stream_id: int, error_code: int = 8) -> None:
        self.send(RstStreamFrame(stream_id, error_code=error_code))

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        self.send(PingFrame(0, opaque_data=opaque))

    def window_update(self, stream_id: int, increment: int) -> None:
        self.send(WindowUpdateFrame(stream_id, window_increment=increment))

    def goaway(self, last_stream_id: int = 0, error_code: int = 0) -> None:
        self.send(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code))

    # -- waiting ---------------------------------------------------------------------------

    def wait(self, condition: Callable[[], object], timeout: float | None = None) -> object:
        """Wait until `condition()` (evaluated under the lock) is truthy or the connection
        closed; raise TimeoutError otherwise."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._condition:
            while True:
                result = condition()
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.closed_at is not None and not self._reader.is_alive()):
                    result = condition()
                    if result:
                        return result
                    raise TimeoutError(f"condition not met; frames: {self.frames!r}")
                self._condition.wait(min(remaining, 0.05))

    def wait_frame(
        self, predicate: Callable[[Recorded], bool], timeout: float | None = None
    ) -> Recorded:
        found = self.wait(
            lambda: next((r for r in self.frames if predicate(r)), None), timeout=timeout
        )
        return found  # type: ignore[return-value]

    def response(self, stream_id: int, timeout: float | None = None) -> Response:
        """The stream's response once it ended (END_STREAM) or was reset."""
        self.wait(
            lambda: (
                self._responses.get(stream_id) is not None
                and (
                    self._responses[stream_id].ended
                    or self._responses[stream_id].reset_code is not None
                )
            ),
            timeout=timeout,
        )
        return self._responses[stream_id]

    def goaways(self) -> list[Recorded]:
        with self._condition:
            return [r for r in self.frames if isinstance(r.frame, GoAwayFrame)]

    def wait_goaways(self, count: int, timeout: float | None = None) -> list[Recorded]:
        self.wait(lambda: len(self.goaways_unlocked()) >= count, timeout=timeout)
        return self.goaways()

    def goaways_unlocked(self) -> list[Recorded]:
        return [r for r in self.frames if isinstance(r.frame, GoAwayFrame)]

    def wait_closed(self, timeout: float | None = None) -> float:
        """When the server closed the connection (monotonic seconds)."""
        self.wait(lambda: self.closed_at is not None, timeout=timeout)
        assert self.closed_at is not None
        return self.closed_at

    def sequence(self) -> list[str]:
        """Frame kinds in order, GOAWAYs with their last_stream_id: for sequence asserts."""
        with self._condition:
            result = []
            for recorded in self.frames:
                frame = recorded.frame
                if isinstance(frame, GoAwayFrame):
                    result.append(f"GOAWAY({frame.last_stream_id},{frame.error_code})")
                elif isinstance(frame, RstStreamFrame):
                    result.append(f"RST_STREAM({frame.stream_id},{frame.error_code})")
                elif isinstance(frame, (HeadersFrame, DataFrame)):
                    end = "END" if "END_STREAM" in frame.flags else ""
                    result.append(f"{recorded.kind}({frame.stream_id}{',' + end if end else ''})")
                else:
                    result.append(recorded.kind)
            return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=2)

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        buffer = b""
        self.sock.settimeout(None)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= FRAME_HEADER_SIZE:
                    frame, length = Frame.parse_frame_header(memoryview(buffer[:FRAME_HEADER_SIZE]))
                    if len(buffer) < FRAME_HEADER_SIZE + length:
                        break
                    frame.parse_body(
                        memoryview(buffer[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + length])
                    )
                    buffer = buffer[FRAME_HEADER_SIZE + length :]
                    self._on_frame(frame)
        finally:
            with self._condition:
                self.closed_at = time.monotonic()
                self._condition.notify_all()

    def _on_frame(self, frame: Frame) -> None:
        recorded = Recorded(time.monotonic(), frame)
        replies: list[Frame] = []
        with self._condition:
            self.frames.append(recorded)
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                if self.answer_settings:
                    replies.append(SettingsFrame(0, flags=["ACK"]))
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                replies.append(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
            elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
                self._header_block.append(recorded)
                if "END_HEADERS" in frame.flags:
                    block = b"".join(r.frame.data for r in self._header_block)
                    first = self._header_block[0]
                    self._header_block = []
                    headers = [
                        (bytes(n).decode(), bytes(v).decode())
                        for n, v in self._decoder.decode(block, raw=True)
                    ]
                    first.headers = headers
                    response = self._responses.setdefault(frame.stream_id, Response())
                    if response.status == 0 and headers and headers[0][0] == ":status":
                        status = int(headers[0][1])
                        if status >= 200:
                            response.status = status
                            response.headers = headers[1:]
                    else:
                        response.trailers = headers
                    if "END_STREAM" in first.frame.flags:
                        response.ended = True
            elif isinstance(frame, DataFrame):
                response = self._responses.setdefault(frame.stream_id, Response())
                response.body += frame.data
                if "END_STREAM" in frame.flags:
                    response.ended = True
                size = frame.flow_controlled_length
                if self.auto_window_update and size:
                    replies.append(WindowUpdateFrame(0, window_increment=size))
                    if "END_STREAM" not in frame.flags:
                        replies.append(WindowUpdateFrame(frame.stream_id, window_increment=size))
            elif isinstance(frame, RstStreamFrame):
                response = self._responses.setdefault(frame.stream_id, Response())
                response.reset_code = frame.error_code
            self._condition.notify_all()
        for reply in replies:
            try:
                self.send(reply)
            except OSError:
                break
