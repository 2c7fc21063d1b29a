"""A minimal xDS client (SotW or Delta, LDS or ADS) for tests, benchmarks and debugging.

It speaks the protocol as an Envoy would but decides nothing itself: the caller reads
responses and sends ACKs or NACKs (or lets `auto_ack` ACK everything).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.listener.v3 import lds_pb2_grpc

from control_plane_stub.resources import LISTENER_TYPE

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
Response = discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse
_END = object()


class XdsProbe:
    def __init__(
        self,
        address: str,
        node: str,
        mode: Literal["sotw", "delta"] = "sotw",
        ads: bool = False,
        auto_ack: bool = False,
        channel: grpc.aio.Channel | None = None,
    ):
        self.address = address
        self.node = node
        self.mode = mode
        self.ads = ads
        self.auto_ack = auto_ack
        self._own_channel = channel is None
        self._channel = channel or grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self._incoming: asyncio.Queue = asyncio.Queue()
        self._call = None
        self._reader: asyncio.Task | None = None
        self.received = 0
        self.error: grpc.aio.AioRpcError | None = None

    def _method(self):
        if self.ads:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
            if self.mode == "sotw":
                return stub.StreamAggregatedResources
            return stub.DeltaAggregatedResources
        stub = lds_pb2_grpc.ListenerDiscoveryServiceStub(self._channel)
        return stub.StreamListeners if self.mode == "sotw" else stub.DeltaListeners

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
        self._outgoing.put_nowait(request)

    def send(self, request) -> None:
        self._outgoing.put_nowait(request)

    def ack(self, response: Response) -> None:
        self._outgoing.put_nowait(self._reply(response, None))

    def nack(self, response: Response, message: str, code: int = 3) -> None:
        self._outgoing.put_nowait(self._reply(response, (code, message)))

    def _reply(self, response: Response, error: tuple[int, str] | None):
        if self.mode == "sotw":
            request = discovery_pb2.DiscoveryRequest(
                type_url=response.type_url,
                response_nonce=response.nonce,
                version_info="" if error else response.version_info,
            )
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
