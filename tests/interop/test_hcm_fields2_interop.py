"""More HCM fields production control planes set, through a real Envoy 1.40 and through
xds-proxy with the same requests: `internal_address_config` (empty, `unix_sockets` only,
`cidr_ranges`; with and without `use_remote_address` and `xff_num_trusted_hops`: which requests
are internal, `x-envoy-internal`, the x-envoy-* headers kept and the timeouts the router then
reads from them), and the path with a fragment (`#`), which Envoy refuses whatever the config.

For each request the status line, the response headers, the request as the upstream saw it
and the access-log line must be the same (the harness of test_hcm_fields_interop.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.envoy import EnvoyProcess
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
_EVERYWHERE = ("plain", "envoy_headers", "xff_10", "xff_public", "xff_192", "xff_fd")

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
            process = process_class(document, directory, log_level="warning")
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
