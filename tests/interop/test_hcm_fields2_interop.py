"""More HCM fields production control planes set, through a real Envoy 1.40 and through
xds-proxy with the same requests: `internal_address_config` (empty, `unix_sockets` only,
`cidr_ranges`; with and without `use_remote_address` and `xff_num_trusted_hops`: which requests
are internal, `x-envoy-internal`, the x-envoy-* headers kept and the timeouts the router then
reads from them), and the path with a fragment (`#`), which Envoy refuses whatever the config.

For each request the status line, the response headers, the request as the upstream saw it
and the access-log line must be the same (the harness of test_hcm_fields_interop.py)."""

from __future__ import annotations

import re
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.certs import CertificateAuthority
from tests.helpers.envoy import FAST_LOG_FLUSH, EnvoyProcess
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_upstream_proxy import bootstrap, http_listener, route
from tests.interop.test_hcm_fields_interop import (
    FILE_LOGGER,
    LOG_FORMAT,
    _h2_exchange,
    _log_lines,
    comparable,
)
from tests.interop.test_routing_interop import exchange

pytestmark = pytest.mark.envoy

_TENS = {"address_prefix": "10.0.0.0", "prefix_len": 8}
_LOOPBACK = {"address_prefix": "127.0.0.0", "prefix_len": 8}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "empty": {"internal_address_config": {}},
    "unix_only": {"internal_address_config": {"unix_sockets": True}},
    "cidr": {
        "internal_address_config": {
            "cidr_ranges": [_TENS, {"address_prefix": "127.0.0.1", "prefix_len": 32}]
        }
    },
    "cidr_no_length": {
        "internal_address_config": {"cidr_ranges": [{"address_prefix": "10.0.0.1"}]}
    },
    "cidr_hops": {"xff_num_trusted_hops": 1, "internal_address_config": {"cidr_ranges": [_TENS]}},
    "remote_empty": {"use_remote_address": True, "internal_address_config": {}},
    "remote_cidr": {
        "use_remote_address": True,
        "internal_address_config": {"cidr_ranges": [_TENS, _LOOPBACK]},
    },
    "remote_outside": {
        "use_remote_address": True,
        "internal_address_config": {"cidr_ranges": [_TENS]},
    },
    "remote_hops": {
        "use_remote_address": True,
        "xff_num_trusted_hops": 1,
        "internal_address_config": {"cidr_ranges": [_TENS, _LOOPBACK]},
    },
    "remote_preserve": {
        "use_remote_address": True,
        "preserve_external_request_id": True,
        "internal_address_config": {"cidr_ranges": [_LOOPBACK]},
    },
}

