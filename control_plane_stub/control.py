"""The control API (proto/xds_stub/v1/control.proto) served on grpc.aio."""

from __future__ import annotations

import grpc

from control_plane_stub.cache import SERVED_TYPES
from control_plane_stub.generated.xds_stub.v1 import control_pb2, control_pb2_grpc
from control_plane_stub.hub import StubHub
from control_plane_stub.resources import (
    NamedResource,
    ResourceError,
    check_names,
    decode_resource,
    name_field_of,
    name_of,
    type_name_of,
)
from control_plane_stub.status_doc import status_to_proto


def validate_sections(sections: dict[str, list[NamedResource] | None]) -> None:
    """What the stub refuses unless raw: wrong or undecodable types, names that do not
    match the resource, missing or duplicate names."""
    for section, resources in sections.items():
        if resources is None:
            continue
        expected = SERVED_TYPES[section]
        for index, resource in enumerate(resources):
            if resource.body.type_url != expected:
                raise ResourceError(
                    f"{section}[{index}]: expected @type {expected!r}, "
                    f"got {resource.body.type_url!r}"
                )
            message = decode_resource(resource)
            if message is None:
                raise ResourceError(
                    f"{section}[{index}]: does not decode as {type_name_of(expected)}"
                )
            inside = name_of(message)
            if inside != resource.name:
                raise ResourceError(
                    f"{section}[{index}].{name_field_of(expected)}: {inside!r} inside the "
                    f"resource, {resource.name!r} given"
                )
        check_names(resources, section)


class ControlService(control_pb2_grpc.ControlServiceServicer):
    def __init__(self, hub: StubHub):
        self._hub = hub

    async def SetResources(self, request, context):
        sections: dict[str, list[NamedResource] | None] = {}
        for section in SERVED_TYPES:
            if request.HasField(section):
                sections[section] = [
                    NamedResource(name=item.name, body=item.body)
                    for item in getattr(request, section).resources
                ]
            else:
                sections[section] = None
        if not request.raw:
            try:
                validate_sections(sections)
            except ResourceError as error:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        versions = self._hub.set_resources(
            sections, node=request.node or None, version=request.version or None
        )
        return control_pb2.SetResourcesResponse(versions=versions)

    async def GetStatus(self, request, context):
        return status_to_proto(self._hub.cache.status())

    async def WatchStatus(self, request, context):
        async for document in self._hub.watch_status():
            yield status_to_proto(document)


def add_control_servicer(server: grpc.aio.Server, hub: StubHub) -> None:
    control_pb2_grpc.add_ControlServiceServicer_to_server(ControlService(hub), server)
