"""The same requests through a real Envoy 1.40 and through xds-proxy, both with file access
logs (Envoy's default format and a format naming every operator we build): the lines are the
same byte for byte once timestamps, request ids, durations and ephemeral ports are masked.

Requests: proxied (HTTP/1.1 and HTTP/2 upstreams, a prefix rewrite, an upstream status),
direct responses, redirects, 404s, an upstream connect failure (503 UF), an unknown cluster
(503 NC), an upstream timeout (504 UT), codec errors (400, 426, 431), a refused upgrade (403),
a request-headers timeout (408), over HTTP/1.1 and HTTP/2, and a request whose connection is
closed by a drain while it waits for its upstream.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import httpx
import pytest

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, Http2Echo, TcpEcho, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route, tcp_listener
from tests.interop.test_routing_interop import exchange

pytestmark = pytest.mark.envoy

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

# Every operator we build, ` ~ `-separated (masked by position below).
FIELDS = [
    "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f %s %6f)%",
    "%REQ(:METHOD)%",
    "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "%REQ(:PATH):5%",
    "%REQ(:AUTHORITY)%",
    "%REQ(HOST)%",
    "%REQ(:SCHEME)%",
    "%REQ(X-FORWARDED-PROTO)%",
    "%REQ(X-REQUEST-ID)%",
    "%REQ(USER-AGENT)%",
    "%REQ(X-ENVOY-EXPECTED-RQ-TIMEOUT-MS)%",
    "%PROTOCOL%",
    "%RESPONSE_CODE%",
    "%RESPONSE_FLAGS%",
    "%RESPONSE_CODE_DETAILS%",
    "%BYTES_RECEIVED%",
    "%BYTES_SENT%",
    "%DURATION%",
    "%REQUEST_DURATION%",
    "%RESPONSE_DURATION%",
    "%RESPONSE_TX_DURATION%",
    "%RESP(:STATUS)%",
    "%RESP(CONTENT-TYPE)%",
    "%RESP(CONTENT-LENGTH)%",
    "%RESP(SERVER)%",
    "%RESP(X-UPSTREAM?X-NONE)%",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "%TRAILER(GRPC-STATUS)%",
    "%UPSTREAM_HOST%",
    "%UPSTREAM_REMOTE_ADDRESS%",
    "%UPSTREAM_CLUSTER%",
    "%UPSTREAM_LOCAL_ADDRESS%",
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "%DOWNSTREAM_REMOTE_ADDRESS%",
    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_REMOTE_PORT%",
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_LOCAL_ADDRESS%",
    "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
    "%DOWNSTREAM_LOCAL_PORT%",
    "%CONNECTION_TERMINATION_DETAILS%",
    "%ROUTE_NAME%",
    "%HOSTNAME%",
]
SEPARATOR = " ~ "
FULL_FORMAT = SEPARATOR.join(FIELDS) + " 100%%\n"
# Fields that differ between two runs: masked (a number stays distinguishable from `-`).
_TIMES = {"%START_TIME(%Y-%m-%dT%H:%M:%S.%3f %s %6f)%"}
_NUMBERS = {
    "%DURATION%",
    "%REQUEST_DURATION%",
    "%RESPONSE_DURATION%",
    "%RESPONSE_TX_DURATION%",
    "%DOWNSTREAM_REMOTE_PORT%",
    "%DOWNSTREAM_LOCAL_PORT%",
}
# Envoy leaves x-envoy-upstream-service-time out now and then (an HTTP/2 request whose body
# ends after the upstream answered): masked whole.
_SERVICE_TIME = "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"
_PORTS = {
    "%UPSTREAM_LOCAL_ADDRESS%",
    "%DOWNSTREAM_REMOTE_ADDRESS%",
    "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "%DOWNSTREAM_LOCAL_ADDRESS%",
}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_DEFAULT_LINE = re.compile(
    r'^\[[0-9T:.Z-]+\] "(.*)" (\d+) (\S+) (\d+) (\d+) (\S+) (\S+) "(.*)" "(.*)" "(.*)" '
    r'"(.*)" "(.*)"$'
)


# JSON formats: nested objects, Envoy's typing (numbers, null for no value, `-` flags),
# constants, truncation; with and without omit_empty_values.
JSON_FORMAT = {
    "code": "%RESPONSE_CODE%",
    "protocol": "%PROTOCOL%",
    "request": {
        "method": "%REQ(:METHOD)%",
        "agent": "%REQ(USER-AGENT)%",
        "sizes": {"in": "%BYTES_RECEIVED%", "out": "%BYTES_SENT%"},
    },
    "mixed": "code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS%",
    "upstream": "%UPSTREAM_HOST%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "short_path": "%REQ(:PATH):4%",
    "number": 5,
    "yes": True,
    "literal": "x",
    "empty": "",
}
ONE_LINE = "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"
_CODE = {"comparison": {"op": "EQ", "value": {"default_value": 404, "runtime_key": "k.404"}}}
FILTERED = {
    "errors": {
        "status_code_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "k.5xx"}}
        }
    },
    "flags": {"response_flag_filter": {"flags": ["NR", "UF", "DPE"]}},
    "any_flag": {"response_flag_filter": {}},
    "and_or": {
        "or_filter": {
            "filters": [
                {
                    "and_filter": {
                        "filters": [
                            {"status_code_filter": _CODE},
                            {"not_health_check_filter": {}},
                        ]
                    }
                },
                {"response_flag_filter": {"flags": ["UT"]}},
            ]
        }
    },
    "sampled_default": {"runtime_filter": {"runtime_key": "absent.key"}},
    "sampled_none": {
        "runtime_filter": {"runtime_key": "absent.none", "percent_sampled": {"numerator": 0}}
    },
    "sampled_all": {
        "runtime_filter": {"runtime_key": "absent.all", "percent_sampled": {"numerator": 100}}
    },
    "slow": {
        "duration_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 280, "runtime_key": "k.slow"}}
        }
    },
}
# Files compared whole at the end of test_json_omit_and_filters_same_as_envoy.
OTHER_LOGS = ["json", "json_omit", "text_omit", "legacy", *FILTERED]


def mask_full(line: str, loose_request_end: bool = False) -> str:
    """`loose_request_end`: Envoy sometimes logs an HTTP/2 request whose body ended after its
    upstream answered without REQUEST_DURATION: a number and `-` compare equal."""
    values = line.removesuffix(" 100%").split(SEPARATOR)
    assert len(values) == len(FIELDS), line
    shown = []
    for field, value in zip(FIELDS, values, strict=True):
        if field in _TIMES:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} \d{10} \d{6}", value)
            value = "T"
        elif field == "%REQUEST_DURATION%" and loose_request_end:
            value = "N" if value.isdigit() or value == "-" else value
        elif field in _NUMBERS:
            value = "N" if value.isdigit() else value
        elif field == _SERVICE_TIME:
            value = "S"
        elif field in _PORTS:
            value = re.sub(r":\d+$", ":P", value)
        shown.append(_UUID.sub("UUID", value))
    return SEPARATOR.join(shown) + (" 100%" if line.endswith(" 100%") else "")


def mask_default(line: str) -> str:
    found = _DEFAULT_LINE.match(line)
    assert found is not None, line
    groups = list(found.groups())
    groups[5] = "N" if groups[5].isdigit() else groups[5]  # DURATION
    groups[6] = "S"  # x-envoy-upstream-service-time (see _SERVICE_TIME)
    return _UUID.sub("UUID", " ".join(groups))


@pytest.fixture(scope="module")
def backends():
    servers = {"h1": Http1Echo(), "h2": Http2Echo(), "tcp": TcpEcho()}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


def _tcp_listener(port: int, cluster: str, folder: Path, prefix: str) -> dict[str, Any]:
    full = {"log_format": {"text_format_source": {"inline_string": FULL_FORMAT}}}
    access_log = [
        _file_log(folder, f"{prefix}_default", {}),
        _file_log(folder, f"{prefix}_full", full),
    ]
    return tcp_listener(port, cluster, access_log=access_log)


def _document(
    backends, port: int, closed_port: int, folder: Path, tcp_ports: tuple[int, int]
) -> dict[str, Any]:
    routes = [
        route("/slow", "h1", timeout="0.3s"),
        route("/refused", "closed"),
        route("/missing", "no_such_cluster"),
        route("/h2/", "h2"),
        route("/rewrite/", "h1", prefix_rewrite="/new/"),
        {
            "name": "direct",
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "direct\n"}},
        },
        {"match": {"prefix": "/redirect"}, "redirect": {"host_redirect": "other.example"}},
        {"name": "main", "match": {"prefix": "/"}, "route": {"cluster": "h1"}},
    ]
    access_log = [
        {"name": "default", "typed_config": {"@type": FILE_LOG, "path": str(folder / "default")}},
        {
            "name": "full",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(folder / "full"),
                "log_format": {"text_format_source": {"inline_string": FULL_FORMAT}},
            },
        },
        _file_log(folder, "json", {"log_format": {"json_format": JSON_FORMAT}}),
        _file_log(
            folder,
            "json_omit",
            {"log_format": {"json_format": JSON_FORMAT, "omit_empty_values": True}},
        ),
        _file_log(
            folder,
            "text_omit",
            {
                "log_format": {
                    "text_format_source": {
                        "inline_string": "[%UPSTREAM_HOST%][%REQ(X-NONE)%][%RESPONSE_FLAGS%]\n"
                    },
                    "omit_empty_values": True,
                }
            },
        ),
        _file_log(folder, "legacy", {"format": "legacy %RESPONSE_CODE% %REQ(:PATH)%\n"}),
        *(
            {**_file_log(folder, name, {"format": ONE_LINE}), "filter": log_filter}
            for name, log_filter in FILTERED.items()
        ),
    ]
    listener = http_listener(port, routes, access_log=access_log, request_headers_timeout="0.5s")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["domains"] = ["foo", "foo:*"]
    return bootstrap(
        [
            listener,
            _tcp_listener(tcp_ports[0], "tcp", folder, "tcp"),
            _tcp_listener(tcp_ports[1], "closed", folder, "tcp_refused"),
        ],
        [
            cluster_dict("tcp", [backends["tcp"].port]),
            cluster_dict("h1", [backends["h1"].port]),
            cluster_dict("h2", [backends["h2"].port], http2=True),
            cluster_dict("closed", [closed_port]),
        ],
    )


def _file_log(folder: Path, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": FILE_LOG, "path": str(folder / name), **fields}}


@pytest.fixture(scope="module")
def servers(backends, tmp_path_factory):
    closed_port = free_port()  # nobody listens there
    started = {}
    try:
        for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess)):
            folder = tmp_path_factory.mktemp(kind)
            port = free_port()
            tcp_ports = free_port(), free_port()
            process = process_class(
                _document(backends, port, closed_port, folder, tcp_ports),
                folder,
                log_level="warning",
                extra_args=[
                    "--file-flush-interval-msec",
                    "50",
                    "--drain-time-s",
                    "1",
                    "--drain-strategy",
                    "immediate",
                ],
            )
            process.start()
            process.wait_ready()
            process.tcp_ports = tcp_ports  # type: ignore[attr-defined]
            started[kind] = (process, port, folder)
        yield started
    finally:
        for process, _, _ in started.values():
            process.stop()


def _lines(folder: Path, name: str) -> list[str]:
    path = folder / name
    return path.read_text().splitlines() if path.exists() else []


def run_and_collect(servers, send) -> dict[str, tuple[list[str], list[str]]]:
    """Run `send(port)` against each server; its new (default, full) lines, in order."""
    found = {}
    for kind, (_, port, folder) in servers.items():
        before = len(_lines(folder, "default")), len(_lines(folder, "full"))
        expected = send(port)
        wait_for(
            lambda folder=folder, before=before, expected=expected: (
                len(_lines(folder, "default")) >= before[0] + expected
                and len(_lines(folder, "full")) >= before[1] + expected
            ),
            timeout=10,
            what=f"{expected} access-log lines from {kind}",
        )
        time.sleep(0.2)  # nothing more comes
        found[kind] = (_lines(folder, "default")[before[0] :], _lines(folder, "full")[before[1] :])
    return found


def assert_same(found, loose_request_end: bool = False) -> None:
    envoy_default, envoy_full = found["envoy"]
    ours_default, ours_full = found["ours"]
    assert [mask_default(line) for line in ours_default] == [
        mask_default(line) for line in envoy_default
    ]
    assert [mask_full(line, loose_request_end) for line in ours_full] == [
        mask_full(line, loose_request_end) for line in envoy_full
    ]


HTTP1_REQUESTS = {
    "get": b"GET /a?x=1 HTTP/1.1\r\nhost: foo\r\nuser-agent: t\r\nx-forwarded-for: 1.2.3.4\r\n\r\n",
    "post": b"POST /p HTTP/1.1\r\nhost: foo\r\ncontent-length: 5\r\n\r\nhello",
    "chunked": b"POST /c HTTP/1.1\r\nhost: foo\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "head": b"HEAD /h HTTP/1.1\r\nhost: foo\r\n\r\n",
    "upstream_status": b"GET /s HTTP/1.1\r\nhost: foo\r\nx-status: 404\r\n\r\n",
    "rewrite": b"GET /rewrite/x?q HTTP/1.1\r\nhost: foo\r\nx-request-id: given-id\r\n\r\n",
    "h2_upstream": b"GET /h2/x HTTP/1.1\r\nhost: foo\r\n\r\n",
    "direct": b"GET /direct HTTP/1.1\r\nhost: foo\r\n\r\n",
    "direct_head": b"HEAD /direct HTTP/1.1\r\nhost: foo:80\r\n\r\n",
    "not_found": b"GET /x HTTP/1.1\r\nhost: bar\r\n\r\n",
    "redirect": b"GET /redirect/y HTTP/1.1\r\nhost: foo\r\n\r\n",
    "refused": b"GET /refused HTTP/1.1\r\nhost: foo\r\n\r\n",
    "missing": b"GET /missing HTTP/1.1\r\nhost: foo\r\n\r\n",
    "timeout": b"GET /slow HTTP/1.1\r\nhost: foo\r\nx-delay-ms: 2000\r\n\r\n",
    "http10": b"GET /old HTTP/1.0\r\nhost: foo\r\n\r\n",
    "no_host": b"GET /nohost HTTP/1.1\r\n\r\n",
    "garbage": b"GARBAGE\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\nhost: foo\r\nconnection: upgrade\r\n"
    b"upgrade: websocket\r\n\r\n",
    "too_large": b"GET /big HTTP/1.1\r\nhost: foo\r\nx-big: " + b"x" * 70_000 + b"\r\n\r\n",
}


def _send_http1(port: int, request: bytes) -> None:
    # 431: the rest of a large request is refused with a reset
    with contextlib.suppress(ConnectionResetError):
        exchange(port, request)


@pytest.mark.parametrize("name", list(HTTP1_REQUESTS))
def test_http1_lines_same_as_envoy(servers, name: str) -> None:
    def send(port: int) -> int:
        _send_http1(port, HTTP1_REQUESTS[name])
        return 1

    assert_same(run_and_collect(servers, send))


def test_request_headers_timeout_line_same_as_envoy(servers) -> None:
    def send(port: int) -> int:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /slow-headers HTTP/1.1\r\nhost: foo\r\n")
            while sock.recv(65536):
                pass
        return 1

    assert_same(run_and_collect(servers, send))


def test_http2_lines_same_as_envoy(servers) -> None:
    def send(port: int) -> int:
        headers = {"host": "foo", "user-agent": "h2c"}
        with httpx.Client(
            http1=False, http2=True, base_url=f"http://127.0.0.1:{port}", headers=headers
        ) as client:
            client.get("/a?x=1", headers={"x-forwarded-for": "1.2.3.4"})
            client.post("/p", content=b"hello")
            client.head("/h")
            client.get("/h2/x")
            client.get("/rewrite/x")
            client.get("/direct")
            client.head("/direct")
            client.get("/x", headers={"host": "bar"})
            client.get("/redirect/y")
            client.get("/refused")
            client.get("/missing")
            client.get("/slow", headers={"x-delay-ms": "2000"})
            # Header blocks repeated on the connection: from the third on, answered
            # without h2 (http2_direct.py), and logged alike.
            for path in ("/direct", "/missing"):
                for _ in range(4):
                    client.get(path)
            for _ in range(4):
                client.head("/direct")
        return 24

    assert_same(run_and_collect(servers, send), loose_request_end=True)


# The client closes 0.3 s into headers that time out at 0.5 s: under the parallel workers' load
# the timeout (408) came first on one side, the close (DC) on the other.
@pytest.mark.serial
def test_client_gone_before_the_response_same_as_envoy(servers) -> None:
    """The client closes (DC) while its request waits for a slow upstream, in the middle of
    a forwarded request's body, and in the middle of a request's headers."""
    requests = [
        b"GET /gone HTTP/1.1\r\nhost: foo\r\nx-delay-ms: 1000\r\n\r\n",
        b"POST /gone-body HTTP/1.1\r\nhost: foo\r\ncontent-length: 10\r\n\r\nabc",
        b"GET /gone-headers HTTP/1.1\r\nhost: foo\r\n",
    ]

    def send(port: int) -> int:
        for request in requests:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(request)
                time.sleep(0.3)
        return len(requests)

    assert_same(run_and_collect(servers, send))


def test_http2_client_gone_or_reset_same_as_envoy(servers) -> None:
    """HTTP/2: the connection closes under a forwarded stream (DC), in the middle of its body
    or while it waits for a slow upstream; the client resets a stream (RST_STREAM: no flag)."""

    def open_stream(port: int, path: str, end: bool, reset: bool = False) -> None:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        headers = [(":method", "GET" if end else "POST"), (":path", path), (":scheme", "http")]
        headers += [(":authority", "foo"), ("x-delay-ms", "1000")]
        client.send_headers(1, headers, end_stream=end)
        if not end:
            client.send_data(1, b"abc")
        if reset:
            client.reset_stream(1)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(client.data_to_send())
            time.sleep(0.3)

    def send(port: int) -> int:
        open_stream(port, "/h2-gone-body", end=False)
        open_stream(port, "/h2-gone", end=True)
        open_stream(port, "/h2-reset", end=True, reset=True)
        return 3

    assert_same(run_and_collect(servers, send))


def _complete(received: bytes) -> bool:
    head, separator, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(separator and length and len(body) >= int(length.group(1)))


def test_drain_closed_connection_lines_same_as_envoy(servers) -> None:
    """A drain (`/drain_listeners?graceful`): the response in flight says `connection:
    close`, and the connection is closed after it; the request is logged as usual."""

    def send(port: int) -> int:
        process = next(p for p, listen_port, _ in servers.values() if listen_port == port)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /drained HTTP/1.1\r\nhost: foo\r\nx-delay-ms: 400\r\n\r\n")
            time.sleep(0.1)
            status, _ = process.post("/drain_listeners?graceful&skip_exit")
            assert status == 200
            received = b""
            while not _complete(received):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
        assert b"connection: close\r\n" in received
        return 1

    assert_same(run_and_collect(servers, send))


def test_json_omit_and_filters_same_as_envoy(servers) -> None:
    """The JSON, omit_empty_values, legacy-format and filtered loggers saw the same requests
    (this module's, in order) in both: their files are the same."""

    def send(port: int) -> int:
        for name in ("get", "direct", "not_found", "refused", "missing", "timeout", "garbage"):
            _send_http1(port, HTTP1_REQUESTS[name])
        return 7

    run_and_collect(servers, send)
    envoy_folder, our_folder = servers["envoy"][2], servers["ours"][2]
    for name in OTHER_LOGS:
        assert (our_folder / name).exists(), name  # opened at load, as Envoy does
        theirs = (envoy_folder / name).read_text()
        mine = (our_folder / name).read_text()
        assert mine.splitlines() == theirs.splitlines(), name
    assert (our_folder / "sampled_default").read_text() == ""  # no runtime value: 0%


def test_tcp_proxy_lines_same_as_envoy(servers) -> None:
    """tcp_proxy's access_log: a proxied connection (bytes both ways, half-close) and an
    upstream connect failure (UF,URX), in Envoy's default format and every operator."""
    names = ("tcp_default", "tcp_full", "tcp_refused_default", "tcp_refused_full")
    found = {}
    for kind, (process, _, folder) in servers.items():
        tcp_port, refused_port = process.tcp_ports
        with socket.create_connection(("127.0.0.1", tcp_port)) as sock:
            sock.settimeout(5)
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(100):
                pass
        with socket.create_connection(("127.0.0.1", refused_port)) as sock:
            sock.settimeout(5)
            assert sock.recv(100) == b""
        wait_for(
            lambda folder=folder: all(len(_lines(folder, name)) == 1 for name in names),
            timeout=10,
            what=f"tcp_proxy lines from {kind}",
        )
        found[kind] = [_lines(folder, name)[0] for name in names]
    for theirs, mine, masked in zip(
        found["envoy"], found["ours"], (mask_default, mask_full) * 2, strict=True
    ):
        assert masked(mine) == masked(theirs)