_ENVOY_HEADERS = (
    "x-envoy-retry-on: 5xx\r\nx-envoy-retry-grpc-on: cancelled\r\nx-envoy-max-retries: 3\r\n"
    "x-envoy-upstream-rq-timeout-ms: 5000\r\nx-envoy-upstream-rq-per-try-timeout-ms: 3000\r\n"
    "x-envoy-expected-rq-timeout-ms: 7\r\nx-envoy-decorator-operation: op\r\n"
    "x-envoy-downstream-service-cluster: c\r\nx-envoy-downstream-service-node: n\r\n"
    "x-envoy-original-path: /p\r\nx-request-id: abc\r\nx-envoy-external-address: 9.9.9.9\r\n"
    "x-envoy-internal: false\r\nx-envoy-force-trace: 1\r\nx-envoy-ip-tags: t\r\n"
    "x-envoy-original-url: u\r\nx-envoy-retriable-status-codes: 500\r\n"
    "x-envoy-retriable-header-names: x-a\r\nx-envoy-hedge-on-per-try-timeout: true\r\n"
    "x-envoy-upstream-alt-stat-name: a\r\nx-envoy-upstream-rq-timeout-alt-response: 204\r\n"
)
_REQUESTS = {
    "plain": "",
    "client_cert": "x-forwarded-client-cert: By=spiffe://x;Hash=abc\r\n",
    "envoy_headers": _ENVOY_HEADERS,
    "xff_10": "x-forwarded-for: 10.0.0.1\r\n" + _ENVOY_HEADERS,
    "xff_public": "x-forwarded-for: 1.1.1.1\r\n" + _ENVOY_HEADERS,
    "xff_loopback": "x-forwarded-for: 127.0.0.1\r\n",
    "xff_loopback_2": "x-forwarded-for: 127.0.0.2\r\n",
    "xff_192": "x-forwarded-for: 192.168.1.1\r\n",
    "xff_172": "x-forwarded-for: 172.20.1.1\r\nx-request-id: abc\r\n",
    "xff_172_outside": "x-forwarded-for: 172.32.1.1\r\n",
    "xff_fd": "x-forwarded-for: fd00::1\r\n",
    "xff_two": "x-forwarded-for: 1.1.1.1, 10.0.0.1\r\n" + _ENVOY_HEADERS,
    "xff_two_internal": "x-forwarded-for: 10.0.0.2,10.0.0.1\r\n",
    "xff_two_headers": "x-forwarded-for: 10.0.0.2\r\nx-forwarded-for: 10.0.0.1\r\n",
    "xff_spaces": "x-forwarded-for:  10.0.0.1\r\n",
    "xff_trailing_comma": "x-forwarded-for: 10.0.0.1,\r\n",
    "xff_bad": "x-forwarded-for: ten\r\n",
    "timeout_only": "x-forwarded-for: 10.0.0.1\r\nx-envoy-upstream-rq-timeout-ms: 4000\r\n",
    "timeout_zero": "x-forwarded-for: 10.0.0.1\r\nx-envoy-upstream-rq-timeout-ms: 0\r\n"
    "x-envoy-expected-rq-timeout-ms: 7\r\n",
    "timeout_bad": "x-forwarded-for: 10.0.0.1\r\nx-envoy-upstream-rq-timeout-ms: 5s\r\n",
    "per_try_longer": "x-forwarded-for: 10.0.0.1\r\nx-envoy-upstream-rq-timeout-ms: 1000\r\n"
    "x-envoy-upstream-rq-per-try-timeout-ms: 2000\r\n",
    # The router honours an internal request's timeout: a 504 after 300 ms.
    "timeout_fires": "x-forwarded-for: 10.0.0.1\r\nx-envoy-upstream-rq-timeout-ms: 300\r\n"
    "x-delay-ms: 3000\r\n",
    "timeout_ignored": "x-forwarded-for: 1.1.1.1\r\nx-envoy-upstream-rq-timeout-ms: 300\r\n"
    "x-delay-ms: 600\r\n",
}
# The requests sent to every variant (the others only to `empty` and `remote_cidr`).
_EVERYWHERE = ("plain", "client_cert", "envoy_headers", "xff_10", "xff_public", "xff_192", "xff_fd")

# A fragment in the path: 400 path_normalization_failed, whatever the config.
_FRAGMENT_PATHS = ["/x#a", "/x?q#a", "/direct#a", "/#", "/x%23a"]


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for variant in VARIANTS:
        for name, headers in _REQUESTS.items():
            if name not in _EVERYWHERE and variant not in ("empty", "remote_cidr"):
                continue
            request = f"GET /x HTTP/1.1\r\nhost: foo\r\n{headers}\r\n"
            cases.append((variant, name, request))
    for variant in ("default", "empty"):
        for path in _FRAGMENT_PATHS:
            cases.append((variant, f"fragment {path}", f"GET {path} HTTP/1.1\r\nhost: foo\r\n\r\n"))
    return cases


