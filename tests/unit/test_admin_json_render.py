"""The admin JSON printer: Any of any xds-protos type, Envoy's text for unknown types, and
`/server_info`'s default-valued fields (against Envoy 1.40: tests/interop/
test_admin_json_interop.py)."""

from __future__ import annotations

import json

from envoy.admin.v3 import server_info_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import descriptor_pool

from xds_proxy.admin.json_render import message_json, server_info_json

# A network filter nothing in the project imports: the printer must find it on its own.
LOCAL_RATELIMIT = "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
PREFIX = "type.googleapis.com/"


def with_filter(type_url: str, value: bytes) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name="l")
    typed_config = listener.filter_chains.add().filters.add(name="f").typed_config
    typed_config.type_url = type_url
    typed_config.value = value
    return listener


def typed_config(printed: str) -> dict:
    return json.loads(printed)["filter_chains"][0]["filters"][0]["typed_config"]


def not_imported(type_name: str) -> bool:
    try:
        descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        return True
    return False


def test_an_any_of_a_type_not_imported_is_printed_in_full() -> None:
    assert not_imported(LOCAL_RATELIMIT), "imported elsewhere: pick another type"
    printed = message_json(with_filter(PREFIX + LOCAL_RATELIMIT, b"\x0a\x02lr"))
    assert typed_config(printed) == {"@type": PREFIX + LOCAL_RATELIMIT, "stat_prefix": "lr"}


def test_an_any_whose_bytes_do_not_parse_is_printed_with_its_type_only() -> None:
    printed = message_json(with_filter(PREFIX + LOCAL_RATELIMIT, b"\xff\xff\xff"))
    assert typed_config(printed) == {"@type": PREFIX + LOCAL_RATELIMIT}


def test_unknown_types_answer_envoys_text() -> None:
    failed = "Failed to convert protobuf message to JSON string: INVALID_ARGUMENT: "
    unknown = PREFIX + "example.NoSuchType"
    assert message_json(with_filter(unknown, b"")) == f"{failed}could not find @type '{unknown}'"
    assert message_json(with_filter("example.NoSuchType", b"")) == (
        f"{failed}@type must contain at least one / and a nonempty host; got: example.NoSuchType"
    )


def test_config_dump_leaves_default_fields_out() -> None:
    printed = json.loads(message_json(listener_pb2.Listener(name="l")))
    assert printed == {"name": "l"}


def test_server_info_prints_defaults_in_field_number_order() -> None:
    info = server_info_pb2.ServerInfo(version="v")  # state LIVE is the enum's 0
    info.command_line_options.concurrency = 1
    printed = json.loads(server_info_json(info))
    assert list(printed) == ["version", "state", "hot_restart_version", "command_line_options"]
    assert printed["state"] == "LIVE" and printed["hot_restart_version"] == ""
    options = printed["command_line_options"]
    # By field number (as Envoy), not in declaration order (use_dynamic_base_id comes second).
    assert list(options)[:3] == ["base_id", "concurrency", "config_path"]
    assert options["base_id"] == "0" and options["disable_hot_restart"] is False


def test_field_order_keeps_free_form_structs_and_prints_nested_defaults() -> None:
    info = server_info_pb2.ServerInfo()
    info.node.metadata.update({"z": 1, "a": {"b": "c"}})
    info.node.user_agent_build_version.version.major_number = 1
    node = json.loads(server_info_json(info))["node"]
    assert node["metadata"] == {"z": 1, "a": {"b": "c"}}
    assert node["user_agent_build_version"] == {
        "version": {"major_number": 1, "minor_number": 0, "patch": 0}  # as Envoy prints it
    }
