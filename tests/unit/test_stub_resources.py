"""Resource files and Python inputs: parsing, validation with positions, raw encoding."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2

from control_plane_stub.resources import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    NamedResource,
    ResourceError,
    decode_resource,
    encode_resources,
    find_message_descriptor,
    format_path,
    load_resource_file,
    load_resource_text,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)

GOOD = """\
version: "7"
listeners:
  - name: web
    address:
      socket_address: {address: 127.0.0.1, port_value: 10000}
    filter_chains:
      - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": HCM_TYPE_URL
              stat_prefix: web
clusters:
  - name: backend
    connect_timeout: 1s
""".replace("HCM_TYPE_URL", HCM)


def write(tmp_path: Path, text: str, name: str = "set.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str, name: str = "set.yaml", raw: bool = False) -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ResourceError) as caught:
        load_resource_file(path, raw=raw)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message[len(str(path)) :]


def test_good_file_loads(tmp_path: Path) -> None:
    loaded = load_resource_file(write(tmp_path, GOOD))
    assert loaded.version == "7"
    [web] = loaded.sections["listeners"]
    assert web.name == "web" and web.body.type_url == LISTENER_TYPE
    message = listener_pb2.Listener()
    web.body.Unpack(message)
    assert message.address.socket_address.port_value == 10000
    config = hcm_pb2.HttpConnectionManager()
    message.filter_chains[0].filters[0].typed_config.Unpack(config)
    assert config.stat_prefix == "web"
    [backend] = loaded.sections["clusters"]
    assert backend.body.type_url == CLUSTER_TYPE and backend.name == "backend"


def test_missing_section_is_none_and_empty_is_empty(tmp_path: Path) -> None:
    loaded = load_resource_file(write(tmp_path, "listeners: []\n"))
    assert loaded.sections == {
        "listeners": [],
        "clusters": None,
        "routes": None,
        "endpoints": None,
        "secrets": None,
    }
    assert loaded.version is None


def test_json_file_loads(tmp_path: Path) -> None:
    loaded = load_resource_file(write(tmp_path, '{"listeners": [{"name": "a"}]}', "s.json"))
    assert [r.name for r in loaded.sections["listeners"]] == ["a"]


def test_examples_load() -> None:
    for name in ("listeners-v1.yaml", "routes-v2.yaml", "listeners-v2.yaml"):
        loaded = load_resource_file(REPO_ROOT / "examples" / name)
        assert loaded.sections["listeners"] and loaded.sections["routes"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listeners:\n  - name: a\n  - address: {}\n", ":3:5: listeners[1].name: required"),
        (
            "listeners:\n  - name: a\n  - name: a\n",
            ":3:5: listeners[1].name: duplicate name 'a' (first at listeners[0])",
        ),
        (
            "clusters:\n  - name: c\n  - name: c\n",
            ":3:5: clusters[1].name: duplicate name 'c' (first at clusters[0])",
        ),
        ("listeners: [\n", ":2:1: "),
        ("listeners:\n  - name: a\n   bad: indent\n", ":3:"),
        ("runtimes: []\n", ":1:1: runtimes: unknown key"),
        (
            "endpoints:\n  - cluster_name: c\n  - cluster_name: c\n",
            ":3:5: endpoints[1].cluster_name: duplicate name 'c' (first at endpoints[0])",
        ),
        ("endpoints:\n  - endpoints: []\n", ":2:5: endpoints[0].cluster_name: required"),
        ("secrets:\n  - name: s\n  - name: s\n", ":3:5: secrets[1].name: duplicate name 's'"),
        ("secrets:\n  - tls_certificate: {}\n", ":2:5: secrets[0].name: required"),
        ("- a\n", ":1:1: must be a mapping"),
        ("listeners: 3\n", ":1:1: listeners: must be a list"),
        ("listeners:\n  - 3\n", ":2:5: listeners[0]: expected a mapping"),
        (
            "listeners:\n  - name: a\n    filter_chains:\n      - filters:\n"
            "          - name: f\n            typed_config:\n"
            '              "@type": type.googleapis.com/no.such.Type\n',
            ":7:15: listeners[0].filter_chains[0].filters[0].typed_config.@type: "
            "unknown @type 'type.googleapis.com/no.such.Type'",
        ),
        ("listeners:\n  - name: a\n    portt: 1\n", ":2:5: listeners[0]: "),
        (
            "listeners:\n  - name: a\n    address: {socket_address: {port_value: x}}\n",
            ":2:5: listeners[0]: ",
        ),
        (
            "listeners:\n  - '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n",
            ":2:5: listeners[0].@type: expected "
            "type.googleapis.com/envoy.config.listener.v3.Listener",
        ),
    ],
)
def test_refusals_name_file_position_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    assert refusal(tmp_path, text).startswith(expected)


def test_json_syntax_error_has_json_position(tmp_path: Path) -> None:
    assert refusal(tmp_path, '{"listeners": [}', "s.json").startswith(":1:16: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ResourceError, match="cannot read"):
        load_resource_file(tmp_path / "missing.yaml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ResourceError, match="not UTF-8"):
        load_resource_file(path)


def test_type_resolution_imports_on_demand() -> None:
    descriptor = find_message_descriptor(
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    )
    assert descriptor is not None and descriptor.name == "TcpProxy"
    assert find_message_descriptor("type.googleapis.com/envoy.nothing.v3.Nope") is None


# ---------------------------------------------------------------- Python inputs


def test_messages_dicts_and_named_resources_are_accepted() -> None:
    message = listener_pb2.Listener(name="m")
    already = NamedResource(name="n", body=any_pb2.Any(type_url=LISTENER_TYPE, value=b"\n\x01n"))
    encoded = encode_resources([message, {"name": "d"}, already], LISTENER_TYPE, "listeners")
    assert [r.name for r in encoded] == ["m", "d", "n"]
    assert decode_resource(encoded[0]) == message


def test_wrong_message_type_is_refused() -> None:
    with pytest.raises(ResourceError, match=r"^listeners\[0\]: expected"):
        encode_resources([cluster_pb2.Cluster(name="c")], LISTENER_TYPE, "listeners")


def test_data_plane_dataclass_crosses_as_bytes() -> None:
    from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
    from envoy_data_plane.envoy.config.listener.v3 import Listener

    authored = Listener(
        name="typed",
        address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=8080)),
    )
    [encoded] = encode_resources([authored], LISTENER_TYPE, "listeners")
    message = decode_resource(encoded)
    assert message.name == "typed"
    assert message.address.socket_address.port_value == 8080


def test_any_inputs_are_unpacked_and_checked() -> None:
    packed = any_pb2.Any()
    packed.Pack(listener_pb2.Listener(name="packed"))
    [encoded] = encode_resources([packed], LISTENER_TYPE, "listeners")
    assert encoded.name == "packed"
    wrong = any_pb2.Any()
    wrong.Pack(cluster_pb2.Cluster(name="c"))
    with pytest.raises(ResourceError, match=r"^listeners\[0\]: expected .*Cluster"):
        encode_resources([wrong], LISTENER_TYPE, "listeners")
    garbage = any_pb2.Any(type_url=LISTENER_TYPE, value=b"\xff\xff")
    with pytest.raises(ResourceError, match="does not decode"):
        encode_resources([garbage], LISTENER_TYPE, "listeners")


def test_wrong_data_plane_class_is_refused() -> None:
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster

    with pytest.raises(ResourceError, match=r"expected envoy\.config\.listener\.v3\.Listener"):
        encode_resources([Cluster(name="c")], LISTENER_TYPE, "listeners")


def test_duplicates_in_python_input_are_refused() -> None:
    with pytest.raises(ResourceError, match=r"^listeners\[1\]\.name: duplicate name 'a'"):
        encode_resources([{"name": "a"}, {"name": "a"}], LISTENER_TYPE, "listeners")


# ---------------------------------------------------------------- raw


def test_raw_keeps_duplicates_and_missing_names() -> None:
    encoded = encode_resources(
        [{"name": "a"}, {"name": "a"}, {}], LISTENER_TYPE, "listeners", raw=True
    )
    assert [r.name for r in encoded] == ["a", "a", ""]


def test_raw_any_with_arbitrary_bytes() -> None:
    garbage = b"\xff\x00\x01not a listener"
    [resource] = encode_resources(
        [{"@type": LISTENER_TYPE, "value_base64": base64.b64encode(garbage).decode()}],
        LISTENER_TYPE,
        "listeners",
        raw=True,
    )
    assert resource.body.type_url == LISTENER_TYPE
    assert resource.body.value == garbage
    assert resource.name == ""


def test_raw_nested_unknown_type_and_base64_any() -> None:
    inner = base64.b64encode(b"\x08\x01").decode()
    item = {
        "name": "weird",
        "filter_chains": [
            {
                "filters": [
                    {"name": "x", "typed_config": {"@type": "type.googleapis.com/no.such.T"}},
                    {"name": "y", "typed_config": {"@type": HCM, "value_base64": inner}},
                    {"name": "z", "typed_config": {"@type": HCM, "stat_prefix": "z"}},
                ]
            }
        ],
    }
    [resource] = encode_resources([item], LISTENER_TYPE, "listeners", raw=True)
    message = decode_resource(resource)
    filters = message.filter_chains[0].filters
    assert filters[0].typed_config.type_url == "type.googleapis.com/no.such.T"
    assert filters[0].typed_config.value == b""
    assert filters[1].typed_config.value == b"\x08\x01"
    config = hcm_pb2.HttpConnectionManager()
    filters[2].typed_config.Unpack(config)
    assert config.stat_prefix == "z"


def test_raw_wrong_type_is_sent_as_given() -> None:
    [resource] = encode_resources(
        [{"@type": CLUSTER_TYPE, "name": "c"}], LISTENER_TYPE, "listeners", raw=True
    )
    assert resource.body.type_url == CLUSTER_TYPE and resource.name == "c"


def test_raw_bad_address_is_sent() -> None:
    item = {"name": "a", "address": {"socket_address": {"address": "not-an-ip", "port_value": 1}}}
    [resource] = encode_resources([item], LISTENER_TYPE, "listeners", raw=True)
    assert decode_resource(resource).address.socket_address.address == "not-an-ip"


def test_raw_map_of_any_and_well_known_types() -> None:
    item = {
        "name": "a",
        "listener_filters_timeout": "2s",
        "metadata": {
            "typed_filter_metadata": {"k": {"@type": "type.googleapis.com/x.Y", "value_base64": ""}}
        },
    }
    [resource] = encode_resources([item], LISTENER_TYPE, "listeners", raw=True)
    message = decode_resource(resource)
    assert message.listener_filters_timeout.seconds == 2
    assert message.metadata.typed_filter_metadata["k"].type_url == "type.googleapis.com/x.Y"


def test_raw_still_needs_fields_that_exist() -> None:
    with pytest.raises(ResourceError, match=r"listeners\[0\]\.nope: no such field"):
        encode_resources([{"nope": 1}], LISTENER_TYPE, "listeners", raw=True)


def test_raw_bad_base64() -> None:
    with pytest.raises(ResourceError, match="value_base64: not base64"):
        encode_resources(
            [{"@type": LISTENER_TYPE, "value_base64": "!!"}], LISTENER_TYPE, "listeners", raw=True
        )


def test_raw_file_with_duplicates_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  - name: a\n  - name: a\n")
    loaded = load_resource_file(path, raw=True)
    assert [r.name for r in loaded.sections["listeners"]] == ["a", "a"]


def test_load_text_and_format_path() -> None:
    assert load_resource_text("listeners: [{name: a}]\n").sections["listeners"][0].name == "a"
    assert format_path(("listeners", 2, "name")) == "listeners[2].name"
    assert format_path(()) == ""


def test_yaml_keys_stay_text_as_in_envoy() -> None:
    """A struct key `y` or `on` stays a string (YAML 1.1 would make it a boolean)."""
    text = "listeners: [{name: a, metadata: {filter_metadata: {m: {y: 1, on: 2}}}}]\n"
    listener = load_resource_text(text).sections["listeners"][0]
    decoded = listener_pb2.Listener.FromString(listener.body.value)
    assert sorted(decoded.metadata.filter_metadata["m"].fields) == ["on", "y"]