CASES = _cases()
H2_CASES = [
    ("default", "h2-fragment", "/x#a", []),
    ("default", "h2-fragment-direct", "/direct?q#a", []),
    ("empty", "h2-internal", "/x", [("x-forwarded-for", "10.0.0.1"), ("x-envoy-max-retries", "1")]),
    ("remote_cidr", "h2-internal", "/x", [("x-envoy-upstream-rq-timeout-ms", "2500")]),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    echo = Http1Echo()
    echo.start()
    routes = [
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
            document = bootstrap(listeners, [cluster_dict("echo", [echo.port])])
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


@pytest.fixture(scope="module")
def results(servers) -> dict[str, dict[tuple[str, str], Any]]:
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


def test_internal_requests_are_marked(results) -> None:
    """The comparison above is not vacuous: some requests are internal, some not."""
    upstream = results["envoy"][("empty", "xff_10")][0][2]["headers"]
    assert ("x-envoy-internal", "true") in upstream
    assert ("x-envoy-retry-on", "5xx") not in upstream  # the router consumed it
    assert ("x-envoy-expected-rq-timeout-ms", "5000") in upstream  # hedging: the global one
    external = results["envoy"][("default", "xff_10")][0][2]["headers"]
    assert not any(name == "x-envoy-internal" for name, _ in external)
    assert results["envoy"][("empty", "timeout_fires")][0][0].startswith("HTTP/1.1 504")


def test_same_stats_as_envoy_after_the_same_requests(servers, results) -> None:
    name = "http.ingress.downstream_rq_failed_path_normalization"
    counts = {kind: servers[kind][0].stat(name) for kind in ("envoy", "ours")}
    assert counts["ours"] == counts["envoy"] > 0


# -- x-forwarded-client-cert over mTLS -----------------------------------------------------

_CA = CertificateAuthority("xfcc root")
_SERVER = _CA.issue(
    "proxy", dns_names=["proxy.example"], uris=["spiffe://td/ns/a/sa/proxy", "urn:second"]
)
_CLIENT = _CA.issue(
    "client",
    client=True,
    dns_names=["client.example", "other.example"],
    uris=["spiffe://td/ns/b/sa/client"],
    organization='Org, "Inc"',
)
_BARE_CLIENT = _CA.issue("bare", client=True)  # no SANs

_ALL_DETAILS = {"subject": True, "uri": True, "cert": True, "dns": True}
XFCC_VARIANTS: dict[str, dict[str, Any]] = {
    "sanitize": {},
    "sanitize_details": {"set_current_client_cert_details": {"uri": True}},
    "forward_only": {"forward_client_cert_details": "FORWARD_ONLY"},
    "append": {"forward_client_cert_details": "APPEND_FORWARD"},
    "append_details": {
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": _ALL_DETAILS,
    },
    "sanitize_set": {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True},
    },
    "always": {"forward_client_cert_details": "ALWAYS_FORWARD_ONLY"},
}
_XFCC_REQUESTS = {
    "none": "",
    "sent": "x-forwarded-client-cert: By=spiffe://x;Hash=abc\r\n",
    "sent_empty": "x-forwarded-client-cert:\r\n",
    "sent_twice": "x-forwarded-client-cert: By=a\r\nx-forwarded-client-cert: By=b\r\n",
}
_CLIENTS = {"mtls": _CLIENT, "mtls_bare": _BARE_CLIENT, "tls": None}
XFCC_CASES = [
    (variant, client, name)
    for variant in XFCC_VARIANTS
    for client in _CLIENTS
    for name in _XFCC_REQUESTS
    if client == "mtls" or variant in ("append_details", "forward_only", "sanitize")
]


def _tls_socket(**common: Any) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"inline_string": _SERVER.cert_pem.decode()},
                        "private_key": {"inline_string": _SERVER.key_pem.decode()},
                    }
                ],
                "validation_context": {"trusted_ca": {"inline_string": _CA.cert_pem.decode()}},
                **common,
            },
        },
    }


def _tls_exchange(port: int, client: Any, request: bytes) -> bytes:
    context = ssl.create_default_context(cadata=_CA.cert_pem.decode())
    context.check_hostname = False
    if client is not None:
        folder = Path(tempfile.mkdtemp(prefix="xfcc-client-"))
        files = client.write(folder)
        context.load_cert_chain(files["cert"], files["key"])
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw) as sock,
    ):
        sock.settimeout(5)
        sock.sendall(request)
        received = b""
        while True:
            head, separator, body = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if separator and length and len(body) >= int(length.group(1)):
                return received
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


