"""Author a listener in Python with envoy-data-plane's typed dataclasses and push it.

    python examples/author_listener.py --control 127.0.0.1:18001 --port 10002 --wait

The dataclasses give autocompletion and type checking while writing a config; they cross
to protobuf as bytes (the encodings are identical), so the stub serves exactly this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from envoy_data_plane.envoy.config.core.v3 import Address, DataSource, SocketAddress
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    Route,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
)
from envoy_data_plane.google.protobuf import Any

from control_plane_stub.client import StubClient, StubError, StubNack

TYPE_PREFIX = "type.googleapis.com/"


def pack(message, full_name: str) -> Any:
    return Any(type_url=TYPE_PREFIX + full_name, value=bytes(message))


def build_listener(name: str, port: int, body: str) -> Listener:
    """An HTTP listener on 127.0.0.1:`port` that answers every request with `body`."""
    routes = RouteConfiguration(
        name=name,
        virtual_hosts=[
            VirtualHost(
                name="all",
                domains=["*"],
                routes=[
                    Route(
                        match=RouteMatch(prefix="/"),
                        direct_response=DirectResponseAction(
                            status=200, body=DataSource(inline_string=body)
                        ),
                    )
                ],
            )
        ],
    )
    manager = HttpConnectionManager(
        stat_prefix=name,
        route_config=routes,
        http_filters=[
            HttpFilter(
                name="envoy.filters.http.router",
                typed_config=pack(Router(), "envoy.extensions.filters.http.router.v3.Router"),
            )
        ],
    )
    return Listener(
        name=name,
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=port)),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(
                            manager,
                            "envoy.extensions.filters.network.http_connection_manager.v3."
                            "HttpConnectionManager",
                        ),
                    )
                ]
            )
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", default="127.0.0.1:18001")
    parser.add_argument("--name", default="authored")
    parser.add_argument("--port", type=int, default=10002)
    parser.add_argument("--body", default="hello from a typed dataclass\n")
    parser.add_argument("--node", help="push to this node's own set")
    parser.add_argument("--wait", action="store_true", help="wait until the nodes ACK it")
    arguments = parser.parse_args(argv)
    listener = build_listener(arguments.name, arguments.port, arguments.body)
    with StubClient(arguments.control) as client:
        try:
            versions = client.set_resources(listeners=[listener], node=arguments.node)
            for section, version in versions.items():
                print(f"{section} {version}")
            if arguments.wait:
                client.wait(versions["listeners"], node=arguments.node, timeout=30)
                print(f"listeners version {versions['listeners']} ACKed")
        except StubNack as error:
            print(f"author_listener: {error.detail}", file=sys.stderr)
            return 2
        except (StubError, TimeoutError) as error:
            print(f"author_listener: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
