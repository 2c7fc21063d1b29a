"""The h2 connection both HTTP/2 sides use (downstream server, upstream pool).

h2 remembers how each closed stream ended so that late frames on it are handled as the RFC
says; by default it keeps 65,536 of them, about 11 MiB per long-lived connection, which showed
as RSS growth under steady HTTP/2 load (issue 10). 1,024 covers the frames still in flight
after a reset; past that, late DATA, WINDOW_UPDATE and RST_STREAM are still ignored and only
late trailers end the connection (measured on h2 4.4).

The server side answers its common requests without h2's per-frame machinery (a HEADERS frame
with END_STREAM in, a local reply out: `http/http2.py`). The methods below the first one
keep h2's state exactly where h2 itself would have put it for such a stream: the highest
stream id, the record of a stream closed by our END_STREAM, the connection's send window, the
frames queued in order with h2's own. They read h2 4.x internals (`_closed_streams`,
`_data_to_send`, the frame buffer's partial frame and header block); the differential tests
in tests/unit/test_h2_fast_differential.py compare the wire and the state with h2's own path.
"""

from __future__ import annotations

import h2.config
import h2.connection
from h2.connection import ConnectionState
from h2.stream import StreamClosedBy

from xds_proxy.codec.h2_fast import CountingHeaderTable

_SERVER_OPEN = ConnectionState.SERVER_OPEN
_CLOSED_BY_OUR_END = StreamClosedBy.SEND_END_STREAM


class BoundedH2Connection(h2.connection.H2Connection):
    MAX_CLOSED_STREAMS = 1024

    def __init__(self, config: h2.config.H2Configuration | None = None) -> None:
        super().__init__(config=config)
        self.decoder.header_table = CountingHeaderTable()

    def decode_token(self) -> tuple[int, int, int]:
        """Changes whenever the same header block could decode differently (or be refused)."""
        decoder = self.decoder
        return (
            decoder.header_table.epoch,  # type: ignore[attr-defined]
            decoder.max_allowed_table_size,
            decoder.max_header_list_size,
        )

    def may_open_directly(self, stream_id: int) -> bool:
        """True if h2 would open inbound stream `stream_id` from a HEADERS frame without a
        word: connection open, no header block or partial frame pending, an odd id above
        every earlier one."""
        buffer = self.incoming_buffer
        return (
            stream_id & 1 == 1
            and stream_id > self.highest_inbound_stream_id
            and self.state_machine.state is _SERVER_OPEN
            and not buffer._headers_buffer
            and not buffer._data
        )

    def direct_send_room(self) -> int:
        """How much body a new stream's first DATA frame may carry now (0 when h2 must encode
        the next header block itself, to announce a table size change)."""
        if self.encoder.header_table.resized:
            return 0
        return min(
            self.outbound_flow_control_window,
            self.remote_settings.initial_window_size,
            self.max_outbound_frame_size,
        )

    def answered_directly(self, stream_id: int, frames: bytes, body_length: int) -> None:
        """Stream `stream_id` was opened by a HEADERS frame with END_STREAM (decoded with
        this connection's decoder) and answered in full by `frames`, whose DATA carries
        `body_length` bytes: h2's state as after its own `receive_data`, `send_headers`,
        `send_data(end_stream=True)`."""
        if self.streams:
            _ = self.open_inbound_streams  # h2 sweeps its closed streams on every new stream
        self.highest_inbound_stream_id = stream_id
        self._closed_streams[stream_id] = _CLOSED_BY_OUR_END
        self.outbound_flow_control_window -= body_length
        self._data_to_send += frames