@pytest.fixture(scope="module")
def xfcc_servers(tmp_path_factory):
    echo = Http1Echo()
    echo.start()
    started: dict[str, tuple[Any, dict[str, int]]] = {}
    try:
        for kind, process_class in (("envoy", EnvoyProcess), ("ours", ProxyProcess)):
            directory = tmp_path_factory.mktemp(f"xfcc-{kind}")
            ports = {}
            listeners = []
            for variant, fields in XFCC_VARIANTS.items():
                ports[variant] = port = free_port()
                listener = http_listener(port, [route("/", "echo")], **fields)
                listener["name"] = variant
                listener["filter_chains"][0]["transport_socket"] = _tls_socket()
                listeners.append(listener)
            # HTTP/2 over TLS (ALPN h2) with every detail appended.
            ports["h2"] = port = free_port()
            listener = http_listener(port, [route("/", "echo")], **XFCC_VARIANTS["append_details"])
            listener["name"] = "h2"
            listener["filter_chains"][0]["transport_socket"] = _tls_socket(alpn_protocols=["h2"])
            listeners.append(listener)
            document = bootstrap(listeners, [cluster_dict("echo", [echo.port])])
            process = process_class(document, directory, log_level="warning")
            process.start()
            process.wait_ready()
            started[kind] = (process, ports)
        yield started
    finally:
        for process, _ in started.values():
            process.stop()
        echo.stop()


@pytest.fixture(scope="module")
def xfcc_results(xfcc_servers) -> dict[str, dict[tuple[str, str, str], Any]]:
    found: dict[str, dict[tuple[str, str, str], Any]] = {}
    for kind in ("envoy", "ours"):
        _, ports = xfcc_servers[kind]
        found[kind] = {
            (variant, client, name): comparable(
                _tls_exchange(
                    ports[variant],
                    _CLIENTS[client],
                    f"GET /x HTTP/1.1\r\nhost: foo\r\n{_XFCC_REQUESTS[name]}\r\n".encode(),
                )
            )
            for variant, client, name in XFCC_CASES
        }
    return found


@pytest.mark.parametrize(
    ("variant", "client", "name"), XFCC_CASES, ids=["-".join(case) for case in XFCC_CASES]
)
def test_client_cert_header_same_as_envoy(xfcc_results, variant, client, name) -> None:
    assert (
        xfcc_results["ours"][(variant, client, name)]
        == (xfcc_results["envoy"][(variant, client, name)])
    )


def test_client_cert_header_is_written(xfcc_results) -> None:
    """Not vacuous: Envoy writes this hop's element (By=, Hash=, the details)."""
    headers = dict(xfcc_results["envoy"][("append_details", "mtls", "sent")][2]["headers"])
    value = headers["x-forwarded-client-cert"]
    assert value.startswith("By=spiffe://x;Hash=abc,By=spiffe://td/ns/a/sa/proxy;")
    assert 'Subject="' in value and "URI=spiffe://td/ns/b/sa/client" in value
    assert "DNS=other.example" in value and 'Cert="-----BEGIN%20CERTIFICATE' in value


def _h2_tls_upstream_view(port: int) -> tuple[str, list[tuple[str, str]]]:
    """One HTTP/2 request over mTLS (httpx, ALPN h2): the protocol and the headers the
    upstream saw."""
    folder = Path(tempfile.mkdtemp(prefix="xfcc-h2-client-"))
    files = _CLIENT.write(folder)
    context = ssl.create_default_context(cadata=_CA.cert_pem.decode())
    context.check_hostname = False
    context.load_cert_chain(files["cert"], files["key"])
    with httpx.Client(http2=True, verify=context) as client:
        response = client.get(
            f"https://127.0.0.1:{port}/x", headers={"x-forwarded-client-cert": "By=a"}
        )
    upstream = [
        (name, value)
        for name, value in response.json()["headers"]
        if name not in ("host", "x-request-id", "user-agent", "accept", "accept-encoding")
    ]
    return response.http_version, upstream


def test_client_cert_header_over_http2_same_as_envoy(xfcc_servers) -> None:
    seen = {kind: _h2_tls_upstream_view(xfcc_servers[kind][1]["h2"]) for kind in xfcc_servers}
    assert seen["ours"] == seen["envoy"]
    version, headers = seen["envoy"]
    assert version == "HTTP/2"
    assert dict(headers)["x-forwarded-client-cert"].startswith("By=a,By=spiffe://td/ns/a/sa/proxy;")
