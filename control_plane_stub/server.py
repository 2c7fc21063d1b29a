"""The running stub: an xDS gRPC server and a control-API gRPC server on one event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from control_plane_stub.control import add_control_servicer
from control_plane_stub.hub import StubHub
from control_plane_stub.resources import ResourceError, ResourceFile, load_resource_file
from control_plane_stub.xds_server import add_xds_servicers

log = logging.getLogger("control_plane_stub")

# SotW responses with thousands of listeners exceed gRPC's 4 MiB default.
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class AddressError(Exception):
    """An address that does not parse or cannot be bound; one line for the user."""


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port)."""
    host, separator, port_text = address.rpartition(":")
    if not separator or not host:
        raise AddressError(f"{address!r}: expected HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"{address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AddressError(f"{address!r}: port must be 0..65535")
    return host, port


@dataclass(frozen=True)
class ServerTls:
    """TLS for the xDS port; with `client_ca` the stub requires client certificates (mTLS)."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, ca: Path | None = None) -> ServerTls:
        """Raises AddressError naming the flag when a file cannot be read."""
        return cls(
            certificate_chain=_read(cert, "--tls-cert"),
            private_key=_read(key, "--tls-key"),
            client_ca=_read(ca, "--tls-ca") if ca is not None else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise AddressError(f"{flag} {path}: cannot read: {error.strerror}") from None


def join_address(host: str, port: int) -> str:
    return f"{host}:{port}"


def file_sections(resource_file: ResourceFile) -> dict:
    """A file replaces the whole set: a section it does not mention becomes empty."""
    return {section: items or [] for section, items in resource_file.sections.items()}


class StubServer:
    def __init__(
        self,
        xds_address: str,
        control_address: str,
        hub: StubHub | None = None,
        xds_tls: ServerTls | None = None,
    ):
        self.hub = hub or StubHub()
        self.xds_tls = xds_tls
        self._requested = {"xds": xds_address, "control": control_address}
        self.bound: dict[str, str] = {}
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> dict[str, str]:
        """Bind and start both servers; returns {"xds": "ip:port", "control": "ip:port"}."""
        adders = {"xds": add_xds_servicers, "control": add_control_servicer}
        for role, address in self._requested.items():
            host, _ = split_address(address)
            server = grpc.aio.server(options=GRPC_OPTIONS)
            adders[role](server, self.hub)
            try:
                if role == "xds" and self.xds_tls is not None:
                    port = server.add_secure_port(address, self.xds_tls.credentials())
                else:
                    port = server.add_insecure_port(address)
            except RuntimeError as error:
                raise AddressError(f"--{role} {address}: cannot bind: {error}") from None
            if port == 0:
                raise AddressError(f"--{role} {address}: cannot bind")
            await server.start()
            self._servers.append(server)
            self.bound[role] = join_address(host, port)
        return dict(self.bound)

    async def stop(self, grace: float | None = 0.2) -> None:
        for server in self._servers:
            await server.stop(grace)
        self._servers.clear()

    def load(self, path: str | os.PathLike[str], raw: bool = False) -> dict[str, str]:
        resource_file = load_resource_file(path, raw=raw)
        return self.hub.set_resources(file_sections(resource_file), version=resource_file.version)

    async def watch(self, path: Path, interval: float = 0.2) -> None:
        """Push the file again whenever it changes (mtime or size); a bad version is
        refused with one log line and the served set stays as it was."""
        last = _signature(path)
        while True:
            await asyncio.sleep(interval)
            current = _signature(path)
            if current == last:
                continue
            last = current
            if current is None:
                log.warning("%s: file is gone; serving the last set", path)
                continue
            try:
                versions = self.load(path)
            except ResourceError as error:
                log.error("%s", error)
                continue
            log.info("reloaded %s: %s", path, versions)


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)
