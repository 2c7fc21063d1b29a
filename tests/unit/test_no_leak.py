"""A drained listener leaves nothing behind (issue 10: RSS after churn within 5 % of before).

The real ListenerManager, DrainManager, ListenerRuntime and listen-socket pool in this process,
a loopback listener on port 0, and a keep-alive client on it across every push: full modifies,
in-place chain changes and remove/re-add pairs. Once every drain has finished, no listener
version, compiled listener or chain runtime of an earlier push may still be alive: anything
that keeps one (a drain record, a timer, a cache, a closure) would keep its whole compiled
config, and its connections' memory, for the life of the process.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

from envoy.config.listener.v3 import listener_pb2

from tests.unit.listener_fixtures import chain, listener, wired_listeners
from xds_proxy.listener.manager import ListenerVersion

PUSHES_PER_KIND = 4
TIMEOUT_S = 5.0


class Proxy:
    """Manager + runtime wired as server.py wires them, on loopback port 0."""

    def __init__(self) -> None:
        wired = wired_listeners("immediate", 5.0)
        self.runtime = wired.runtime
        self.manager = wired.manager
        self.drains = wired.drains
        self.compiler = wired.compiler
        self.versions: list[weakref.ref] = []  # every version, its instance and its chains
        self.pushes = 0

    async def push(self, listeners: list[listener_pb2.Listener]) -> None:
        self.pushes += 1
        result = self.manager.apply_sotw(f"v{self.pushes}", listeners)
        assert result.nack_message is None, result.nack_message
        await self.runtime.execute(result.actions)
        for version in self.manager.active.values():
            self.track(version)

    def track(self, version: ListenerVersion) -> None:
        instance = self.runtime.instances[version.id]
        for thing in (version, instance, *instance.all_chains()):
            if not any(ref() is thing for ref in self.versions):
                self.versions.append(weakref.ref(thing))

    def port(self, name: str) -> int:
        return self.runtime.pool.bound_addresses(self.manager.active[name].id)[0][1]

    async def quiet(self) -> None:
        """Every drain finished (each ends when its last connection closes)."""
        deadline = time.monotonic() + TIMEOUT_S
        while self.manager.draining or self.manager.draining_chains or self.drains.records:
            assert time.monotonic() < deadline, "drains did not finish"
            await asyncio.sleep(0.01)


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection: a request answered, then left idle."""

    async def open(self, port: int) -> KeepAliveClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT_S)
        assert body.startswith(b"hello"), body
        return self

    async def closed_by_server(self) -> None:
        """The drain closes an idle connection at once (immediate): EOF, then our FIN."""
        assert await asyncio.wait_for(self.reader.read(), TIMEOUT_S) == b""
        self.writer.close()


def web(revision: int, chain_revision: int) -> listener_pb2.Listener:
    """A listener-level field per `revision` (full update), a body per `chain_revision`
    (in-place filter-chain update)."""
    config = listener("web", 0, chains=[chain(f"hello {chain_revision}")])
    config.per_connection_buffer_limit_bytes.value = (1 << 20) + revision
    return config


async def test_drained_versions_and_their_chains_are_freed() -> None:
    proxy = Proxy()
    revision = chain_revision = 0
    await proxy.push([web(revision, chain_revision)])
    try:
        for kind in ("full", "in_place", "remove_readd") * PUSHES_PER_KIND:
            client = await KeepAliveClient().open(proxy.port("web"))
            if kind == "full":
                revision += 1
                await proxy.push([web(revision, chain_revision)])
            elif kind == "in_place":
                chain_revision += 1
                await proxy.push([web(revision, chain_revision)])
            else:
                await proxy.push([])
                await proxy.push([web(revision, chain_revision)])
            await client.closed_by_server()
            await proxy.quiet()

        active = proxy.manager.active["web"]
        instance = proxy.runtime.instances[active.id]
        kept = {id(active), id(instance), *map(id, instance.all_chains())}
        gc.collect()
        alive = [ref() for ref in proxy.versions if ref() is not None]
        leaked = [type(thing).__name__ for thing in alive if id(thing) not in kept]
        assert proxy.pushes == 1 + PUSHES_PER_KIND * 4
        assert len(proxy.versions) > 3 * PUSHES_PER_KIND * 3  # versions, instances, chains
        assert leaked == []
        assert list(proxy.runtime.instances) == [active.id]
        # nothing of a finished drain is left in the runtime or the drain manager
        assert proxy.runtime.retired == {} and proxy.runtime.watches == {}
        assert proxy.drains.covering(active.id, 0, inbound=False) == []
        assert proxy.drains._listeners == {} and proxy.drains._chains == {}
    finally:
        await proxy.runtime.close()
