"""The HCM fields production control planes set, through a real Envoy 1.40 and through
xds-proxy with the same requests: `normalize_path`, `merge_slashes`,
`path_with_escaped_slashes_action`, `headers_with_underscores_action`,
`server_header_transformation` with `server_name`, `use_remote_address` with
`xff_num_trusted_hops` and `skip_xff_append`, `preserve_external_request_id`.

Each variant is a listener of its own, with a direct response (`/direct`) and a route to an
echoing upstream (everything else). For each request the status line, the response headers,
the request as the upstream saw it (path and headers) and the access-log line
(`RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`, `DOWNSTREAM_REMOTE_ADDRESS`,
`:path`) must be the same."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import FAST_LOG_FLUSH, EnvoyProcess
from tests.helpers.h2_client import H2Client
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route
from tests.interop.test_routing_interop import exchange, parse

pytestmark = pytest.mark.envoy

FILE_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = (
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQ(:PATH)%\n"
)

VARIANTS: dict[str, dict[str, Any]] = {
    "normalize": {"normalize_path": True},
    "merge": {"merge_slashes": True},
    "normalize_merge": {"normalize_path": True, "merge_slashes": True},
    "escaped_keep": {"path_with_escaped_slashes_action": "KEEP_UNCHANGED"},
    "escaped_reject": {"path_with_escaped_slashes_action": "REJECT_REQUEST"},
    "escaped_redirect": {"path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT"},
    "escaped_forward": {
        "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
        "normalize_path": True,
        "merge_slashes": True,
    },
    "underscore_reject": {
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}
    },
    "underscore_drop": {
        "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"}
    },
    "remote": {"use_remote_address": True},
    "remote_hops": {"use_remote_address": True, "xff_num_trusted_hops": 1},
    "remote_skip": {"use_remote_address": True, "skip_xff_append": True},
    "hops_only": {"xff_num_trusted_hops": 1},
    "preserve_id": {"use_remote_address": True, "preserve_external_request_id": True},
    "no_request_id": {"use_remote_address": True, "generate_request_id": False},
    "server_overwrite": {"server_name": "custom"},
    "server_append": {"server_header_transformation": "APPEND_IF_ABSENT", "server_name": "custom"},
    "accept_one": {},  # the listener's max_connections_to_accept_per_socket_event: 1
    "server_pass": {
        "server_header_transformation": "PASS_THROUGH",
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
    },
}

_PATHS = [
    "/a/../b/./c//d?q=/x/../y",
    "/a%2Fb%2fc%5Cd%5ce?x=%2F",
    "/a/%2e%2E/b/%2E/c%41%7e%7E%20%3a%zz",
    "/a\\b\\..\\c",
    "/../../x",
    "/a/%%32%65/b%%2e%41/%zz",
    '/a/"<>^`{|}/b',
    "/a/b/..",
    "/a/.b/..c/%2e./.",
    "/a%2F../b",
    "/a/%00/b",
    "////",
    "/direct//x/../",
    "/direct%2Fx",
]
_PATH_VARIANTS = [
    "normalize",
    "merge",
    "normalize_merge",
    "escaped_keep",
    "escaped_reject",
    "escaped_redirect",
    "escaped_forward",
]

_FORWARDED = (
    "x-forwarded-for: 1.1.1.1, 2.2.2.2\r\nx-request-id: abc\r\nx-envoy-internal: true\r\n"
    "x-envoy-external-address: 9.9.9.9\r\nx-forwarded-proto: https\r\n"
)
_INTERNAL = (
    "x-envoy-retry-on: 5xx\r\nx-envoy-max-retries: 3\r\nx-envoy-upstream-rq-timeout-ms: 5\r\n"
    "x-envoy-expected-rq-timeout-ms: 7\r\nx-envoy-decorator-operation: op\r\n"
    "x-envoy-downstream-service-cluster: c\r\nx-envoy-original-path: /p\r\n"
)
_HEADER_REQUESTS = {
    "plain": "",
    "forwarded": _FORWARDED,
    "one_xff": "x-forwarded-for: 10.0.0.1\r\n",
    "two_xff_headers": "x-forwarded-for: 1.1.1.1,10.0.0.1\r\nx-forwarded-for: 2.2.2.2\r\n",
    "bad_xff": "x-forwarded-for: not-an-ip\r\n",
    "request_id": "x-request-id: abc\r\n",
    "internal": _INTERNAL,
    "underscore": "my_header: 1\r\nok-header: 2\r\n",
}
_HEADER_VARIANTS = [
    "underscore_reject",
    "underscore_drop",
    "remote",
    "remote_hops",
    "remote_skip",
    "hops_only",
    "preserve_id",
    "no_request_id",
]


_SERVER_REQUESTS = {
    "upstream_server": "GET /x HTTP/1.1\r\nhost: foo\r\nx-response-server: up\r\n\r\n",
    "upstream_server_chunked": "GET /x HTTP/1.1\r\nhost: foo\r\nx-response-server: up\r\n"
    "x-chunked: 1\r\nx-body-size: 3\r\n\r\n",
    "chunked": "GET /x HTTP/1.1\r\nhost: foo\r\nx-chunked: 1\r\nx-body-size: 3\r\n\r\n",
    "plain": "GET /x HTTP/1.1\r\nhost: foo\r\n\r\n",
    "direct": "GET /direct HTTP/1.1\r\nhost: foo\r\n\r\n",
    "no_host": "GET /x HTTP/1.1\r\n\r\n",
    "refused": "GET /refused HTTP/1.1\r\nhost: foo\r\n\r\n",
    "redirect": "GET /a%2Fb HTTP/1.1\r\nhost: foo\r\n\r\n",
}
_SERVER_VARIANTS = ["server_overwrite", "server_append", "server_pass", "escaped_keep"]


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for variant in _PATH_VARIANTS:
        for path in _PATHS:
            cases.append((variant, path, f"GET {path} HTTP/1.1\r\nhost: foo\r\n\r\n"))
    for variant in _HEADER_VARIANTS:
        for name, headers in _HEADER_REQUESTS.items():
            for target in ("/x", "/direct"):
                request = f"GET {target} HTTP/1.1\r\nhost: foo\r\n{headers}\r\n"
                cases.append((variant, f"{name}{target}", request))
    for variant in _SERVER_VARIANTS:
        for name, request in _SERVER_REQUESTS.items():
            cases.append((variant, name, request))
    return cases


CASES = _cases()

# (variant, name, :path, extra headers) sent over HTTP/2 (prior knowledge).
H2_CASES = [
    ("normalize_merge", "h2-normalized", "/a/../b//c?x=/../", []),
    ("normalize_merge", "h2-direct", "/direct/../direct", []),
    ("escaped_reject", "h2-reject", "/a%2Fb", []),
    ("escaped_redirect", "h2-redirect", "/a%2Fb?q", []),
    ("escaped_forward", "h2-forward", "/a%2Fb/../c", []),
    ("underscore_reject", "h2-underscore", "/x", [("my_header", "1")]),
    ("underscore_reject", "h2-underscore-direct", "/direct", [("my_header", "1")]),
    ("underscore_drop", "h2-underscore", "/x", [("my_header", "1"), ("ok-header", "2")]),
    ("server_pass", "h2-upstream-server", "/x", [("x-response-server", "up")]),
    ("server_pass", "h2-direct", "/direct", []),
    ("server_overwrite", "h2-upstream-server", "/x", [("x-response-server", "up")]),
    ("remote_hops", "h2-forwarded", "/x", [("x-forwarded-for", "1.1.1.1, 2.2.2.2")]),
]


def _h2_exchange(port: int, path: str, headers: list[tuple[str, str]]) -> Any:
    """One HTTP/2 request on a fresh connection: status, masked headers, the upstream's view
    (or the body), and the RST_STREAM code if the stream was reset."""
    with H2Client(port) as client:
        response = client.response(client.request(path, authority="foo", headers=headers))
    shown = [(name, _mask(name, value)) for name, value in response.headers]
    body: Any = response.body
    if body.startswith(b"{"):
        echoed = json.loads(body)
        upstream = [(name, _mask(name, value)) for name, value in echoed["headers"]]
        body = {"path": echoed["path"], "headers": upstream}
    return response.status, shown, body, response.reset_code


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    echo = Http1Echo()
    echo.start()
    closed_port = free_port()  # nobody listens there
    routes = [
        route("/refused", "closed"),
        {
            "match": {"prefix": "/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        },
        route("/", "echo"),
    ]
    started: dict[str, tuple[Any, dict[str, int], Path]] = {}
    try:
        for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess)):
            directory = tmp_path_factory.mktemp(kind)
            ports = {}
            listeners = []
            for variant, fields in VARIANTS.items():
                ports[variant] = port = free_port()
                listener = http_listener(port, routes, **fields)
                listener["name"] = variant
                if variant == "accept_one":
                    listener["max_connections_to_accept_per_socket_event"] = 1
                hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
                hcm["access_log"] = [
                    {
                        "name": "envoy.access_loggers.file",
                        "typed_config": {
                            "@type": FILE_LOGGER,
                            "path": str(directory / f"{variant}.log"),
                            "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
                        },
                    }
                ]
                listeners.append(listener)
            clusters = [cluster_dict("echo", [echo.port]), cluster_dict("closed", [closed_port])]
            document = bootstrap(listeners, clusters)
            process = process_class(
                document, directory, log_level="warning", extra_args=FAST_LOG_FLUSH
            )
            process.start()
            process.wait_ready()
            started[kind] = (process, ports, directory)
        yield started
    finally:
        for process, _, _ in started.values():
            process.stop()
        echo.stop()


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_VARIABLE = {"date", "x-envoy-upstream-service-time"}


def _mask(name: str, value: str) -> str:
    if name in _VARIABLE:
        return "*"
    if name == "x-request-id" and _UUID.match(value):
        return "uuid"
    return value


def comparable(raw: bytes) -> tuple[str, list[tuple[str, str]], Any]:
    status, headers, body = parse(raw)
    shown = [(name, _mask(name, value)) for name, value in headers]
    if not body.startswith(b"{"):
        return status, shown, body
    echoed = json.loads(body)
    upstream = [(name, _mask(name, value)) for name, value in echoed["headers"]]
    return status, shown, {"path": echoed["path"], "headers": upstream}


def _log_lines(directory: Path, variant: str, count: int) -> list[str]:
    """A variant's access-log lines once there are `count`, client ports masked."""
    path = directory / f"{variant}.log"

    def lines() -> list[str] | None:
        if not path.exists():
            return None
        found = path.read_text().splitlines()
        return found if len(found) >= count else None

    found = wait_for(lines, timeout=10, what=f"{count} lines in {path}")
    return [re.sub(r"127\.0\.0\.1:(?!0 )\d+", "127.0.0.1:PORT", line) for line in found]


