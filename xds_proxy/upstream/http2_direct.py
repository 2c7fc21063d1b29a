"""The common upstream HTTP/2 exchange without h2's per-stream machinery.

Most requests a proxy sends upstream are a HEADERS frame with END_STREAM, and most responses
are a HEADERS frame followed at once by one DATA frame with END_STREAM (or HEADERS with
END_STREAM alone). For those, h2 builds a stream object, two state machines, frame objects
and events per request; `DirectStreams` does without them:

- `open`: the request's HEADERS frame (END_HEADERS | END_STREAM) goes out with the
  connection's HPACK encoder into h2's own output buffer (so h2's frames and ours stay in
  order), and h2's highest stream id moves as h2 would move it. h2 holds no stream for it.
- `take_headers`, `take_body`, `finish`: a response whose header block h2 has decoded before
  on this connection, while the decoder's table stood still (`learn`), is answered from what
  h2 made of it (status, headers, expected content length), and its body when it comes in
  one DATA frame with END_STREAM. h2's state is moved as its own `receive_data` would have:
  the connection's receive window, the stream's closed record.
- `materialize`: anything else on such a stream (a new header block, a body in several
  frames, RST_STREAM, WINDOW_UPDATE, a reset of ours...) first gives h2 the stream exactly as
  h2 would hold it after sending the request, and h2 takes it from there.

Reads h2 4.x internals (`_closed_streams`, `_data_to_send`, the inbound window manager, the
frame buffer's header block); tests/unit/test_http2_direct_differential.py feeds the same
server byte streams to a connection using this and to one where h2 does everything.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import h2.connection
from h2.connection import ConnectionState
from h2.stream import H2Stream, StreamClosedBy, StreamInputs

from xds_proxy.codec.h2_fast import (
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER_SIZE,
    HEADERS_TYPE,
    frame_head,
)
from xds_proxy.upstream.pool import PooledStream

if TYPE_CHECKING:
    from xds_proxy.upstream.stream import Header

StreamT = TypeVar("StreamT", bound=PooledStream)

_CLIENT_OPEN = ConnectionState.CLIENT_OPEN
_ordered_set = collections.OrderedDict.__setitem__
_CLOSED_BY_THEIR_END = StreamClosedBy.RECV_END_STREAM
_MAX_KNOWN = 256
_HIGHEST_STREAM_ID = 2**31 - 1
_REQUEST_FLAGS = END_HEADERS | END_STREAM
_WINDOW_UPDATE_HEAD = b"\x00\x00\x04\x08\x00\x00\x00\x00\x00"  # on the connection


@dataclass(frozen=True, slots=True)
class KnownResponse:
    """What h2 made of one response header block."""

    status: int
    headers: tuple[Header, ...]  # without pseudo-headers, as the pool hands them on
    content_length: int | None  # what h2 would hold the body to


def known_response(raw: list[tuple[bytes, bytes]]) -> KnownResponse | None:
    """The response h2 reported for a block, or None if it is not one to answer directly
    (h2 checks content-length per stream; a value it would refuse stays with h2)."""
    status = 0
    headers = []
    content_length: int | None = None
    for name, value in raw:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            headers.append((name, value))
            if name == b"content-length":
                if not value.isdigit():
                    return None
                length = int(value)
                if content_length is not None and content_length != length:
                    return None
                content_length = length
    if status < 200:
        return None
    return KnownResponse(status, tuple(headers), content_length)


class DirectStreams(Generic[StreamT]):
    """The streams of one upstream connection that h2 does not hold, and the response
    header blocks h2 has decoded for it."""

    __slots__ = ("_h2", "_known", "_settled", "responding", "stream_window", "streams")

    def __init__(self, conn: h2.connection.H2Connection, stream_window: int) -> None:
        self._h2 = conn
        self.streams: dict[int, StreamT] = {}
        self.responding: dict[int, KnownResponse] = {}  # headers delivered, body to come
        self._known: dict[bytes, tuple[tuple[int, int, int], KnownResponse]] = {}
        self.stream_window = stream_window  # our SETTINGS_INITIAL_WINDOW_SIZE
        self._settled = False  # our SETTINGS acknowledged

    # -- requests ---------------------------------------------------------------------------

    def can_open(self) -> bool:
        """A request may go out directly: the connection is open and our SETTINGS (the
        streams' receive window) are acknowledged."""
        conn = self._h2
        if conn.state_machine.state is not _CLIENT_OPEN:
            return False
        if not self._settled:  # (our SETTINGS are sent once: acknowledged, they stay)
            self._settled = conn.local_settings.initial_window_size == self.stream_window
        return self._settled

    def open(self, stream: StreamT, headers: list[Header]) -> int:
        """Send a whole request (HEADERS with END_STREAM) on a new stream without h2; its
        stream id."""
        return self.open_block(stream, self._h2.encoder.encode(headers))

    def open_block(self, stream: StreamT, block: bytes) -> int:
        """`open` with the request's header block already encoded (by the connection's
        encoder, just now)."""
        conn = self._h2
        if len(block) > conn.max_outbound_frame_size:
            return self._send_split(stream, block)  # with CONTINUATION frames, as h2 would
        highest = conn.highest_outbound_stream_id
        stream_id = highest + 2 if highest else 1  # h2's next id for a client...
        if stream_id > _HIGHEST_STREAM_ID:
            stream_id = conn.get_next_available_stream_id()  # ...which raises past the last
        conn.highest_outbound_stream_id = stream_id
        self.streams[stream_id] = stream
        conn._data_to_send += (
            frame_head(len(block), HEADERS_TYPE, _REQUEST_FLAGS)
            + stream_id.to_bytes(4, "big")
            + block
        )
        return stream_id

    def _send_split(self, stream: StreamT, block: bytes) -> int:
        conn = self._h2
        stream_id = conn.get_next_available_stream_id()
        conn.highest_outbound_stream_id = stream_id
        self.streams[stream_id] = stream
        size = conn.max_outbound_frame_size
        sid = stream_id.to_bytes(4, "big")
        pieces = [block[i : i + size] for i in range(0, len(block), size)]
        out = []
        for index, piece in enumerate(pieces):
            frame_type = HEADERS_TYPE if index == 0 else 0x9  # CONTINUATION
            flags = END_STREAM if index == 0 else 0
            if index == len(pieces) - 1:
                flags |= END_HEADERS
            out.append(frame_head(len(piece), frame_type, flags) + sid + piece)
        conn._data_to_send += b"".join(out)
        return stream_id

    def materialize(self, stream_id: int) -> None:
        """Give h2 the stream, as h2 holds a stream after sending HEADERS with END_STREAM
        (and receiving the response's HEADERS, if they were taken directly)."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        conn = self._h2
        h2_stream = H2Stream(
            stream_id,
            config=conn.config,
            inbound_window_size=conn.local_settings.initial_window_size,
            outbound_window_size=conn.remote_settings.initial_window_size,
        )
        h2_stream.max_outbound_frame_size = conn.max_outbound_frame_size
        h2_stream.state_machine.process_input(StreamInputs.SEND_HEADERS)
        h2_stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        head = stream.head
        h2_stream.request_method = head.method
        h2_stream._authority = head.authority
        known = self.responding.pop(stream_id, None)
        if known is not None:
            h2_stream.state_machine.process_input(StreamInputs.RECV_HEADERS)
            h2_stream._expected_content_length = known.content_length
        conn.streams[stream_id] = h2_stream

    def materialize_all(self) -> None:
        for stream_id in list(self.streams):
            self.materialize(stream_id)

    # -- responses --------------------------------------------------------------------------

    def learn(self, block: bytes, token: tuple[int, int, int], raw: object) -> None:
        """h2 decoded `block` into `raw` (a ResponseReceived's headers) and left the
        decoder's table as it found it (`token`)."""
        known = known_response(raw)  # type: ignore[arg-type]
        if known is None:
            return
        if len(self._known) >= _MAX_KNOWN:
            self._known.clear()
        self._known[block] = (token, known)

    def lookup(self, block: bytes) -> KnownResponse | None:
        """What h2 made of `block`, if it would make the same of it now (the decoder's
        `decode_token` as when it was learnt; compared field by field, no tuple built)."""
        found = self._known.get(block)
        if found is None:
            return None
        token = found[0]
        decoder = self._h2.decoder
        if (
            token[0] != decoder.header_table.epoch  # type: ignore[attr-defined]
            or token[1] != decoder.max_allowed_table_size
            or token[2] != decoder.max_header_list_size
        ):
            return None
        return found[1]

    def take_headers(
        self, stream_id: int, data: bytes, position: int, end: int
    ) -> KnownResponse | None:
        """The response of direct stream `stream_id` whose HEADERS frame (whole in `data`) is
        from `position` to `end`, if its block is known; the stream then waits for its body (unless
        the frame ended it, see `finish`). None leaves the frame to h2."""
        conn = self._h2
        flags = data[position + 4]
        if (
            flags & ~_REQUEST_FLAGS
            or not flags & END_HEADERS
            or conn.incoming_buffer._headers_buffer
            or conn.state_machine.state is not _CLIENT_OPEN
            or stream_id in self.responding
        ):
            return None  # padded, priority, a block in several frames, trailers
        known = self.lookup(data[position + FRAME_HEADER_SIZE : end])
        if known is None:
            return None
        if flags & END_STREAM:
            if known.content_length:
                return None
        else:
            self.responding[stream_id] = known
        # (h2 would feed RECV_HEADERS to its connection state machine: in CLIENT_OPEN, checked
        # above, that input leaves the state as it is and does nothing else.)
        return known

    def take_body(self, stream_id: int, data: bytes, position: int, end: int) -> bytes | None:
        """The whole body of direct stream `stream_id`, from the DATA frame (whole in `data`)
        from `position` to `end`, if it is one frame with END_STREAM that h2 would take
        without a word. None leaves the frame to h2."""
        conn = self._h2
        known = self.responding.get(stream_id)
        length = end - position - FRAME_HEADER_SIZE
        if (
            known is None
            or data[position + 4] != END_STREAM
            or conn.incoming_buffer._headers_buffer
            or conn.state_machine.state is not _CLIENT_OPEN
            or length > conn._inbound_flow_control_window_manager.current_window_size
            or length > self.stream_window  # (direct streams start once it is in force)
            or (known.content_length is not None and known.content_length != length)
        ):
            return None
        return data[position + FRAME_HEADER_SIZE : end]

    def finish(self, stream_id: int, body_length: int) -> None:
        """The response of direct stream `stream_id` was received whole (`body_length` flow
        controlled bytes in its last frame): h2's state as after its own receive_data."""
        del self.streams[stream_id]
        self.responding.pop(stream_id, None)
        conn = self._h2
        # h2's SizeLimitDict.__setitem__ and WindowManager.window_consumed, inline (the
        # window cannot go below 0: `take_body` checked the frame fits).
        closed = conn._closed_streams
        _ordered_set(closed, stream_id, _CLOSED_BY_THEIR_END)
        limit = closed._size_limit
        if limit is not None:
            while len(closed) > limit:
                closed.popitem(last=False)
        if body_length:
            conn._inbound_flow_control_window_manager.current_window_size -= body_length

    def acknowledge(self, size: int) -> None:
        """h2's acknowledge_received_data for a stream already closed: the connection's
        window only."""
        conn = self._h2
        increment = conn._inbound_flow_control_window_manager.process_bytes(size)
        if increment:
            conn._data_to_send += _WINDOW_UPDATE_HEAD + increment.to_bytes(4, "big")
