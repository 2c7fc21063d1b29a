"""Route retries on our proxy with real upstreams: what needs no Envoy to compare with (the
interop file, tests/interop/test_retry_interop.py, compares the rest with Envoy 1.40): the
route timeout covers every attempt, a client that leaves during a back-off gives its retry
back, and an HTTP/2 body that came in pieces is replayed whole."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.upstreams import Flaky, cluster_dict

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
LOG_FORMAT = "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"


def retry_bootstrap(
    port: int,
    cluster: dict[str, Any],
    log_path: Path,
    route_policy: dict[str, Any] | None,
    vhost_fields: dict[str, Any],
) -> dict[str, Any]:
    route: dict[str, Any] = {"cluster": cluster["name"]}
    if route_policy is not None:
        route["retry_policy"] = route_policy
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                    **vhost_fields,
                }
            ],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": str(log_path),
                    "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
                },
            }
        ],
    }
    listener = {
        "name": "retries",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {
        "node": {"id": "retry", "cluster": "retry"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


@contextlib.contextmanager
def running(process: EnvoyProcess) -> Iterator[EnvoyProcess]:
    process.start()
    try:
        wait_for(lambda: process.listeners(), timeout=10, what="the listener")
        yield process
    finally:
        process.stop()


def _proxy(
    tmp_path: Path, upstream: Flaky, policy: dict[str, Any], **route: Any
) -> tuple[ProxyProcess, int, Path]:
    port = free_port()
    cluster = cluster_dict(
        "backends",
        [upstream.port],
        circuit_breakers={"thresholds": [{"max_retries": 3, "track_remaining": True}]},
    )
    log_path = tmp_path / "access.log"
    bootstrap = retry_bootstrap(port, cluster, log_path, policy, {})
    bootstrap_route = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm = bootstrap_route["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"].update(route)
    return ProxyProcess(bootstrap, tmp_path), port, log_path


REMAINING = "cluster.backends.circuit_breakers.default.remaining_retries"


def test_the_route_timeout_covers_every_attempt(tmp_path: Path) -> None:
    with Flaky("a", failures=-1, delay_ms=300) as upstream:
        process, port, log_path = _proxy(
            tmp_path, upstream, {"retry_on": "5xx", "num_retries": 10}, timeout="1s"
        )
        with running(process):
            started = time.monotonic()
            response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
            elapsed = time.monotonic() - started
            assert response.status_code == 504
            assert response.text == "upstream request timeout"
            assert 0.9 < elapsed < 2.5
            assert 2 <= len(upstream.requests) <= 4
            wait_for(lambda: log_path.read_text(), timeout=5, what="the log line")
            assert log_path.read_text().split()[:2] == ["504", "UT"]
            wait_for(lambda: process.stat(REMAINING) == 3, timeout=5, what="the retry back")


def test_a_client_leaving_during_the_back_off_gives_the_retry_back(tmp_path: Path) -> None:
    with Flaky("a", failures=-1) as upstream:
        policy = {
            "retry_on": "5xx",
            "num_retries": 50,
            "retry_back_off": {"base_interval": "0.2s", "max_interval": "0.2s"},
        }
        process, port, _ = _proxy(tmp_path, upstream, policy)
        with running(process):
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
                wait_for(lambda: len(upstream.requests) >= 2, timeout=10, what="a retry")
            # Given back only when the exchange ends (which stops its back-off timer): while
            # retrying, one retry is always held.
            wait_for(lambda: process.stat(REMAINING) == 3, timeout=5, what="the retry back")


def test_an_http2_body_in_pieces_is_sent_again(tmp_path: Path) -> None:
    """An HTTP/2 request whose body comes in two DATA frames, retried: the retry carries the
    whole body again."""
    with Flaky("a", failures=1) as upstream:
        process, port, log_path = _proxy(tmp_path, upstream, {"retry_on": "5xx"})
        with running(process):

            def pieces() -> Iterator[bytes]:
                yield b"first "
                yield b"second"

            with httpx.Client(http1=False, http2=True, timeout=10) as client:
                response = client.post(f"http://127.0.0.1:{port}/", content=pieces())
            assert response.status_code == 200
            assert [request["body"] for request in upstream.requests] == ["first second"] * 2
            wait_for(lambda: log_path.read_text(), timeout=5, what="the log line")
            assert log_path.read_text() == "200 - 2\n"
            assert process.stat("cluster.backends.upstream_rq_retry_success") == 1