@pytest.fixture(scope="module")
def results(servers) -> dict[str, dict[tuple[str, str], Any]]:
    """Every case sent to both (one connection each), then the access logs read once."""
    found: dict[str, dict[tuple[str, str], Any]] = {}
    for kind in ("envoy", "ours"):
        _, ports, directory = servers[kind]
        responses = {}
        per_variant: dict[str, list[str]] = {}
        for variant, name, request_text in CASES:
            raw = exchange(ports[variant], request_text.encode("latin-1"))
            responses[(variant, name)] = comparable(raw)
            per_variant.setdefault(variant, []).append(name)
        for variant, name, path, headers in H2_CASES:
            responses[(variant, name)] = _h2_exchange(ports[variant], path, headers)
            per_variant.setdefault(variant, []).append(name)
        for variant, names in per_variant.items():
            lines = _log_lines(directory, variant, len(names))
            for name, line in zip(names, lines, strict=False):
                responses[(variant, name)] = (responses[(variant, name)], line)
        found[kind] = responses
    return found


ALL_CASES = [(v, n) for v, n, _ in CASES] + [(v, n) for v, n, _, _ in H2_CASES]


@pytest.mark.parametrize(("variant", "name"), ALL_CASES, ids=[f"{v}-{n}" for v, n in ALL_CASES])
def test_same_as_envoy(results, variant: str, name: str) -> None:
    assert results["ours"][(variant, name)] == results["envoy"][(variant, name)]


