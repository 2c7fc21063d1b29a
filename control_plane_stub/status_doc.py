"""The status document (`status --json`) to and from its control-API message."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from control_plane_stub.generated.xds_stub.v1 import control_pb2


def status_to_proto(document: dict) -> control_pb2.Status:
    status = control_pb2.Status()
    for node_entry in document["nodes"]:
        node = status.nodes.add(node=node_entry["node"])
        for entry in node_entry["streams"]:
            stream = node.streams.add(
                stream=entry["stream"], type_url=entry["type_url"], mode=entry["mode"]
            )
            stream.connected_since.FromJsonString(entry["connected_since"])
            if entry["sent"] is not None:
                stream.sent.version = entry["sent"]["version"]
                stream.sent.nonce = entry["sent"]["nonce"]
            if entry["acked_version"] is not None:
                stream.acked_version = entry["acked_version"]
            if entry["nack"] is not None:
                stream.nack.CopyFrom(control_pb2.Nack(**entry["nack"]))
            stream.subscribed.extend(entry.get("subscribed", []))
    return status


def _timestamp_text(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToJsonString()


def status_from_proto(status: control_pb2.Status) -> dict:
    nodes = []
    for node in status.nodes:
        streams = []
        for stream in node.streams:
            streams.append(
                {
                    "stream": stream.stream,
                    "type_url": stream.type_url,
                    "mode": stream.mode,
                    "connected_since": _timestamp_text(stream.connected_since),
                    "sent": (
                        {"version": stream.sent.version, "nonce": stream.sent.nonce}
                        if stream.HasField("sent")
                        else None
                    ),
                    "acked_version": (
                        stream.acked_version if stream.HasField("acked_version") else None
                    ),
                    "nack": (
                        {
                            "version": stream.nack.version,
                            "nonce": stream.nack.nonce,
                            "code": stream.nack.code,
                            "message": stream.nack.message,
                        }
                        if stream.HasField("nack")
                        else None
                    ),
                    "subscribed": list(stream.subscribed),
                }
            )
        nodes.append({"node": node.node, "streams": streams})
    return {"nodes": nodes}
