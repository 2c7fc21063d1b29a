"""HTTP/2 requests whose header block repeats on a connection are answered without h2 from
the third one on (http/http2_direct.py). Those answers must be what the general path gives:
the same status for a path with a fragment (400, whatever the config), and the same access-log
line, one per request, on an HCM with an access log."""

from __future__ import annotations

import re
import socket

import h2.config
import h2.connection
import h2.events
import pytest

from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_upstream_proxy import bootstrap, http_listener

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
DIRECT = {"status": 200, "body": {"inline_string": "ok"}}
ROUTES = [{"match": {"prefix": "/direct"}, "direct_response": DIRECT}]
REPEATS = 5  # the third and later are answered without h2
# Envoy's default format.
DEFAULT_LINE = re.compile(
    r'\[(?P<time>[^]]+)\] "(?P<request>[^"]*)" (?P<code>\d+) (?P<flags>\S+) (?P<rx>\d+) '
    r'(?P<tx>\d+) (?P<duration>\d+) (?P<service_time>\S+) "(?P<xff>[^"]*)" "(?P<agent>[^"]*)" '
    r'"(?P<id>[^"]*)" "(?P<authority>[^"]*)" "(?P<host>[^"]*)"'
)


def _start(tmp_path, logged: bool = True) -> tuple[ProxyProcess, int]:
    port = free_port()
    logger = {"@type": FILE_LOG, "path": str(tmp_path / "access.log")}
    access_log = [{"name": "file", "typed_config": logger}] if logged else []
    process = ProxyProcess(
        bootstrap([http_listener(port, ROUTES, access_log=access_log)], []),
        tmp_path,
        extra_args=["--file-flush-interval-msec", "50"],
    )
    process.start()
    process.wait_ready()
    return process, port


def _same_request_repeated(port: int, method: bytes, path: bytes) -> list[bytes]:
    """Send one request REPEATS times on one connection (each after the last answer, so the
    client's HPACK encoder sends the same block); the statuses."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    client = h2.connection.H2Connection(config)
    statuses: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        client.initiate_connection()
        sock.sendall(client.data_to_send())
        for _ in range(REPEATS):
            stream_id = client.get_next_available_stream_id()
            headers = [(b":method", method), (b":path", path), (b":scheme", b"http"),
                       (b":authority", b"foo"), (b"user-agent", b"repeat")]  # fmt: skip
            client.send_headers(stream_id, headers, end_stream=True)
            sock.sendall(client.data_to_send())
            done = False
            while not done:
                data = sock.recv(65536)
                assert data, "the proxy closed the connection"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses.append(dict(event.headers)[b":status"])
                    if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        done = done or event.stream_id == stream_id
                sock.sendall(client.data_to_send())
    return statuses


def _lines(tmp_path) -> list[str]:
    path = tmp_path / "access.log"
    return path.read_text().splitlines() if path.exists() else []


def test_repeated_requests_are_logged_like_the_first(tmp_path) -> None:
    process, port = _start(tmp_path)
    try:
        assert _same_request_repeated(port, b"GET", b"/direct") == [b"200"] * REPEATS
        assert _same_request_repeated(port, b"HEAD", b"/direct") == [b"200"] * REPEATS
        assert _same_request_repeated(port, b"GET", b"/missing") == [b"404"] * REPEATS
        wait_for(lambda: len(_lines(tmp_path)) >= 3 * REPEATS, timeout=5, what="15 lines")
    finally:
        process.stop()
    fields = [DEFAULT_LINE.fullmatch(line) for line in _lines(tmp_path)]
    assert len(fields) == 3 * REPEATS and all(fields), _lines(tmp_path)
    ids = [found["id"] for found in fields]  # type: ignore[index]
    assert len(set(ids)) == len(ids)  # each request its own id
    # Apart from the time, the duration and the id, the lines of one request are equal.
    kept = [{k: v for k, v in found.groupdict().items() if k not in ("time", "duration", "id")}
            for found in fields]  # type: ignore[union-attr]  # fmt: skip
    for first in range(0, 3 * REPEATS, REPEATS):
        assert kept[first : first + REPEATS] == [kept[first]] * REPEATS
    assert kept[0] == {"request": "GET /direct HTTP/2", "code": "200", "flags": "-", "rx": "0",
                       "tx": "2", "service_time": "-", "xff": "-", "agent": "repeat",
                       "authority": "foo", "host": "-"}  # fmt: skip
    assert (kept[REPEATS]["request"], kept[REPEATS]["tx"]) == ("HEAD /direct HTTP/2", "0")
    assert (kept[2 * REPEATS]["code"], kept[2 * REPEATS]["flags"]) == ("404", "NR")


@pytest.mark.parametrize("logged", [False, True], ids=["no-log", "log"])
def test_a_repeated_path_with_a_fragment_is_refused_every_time(tmp_path, logged: bool) -> None:
    process, port = _start(tmp_path, logged)
    try:
        assert _same_request_repeated(port, b"GET", b"/direct#a") == [b"400"] * REPEATS
    finally:
        process.stop()
