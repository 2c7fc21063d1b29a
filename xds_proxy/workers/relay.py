"""The main process's xDS server for its workers (`--concurrency N`).

Each worker is an xds-proxy whose only control plane is this relay: one state-of-the-world
ADS stream (`StreamAggregatedResources`) on a UNIX socket private to the main process. The
relay serves what the main process has *accepted* (`publish` per type: the listeners,
clusters, route configurations, endpoints and secrets it holds), so every worker builds the
same configuration from the same bytes, and a worker started late (or restarted) catches up
from one snapshot.

Per stream and type the relay keeps what the worker asked for (LDS and CDS: everything;
RDS, EDS, SDS: the names requested) and the version last sent with its nonce. A request that
answers the last nonce is an ACK (or a NACK with `error_detail`, logged); a request with new
names gets the resources held under those names. `wait_answered` resolves once every
connected worker has answered the newest version of every type it receives: the main
process awaits it before it ACKs its own control plane, so an ACK still means "serving", in
every worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

log = logging.getLogger("xds_proxy.workers")

WORKER_METADATA = "xds-proxy-worker"  # each worker's streams carry its index

# Types served to every subscriber without names (SotW wildcard), as Envoy asks for them.
WILDCARD_TYPES = frozenset(
    {
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    }
)


@dataclass
class _TypeState:
    """One type on one stream."""

    names: frozenset[str] = frozenset()  # requested names (ignored for wildcard types)
    sent_version: int = -1  # the relay's version of the last response sent
    sent_nonce: str = ""
    answered_nonce: str = ""  # the last nonce the worker ACKed or NACKed


@dataclass(eq=False)
class _Stream:
    worker: str  # the worker's index (its streams' `xds-proxy-worker` metadata)
    queue: asyncio.Queue[discovery_pb2.DiscoveryResponse | None] = field(
        default_factory=asyncio.Queue
    )
    types: dict[str, _TypeState] = field(default_factory=dict)


class Relay(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self) -> None:
        self._resources: dict[str, dict[str, bytes]] = {}  # type -> name -> serialized
        self._versions: dict[str, int] = {}
        self._version_info: dict[str, str] = {}  # the main process's, per type
        self._streams: set[_Stream] = set()
        self._nonces = itertools.count(1)
        self._answered = asyncio.Condition()
        self._server: grpc.aio.Server | None = None

    # -- the main process's side ------------------------------------------------------------

    async def start(self, path: str) -> None:
        self._server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{path}")
        await self._server.start()

    async def stop(self) -> None:
        for stream in list(self._streams):
            stream.queue.put_nowait(None)
        if self._server is not None:
            await self._server.stop(grace=None)

    def publish(
        self, type_url: str, resources: Mapping[str, bytes], version_info: str = ""
    ) -> bool:
        """The resources of one type the main process holds now, and its version of them
        (the workers' listeners then carry the version the main process's do); True if they
        changed (every stream receiving the type gets a response)."""
        if self._resources.get(type_url) == resources and type_url in self._versions:
            return False
        self._resources[type_url] = dict(resources)
        self._version_info[type_url] = version_info
        self._versions[type_url] = self._versions.get(type_url, 0) + 1
        for stream in self._streams:
            state = stream.types.get(type_url)
            if state is not None:
                self._respond(stream, type_url, state)
        return True

    def pending(self) -> bool:
        """Some worker has not yet answered the newest version of a type it receives (every
        worker receives the listeners and clusters, on one of its streams; the named types,
        those it asked for)."""
        asked: dict[str, set[str]] = {}
        for stream in self._streams:
            asked.setdefault(stream.worker, set()).update(stream.types)
        for types in asked.values():
            for type_url in WILDCARD_TYPES:
                if type_url in self._versions and type_url not in types:
                    return True  # a worker starting: it has not asked for them yet
        for stream in self._streams:
            for type_url, state in stream.types.items():
                if state.sent_version < 0:
                    continue
                if state.sent_nonce != state.answered_nonce:
                    return True
                if state.sent_version < self._latest(type_url):
                    return True
        return False

    async def wait_answered(self, timeout_s: float, workers: int) -> bool:
        """Until `workers` workers are connected and each answered what it was sent; False
        at the timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                async with self._answered:
                    await self._answered.wait_for(
                        lambda: (
                            len({s.worker for s in self._streams}) >= workers and not self.pending()
                        )
                    )
        except TimeoutError:
            return False
        return True

    # -- the workers' side -----------------------------------------------------------------

    async def StreamAggregatedResources(  # the gRPC method's name
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        metadata = dict(context.invocation_metadata() or ())
        stream = _Stream(str(metadata.get(WORKER_METADATA, "")))
        self._streams.add(stream)
        await self._notify()
        reader = asyncio.create_task(self._read(stream, request_iterator))
        try:
            while True:
                response = await stream.queue.get()
                if response is None:
                    return
                yield response
        finally:
            reader.cancel()
            self._streams.discard(stream)
            await self._notify()

    async def _read(
        self, stream: _Stream, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> None:
        try:
            async for request in requests:
                await self._on_request(stream, request)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.queue.put_nowait(None)

    async def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = request.type_url
        state = stream.types.get(type_url)
        if state is None:
            state = stream.types[type_url] = _TypeState()
        names = frozenset(request.resource_names)
        if request.response_nonce and request.response_nonce == state.sent_nonce:
            state.answered_nonce = request.response_nonce
            if request.HasField("error_detail"):
                log.warning(
                    "a worker rejected %s version %s: %s",
                    type_url.rsplit(".", 1)[-1],
                    state.sent_version,
                    request.error_detail.message,
                )
            await self._notify()
            if names == state.names:
                return
        elif request.response_nonce:
            return  # an answer to an older response: a newer one is on its way
        state.names = names
        self._respond(stream, type_url, state)

    def _respond(self, stream: _Stream, type_url: str, state: _TypeState) -> None:
        held = self._resources.get(type_url, {})
        if type_url in WILDCARD_TYPES:
            chosen = held
        else:
            chosen = {name: held[name] for name in sorted(state.names) if name in held}
            if not chosen and state.sent_version < 0:
                return  # nothing to send yet: the worker's initial fetch waits, as for us
        version = self._latest(type_url)
        nonce = str(next(self._nonces))
        response = discovery_pb2.DiscoveryResponse(
            version_info=self._version_info.get(type_url) or str(version),
            type_url=type_url,
            nonce=nonce,
        )
        for body in chosen.values():
            response.resources.append(any_pb2.Any(type_url=type_url, value=body))
        state.sent_version, state.sent_nonce = version, nonce
        stream.queue.put_nowait(response)

    def _latest(self, type_url: str) -> int:
        return self._versions.get(type_url, 0)

    async def _notify(self) -> None:
        async with self._answered:
            self._answered.notify_all()
