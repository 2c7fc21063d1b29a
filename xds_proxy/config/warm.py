"""The LDS gate made ready before the first listener arrives.

`clean.py` compiles its check of a message type, and of each field, the first time a listener
sets it; for the first listener pushed after start-up that is ~4 ms, paid between the
response and its ACK. `warm_listener_gate()` checks a typical listener (an HTTP connection
manager with an inline route table: direct responses, header mutations, a header matcher,
the router) while the LDS stream waits for the control plane's first answer, so the first
push pays only for the fields it sets that this one does not. Pure: it changes no state but
those compiled checks.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.config.hcm import build_hcm_settings
from xds_proxy.config.support import listener_errors

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"


def typical_listener() -> listener_pb2.Listener:
    """A listener shaped like most: one chain, an HCM, an inline route table."""
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="warm")
    hcm.route_config.name = "warm"
    host = hcm.route_config.virtual_hosts.add(name="warm", domains=["warm.example.com", "*"])
    _add_header(host.request_headers_to_add.add(), "x-warm-host")
    exact = host.routes.add()
    exact.match.path = "/warm"
    exact.match.headers.add(name="x-warm", present_match=True)
    _direct(exact, 200)
    _add_header(exact.request_headers_to_add.add(), "x-warm-route")
    _add_header(exact.response_headers_to_add.add(), "x-warm-reply")
    catch_all = host.routes.add()
    catch_all.match.prefix = "/"
    _direct(catch_all, 404)
    router = hcm.http_filters.add(name=ROUTER_FILTER)
    router.typed_config.Pack(router_pb2.Router())
    listener = listener_pb2.Listener(name="warm")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = 1
    chain = listener.filter_chains.add(name="warm")
    chain.filters.add(name=HCM_FILTER).typed_config.Pack(hcm)
    return listener


def warm_listener_gate() -> None:
    """Compile the gate's checks (and the HCM builder's first steps) for a typical listener."""
    listener = typical_listener()
    listener_errors(listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    build_hcm_settings(hcm, "warm")


def _direct(route: route_components_pb2.Route, status: int) -> None:
    route.direct_response.status = status
    route.direct_response.body.inline_string = "warm"


def _add_header(option, name: str) -> None:
    option.header.key = name
    option.header.value = "1"
