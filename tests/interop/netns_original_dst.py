"""Run inside a network namespace of its own (`unshare -n`) by test_original_dst_interop.py:
iptables redirects 127.0.0.1 ports 80, 81 and 90 to a `use_original_dst` listener on 15001;
`bind_to_port: false` listeners sit on 127.0.0.1:80 (an HCM with an access log) and
0.0.0.0:81; nothing listens for 90. Starts Envoy or xds-proxy (argv[1]) with that config,
connects to each port and prints what answered, as JSON.

    unshare -n python -m tests.interop.netns_original_dst envoy|ours DIRECTORY
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.envoy import EnvoyProcess
from tests.helpers.procs import wait_for
from tests.helpers.proxy import ProxyProcess
from tests.integration.test_upstream_proxy import HCM_TYPE, ROUTER_TYPE, bootstrap

DIRECT_TYPE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
FILE_LOGGER = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
REDIRECTED_PORTS = (80, 81, 90)
OUTBOUND_PORT = 15001
_NAT_OUTPUT = ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1"]


def _direct(name: str, ip: str, port: int, body: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": ip, "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.direct_response",
                        "typed_config": {"@type": DIRECT_TYPE, "response": {"inline_string": body}},
                    }
                ]
            }
        ],
        **fields,
    }


def _http(name: str, ip: str, port: int, log_path: Path, **fields: Any) -> dict[str, Any]:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": name}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOGGER,
                    "path": str(log_path),
                    "log_format": {
                        "text_format_source": {
                            "inline_string": "%DOWNSTREAM_LOCAL_ADDRESS% %RESPONSE_CODE%\n"
                        }
                    },
                },
            }
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": ip, "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
        **fields,
    }


def _ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: foo\r\nconnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    return f"{first} | {body.decode('latin-1')}" if first.startswith("HTTP/") else received.decode()


def main(kind: str, directory: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for port in REDIRECTED_PORTS:
        subprocess.run(
            [
                *_NAT_OUTPUT,
                "--dport",
                str(port),
                "-j",
                "REDIRECT",
                "--to-ports",
                str(OUTBOUND_PORT),
            ],
            check=True,
        )
    log_path = directory / "exact.log"
    listeners = [
        _direct("outbound", "127.0.0.1", OUTBOUND_PORT, "outbound", use_original_dst=True),
        _http("exact", "127.0.0.1", 80, log_path, bind_to_port=False),
        _direct("wildcard", "0.0.0.0", 81, "wildcard", bind_to_port=False),
    ]
    process_class = EnvoyProcess if kind == "envoy" else ProxyProcess
    process = process_class(bootstrap(listeners, []), directory, log_level="warning")
    process.start()
    try:
        process.wait_ready()
        answers = {str(port): _ask(port) for port in (*REDIRECTED_PORTS, OUTBOUND_PORT)}
        answers["log"] = wait_for(
            lambda: log_path.exists() and log_path.read_text(), timeout=10, what="access log"
        )
    finally:
        process.stop()
    print(json.dumps(answers))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