def test_accepting_one_connection_per_event_serves_every_connection(servers) -> None:
    """`max_connections_to_accept_per_socket_event: 1` spreads accepts over loop iterations:
    40 connections opened at once are all accepted and answered, by both."""
    answers = {}
    for kind in ("envoy", "ours"):
        _, ports, _ = servers[kind]
        sockets = [socket.create_connection(("127.0.0.1", ports["accept_one"])) for _ in range(40)]
        try:
            for sock in sockets:
                sock.sendall(b"GET /direct HTTP/1.1\r\nhost: foo\r\nconnection: close\r\n\r\n")
            statuses = []
            for sock in sockets:
                sock.settimeout(5)
                received = b""
                while chunk := sock.recv(4096):
                    received += chunk
                statuses.append(received.split(b"\r\n", 1)[0])
        finally:
            for sock in sockets:
                sock.close()
        answers[kind] = statuses
    assert answers["ours"] == answers["envoy"] == [b"HTTP/1.1 200 OK"] * 40


COMPARED_STATS = [
    "http.ingress.downstream_rq_failed_path_normalization",
    "http.ingress.downstream_rq_redirected_with_normalized_path",
    "http1.dropped_headers_with_underscores",
    "http1.requests_rejected_with_underscores_in_headers",
    "http2.dropped_headers_with_underscores",
    "http2.requests_rejected_with_underscores_in_headers",
    "http.ingress.downstream_cx_protocol_error",
]


def test_same_stats_as_envoy_after_the_same_requests(servers, results) -> None:
    """Every case above has been sent to both (the `results` fixture): the counters of the
    path rules and of headers with underscores agree."""
    counts = {}
    for kind in ("envoy", "ours"):
        process = servers[kind][0]
        counts[kind] = {name: process.stat(name) for name in COMPARED_STATS}
    assert counts["ours"] == counts["envoy"]
    assert all(counts["envoy"].values()), counts
