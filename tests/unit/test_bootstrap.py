"""Bootstrap loading: text -> dict -> xds-protos message, with one-line `FIELD_PATH: reason`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_proxy.bootstrap import (
    check_bootstrap,
    load_bootstrap,
    message_from_dict,
    parse_config_text,
)
from xds_proxy.cli import Options
from xds_proxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "examples" / "bootstrap-static.yaml"
HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def static_doc() -> dict[str, Any]:
    return yaml.safe_load(STATIC.read_text())


def listener_doc(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["static_resources"]["listeners"][0]


def hcm_doc(doc: dict[str, Any]) -> dict[str, Any]:
    return listener_doc(doc)["filter_chains"][0]["filters"][0]["typed_config"]


def load_error(data: Any, cls=bootstrap_pb2.Bootstrap) -> str:
    with pytest.raises(ConfigError) as caught:
        message_from_dict(data, cls)
    return str(caught.value)


def full_error(doc: dict[str, Any]) -> str:
    """The first error of the whole pipeline (parse, PGV, policy) for a bootstrap document."""
    with pytest.raises(ConfigError) as caught:
        check_bootstrap(message_from_dict(doc, bootstrap_pb2.Bootstrap))
    return str(caught.value)


# --- text ------------------------------------------------------------------------------------


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text("admin:\n  address: [\n", "b.yaml", "yaml")
    assert str(caught.value) == (
        "b.yaml: line 3, column 1: expected the node content, but found '<stream end>'"
    )


def test_yaml_mapping_error_position() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text("a: 1\nb: c: d\n", "b.yaml", "yaml")
    assert str(caught.value) == "b.yaml: line 2, column 5: mapping values are not allowed here"


def test_json_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text('{"admin": {\n  "address": }\n}', "b.json", "json")
    assert str(caught.value) == "b.json: line 2, column 14: Expecting value"


def test_duplicate_yaml_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text("node:\n  id: a\n  id: b\n", "b.yaml", "yaml")
    assert str(caught.value) == "b.yaml: line 3, column 3: duplicate key 'id'"


def test_yaml_keys_stay_text_as_in_envoy() -> None:
    """yaml-cpp reads `y`, `n`, `on` and `1` as keys by their text (a json_format with such
    keys is common); only values are typed."""
    data = parse_config_text("fmt: {y: n, on: 1, 1: on}\n", "b.yaml", "yaml")
    assert data == {"fmt": {"y": False, "on": 1, "1": True}}


def test_duplicate_json_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text('{"node": {"id": "a", "id": "b"}}', "b.json", "json")
    assert str(caught.value) == "b.json: duplicate key 'id'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "x: the document is empty"),
        ("# only a comment\n", "x: the document is empty"),
        ("- a\n- b\n", "x: the document must be a mapping, got a list"),
        ("hello", "x: the document must be a mapping, got 'hello'"),
        ("42", "x: the document must be a mapping, got 42"),
    ],
)
def test_document_must_be_a_mapping(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, "x", None)
    assert str(caught.value) == message


def test_unknown_format_tries_json_then_yaml() -> None:
    assert parse_config_text('{"a": 1}', "x", None) == {"a": 1}
    assert parse_config_text("a: 1\nb: [x]\n", "x", None) == {"a": 1, "b": ["x"]}


@pytest.mark.parametrize(
    ("scalar", "value"),
    [
        ("yes", True),
        ("Yes", True),
        ("YES", True),
        ("y", True),
        ("on", True),
        ("true", True),
        ("n", False),
        ("off", False),
        ("False", False),
        ("yEs", "yEs"),
        ("12", 12),
        ("-7", -7),
        ("010", 10),  # decimal, not octal
        ("0x1F", 31),
        ("0o17", "0o17"),
        ("1_000", "1_000"),
        ("1:30", "1:30"),
        ("1e3", "1e3"),  # floats stay strings, as in Envoy
        ("1.5", "1.5"),
        (".inf", ".inf"),
        ("2026-01-01", "2026-01-01"),
        ("~", None),
        ("null", None),
        ("'yes'", "yes"),
        ('"12"', "12"),
    ],
)
def test_yaml_scalars_are_typed_like_envoys_yaml_reader(scalar: str, value: Any) -> None:
    assert parse_config_text(f"a: {scalar}\n", "x", "yaml") == {"a": value}


def test_yaml_typing_through_to_fields() -> None:
    doc = parse_config_text(
        "name: 1e3\naddress: {socket_address: {address: '::1', port_value: 1e3}}\n"
        "enable_reuse_port: yes\n",
        "x",
        "yaml",
    )
    listener = message_from_dict(doc, listener_pb2.Listener)
    assert listener.name == "1e3"
    assert listener.address.socket_address.port_value == 1000
    assert listener.enable_reuse_port.value is True
    assert load_error(parse_config_text("name: yes\n", "x", "yaml"), listener_pb2.Listener) == (
        "name: must be a string, got true"
    )
    assert (
        load_error(
            parse_config_text("per_connection_buffer_limit_bytes: 0o17\n", "x", "yaml"),
            listener_pb2.Listener,
        )
        == "per_connection_buffer_limit_bytes: must be an integer, got '0o17'"
    )
    assert (
        load_error(
            parse_config_text("per_connection_buffer_limit_bytes: 1.5\n", "x", "yaml"),
            listener_pb2.Listener,
        )
        == "per_connection_buffer_limit_bytes: must be an integer, got '1.5'"
    )


# --- dict -> message: accepted forms ----------------------------------------------------------


def test_static_example_loads() -> None:
    bootstrap = message_from_dict(static_doc(), bootstrap_pb2.Bootstrap)
    listener = bootstrap.static_resources.listeners[0]
    assert listener.name == "static_web"
    assert listener.address.socket_address.port_value == 10000
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.stat_prefix == "ingress_http"
    assert (
        listener.filter_chains[0].filters[0].typed_config.type_url
        == "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager"
    )


def to_camel(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            head, *rest = key.split("_")
            camel = head + "".join(part.title() for part in rest) if key != "@type" else key
            out[camel] = to_camel(item)
        return out
    if isinstance(value, list):
        return [to_camel(item) for item in value]
    return value


def test_camel_case_equals_snake_case() -> None:
    snake = message_from_dict(static_doc(), bootstrap_pb2.Bootstrap)
    camel_doc = to_camel(static_doc())
    assert "staticResources" in camel_doc
    assert message_from_dict(camel_doc, bootstrap_pb2.Bootstrap) == snake


def test_json_and_yaml_forms_equal() -> None:
    doc = static_doc()
    from_json = parse_config_text(json.dumps(doc), "x.json", "json")
    assert message_from_dict(from_json, bootstrap_pb2.Bootstrap) == message_from_dict(
        doc, bootstrap_pb2.Bootstrap
    )


def test_well_known_types() -> None:
    doc = {
        "drain_timeout": "2.5s",
        "stat_prefix": "x",
        "common_http_protocol_options": {"idle_timeout": "0s"},
        "max_request_headers_kb": 30,
        "http2_protocol_options": {"max_concurrent_streams": "100"},
        "route_config": {"validate_clusters": False},
    }
    hcm = message_from_dict(doc, hcm_pb2.HttpConnectionManager)
    assert hcm.drain_timeout.ToNanoseconds() == 2_500_000_000
    assert hcm.HasField("common_http_protocol_options")
    assert hcm.common_http_protocol_options.HasField("idle_timeout")
    assert hcm.max_request_headers_kb.value == 30
    assert hcm.http2_protocol_options.max_concurrent_streams.value == 100
    assert hcm.route_config.HasField("validate_clusters")  # a false BoolValue is still set
    assert hcm.route_config.validate_clusters.value is False


def test_enums_by_name_and_number() -> None:
    by_name = message_from_dict({"codec_type": "HTTP1"}, hcm_pb2.HttpConnectionManager)
    by_number = message_from_dict({"codec_type": 1}, hcm_pb2.HttpConnectionManager)
    assert by_name.codec_type == by_number.codec_type == hcm_pb2.HttpConnectionManager.HTTP1


def test_integers_as_strings_and_integral_floats() -> None:
    address = message_from_dict({"address": "::1", "port_value": "8080"}, address_pb2.SocketAddress)
    assert address.port_value == 8080
    assert message_from_dict({"port_value": 80.0}, address_pb2.SocketAddress).port_value == 80


def test_null_leaves_the_default() -> None:
    address = message_from_dict({"address": None, "port_value": 1}, address_pb2.SocketAddress)
    assert address.address == ""


def test_empty_mapping_sets_a_sub_message() -> None:
    listener = message_from_dict({"address": {}}, listener_pb2.Listener)
    assert listener.HasField("address")


def test_maps_structs_and_bytes() -> None:
    doc = {"metadata": {"filter_metadata": {"a": {"k": [1, "x"]}}}, "name": "l"}
    listener = message_from_dict(doc, listener_pb2.Listener)
    assert listener.metadata.filter_metadata["a"]["k"][1] == "x"
    assert message_from_dict({"inline_bytes": "aGVsbG8="}, base_pb2.DataSource).inline_bytes == (
        b"hello"
    )
    assert load_error({"inline_bytes": "%%%"}, base_pb2.DataSource) == (
        "inline_bytes: must be a base64 string, got '%%%'"
    )


def test_any_of_a_type_outside_the_registry_is_resolved() -> None:
    doc = {
        "name": "x",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
    }
    msg = message_from_dict(doc, hcm_pb2.HttpFilter)
    assert msg.typed_config.type_url.endswith("envoy.extensions.filters.http.cors.v3.Cors")


# --- dict -> message: errors with paths -------------------------------------------------------

SOCKET = "static_resources.listeners[0].address.socket_address"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(
                port_value=70_000_000_000
            ),
            f"{SOCKET}.port_value: out of range for uint32 [0, 4294967295], got 70000000000",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(port_value=-1),
            f"{SOCKET}.port_value: out of range for uint32 [0, 4294967295], got -1",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(port_value="abc"),
            f"{SOCKET}.port_value: must be an integer, got 'abc'",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(port_value=True),
            f"{SOCKET}.port_value: must be an integer, got true",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(port_value=1.5),
            f"{SOCKET}.port_value: must be an integer, got 1.5",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(address=127),
            f"{SOCKET}.address: must be a string, got 127",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(prot=1),
            f"{SOCKET}.prot: unknown field",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(port_valeu=1),
            f"{SOCKET}.port_valeu: unknown field (did you mean 'port_value'?)",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(portValue=1),
            f"{SOCKET}.port_value: given twice (as 'port_value' and 'portValue')",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(protocol="SCTP"),
            f"{SOCKET}.protocol: unknown value 'SCTP' (expected one of TCP, UDP)",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(protocol=True),
            f"{SOCKET}.protocol: must be an enum name, got true",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(named_port="http"),
            "static_resources.listeners[0].address.socket_address: only one of 'port_value' and"
            " 'named_port' may be set (oneof 'port_specifier')",
        ),
        (
            lambda d: listener_doc(d).update(address="127.0.0.1:80"),
            "static_resources.listeners[0].address: must be a mapping, got '127.0.0.1:80'",
        ),
        (
            lambda d: listener_doc(d).update(filter_chains={"filters": []}),
            "static_resources.listeners[0].filter_chains: must be a list, got a mapping",
        ),
        (
            lambda d: listener_doc(d).update(filter_chains=[None]),
            "static_resources.listeners[0].filter_chains[0]: must not be null",
        ),
        (
            lambda d: hcm_doc(d).update(drain_timeout=5),
            f"{HCM_PATH}.drain_timeout: must be a string like '1.5s', got 5",
        ),
        (
            lambda d: hcm_doc(d).update(drain_timeout="5"),
            f"{HCM_PATH}.drain_timeout: must be a string like '1.5s', got '5'",
        ),
        (
            lambda d: hcm_doc(d).update(drain_timeout="5m"),
            f"{HCM_PATH}.drain_timeout: must be a string like '1.5s', got '5m'",
        ),
        (
            lambda d: hcm_doc(d).update(drain_timeout="5s\n"),
            f"{HCM_PATH}.drain_timeout: must be a string like '1.5s', got '5s\\n'",
        ),
        (
            lambda d: hcm_doc(d).update(max_request_headers_kb="1e1\n"),
            f"{HCM_PATH}.max_request_headers_kb: must be an integer, got '1e1\\n'",
        ),
        (
            lambda d: hcm_doc(d).update({"bad\nkey": 1}),
            f"{HCM_PATH}.'bad\\nkey': unknown field",
        ),
        (
            lambda d: hcm_doc(d).update(max_request_headers_kb="x"),
            f"{HCM_PATH}.max_request_headers_kb: must be an integer, got 'x'",
        ),
        (
            lambda d: hcm_doc(d).update(foo=1),
            f"{HCM_PATH}.foo: unknown field",
        ),
        (
            lambda d: hcm_doc(d).update({"@type": "type.googleapis.com/no.such.Type"}),
            f"{HCM_PATH}: unknown @type 'type.googleapis.com/no.such.Type'",
        ),
        (
            lambda d: hcm_doc(d).update({"@type": "HttpConnectionManager"}),
            f"{HCM_PATH}: @type must look like 'type.googleapis.com/NAME', got"
            " 'HttpConnectionManager'",
        ),
        (
            lambda d: hcm_doc(d).pop("@type"),
            f"{HCM_PATH}: @type is required",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0].update(domains="*"),
            f"{HCM_PATH}.route_config.virtual_hosts[0].domains: must be a list, got '*'",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0].update(domains=[1]),
            f"{HCM_PATH}.route_config.virtual_hosts[0].domains[0]: must be a string, got 1",
        ),
        (
            lambda d: d["admin"].update(access_log=[{"name": 1}]),
            "admin.access_log[0].name: must be a string, got 1",
        ),
        (
            lambda d: d.update(node={"id": "a", "metadata": "x"}),
            "node.metadata: must be a mapping, got 'x'",
        ),
        (
            lambda d: d.update(stats_flush_on_admin="yes"),
            "stats_flush_on_admin: must be true or false, got 'yes'",
        ),
    ],
)
def test_load_errors_name_the_field(mutate, message: str) -> None:
    doc = copy.deepcopy(static_doc())
    mutate(doc)
    assert load_error(doc) == message


def test_status_as_string_is_accepted_like_protobuf_json() -> None:
    doc = static_doc()
    hcm_doc(doc)["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["status"] = (
        "200"
    )
    bootstrap = message_from_dict(doc, bootstrap_pb2.Bootstrap)
    assert bootstrap.static_resources.listeners[0].name == "static_web"


def test_any_wrapping_a_well_known_type_takes_value() -> None:
    doc = {"node": {"id": "a"}, "admin": {}}
    msg = message_from_dict(doc, bootstrap_pb2.Bootstrap)
    assert msg.node.id == "a"
    error = load_error(
        {
            "name": "x",
            "typed_config": {
                "@type": "type.googleapis.com/google.protobuf.Duration",
                "seconds": 1,
            },
        },
        hcm_pb2.HttpFilter,
    )
    assert error == "typed_config: @type 'google.protobuf.Duration' takes its content under 'value'"


def test_map_values_have_quoted_key_paths() -> None:
    doc = {
        "static_resources": {
            "clusters": [
                {
                    "name": "c",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                            "HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {"x": 1}},
                        }
                    },
                }
            ]
        }
    }
    assert load_error(doc) == (
        "static_resources.clusters[0].typed_extension_protocol_options"
        "['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']"
        ".explicit_http_config.http2_protocol_options.x: unknown field"
    )


# --- the whole pipeline: PGV rules, supported fields ------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(port_value=70000),
            f"{SOCKET}.port_value: must be <= 65535, got 70000",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].pop("address"),
            f"{SOCKET}.address: must not be empty",
        ),
        (
            lambda d: listener_doc(d)["address"].pop("socket_address"),
            "static_resources.listeners[0].address: one of socket_address, pipe,"
            " envoy_internal_address is required",
        ),
        (
            lambda d: listener_doc(d)["filter_chains"][0]["filters"][0].update(name=""),
            "static_resources.listeners[0].filter_chains[0].filters[0].name: must not be empty",
        ),
        (
            lambda d: hcm_doc(d).update(stat_prefix=""),
            f"{HCM_PATH}.stat_prefix: must not be empty",
        ),
        (
            lambda d: hcm_doc(d).update(codec_type=9),
            f"{HCM_PATH}.codec_type: must be a defined value of CodecType, got 9",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0].update(domains=[]),
            f"{HCM_PATH}.route_config.virtual_hosts[0].domains: must have at least 1 item, got 0",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0]["routes"][0][
                "direct_response"
            ].update(status=99),
            f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].direct_response.status: "
            "must be >= 200, got 99",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0]["routes"][0].update(match={}),
            f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].match: one of prefix, path,"
            " safe_regex, connect_matcher, path_separated_prefix, path_match_policy is required",
        ),
        (
            lambda d: hcm_doc(d).update(max_request_headers_kb=9000),
            f"{HCM_PATH}.max_request_headers_kb: must be <= 8192, got 9000",
        ),
        (
            lambda d: hcm_doc(d).update(http2_protocol_options={"max_concurrent_streams": 0}),
            f"{HCM_PATH}.http2_protocol_options.max_concurrent_streams: must be >= 1, got 0",
        ),
        # supported-fields policy
        (
            lambda d: hcm_doc(d).update(via="proxy"),
            f"{HCM_PATH}.via: not supported",
        ),
        (
            lambda d: hcm_doc(d).update(codec_type="HTTP3"),
            f"{HCM_PATH}.codec_type: HTTP3 not supported",
        ),
        (
            lambda d: listener_doc(d).update(freebind=True),
            "static_resources.listeners[0].freebind: not supported",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(protocol="UDP"),
            f"{SOCKET}.protocol: UDP not supported",
        ),
        (
            lambda d: listener_doc(d)["filter_chains"][0].update(
                transport_socket={"name": "envoy.transport_sockets.tls"}
            ),
            "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config: "
            "is required",
        ),
        (
            lambda d: listener_doc(d)["filter_chains"][0]["filters"][0].update(
                typed_config={
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                }
            ),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: @type "
            "'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' not supported",
        ),
        (
            lambda d: listener_doc(d)["filter_chains"][0]["filters"][0].pop("typed_config"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config: is required",
        ),
        (
            lambda d: hcm_doc(d)["http_filters"].insert(
                0,
                {
                    "name": "cors",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
                    },
                },
            ),
            f"{HCM_PATH}.http_filters[0].typed_config: @type "
            "'type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors' not supported",
        ),
        (
            lambda d: hcm_doc(d)["http_filters"][0].update(
                typed_config={
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "start_child_span": True,
                }
            ),
            f"{HCM_PATH}.http_filters[0].typed_config.start_child_span: not supported",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0]["routes"][0]["match"].update(
                grpc={}
            ),
            f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].match.grpc: not supported",
        ),
        (
            lambda d: hcm_doc(d)["route_config"]["virtual_hosts"][0]["routes"][0][
                "direct_response"
            ].update(body={"watched_directory": {"path": "/tmp"}, "inline_string": "x"}),
            f"{HCM_PATH}.route_config.virtual_hosts[0].routes[0].direct_response.body"
            ".watched_directory: not supported",
        ),
        (
            lambda d: d.update(cluster_manager={"local_cluster_name": "x"}),
            "cluster_manager: not supported",
        ),
        (
            lambda d: d["admin"].update(profile_path="/tmp/p"),
            "admin.profile_path: not supported",
        ),
        (
            lambda d: d["static_resources"]["listeners"].append(copy.deepcopy(listener_doc(d))),
            "static_resources.listeners[1].name: duplicate name 'static_web'",
        ),
    ],
)
def test_bootstrap_errors(mutate, message: str) -> None:
    doc = copy.deepcopy(static_doc())
    mutate(doc)
    assert full_error(doc) == message


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: listener_doc(d).pop("address"),
            "static_resources.listeners[0].address: is required",
        ),
        (
            lambda d: listener_doc(d).update(filter_chains=[]),
            "static_resources.listeners[0].filter_chains: must have at least 1 item, got 0",
        ),
        (
            lambda d: listener_doc(d)["address"]["socket_address"].update(address="localhost"),
            f"{SOCKET}.address: must be an IP address, got 'localhost'",
        ),
        (
            lambda d: d["static_resources"]["listeners"].append(
                {**copy.deepcopy(listener_doc(d)), "name": "other"}
            ),
            "static_resources.listeners[1].address: duplicate address '127.0.0.1:10000'"
            " (listener 'static_web')",
        ),
    ],
)
def test_listener_semantics(mutate, message: str) -> None:
    doc = copy.deepcopy(static_doc())
    mutate(doc)
    assert full_error(doc) == message


def test_port_zero_listeners_may_share_an_address() -> None:
    doc = static_doc()
    listener_doc(doc)["address"]["socket_address"]["port_value"] = 0
    doc["static_resources"]["listeners"].append({**copy.deepcopy(listener_doc(doc)), "name": "b"})
    assert check_bootstrap(message_from_dict(doc, bootstrap_pb2.Bootstrap)) == []


def test_ipv6_duplicate_address_is_bracketed() -> None:
    doc = static_doc()
    listener_doc(doc)["address"]["socket_address"]["address"] = "::1"
    doc["static_resources"]["listeners"].append({**copy.deepcopy(listener_doc(doc)), "name": "b"})
    assert full_error(doc) == (
        "static_resources.listeners[1].address: duplicate address '[::1]:10000' "
        "(listener 'static_web')"
    )


def test_static_cluster_endpoints_are_ip_literals() -> None:
    doc = lds_doc()
    cluster = doc["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["address"] = "xds.example"
    assert full_error(doc) == (
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint"
        ".address.socket_address.address: must be an IP address, got 'xds.example'"
    )
    cluster["type"] = "STRICT_DNS"
    assert check_bootstrap(message_from_dict(doc, bootstrap_pb2.Bootstrap)) == []


def test_router_as_optional_unknown_filter_is_skipped() -> None:
    doc = static_doc()
    hcm_doc(doc)["http_filters"].insert(
        0,
        {
            "name": "cors",
            "is_optional": True,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
            },
        },
    )
    assert check_bootstrap(message_from_dict(doc, bootstrap_pb2.Bootstrap)) == []


def test_inert_sections_give_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    doc = static_doc()
    doc["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {"a": 1}}]}
    doc["stats_config"] = {"use_all_default_tags": False}
    doc["admin"]["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                "FileAccessLog",
                "path": "/dev/null",
            },
        }
    ]
    with caplog.at_level("WARNING"):
        warnings = check_bootstrap(message_from_dict(doc, bootstrap_pb2.Bootstrap))
    assert warnings == [
        "admin.access_log, stats_config, layered_runtime: accepted and ignored"
        " (no effect in xds-proxy)"
    ]
    assert [r.getMessage() for r in caplog.records] == warnings


# --- xDS sections -----------------------------------------------------------------------------


def lds_doc(ads: bool = False) -> dict[str, Any]:
    name = "bootstrap-ads.yaml" if ads else "bootstrap.yaml"
    return yaml.safe_load((REPO / "examples" / name).read_text())


@pytest.mark.parametrize("ads", [False, True])
def test_lds_examples_pass(ads: bool) -> None:
    assert check_bootstrap(message_from_dict(lds_doc(ads), bootstrap_pb2.Bootstrap)) == []


SOURCE = "dynamic_resources.lds_config.api_config_source"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["dynamic_resources"]["lds_config"]["api_config_source"]["grpc_services"][0][
                "envoy_grpc"
            ].update(cluster_name="nope"),
            f"{SOURCE}.grpc_services[0].envoy_grpc.cluster_name: unknown cluster 'nope'"
            " (not in static_resources.clusters)",
        ),
        (
            lambda d: d["dynamic_resources"]["lds_config"]["api_config_source"].update(
                api_type="AGGREGATED_GRPC"
            ),
            f"{SOURCE}.api_type: AGGREGATED_GRPC not supported",
        ),
        (
            lambda d: d["dynamic_resources"]["lds_config"]["api_config_source"].update(
                api_type="REST", cluster_names=["nope"], grpc_services=[]
            ),
            f"{SOURCE}.cluster_names: unknown cluster 'nope' (not in static_resources.clusters)",
        ),
        (
            lambda d: d["dynamic_resources"]["lds_config"]["api_config_source"].update(
                api_type="REST", rate_limit_settings={}
            ),
            f"{SOURCE}.rate_limit_settings: not supported yet",
        ),
        (
            lambda d: d["dynamic_resources"]["lds_config"]["api_config_source"].update(
                grpc_services=[]
            ),
            f"{SOURCE}.grpc_services: must have exactly 1 item, got 0",
        ),
        (
            lambda d: d["dynamic_resources"]["lds_config"]["api_config_source"].update(
                api_type="FOO"
            ),
            f"{SOURCE}.api_type: unknown value 'FOO' (expected one of "
            "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE, REST, GRPC, DELTA_GRPC, AGGREGATED_GRPC,"
            " AGGREGATED_DELTA_GRPC)",
        ),
        (
            lambda d: d["dynamic_resources"]["lds_config"].pop("api_config_source"),
            "dynamic_resources.lds_config: one of path, path_config_source, api_config_source,"
            " ads, self is required",
        ),
        (
            lambda d: d["static_resources"]["clusters"][0].update(type="EDS"),
            "static_resources.clusters[0].eds_cluster_config: cannot create an EDS cluster"
            " without an EDS config",
        ),
        (
            lambda d: d["static_resources"]["clusters"][0].update(
                type="EDS", eds_cluster_config={"eds_config": {"ads": {}}}
            ),
            "static_resources.clusters[0].eds_cluster_config.eds_config.ads: needs"
            " dynamic_resources.ads_config",
        ),
        (
            lambda d: d["static_resources"]["clusters"][0].update(
                close_connections_on_host_health_failure=True
            ),
            "static_resources.clusters[0].close_connections_on_host_health_failure: not supported",
        ),
        (
            lambda d: d["static_resources"]["clusters"][0].update(connect_timeout="0s"),
            "static_resources.clusters[0].connect_timeout: must be > 0s, got 0s",
        ),
        (
            lambda d: d["static_resources"]["clusters"][0].update(name=""),
            "static_resources.clusters[0].name: must not be empty",
        ),
        (
            lambda d: d["static_resources"]["clusters"][0].update(
                original_dst_lb_config={"metadata_key": {"key": "k", "path": [{"key": "a"}]}}
            ),
            "static_resources.clusters[0].original_dst_lb_config.metadata_key: not supported yet",
        ),
        (
            lambda d: d["static_resources"]["clusters"].append(
                copy.deepcopy(d["static_resources"]["clusters"][0])
            ),
            "static_resources.clusters[1].name: duplicate name 'xds_cluster'",
        ),
    ],
)
def test_xds_errors(mutate, message: str) -> None:
    doc = copy.deepcopy(lds_doc())
    mutate(doc)
    assert full_error(doc) == message


def test_lds_over_ads_needs_ads_config() -> None:
    doc = lds_doc(ads=True)
    del doc["dynamic_resources"]["ads_config"]
    assert full_error(doc) == "dynamic_resources.lds_config.ads: needs dynamic_resources.ads_config"


# --- load_bootstrap (files, --config-yaml merge, overrides) -----------------------------------


def test_load_file(tmp_path: Path) -> None:
    bootstrap = load_bootstrap(Options(config_path=str(STATIC)))
    assert bootstrap.static_resources.listeners[0].name == "static_web"


def test_json_file_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(static_doc()))
    assert load_bootstrap(Options(config_path=str(path))) == load_bootstrap(
        Options(config_path=str(STATIC))
    )


def test_unknown_extension_tries_both(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.conf"
    path.write_text(STATIC.read_text())
    assert load_bootstrap(Options(config_path=str(path))).static_resources.listeners


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(Options(config_path=str(path)))
    assert str(caught.value) == f"{path}: cannot read: no such file"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(Options(config_path=str(tmp_path)))
    assert str(caught.value) == f"{tmp_path}: cannot read: Is a directory"


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_bytes(b"node:\n  id: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(Options(config_path=str(path)))
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 12)"


def test_no_config_at_all() -> None:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(Options())
    assert str(caught.value) == "--config-path: required unless --config-yaml is given"


def test_config_yaml_alone() -> None:
    bootstrap = load_bootstrap(Options(config_yaml="node: {id: a, cluster: b}"))
    assert (bootstrap.node.id, bootstrap.node.cluster) == ("a", "b")


def test_config_yaml_merges_over_the_file() -> None:
    overlay = (
        "node: {id: n2}\n"
        "admin: {address: {socket_address: {port_value: 0}}}\n"
        "static_resources:\n"
        "  listeners:\n"
        "  - name: second\n"
        "    address: {socket_address: {address: 127.0.0.1, port_value: 10001}}\n"
        "    default_filter_chain: {filters: [{name: d, typed_config: {'@type': "
        "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config}}]}\n"
    )
    bootstrap = load_bootstrap(Options(config_path=str(STATIC), config_yaml=overlay))
    # scalars replace, sub-messages merge, repeated fields append
    assert bootstrap.admin.address.socket_address.port_value == 0
    assert bootstrap.admin.address.socket_address.address == "127.0.0.1"
    assert [lst.name for lst in bootstrap.static_resources.listeners] == ["static_web", "second"]
    assert bootstrap.node.id == "n2"


def test_config_yaml_errors_say_so() -> None:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(Options(config_path=str(STATIC), config_yaml="admin: {foo: 1}"))
    assert str(caught.value) == "--config-yaml: admin.foo: unknown field"
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(Options(config_yaml="admin: [\n"))
    assert str(caught.value) == (
        "--config-yaml: line 2, column 1: expected the node content, but found '<stream end>'"
    )


def test_service_node_and_cluster_override() -> None:
    bootstrap = load_bootstrap(
        Options(
            config_path=str(REPO / "examples" / "bootstrap.yaml"),
            service_node="n9",
            service_cluster="c9",
        )
    )
    assert (bootstrap.node.id, bootstrap.node.cluster) == ("n9", "c9")


def test_merged_result_is_validated() -> None:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(
            Options(
                config_path=str(STATIC),
                config_yaml="static_resources: {listeners: [{name: static_web}]}",
            )
        )
    assert str(caught.value) == "static_resources.listeners[1].address: is required"
