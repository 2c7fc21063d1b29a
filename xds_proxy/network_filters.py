"""Network filter chains: `Filter` messages -> a protocol factory for accepted connections.

The listener runtime calls `build_filter_chain(chain.filters, ctx)` once per filter chain per
listener version; the result is called once per accepted connection. Building validates
everything (one-line `ConfigError`), so a bad chain is refused before any connection sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import DecodeError, Message

from xds_proxy import extensions
from xds_proxy.config.hcm import Codec
from xds_proxy.config.values import read_data_source
from xds_proxy.errors import ConfigError
from xds_proxy.http.conn_manager import HCM_TYPE_URL, build_http_connection_manager
from xds_proxy.http.http1 import Http1Connection
from xds_proxy.lazy import lazy_import
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.listener.limits import CONNECTION_LIMIT_TYPE_URL, build_connection_limit

if TYPE_CHECKING:
    from xds_proxy import tcp_proxy
    from xds_proxy.http import http2
else:  # loaded by the first listener that needs them (xds_proxy/lazy.py)
    tcp_proxy = lazy_import("xds_proxy.tcp_proxy")
    http2 = lazy_import("xds_proxy.http.http2")

ProtocolFactory = Callable[[], asyncio.Protocol]
TerminalBuilder = Callable[[Message, FilterChainContext, str], ProtocolFactory]

DIRECT_RESPONSE_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
)
TCP_PROXY_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
# How long a direct_response connection waits for the client's FIN after ours.
_DIRECT_RESPONSE_LINGER_S = 1.0


def _build_hcm(message: Message, ctx: FilterChainContext, path: str) -> ProtocolFactory:
    config = build_http_connection_manager(
        message,  # type: ignore[arg-type]
        path,
        ctx.stats,
        ctx.routes,
    )
    routes = config.routes.current
    if ctx.clusters is not None and routes.validate_clusters and not message.HasField("rds"):
        # Envoy checks an inline route table's clusters when it loads.
        for name in sorted(routes.cluster_names):
            if not ctx.clusters.known(name):
                raise ConfigError(f"{path}.route_config: route: unknown cluster '{name}'")
    if config.codec is Codec.HTTP2:
        http2_connection = http2.Http2Connection  # imported now, not at the first connection
        return lambda: http2_connection(config, ctx)
    return lambda: Http1Connection(config, ctx)


def build_direct_response_body(message: direct_response_pb2.Config, path: str) -> bytes:
    """What a direct_response connection is answered with (read once, at build time)."""
    if not message.HasField("response"):
        return b""
    return read_data_source(message.response, f"{path}.response")


def _build_direct_response(message: Message, ctx: FilterChainContext, path: str) -> ProtocolFactory:
    response = build_direct_response_body(message, path)  # type: ignore[arg-type]
    return lambda: DirectResponseConnection(response, ctx)


def _build_tcp_proxy(message: Message, ctx: FilterChainContext, path: str) -> ProtocolFactory:
    return tcp_proxy.build_tcp_proxy(message, ctx, path, ctx.clusters)  # type: ignore[arg-type]


# type URL -> (message class, builder); the one place that says which terminal network filters
# exist. `None` as builder: a later part of the project brings it.
NETWORK_FILTERS: dict[str, tuple[type[Message], TerminalBuilder | None]] = {
    HCM_TYPE_URL: (hcm_pb2.HttpConnectionManager, _build_hcm),
    DIRECT_RESPONSE_TYPE_URL: (direct_response_pb2.Config, _build_direct_response),
    TCP_PROXY_TYPE_URL: (tcp_proxy_pb2.TcpProxy, _build_tcp_proxy),
}


class FilterStage(Protocol):
    """A non-terminal network filter of a chain being built."""

    def next_context(self) -> FilterChainContext:
        """The context the filters after this one are built with."""
        ...

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        """The per-connection factory, given the factory of the filters after this one."""
        ...


StageBuilder = Callable[[Message, FilterChainContext, str], FilterStage]

# type URL -> (message class, builder): the network filters that come before the terminal one.
NON_TERMINAL_FILTERS: dict[str, tuple[type[Message], StageBuilder]] = {
    CONNECTION_LIMIT_TYPE_URL: (
        connection_limit_pb2.ConnectionLimit,
        build_connection_limit,  # type: ignore[dict-item]
    ),
}


def _decode(network_filter: listener_components_pb2.Filter, cls: type[Message], path: str):
    message = cls()
    try:
        message.ParseFromString(network_filter.typed_config.value)
    except DecodeError:
        raise ConfigError(
            f"{path}.typed_config: cannot decode {cls.DESCRIPTOR.full_name}"
        ) from None
    return message


def build_filter_chain(
    filters: Sequence[listener_components_pb2.Filter],
    ctx: FilterChainContext,
    path: str = "filters",
) -> ProtocolFactory:
    """The per-connection protocol factory of a chain's network filters, which passed the PGV
    rules and the support table (config/); raises ConfigError for what only building finds
    (the order of the filters, a file that cannot be read).

    `path` prefixes error messages (e.g. `filter_chains[0].filters`)."""
    if not filters:
        # Envoy accepts an empty chain and closes its connections at once.
        return lambda: ClosingConnection(ctx)
    factory: ProtocolFactory | None = None
    stages: list[FilterStage] = []
    for index, network_filter in enumerate(filters):
        filter_path = f"{path}[{index}]"
        type_url = network_filter.typed_config.type_url
        stage_entry = NON_TERMINAL_FILTERS.get(type_url)
        if stage_entry is not None:
            if index == len(filters) - 1:
                kind = extensions.SUPPORTED_NETWORK_FILTERS[extensions.type_name(type_url)]
                raise ConfigError(
                    f"{filter_path}: Error: non-terminal filter named {network_filter.name} of "
                    f"type {kind} is the last filter in a network filter chain."
                )
            stage_class, stage_builder = stage_entry
            message = _decode(network_filter, stage_class, filter_path)
            stage = stage_builder(message, ctx, f"{filter_path}.typed_config")
            stages.append(stage)
            ctx = stage.next_context()
            continue
        entry = NETWORK_FILTERS.get(type_url)
        if entry is None:
            raise ConfigError(
                f"{filter_path}: Didn't find a registered implementation for "
                f"'{network_filter.name}' with type URL: '{type_url.split('/')[-1]}'"
            )
        message_class, builder = entry
        if builder is None:
            raise ConfigError(f"{filter_path}: {network_filter.name} not supported yet")
        if index != len(filters) - 1:
            raise ConfigError(
                f"{filter_path}: Error: terminal filter named {network_filter.name} of type "
                f"{type_url.split('/')[-1]} must be the last filter in a network filter chain."
            )
        message = _decode(network_filter, message_class, filter_path)
        factory = builder(message, ctx, f"{filter_path}.typed_config")
    assert factory is not None
    for stage in reversed(stages):
        factory = stage.wrap(factory)
    return factory


class ClosingConnection(asyncio.Protocol):
    """A chain without network filters: Envoy closes such connections at once."""

    def __init__(self, ctx: FilterChainContext) -> None:
        self._ctx = ctx

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class DirectResponseConnection(asyncio.Protocol):
    """`envoy.filters.network.direct_response`: write the bytes, close (what the client sent
    is ignored). Our side is half-closed once flushed; the socket closes at the client's FIN
    or a second later, so an unread request does not turn our close into a reset."""

    def __init__(self, response: bytes, ctx: FilterChainContext) -> None:
        self._response = response
        self._ctx = ctx
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._ctx.register(self)
        if self._response:
            self._transport.write(self._response)  # type: ignore[union-attr]
        if not self._transport.can_write_eof():  # type: ignore[union-attr]
            self._transport.close()  # type: ignore[union-attr]
            return
        self._transport.write_eof()  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(_DIRECT_RESPONSE_LINGER_S, self.close_at_deadline)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._ctx.unregister(self)

    def on_drain(self) -> None:
        pass  # already closing

    def close_at_deadline(self) -> None:
        if self._transport is not None:
            self._transport.close()
