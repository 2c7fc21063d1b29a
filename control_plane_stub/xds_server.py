"""gRPC servicers for LDS, CDS, RDS, EDS, SDS and ADS (each SotW and Delta) on grpc.aio.

Each stream gets a reader task that feeds requests to the hub, while the handler itself
yields whatever lands in the stream's outbox; pushes from the control API land there too.
When the client goes away the reader ends, the outbox is closed and the stream forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc

from control_plane_stub.cache import Mode
from control_plane_stub.hub import CLOSE, StubHub
from control_plane_stub.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)

log = logging.getLogger("control_plane_stub")


async def serve_stream(
    hub: StubHub,
    mode: Mode,
    fixed_type: str | None,
    requests: AsyncIterator,
    context: grpc.aio.ServicerContext,
) -> AsyncIterator:
    stream_id, outbox = hub.open_stream(mode, fixed_type)
    peer = context.peer()
    failure: list[str] = []  # why reading ended, when the client sent something unreadable
    log.info("stream %d opened (%s, %s) from %s", stream_id, mode, fixed_type or "ADS", peer)

    async def read_requests() -> None:
        try:
            async for request in requests:
                try:
                    hub.handle_request(stream_id, request)
                except Exception:  # a bug for one request must not end the others
                    log.exception("stream %d: request not handled", stream_id)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception as error:
            log.info("stream %d: read ended: %s", stream_id, error)
            failure.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
        finally:
            outbox.put_nowait(CLOSE)

    reader = asyncio.create_task(read_requests())
    try:
        while True:
            response = await outbox.get()
            if response is CLOSE:
                break
            yield response
        if failure:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, failure[0])
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        hub.close_stream(stream_id)
        log.info("stream %d closed", stream_id)


class _OneType:
    """The SotW and Delta streams of a plain (one-type) discovery service."""

    type_url: str

    def __init__(self, hub: StubHub):
        self._hub = hub

    async def _sotw(self, request_iterator, context):
        async for response in serve_stream(
            self._hub, "sotw", self.type_url, request_iterator, context
        ):
            yield response

    async def _delta(self, request_iterator, context):
        async for response in serve_stream(
            self._hub, "delta", self.type_url, request_iterator, context
        ):
            yield response

    async def _fetch(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "REST-style fetch is not served")


class ListenerDiscovery(_OneType, lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    type_url = LISTENER_TYPE
    StreamListeners = _OneType._sotw
    DeltaListeners = _OneType._delta
    FetchListeners = _OneType._fetch


class ClusterDiscovery(_OneType, cds_pb2_grpc.ClusterDiscoveryServiceServicer):
    type_url = CLUSTER_TYPE
    StreamClusters = _OneType._sotw
    DeltaClusters = _OneType._delta
    FetchClusters = _OneType._fetch


class RouteDiscovery(_OneType, rds_pb2_grpc.RouteDiscoveryServiceServicer):
    type_url = ROUTE_TYPE
    StreamRoutes = _OneType._sotw
    DeltaRoutes = _OneType._delta
    FetchRoutes = _OneType._fetch


class EndpointDiscovery(_OneType, eds_pb2_grpc.EndpointDiscoveryServiceServicer):
    type_url = ENDPOINT_TYPE
    StreamEndpoints = _OneType._sotw
    DeltaEndpoints = _OneType._delta
    FetchEndpoints = _OneType._fetch


class SecretDiscovery(_OneType, sds_pb2_grpc.SecretDiscoveryServiceServicer):
    type_url = SECRET_TYPE
    StreamSecrets = _OneType._sotw
    DeltaSecrets = _OneType._delta
    FetchSecrets = _OneType._fetch


class AggregatedDiscovery(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, hub: StubHub):
        self._hub = hub

    async def StreamAggregatedResources(self, request_iterator, context):
        async for response in serve_stream(self._hub, "sotw", None, request_iterator, context):
            yield response

    async def DeltaAggregatedResources(self, request_iterator, context):
        async for response in serve_stream(self._hub, "delta", None, request_iterator, context):
            yield response


def add_xds_servicers(server: grpc.aio.Server, hub: StubHub) -> None:
    lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(ListenerDiscovery(hub), server)
    cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server(ClusterDiscovery(hub), server)
    rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server(RouteDiscovery(hub), server)
    eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(EndpointDiscovery(hub), server)
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SecretDiscovery(hub), server)
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AggregatedDiscovery(hub), server)
