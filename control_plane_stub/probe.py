"""A minimal xDS client (SotW or Delta; ADS or a plain LDS, CDS, RDS, EDS or SDS service) for
tests, benchmarks and debugging.

It speaks the protocol as an Envoy would but decides nothing itself: the caller reads
responses and sends ACKs or NACKs (or lets `auto_ack` ACK everything).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc

from control_plane_stub.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
)

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
Response = discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
_END = object()
# A plain (non-ADS) service's type -> its stub class and (SotW, Delta) method names.
PLAIN_SERVICES = {
    LISTENER_TYPE: (lds_pb2_grpc.ListenerDiscoveryServiceStub, "StreamListeners", "DeltaListeners"),
    CLUSTER_TYPE: (cds_pb2_grpc.ClusterDiscoveryServiceStub, "StreamClusters", "DeltaClusters"),
    ROUTE_TYPE: (rds_pb2_grpc.RouteDiscoveryServiceStub, "StreamRoutes", "DeltaRoutes"),
    ENDPOINT_TYPE: (
        eds_pb2_grpc.EndpointDiscoveryServiceStub,
        "StreamEndpoints",
        "DeltaEndpoints",
    ),
    SECRET_TYPE: (sds_pb2_grpc.SecretDiscoveryServiceStub, "StreamSecrets", "DeltaSecrets"),
}


class XdsProbe:
    def __init__(
        self,
        address: str,
        node: str,
        mode: Literal["sotw", "delta"] = "sotw",
        ads: bool = False,
        auto_ack: bool = False,
        channel: grpc.aio.Channel | None = None,
        service_type: str = LISTENER_TYPE,
    ):
        """`ads=False` opens the plain service of `service_type` (LDS by default)."""
        self.address = address
        self.node = node
        self.mode = mode
        self.ads = ads
        self.auto_ack = auto_ack
        self.service_type = service_type
        self._own_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self._incoming: asyncio.Queue = asyncio.Queue()
        self._call = None
        self._reader: asyncio.Task | None = None
        self.received = 0
        self.error: grpc.aio.AioRpcError | None = None
        # Per type, as an Envoy keeps them: the names subscribed (SotW repeats them in every
        # request, ACKs included: for RDS, EDS, SDS an empty list subscribes to nothing), the last
        # response's nonce and the last version ACKed.
        self.names: dict[str, tuple[str, ...]] = {}
        self._last_nonce: dict[str, str] = {}
        self._accepted: dict[str, str] = {}

    def _method(self):
        if self.ads:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
            if self.mode == "sotw":
                return stub.StreamAggregatedResources
            return stub.DeltaAggregatedResources
        stub_class, sotw_method, delta_method = PLAIN_SERVICES[self.service_type]
        stub = stub_class(self._channel)
        return getattr(stub, sotw_method if self.mode == "sotw" else delta_method)

    async def _requests(self):
        while True:
            request = await self._outgoing.get()
            if request is _END:
                return
            yield request

    async def start(self) -> XdsProbe:
        self._call = self._method()(self._requests())
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self.received += 1
                self._last_nonce[response.type_url] = response.nonce
                if self.auto_ack:
                    self.ack(response)
                self._incoming.put_nowait(response)
        except grpc.aio.AioRpcError as error:
            self.error = error
        except asyncio.CancelledError:
            pass
        finally:
            self._incoming.put_nowait(_END)

    # ------------------------------------------------------------ requests

    def subscribe(
        self,
        type_url: str = LISTENER_TYPE,
        names: tuple[str, ...] = (),
        version: str = "",
        initial_versions: dict[str, str] | None = None,
    ) -> None:
        """The first request for a type (SotW `resource_names`, Delta subscribe list)."""
        if self.mode == "sotw":
            request = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=version)
            request.resource_names.extend(names)
        else:
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
            request.resource_names_subscribe.extend(names)
            for name, resource_version in (initial_versions or {}).items():
                request.initial_resource_versions[name] = resource_version
        request.node.id = self.node
        self.names[type_url] = tuple(names)
        self._outgoing.put_nowait(request)

    def update_subscription(self, type_url: str, names: tuple[str, ...]) -> None:
        """Change the names subscribed for a type, as Envoy does: SotW sends the new list in
        an ACK-shaped request (last ACKed version, last nonce); Delta sends the differences."""
        old = set(self.names.get(type_url, ()))
        if self.mode == "sotw":
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url,
                version_info=self._accepted.get(type_url, ""),
                response_nonce=self._last_nonce.get(type_url, ""),
            )
            request.resource_names.extend(names)
        else:
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
            request.resource_names_subscribe.extend(n for n in names if n not in old)
            request.resource_names_unsubscribe.extend(sorted(old - set(names)))
        request.node.id = self.node
        self.names[type_url] = tuple(names)
        self._outgoing.put_nowait(request)

    def send(self, request) -> None:
        self._outgoing.put_nowait(request)

    def ack(self, response: Response) -> None:
        self._outgoing.put_nowait(self._reply(response, None))

    def nack(self, response: Response, message: str, code: int = 3) -> None:
        self._outgoing.put_nowait(self._reply(response, (code, message)))

    def _reply(self, response: Response, error: tuple[int, str] | None):
        if self.mode == "sotw":
            if error is None:
                self._accepted[response.type_url] = response.version_info
            request = discovery_pb2.DiscoveryRequest(
                type_url=response.type_url,
                response_nonce=response.nonce,
                version_info=self._accepted.get(response.type_url, ""),
            )
            request.resource_names.extend(self.names.get(response.type_url, ()))
        else:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=response.type_url, response_nonce=response.nonce
            )
        if error is not None:
            request.error_detail.code, request.error_detail.message = error
        return request

    # ------------------------------------------------------------ responses

    async def next(self, timeout: float = 5.0) -> Response:
        """The next response; raises TimeoutError, or ConnectionError when the stream ended."""
        item = await asyncio.wait_for(self._incoming.get(), timeout)
        if item is _END:
            self._incoming.put_nowait(_END)
            raise ConnectionError(f"stream ended: {self.error!r}")
        return item

    def pending(self) -> int:
        return self._incoming.qsize()

    async def close(self) -> None:
        self._outgoing.put_nowait(_END)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._own_channel:
            await self._channel.close()
