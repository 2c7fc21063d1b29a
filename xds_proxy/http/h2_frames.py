"""Cut the client's GOAWAY frames out of the inbound HTTP/2 byte stream before h2 sees them,
and count the PING and SETTINGS frames in it.

h2 moves to CLOSED when it receives a GOAWAY, after which the streams the client still
waits for can no longer be answered (docs/architecture.md#known-traps). A client's GOAWAY only says
"I open no more streams" (a server does not push here), so the connection handles it itself
and h2 never sees it. PING and SETTINGS frames are counted here because h2 answers them
inside `receive_data`: a flood must be caught before that work is done. The same pass picks
out the HEADERS frames that carry a whole request, which the connection may answer without
h2 (`Http2Connection`). Pure: bytes in, bytes (and whole-request frames), GOAWAYs and a count
out; only frame headers are read.
"""

from __future__ import annotations

PREFACE_SIZE = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", not a frame
FRAME_HEADER_SIZE = 9
GOAWAY_TYPE = 0x7
SETTINGS_TYPE = 0x4
PING_TYPE = 0x6
ACK_FLAG = 0x1
_MAX_HELD_GOAWAY = 1 << 16  # a GOAWAY's debug data beyond this is an attack: hand it to h2


HEADERS_TYPE = 0x1
# A HEADERS frame that opens and ends a request in one frame: END_STREAM and END_HEADERS,
# neither PADDED nor PRIORITY (the bits of the flags byte this mask keeps).
_REQUEST_FLAGS_MASK = 0x2D
_WHOLE_REQUEST_FLAGS = 0x05
MAX_WHOLE_REQUEST = 16384  # the smallest SETTINGS_MAX_FRAME_SIZE: never too large for h2

Piece = bytes | tuple[int, bytes]


class GoAwayCutter:
    """Feed every inbound chunk through `feed`; it returns the bytes for h2 and the
    (last_stream_id, error_code) of each complete GOAWAY it removed. `control_frames` counts
    the PING and SETTINGS frames (not their ACKs) whose headers passed.

    `split` does the same and also picks out whole-request HEADERS frames (END_STREAM and
    END_HEADERS, no padding or priority, at most 16 KiB): the pieces are bytes for h2 and
    `(stream_id, frame)` for each such frame, in stream order. A whole-request frame that is
    not complete yet is held until it is (h2 could not act on it either)."""

    __slots__ = ("_held", "_skip", "control_frames")

    def __init__(self, skip: int = PREFACE_SIZE) -> None:
        self._skip = skip  # bytes that pass unread: the preface, then frame payloads
        self._held = b""  # an incomplete frame header, GOAWAY or request, kept until complete
        self.control_frames = 0

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        pieces, goaways = self._cut(data, False)
        if len(pieces) == 1:
            return pieces[0], goaways  # type: ignore[return-value]
        return b"".join(pieces), goaways  # type: ignore[arg-type]

    def split(self, data: bytes) -> tuple[list[Piece], list[tuple[int, int]]]:
        return self._cut(data, True)

    def _cut(self, data: bytes, requests: bool) -> tuple[list[Piece], list[tuple[int, int]]]:
        if self._held:
            data = self._held + data
            self._held = b""
        size = len(data)
        position = self._skip
        if position >= size:
            self._skip = position - size
            return [data], []
        goaways: list[tuple[int, int]] = []
        pieces: list[Piece] = []
        kept_from = 0
        while True:
            if position + FRAME_HEADER_SIZE > size:
                self._held = data[position:]
                self._skip = 0
                end = position
                break
            length = int.from_bytes(data[position : position + 3], "big")
            frame_end = position + FRAME_HEADER_SIZE + length
            frame_type = data[position + 3]
            if frame_type == HEADERS_TYPE:
                if (
                    requests
                    and data[position + 4] & _REQUEST_FLAGS_MASK == _WHOLE_REQUEST_FLAGS
                    and length <= MAX_WHOLE_REQUEST
                ):
                    if frame_end > size:
                        self._held = data[position:]
                        self._skip = 0
                        end = position
                        break
                    if kept_from < position:
                        pieces.append(data[kept_from:position])
                    stream_id = int.from_bytes(data[position + 5 : position + 9], "big")
                    pieces.append((stream_id & 0x7FFFFFFF, data[position:frame_end]))
                    kept_from = frame_end
            elif (frame_type in (PING_TYPE, SETTINGS_TYPE)) and not (data[position + 4] & ACK_FLAG):
                self.control_frames += 1
            elif frame_type == GOAWAY_TYPE and length < _MAX_HELD_GOAWAY:
                if frame_end > size:
                    self._held = data[position:]
                    self._skip = 0
                    end = position
                    break
                payload = position + FRAME_HEADER_SIZE
                if length >= 8:
                    last = int.from_bytes(data[payload : payload + 4], "big") & 0x7FFFFFFF
                    code = int.from_bytes(data[payload + 4 : payload + 8], "big")
                    goaways.append((last, code))
                    if kept_from < position:
                        pieces.append(data[kept_from:position])
                    kept_from = frame_end
                # A GOAWAY shorter than 8 bytes stays in: h2 reports FRAME_SIZE_ERROR.
            if frame_end >= size:
                self._skip = frame_end - size
                end = size
                break
            position = frame_end
        if kept_from == 0:
            return [data if end == size else data[:end]], goaways
        if kept_from < end:
            pieces.append(data[kept_from:end])
        return pieces, goaways
