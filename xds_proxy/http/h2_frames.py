"""Cut the client's GOAWAY frames out of the inbound HTTP/2 byte stream before h2 sees them,
and count the PING and SETTINGS frames in it.

h2 moves to CLOSED when it receives a GOAWAY, after which the streams the client still
waits for can no longer be answered (docs/architecture.md#known-traps). A client's GOAWAY only says
"I open no more streams" (a server does not push here), so the connection handles it itself
and h2 never sees it. PING and SETTINGS frames are counted here because h2 answers them
inside `receive_data`: a flood must be caught before that work is done. Pure: bytes in,
bytes, GOAWAYs and a count out; only frame headers are read.
"""

from __future__ import annotations

PREFACE_SIZE = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", not a frame
FRAME_HEADER_SIZE = 9
GOAWAY_TYPE = 0x7
SETTINGS_TYPE = 0x4
PING_TYPE = 0x6
ACK_FLAG = 0x1
_MAX_HELD_GOAWAY = 1 << 16  # a GOAWAY's debug data beyond this is an attack: hand it to h2


class GoAwayCutter:
    """Feed every inbound chunk through `feed`; it returns the bytes for h2 and the
    (last_stream_id, error_code) of each complete GOAWAY it removed. `control_frames` counts
    the PING and SETTINGS frames (not their ACKs) whose headers passed."""

    __slots__ = ("_held", "_skip", "control_frames")

    def __init__(self, skip: int = PREFACE_SIZE) -> None:
        self._skip = skip  # bytes that pass unread: the preface, then frame payloads
        self._held = b""  # an incomplete frame header or GOAWAY, kept until complete
        self.control_frames = 0

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        if self._held:
            data = self._held + data
            self._held = b""
        size = len(data)
        position = self._skip
        if position >= size:
            self._skip = position - size
            return data, []
        goaways: list[tuple[int, int]] = []
        pieces: list[bytes] = []
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
            if (frame_type in (PING_TYPE, SETTINGS_TYPE)) and not (data[position + 4] & ACK_FLAG):
                self.control_frames += 1
            if frame_type == GOAWAY_TYPE and length < _MAX_HELD_GOAWAY:
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
        if not goaways and kept_from == 0:
            return (data if end == size else data[:end]), goaways
        if kept_from < end:
            pieces.append(data[kept_from:end])
        return b"".join(pieces), goaways
