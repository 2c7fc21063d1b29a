"""Fields a service-mesh control plane (Kuma) sends, on the real xds-proxy process with real
clients: the route's host rewrites (`auto_host_rewrite`, `host_rewrite_header`,
`host_rewrite_path_regex`), ORIGINAL_DST clusters, and listeners on a UNIX socket (`pipe`).

The scenarios are shared with tests/interop/test_mesh_fields_interop.py, which runs them on
Envoy 1.40 too; the expected values here are what Envoy 1.40 answers.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from tests.helpers.envoy import FAST_LOG_FLUSH, EnvoyProcess
from tests.helpers.listeners import chain, lds_bootstrap
from tests.helpers.procs import free_port, wait_for
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess
from tests.helpers.upstreams import Http1Echo, cluster_dict
from tests.integration.test_cds import routed_listener


def _bootstrap(listeners: list[dict], clusters: list[dict]) -> dict[str, Any]:
    return {
        "node": {"id": "mesh", "cluster": "mesh"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _listener_with_routes(port: int, routes: list[dict]) -> dict[str, Any]:
    listener = routed_listener(port, "unused")
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = routes
    return listener


def get(
    port: int | str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | str]:
    """One GET on a new connection (TCP port, or a UNIX socket path); (status, the echo's
    JSON, else the body text)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nhost: orig.example\r\n{extra}connection: close\r\n\r\n"
    if isinstance(port, int):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(port)
    with sock:
        sock.sendall(request.encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("latin-1")


def _hosts(echo: dict[str, Any] | str) -> tuple[str, str]:
    """(host, x-envoy-original-host) the upstream received ('' when absent)."""
    assert isinstance(echo, dict), echo
    headers = dict((name, value) for name, value in echo["headers"])
    return headers.get("host", ""), headers.get("x-envoy-original-host", "")


# -- host rewrites ----------------------------------------------------------------------------

HOST_REWRITE_EXPECTED = {
    "/auto/static": ("static-host.example", "orig.example"),
    "/auto/dns": ("localhost", "orig.example"),
    "/auto/none": ("orig.example", ""),
    "/header/set": ("from-header", "orig.example"),
    "/header/absent": ("orig.example", ""),
    "/regex/svc-a/x?q=/regex/b/": ("svc-a", "orig.example"),
}


def host_rewrite_bootstrap(listen_port: int, echo_port: int) -> dict[str, Any]:
    named = cluster_dict("named", [echo_port])
    named["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["hostname"] = (
        "static-host.example"
    )
    dns = cluster_dict("dns", [echo_port], host="localhost", type="STRICT_DNS")
    dns["dns_lookup_family"] = "V4_ONLY"
    auto = {"auto_host_rewrite": True}
    routes = [
        {"match": {"prefix": "/auto/static"}, "route": {"cluster": "named", **auto}},
        {"match": {"prefix": "/auto/dns"}, "route": {"cluster": "dns", **auto}},
        {"match": {"prefix": "/auto/none"}, "route": {"cluster": "plain", **auto}},
        {
            "match": {"prefix": "/header"},
            "route": {"cluster": "plain", "host_rewrite_header": "X-Host"},
        },
        {
            "match": {"prefix": "/regex"},
            "route": {
                "cluster": "plain",
                "host_rewrite_path_regex": {
                    "pattern": {"regex": "^/regex/([^/]+)/.*$"},
                    "substitution": "\\1",
                },
            },
        },
    ]
    return _bootstrap(
        [_listener_with_routes(listen_port, routes)],
        [named, dns, cluster_dict("plain", [echo_port])],
    )


def host_rewrite_observations(process_class: type[EnvoyProcess], workdir: Path) -> dict:
    with Http1Echo("a") as echo:
        port = free_port()
        process = process_class(host_rewrite_bootstrap(port, echo.port), workdir).start()
        try:
            wait_for(
                lambda: process.stat("cluster.dns.membership_total") == 1,
                timeout=10,
                what="the DNS cluster resolved",
            )
            seen = {}
            for path in HOST_REWRITE_EXPECTED:
                headers = {"x-host": "from-header"} if path == "/header/set" else None
                status, echo_body = get(port, path, headers)
                assert status == 200, (path, echo_body)
                seen[path] = _hosts(echo_body)
            return seen
        finally:
            process.stop()


def test_host_rewrites_as_envoy(tmp_path: Path) -> None:
    assert host_rewrite_observations(ProxyProcess, tmp_path) == HOST_REWRITE_EXPECTED


# -- ORIGINAL_DST clusters ----------------------------------------------------------------------

TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _original_dst_cluster(name: str, **lb_config: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "cleanup_interval": "1s",
        "original_dst_lb_config": {"use_http_header": True, **lb_config},
    }


def _tcp_proxy_listener(port: int, cluster: str) -> dict[str, Any]:
    proxy = {"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "cluster": cluster}
    return {
        "name": f"tcp_{port}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}
        ],
    }


def original_dst_bootstrap(http_port: int, tcp_port: int, echo_port: int) -> dict[str, Any]:
    routes = [
        {"match": {"prefix": "/override"}, "route": {"cluster": "override"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "dst"}},
    ]
    return _bootstrap(
        [_listener_with_routes(http_port, routes), _tcp_proxy_listener(tcp_port, "dst")],
        [
            _original_dst_cluster("dst"),
            _original_dst_cluster(
                "override", http_header_name="X-Dst", upstream_port_override=echo_port
            ),
        ],
    )


def _tcp_answer(port: int) -> bytes:
    """What a tcp_proxy connection gets before the proxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello")
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def original_dst_observations(process_class: type[EnvoyProcess], workdir: Path) -> dict:
    with Http1Echo("a") as echo:
        http_port, tcp_port, closed_port = free_port(), free_port(), free_port()
        bootstrap = original_dst_bootstrap(http_port, tcp_port, echo.port)
        process = process_class(bootstrap, workdir).start()
        try:
            process.wait_ready()
            seen: dict[str, Any] = {}
            for label, path, headers in [
                ("header", "/", {"x-envoy-original-dst-host": f"127.0.0.1:{echo.port}"}),
                ("no header", "/", None),
                ("invalid", "/", {"x-envoy-original-dst-host": "not-an-address"}),
                ("refused", "/", {"x-envoy-original-dst-host": f"127.0.0.1:{closed_port}"}),
                ("override", "/override", {"x-dst": f"127.0.0.1:{closed_port}"}),
            ]:
                status, body = get(http_port, path, headers)
                seen[label] = (status, body["server"] if isinstance(body, dict) else body[:40])
            seen["hosts before cleanup"] = process.stat("cluster.dst.membership_total")
            # The refused destination has no connection: the cleanup removes it; the echo's
            # host keeps its idle pooled connection and stays.
            wait_for(
                lambda: process.stat("cluster.dst.membership_total") == 1,
                timeout=10,
                what="the cleanup removed the unused host",
            )
            seen["tcp_proxy"] = _tcp_answer(tcp_port)
            wait_for(
                lambda: process.stat("cluster.dst.upstream_cx_none_healthy") == 3,
                timeout=5,
                what="tcp_proxy found no host",
            )
            for name in ("original_dst_host_invalid", "membership_change", "membership_healthy"):
                seen[name] = process.stat(f"cluster.dst.{name}")
            seen["override hosts"] = process.stat("cluster.override.membership_total")
            return seen
        finally:
            process.stop()


ORIGINAL_DST_EXPECTED = {
    "header": (200, "a"),
    "no header": (503, "no healthy upstream"),
    "invalid": (503, "no healthy upstream"),
    "refused": (503, "upstream connect error or disconnect/res"),
    "override": (200, "a"),
    "hosts before cleanup": 2,
    "tcp_proxy": b"",
    "original_dst_host_invalid": 1,
    "membership_change": 3,
    "membership_healthy": 1,
    "override hosts": 1,
}


def test_original_dst_clusters_as_envoy(tmp_path: Path) -> None:
    assert original_dst_observations(ProxyProcess, tmp_path) == ORIGINAL_DST_EXPECTED


# -- listeners on a UNIX socket (pipe) ------------------------------------------------------------

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
PIPE_LOG_FORMAT = (
    "R=%DOWNSTREAM_REMOTE_ADDRESS% RN=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% "
    "RP=%DOWNSTREAM_REMOTE_PORT% L=%DOWNSTREAM_LOCAL_ADDRESS% LP=%DOWNSTREAM_LOCAL_PORT% "
    "D=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%\n"
)


def _pipe_http_listener(path: Path, body: str, log: Path, mode: int, **fields: Any) -> dict:
    http_chain = chain(body)
    http_chain["filters"][0]["typed_config"]["access_log"] = [
        {
            "name": "file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(log),
                "log_format": {"text_format_source": {"inline_string": PIPE_LOG_FORMAT}},
            },
        }
    ]
    return {
        "name": "pipe_http",
        "address": {"pipe": {"path": str(path), "mode": mode}},
        "filter_chains": [http_chain],
        **fields,
    }


def _pipe_tcp_listener(path: Path) -> dict:
    proxy = {"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "cluster": "echo"}
    return {
        "name": "pipe_tcp",
        "address": {"pipe": {"path": str(path)}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": proxy}]}
        ],
    }


def _push(stub: StubProcess, version: str, listeners: list[dict]) -> None:
    stub.client.set_resources(listeners=listeners, version=version)
    stub.client.wait(version, timeout=10)


def pipe_observations(process_class: type[EnvoyProcess], workdir: Path) -> list[Any]:
    """Pipe listeners pushed over LDS, updated, and removed; what a client and the admin see,
    with the work directory shown as `<dir>`."""
    workdir.mkdir(parents=True)
    http_path, tcp_path, log = workdir / "http.sock", workdir / "tcp.sock", workdir / "a.log"
    http_path.write_text("a stale file where the socket goes")
    seen: list[Any] = []
    with Http1Echo("a") as echo:
        stub = StubProcess(workdir / "stub").start()
        bootstrap = lds_bootstrap(stub.xds_address)
        bootstrap["static_resources"]["clusters"].append(cluster_dict("echo", [echo.port]))
        process = process_class(bootstrap, workdir / "proxy", extra_args=FAST_LOG_FLUSH).start()
        try:
            process.wait_ready()
            _push(stub, "1", [_pipe_http_listener(http_path, "one", log, 0o640)])
            first = os.stat(http_path)
            seen += [oct(stat.S_IMODE(first.st_mode)), get(str(http_path), "/")]
            seen += [
                process.get("/listeners")[1],
                json.loads(process.get("/listeners?format=json")[1]),
            ]
            seen.append(process.stat(f"listener.{http_path}.downstream_cx_total"))
            prometheus = process.get("/stats/prometheus")[1].splitlines()
            seen.append(
                [n for n in prometheus if n.startswith("envoy_listener_sock_downstream_cx_total{")]
            )
            # A listener-level change: a new version on the same socket (not re-bound); a
            # connection of the old version keeps being served while it drains.
            kept = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            kept.settimeout(5)
            kept.connect(str(http_path))
            updated = _pipe_http_listener(
                http_path, "one", log, 0o640, per_connection_buffer_limit_bytes=65536
            )
            _push(stub, "2", [updated, _pipe_tcp_listener(tcp_path)])
            seen.append(os.stat(http_path).st_ino == first.st_ino)
            kept.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            seen.append(kept.recv(65536).split(b"\r\n\r\n", 1)[1].decode())
            kept.close()
            status, body = get(str(tcp_path), "/")
            seen.append((status, body["server"] if isinstance(body, dict) else body))
            # A mode change alone does not re-bind: the socket keeps its mode.
            _push(stub, "3", [_pipe_http_listener(http_path, "two", log, 0o600)])
            seen.append(os.stat(http_path).st_ino == first.st_ino)
            seen += [oct(stat.S_IMODE(os.stat(http_path).st_mode)), get(str(http_path), "/")]
            _push(stub, "4", [])
            wait_for(lambda: _refused(http_path), timeout=5, what="the removed pipe refuses")
            seen.append(http_path.exists())  # the file stays, as Envoy leaves it
            wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 3, timeout=10)
            seen.append(sorted(set(log.read_text().splitlines())))
        finally:
            process.stop()
            stub.stop()
    return json.loads(json.dumps(seen).replace(str(workdir), "<dir>"))


def _refused(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


PIPE_EXPECTED = [
    "0o640",
    [200, "one"],
    "pipe_http::<dir>/http.sock\n",
    {
        "listener_statuses": [
            {"name": "pipe_http", "local_address": {"pipe": {"path": "<dir>/http.sock"}}}
        ]
    },
    1,
    ['envoy_listener_sock_downstream_cx_total{envoy_listener_address="<dir>/http"} 1'],
    True,
    "one",
    [200, "a"],
    True,
    "0o640",
    [200, "two"],
    True,
    [
        "R=<dir>/http.sock RN=<dir>/http.sock RP= L=<dir>/http.sock LP= D=<dir>/http.sock",
    ],
]  # fmt: skip


def test_pipe_listeners_as_envoy(tmp_path: Path) -> None:
    assert pipe_observations(ProxyProcess, tmp_path / "ours") == PIPE_EXPECTED


def pipe_upstream_observations(process_class: type[EnvoyProcess], workdir: Path) -> list[Any]:
    """A STATIC cluster whose endpoint is a pipe (served by a pipe listener of the same
    process), reached by an HTTP route and by tcp_proxy; /clusters and the access log."""
    workdir.mkdir(parents=True)
    upstream, log = workdir / "up.sock", workdir / "a.log"
    http_port, tcp_port = free_port(), free_port()
    front = _listener_with_routes(
        http_port, [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    )
    front["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = [
        {
            "name": "file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(log),
                "log_format": {
                    "text_format_source": {
                        "inline_string": "UH=%UPSTREAM_HOST% UR=%UPSTREAM_REMOTE_ADDRESS%\n"
                    }
                },
            },
        }
    ]
    pipe_server = {
        "name": "server",
        "address": {"pipe": {"path": str(upstream)}},
        "filter_chains": [chain("from-pipe")],
    }
    cluster = {
        "name": "up",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "up",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(upstream)}}}}]}
            ],
        },
    }
    # A TCP health check of a pipe host: a UNIX socket that listens (the kernel completes the
    # connect; the check sends and expects nothing).
    checked_path = workdir / "checked.sock"
    checked = {
        "name": "checked",
        "type": "STATIC",
        "connect_timeout": "1s",
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "tcp_health_check": {},
            }
        ],
        "load_assignment": {
            "cluster_name": "checked",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(checked_path)}}}}]}
            ],
        },
    }
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(checked_path))
    listening.listen(16)
    bootstrap = _bootstrap(
        [front, _tcp_proxy_listener(tcp_port, "up"), pipe_server], [cluster, checked]
    )
    process = process_class(bootstrap, workdir / "proxy", extra_args=FAST_LOG_FLUSH).start()
    seen: list[Any] = []
    try:
        process.wait_ready()
        wait_for(
            lambda: process.stat("cluster.checked.membership_healthy") == 1,
            timeout=10,
            what="the pipe host passed its TCP health check",
        )
        seen += [get(http_port, "/"), get(tcp_port, "/")]
        clusters = process.get("/clusters")[1].splitlines()
        seen.append(sorted(line for line in clusters if "::cx_total::" in line))
        hosts = json.loads(process.get("/clusters?format=json")[1])["cluster_statuses"]
        seen.append(
            [status["host_statuses"][0]["address"] for status in hosts if status["name"] == "up"]
        )
        wait_for(lambda: log.exists() and log.read_text(), timeout=10, what="the access log")
        seen.append(log.read_text().splitlines()[0])
    finally:
        process.stop()
        listening.close()
    return json.loads(json.dumps(seen).replace(str(workdir), "<dir>"))


PIPE_UPSTREAM_EXPECTED = [
    [200, "from-pipe"],
    [200, "from-pipe"],
    ["checked::<dir>/checked.sock::cx_total::0", "up::<dir>/up.sock::cx_total::2"],
    [{"pipe": {"path": "<dir>/up.sock"}}],
    "UH=<dir>/up.sock UR=<dir>/up.sock",
]


def test_pipe_upstreams_as_envoy(tmp_path: Path) -> None:
    assert pipe_upstream_observations(ProxyProcess, tmp_path / "ours") == PIPE_UPSTREAM_EXPECTED
