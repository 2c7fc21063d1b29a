"""StubClient: the blocking Python API of the stub's control API (for scripts and tests).

client = StubClient("127.0.0.1:18001")
client.set_resources(listeners=[listener])    # messages, envoy-data-plane objects, dicts
client.set_resources(routes=[route_config])     # RouteConfigurations, served over RDS
client.set_resources(endpoints=[assignment])    # ClusterLoadAssignments, served over EDS
client.set_resources(secrets=[secret])          # Secrets, served over SDS
client.wait(version)                            # StubNack / TimeoutError
client.wait(version, section="routes")          # the RDS ACK of a routes version
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import grpc

from control_plane_stub.cache import SERVED_TYPES, WaitVerdict, evaluate_wait
from control_plane_stub.generated.xds_stub.v1 import control_pb2, control_pb2_grpc
from control_plane_stub.resources import (
    NamedResource,
    ResourceError,
    encode_resources,
    load_resource_file,
)
from control_plane_stub.status_doc import status_from_proto

DEFAULT_CONTROL = "127.0.0.1:18001"
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class StubError(Exception):
    """The stub refused a request or could not be reached; the message is one line."""


class StubNack(StubError):
    """A node NACKed the version being waited for; `detail` is its error_detail message."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class StubClient:
    def __init__(self, control_address: str = DEFAULT_CONTROL, rpc_timeout: float = 10.0):
        self.control_address = control_address
        self._rpc_timeout = rpc_timeout
        self._channel = grpc.insecure_channel(control_address, options=CHANNEL_OPTIONS)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> StubClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _error(self, error: grpc.RpcError) -> StubError:
        code = error.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return StubError(error.details())
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return StubError(
                f"cannot reach the stub's control API at {self.control_address}: {error.details()}"
            )
        return StubError(f"control API {code.name}: {error.details()}")

    # ------------------------------------------------------------ pushes

    def set_resources(
        self,
        listeners: Iterable[Any] | None = None,
        clusters: Iterable[Any] | None = None,
        routes: Iterable[Any] | None = None,
        node: str | None = None,
        version: str | None = None,
        raw: bool = False,
        endpoints: Iterable[Any] | None = None,
        secrets: Iterable[Any] | None = None,
    ) -> dict[str, str]:
        """Replace the default set (or `node`'s own); a type left None keeps its set.
        Returns section ("listeners", "clusters", "routes", "endpoints", "secrets") ->
        version now served."""
        given = {
            "listeners": listeners,
            "clusters": clusters,
            "routes": routes,
            "endpoints": endpoints,
            "secrets": secrets,
        }
        request = control_pb2.SetResourcesRequest(
            node=node or "", version="" if version is None else str(version), raw=raw
        )
        for section, items in given.items():
            if items is None:
                continue
            try:
                encoded = encode_resources(items, SERVED_TYPES[section], section, raw=raw)
            except ResourceError as error:
                raise StubError(str(error)) from None
            target = getattr(request, section)
            target.SetInParent()
            for resource in encoded:
                target.resources.add(name=resource.name, body=resource.body)
        try:
            response = self._stub.SetResources(request, timeout=self._rpc_timeout)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return {s: response.versions[s] for s in SERVED_TYPES if s in response.versions}

    def push_file(
        self, path: str | os.PathLike[str], node: str | None = None, raw: bool = False
    ) -> dict[str, str]:
        """What `push FILE` does: the file replaces the whole set (a missing section is
        empty); raises StubError with file, position and reason when it is refused."""
        try:
            resource_file = load_resource_file(path, raw=raw)
        except ResourceError as error:
            raise StubError(str(error)) from None
        sections: dict[str, list[NamedResource]] = {
            section: items or [] for section, items in resource_file.sections.items()
        }
        return self.set_resources(
            listeners=sections["listeners"],
            clusters=sections["clusters"],
            routes=sections["routes"],
            endpoints=sections["endpoints"],
            secrets=sections["secrets"],
            node=node,
            version=resource_file.version,
            raw=raw,
        )

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        """The document of `status --json`."""
        try:
            response = self._stub.GetStatus(
                control_pb2.GetStatusRequest(), timeout=self._rpc_timeout
            )
        except grpc.RpcError as error:
            raise self._error(error) from None
        return status_from_proto(response)

    def wait(
        self,
        version: str,
        node: str | None = None,
        timeout: float = 30.0,
        section: str = "listeners",
    ) -> None:
        """Return once `version` of the section's type ("listeners", "clusters", "routes",
        "endpoints", "secrets") is ACKed (by `node`, or by every connected node with a
        stream of that type, and at least one); raise StubNack at its NACK, TimeoutError
        at the deadline."""
        if section not in SERVED_TYPES:
            raise StubError(
                f"unknown section {section!r} (expected one of {', '.join(SERVED_TYPES)})"
            )
        deadline = time.monotonic() + timeout
        last = WaitVerdict("pending")
        last_document: dict = {"nodes": []}
        call = self._stub.WatchStatus(control_pb2.GetStatusRequest(), timeout=timeout)
        try:
            for status in call:
                last_document = status_from_proto(status)
                last = evaluate_wait(last_document, str(version), node, section)
                if last.state == "acked":
                    return
                if last.state == "nacked":
                    raise StubNack(last.detail)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise self._error(error) from None
        else:
            if time.monotonic() < deadline:
                raise StubError("the stub ended the status stream (shutting down?)")
        finally:
            call.cancel()
        raise TimeoutError(
            f"{section} version {version} not ACKed within {timeout:g} s "
            f"({describe_pending(last_document, node, section)})"
        )


def describe_pending(document: dict, node: str | None, section: str = "listeners") -> str:
    """Who has what, for the timeout message."""
    type_url = SERVED_TYPES[section]
    parts = []
    for entry in document.get("nodes", []):
        if node is not None and entry["node"] != node:
            continue
        for stream in entry["streams"]:
            if stream["type_url"] == type_url:
                parts.append(f"node {entry['node']!r} acked {stream['acked_version']!r}")
    if not parts:
        return f"node {node!r} not connected" if node else "no node connected"
    return ", ".join(parts)
