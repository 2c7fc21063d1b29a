"""The frames of an upstream HTTP/2 connection that the direct path takes (see
http2_direct.py): a part of `Http2ClientConnection` (http2_pool.py), on the same object, as a
base class. A response taken directly is queued with h2's events and reaches its stream, in
order, when h2's events do (`_dispatch`), exactly where `_on_response` and `_on_data` would
have delivered it."""

from __future__ import annotations

from typing import Any

import h2.events

from xds_proxy.codec.h2_connection import BoundedH2Connection
from xds_proxy.upstream.http2_direct import DirectStreams, KnownResponse

_FRAME_HEADER = 9
_HEADERS = 0x1
DIRECT_HEADERS = "headers"
DIRECT_BODY = "body"
DIRECT_WHOLE = "whole"  # headers and body taken from one read, delivered at once


class DirectResponses:
    """The direct path's side of `Http2ClientConnection` (which defines what is declared
    here)."""

    h2: BoundedH2Connection
    direct: DirectStreams[Any]
    streams: dict[int, Any]
    _events: list
    # Where in `_events` the DIRECT_HEADERS of a stream whose body is still to come are,
    # by stream id (emptied with `_events`): its body joins them there.
    _heads_at: dict[int, int]

    def _receive(self, data: bytes) -> bool:
        raise NotImplementedError

    def _finish(self, stream: Any) -> None:
        raise NotImplementedError

    def _direct_frame(
        self, stream_id: int, frame_type: int, data: bytes, position: int, end: int
    ) -> bool:
        """A HEADERS or DATA frame (whole, from `position` to `end`) of direct stream
        `stream_id`: taken without h2 if it is the expected part of a response whose header
        block is known, else the stream goes to h2 and h2 takes the frame alone (learning
        its header block). False when the connection failed."""
        stream = self.direct.streams[stream_id]
        if frame_type == _HEADERS:
            known = self.direct.take_headers(stream_id, data, position, end)
            if known is None:
                return self._learn_response(stream_id, data, position, end)
            ended = stream_id not in self.direct.responding
            if ended:
                self.direct.finish(stream_id, 0)
            else:
                self._heads_at[stream_id] = len(self._events)
            self._events.append((DIRECT_HEADERS, stream, known, ended))
            return True
        body = self.direct.take_body(stream_id, data, position, end)
        if body is None:
            self._heads_at.pop(stream_id, None)
            self.direct.materialize(stream_id)
            return self._receive(data[position:end])
        self.direct.finish(stream_id, len(body))
        events = self._events
        at = self._heads_at.pop(stream_id, None)
        if at is None:  # (its headers went to the stream already)
            events.append((DIRECT_BODY, stream, body))
        else:  # (other streams' events in between concern other streams or the connection)
            events[at] = (DIRECT_WHOLE, stream, events[at][2], body)
        return True

    def _learn_response(self, stream_id: int, data: bytes, position: int, end: int) -> bool:
        """h2 takes the stream and its HEADERS frame; if decoding the block left the table
        as it was, the block is remembered as h2 reported it."""
        self.direct.materialize(stream_id)
        token = self.h2.decode_token()
        first_new = len(self._events)
        if not self._receive(data[position:end]):
            return False
        if self.h2.decode_token() == token:
            for event in self._events[first_new:]:
                if type(event) is h2.events.ResponseReceived and event.stream_id == stream_id:
                    self.direct.learn(data[position + _FRAME_HEADER : end], token, event.headers)
        return True

    def _on_direct_headers(self, stream: Any, known: KnownResponse, ended: bool) -> None:
        """`_on_response` for a response taken directly."""
        if stream.done or self.streams.get(stream.stream_id) is not stream:
            return
        if ended:
            self._finish(stream)
        stream.handler.on_response_headers(known.status, list(known.headers), ended)

    def _on_direct_whole(self, stream: Any, known: KnownResponse, body: bytes) -> None:
        """`_on_direct_headers` then `_on_direct_body`, in one call to the handler when it
        takes whole responses (its writes, then the acknowledgment: it writes nothing
        upstream)."""
        if stream.done or self.streams.get(stream.stream_id) is not stream:
            if body:
                self.direct.acknowledge(len(body))
            return
        if not stream.handler.on_whole_response(known.status, list(known.headers), body):
            self._on_direct_headers(stream, known, False)
            self._on_direct_body(stream, body)
            return
        size = len(body)
        if size and stream.note_received(size):
            self.direct.acknowledge(size)
        self._finish(stream)

    def _on_direct_body(self, stream: Any, body: bytes) -> None:
        """`_on_data` for a body taken directly (one frame with END_STREAM)."""
        size = len(body)
        if stream.done or self.streams.get(stream.stream_id) is not stream:
            if size:
                self.direct.acknowledge(size)
            return
        if size and stream.note_received(size):
            self.direct.acknowledge(size)
        self._finish(stream)
        stream.handler.on_response_data(body, True)
