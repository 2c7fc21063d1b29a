"""The PGV walker: rules read from the xds-protos descriptors, errors as `path: reason`."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, duration_pb2
from validate import validate_pb2

from xds_proxy.config import pgv as validation
from xds_proxy.config.pgv import map_key_path, validate_message


def listener_with(hcm: hcm_pb2.HttpConnectionManager) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name="l")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = 0
    chain = listener.filter_chains.add()
    chain.filters.add(name="hcm").typed_config.Pack(hcm)
    return listener


def good_hcm() -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="x")
    vhost = hcm.route_config.virtual_hosts.add(name="v", domains=["*"])
    route = vhost.routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    return hcm


def test_valid_listener_has_no_errors() -> None:
    assert validate_message(listener_with(good_hcm())) == []


def test_path_prefix_is_used() -> None:
    address = address_pb2.SocketAddress(address="", port_value=1)
    assert validate_message(address, "listeners[3].address.socket_address") == [
        "listeners[3].address.socket_address.address: must not be empty"
    ]


def test_uint32_lte() -> None:
    address = address_pb2.SocketAddress(address="::", port_value=65536)
    assert validate_message(address) == ["port_value: must be <= 65535, got 65536"]
    address.port_value = 65535
    assert validate_message(address) == []


def test_required_oneof_at_root_and_below() -> None:
    assert validate_message(address_pb2.Address()) == [
        "(root): one of socket_address, pipe, envoy_internal_address is required"
    ]
    listener = listener_pb2.Listener(name="l")
    listener.address.SetInParent()
    assert validate_message(listener) == [
        "address: one of socket_address, pipe, envoy_internal_address is required"
    ]


def test_rules_inside_an_unset_oneof_member_do_not_apply() -> None:
    match = route_components_pb2.RouteMatch(prefix="/")
    assert validate_message(match) == []  # safe_regex is required only when chosen


def test_errors_inside_any_continue_the_path() -> None:
    hcm = good_hcm()
    hcm.stat_prefix = ""
    hcm.route_config.virtual_hosts[0].ClearField("domains")
    hcm.route_config.virtual_hosts[0].routes[0].direct_response.status = 600
    assert validate_message(listener_with(hcm), "listeners[0]") == [
        "listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix: must not be empty",
        "listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
        ".domains: must have at least 1 item, got 0",
        "listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]"
        ".routes[0].direct_response.status: must be < 600, got 600",
    ]


def test_any_that_does_not_decode() -> None:
    listener = listener_with(good_hcm())
    listener.filter_chains[0].filters[0].typed_config.value = b"\xff\xff\xff"
    assert validate_message(listener) == [
        "filter_chains[0].filters[0].typed_config: cannot decode the value of @type "
        "'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager'"
    ]


def test_any_of_an_unregistered_type_is_not_opened() -> None:
    listener = listener_with(good_hcm())
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(
        any_pb2.Any(type_url="type.googleapis.com/x.Y", value=b"\xff")
    )
    assert validate_message(listener) == []


def test_enum_defined_only() -> None:
    cluster = cluster_pb2.Cluster(name="c")
    cluster.type = 42
    assert validate_message(cluster) == ["type: must be a defined value of DiscoveryType, got 42"]


def test_duration_gt() -> None:
    cluster = cluster_pb2.Cluster(name="c")
    cluster.connect_timeout.FromMilliseconds(0)
    assert validate_message(cluster) == ["connect_timeout: must be > 0s, got 0s"]
    cluster.connect_timeout.FromMilliseconds(1)
    assert validate_message(cluster) == []


def test_wrapper_rules_apply_to_the_value() -> None:
    options = protocol_pb2.Http2ProtocolOptions()
    options.max_concurrent_streams.value = 0
    assert validate_message(options) == ["max_concurrent_streams: must be >= 1, got 0"]
    options.max_concurrent_streams.value = 2**31
    assert validate_message(options) == [
        "max_concurrent_streams: must be <= 2147483647, got 2147483648"
    ]
    options.ClearField("max_concurrent_streams")
    assert validate_message(options) == []


def test_header_name_well_known_regex() -> None:
    # Envoy's rule here is the loose form (strict: false): no NUL, CR or LF
    matcher = route_components_pb2.HeaderMatcher(name="bad\nheader", present_match=True)
    assert validate_message(matcher) == [
        "name: must be a valid HTTP header name, got 'bad\\nheader'"
    ]
    assert validate_message(route_components_pb2.HeaderMatcher(name="a b")) == []
    assert validate_message(route_components_pb2.HeaderMatcher(name="")) == [
        "name: must not be empty"
    ]


def test_repeated_items_rules() -> None:
    match = listener_components_pb2.FilterChainMatch()
    match.source_ports.extend([80, 70000, 0])
    assert validate_message(match) == [
        "source_ports[1]: must be <= 65535, got 70000",
        "source_ports[2]: must be >= 1, got 0",
    ]


def test_message_required() -> None:
    source = config_source_pb2.ApiConfigSource(api_type=config_source_pb2.ApiConfigSource.GRPC)
    service = source.grpc_services.add()
    service.envoy_grpc.cluster_name = ""
    assert validate_message(source) == [
        "grpc_services[0].envoy_grpc.cluster_name: must not be empty"
    ]


def test_data_source_lengths() -> None:
    assert validate_message(base_pb2.DataSource(filename="")) == ["filename: must not be empty"]
    assert validate_message(base_pb2.DataSource(inline_string="")) == []
    assert validate_message(base_pb2.DataSource()) == [
        "(root): one of filename, inline_bytes, inline_string, environment_variable is required"
    ]


def test_nested_messages_without_rules_are_walked_when_below_has_rules() -> None:
    listener = listener_with(good_hcm())
    listener.filter_chains[0].filter_chain_match.prefix_ranges.add(
        address_prefix="10.0.0.0"
    ).prefix_len.value = 129
    assert validate_message(listener) == [
        "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len: must be <= 128, got 129"
    ]


def test_map_key_path() -> None:
    assert map_key_path("a.b", "k.x") == "a.b['k.x']"
    assert map_key_path("a", 3) == "a[3]"


# --- compiled rules, checked directly (exotic rules that no Envoy field uses) ------------------


def checks(kind: str, rules) -> list:
    descriptor = address_pb2.SocketAddress.DESCRIPTOR.fields_by_name["protocol"]
    return validation._compile(kind, rules, descriptor)


def reasons(kind: str, rules, value) -> list[str]:
    return [r for r in (check(value) for check in checks(kind, rules)) if r is not None]


@pytest.mark.parametrize(
    ("rules", "value", "expected"),
    [
        (validate_pb2.UInt32Rules(lt=5), 5, ["must be < 5, got 5"]),
        (validate_pb2.UInt32Rules(lt=5), 4, []),
        (validate_pb2.UInt32Rules(gt=5), 5, ["must be > 5, got 5"]),
        (validate_pb2.UInt32Rules(gte=5), 4, ["must be >= 5, got 4"]),
        (validate_pb2.UInt32Rules(const=3), 4, ["must equal 3, got 4"]),
        (validate_pb2.UInt32Rules(const=0), 0, []),
        (validate_pb2.UInt32Rules(const=0), 1, ["must equal 0, got 1"]),
        (validate_pb2.UInt32Rules(gte=1, lte=3), 2, []),
        (validate_pb2.UInt32Rules(gte=1, lte=3), 4, ["must be <= 3, got 4"]),
        (validate_pb2.UInt32Rules(gte=1, lte=3), 0, ["must be >= 1, got 0"]),
        # PGV exclusive range: gt above lt means "outside"
        (validate_pb2.UInt32Rules(gt=10, lt=5), 7, ["must be > 10 or < 5, got 7"]),
        (validate_pb2.UInt32Rules(gt=10, lt=5), 11, []),
        (validate_pb2.UInt32Rules(gt=10, lt=5), 4, []),
        (validate_pb2.Int64Rules(**{"in": [1, 2]}), 3, ["must be one of [1, 2], got 3"]),
        (validate_pb2.Int64Rules(not_in=[1, 2]), 2, ["must not be one of [1, 2]"]),
        (validate_pb2.DoubleRules(gt=0.5), 0.5, ["must be > 0.5, got 0.5"]),
    ],
)
def test_numeric_rules(rules, value, expected) -> None:
    kind = {"UInt32Rules": "uint32", "Int64Rules": "int64", "DoubleRules": "double"}[
        type(rules).__name__
    ]
    assert reasons(kind, rules, value) == expected


@pytest.mark.parametrize(
    ("rules", "value", "expected"),
    [
        (validate_pb2.StringRules(min_len=1), "", ["must not be empty"]),
        (validate_pb2.StringRules(min_len=3), "ab", ["must be at least 3 characters long, got 2"]),
        (validate_pb2.StringRules(max_len=2), "abc", ["must be at most 2 characters long, got 3"]),
        (validate_pb2.StringRules(len=2), "abc", ["must be exactly 2 characters long, got 3"]),
        (validate_pb2.StringRules(max_bytes=2), "éé", ["must be at most 2 bytes long, got 4"]),
        (validate_pb2.StringRules(max_len=2), "éé", []),
        (validate_pb2.StringRules(min_len=0, max_bytes=5), "", []),
        (validate_pb2.StringRules(prefix="/"), "a", ["must start with '/', got 'a'"]),
        (validate_pb2.StringRules(suffix="s"), "a", ["must end with 's', got 'a'"]),
        (validate_pb2.StringRules(contains="x"), "a", ["must contain 'x', got 'a'"]),
        (validate_pb2.StringRules(not_contains="a"), "a", ["must not contain 'a', got 'a'"]),
        (
            validate_pb2.StringRules(pattern="^[a-z]+$"),
            "A",
            ["must match the pattern '^[a-z]+$', got 'A'"],
        ),
        (
            validate_pb2.StringRules(**{"in": ["a", "b"]}),
            "c",
            ["must be one of ['a', 'b'], got 'c'"],
        ),
        (validate_pb2.StringRules(const="a"), "b", ["must equal 'a', got 'b'"]),
        (validate_pb2.StringRules(hostname=True), "a.example.com", []),
        (validate_pb2.StringRules(hostname=True), "-a.com", ["must be a hostname, got '-a.com'"]),
        (
            validate_pb2.StringRules(hostname=True),
            "a.com\n",
            ["must be a hostname, got 'a.com\\n'"],
        ),
        (validate_pb2.StringRules(ip=True), "::1", []),
        (validate_pb2.StringRules(ipv4=True), "::1", ["must be an IPv4 address, got '::1'"]),
        (
            validate_pb2.StringRules(ipv6=True),
            "1.2.3.4",
            ["must be an IPv6 address, got '1.2.3.4'"],
        ),
        (validate_pb2.StringRules(address=True), "host-1", []),
        (
            validate_pb2.StringRules(address=True),
            "a b",
            ["must be a hostname or IP address, got 'a b'"],
        ),
        (validate_pb2.StringRules(uri=True), "/x", ["must be an absolute URI, got '/x'"]),
        (validate_pb2.StringRules(uri=True), "http://x/y", []),
        (
            validate_pb2.StringRules(well_known_regex=validate_pb2.HTTP_HEADER_VALUE),
            "a\nb",
            ["must be a valid HTTP header value, got 'a\\nb'"],
        ),
        (
            validate_pb2.StringRules(well_known_regex=validate_pb2.HTTP_HEADER_VALUE),
            "ab\n",
            ["must be a valid HTTP header value, got 'ab\\n'"],
        ),
        (
            validate_pb2.StringRules(well_known_regex=validate_pb2.HTTP_HEADER_VALUE, strict=False),
            "a\tb\x01",
            [],
        ),
        (
            validate_pb2.StringRules(well_known_regex=validate_pb2.HTTP_HEADER_NAME, strict=False),
            "a\rb",
            ["must be a valid HTTP header name, got 'a\\rb'"],
        ),
    ],
)
def test_string_rules(rules, value, expected) -> None:
    assert reasons("string", rules, value) == expected


def test_duration_rules() -> None:
    rules = validate_pb2.DurationRules()
    rules.lte.FromMilliseconds(1500)
    rules.gte.FromMilliseconds(1)
    assert reasons("duration", rules, duration_pb2.Duration(seconds=2)) == [
        "must be <= 1.500s, got 2s"
    ]
    assert reasons("duration", rules, duration_pb2.Duration(nanos=1_000_000)) == []
    assert reasons("duration", rules, duration_pb2.Duration()) == ["must be >= 0.001s, got 0s"]


def test_any_rules() -> None:
    rules = validate_pb2.AnyRules(**{"in": ["type.googleapis.com/a.B"]})
    assert reasons("any", rules, any_pb2.Any(type_url="type.googleapis.com/c.D")) == [
        "@type must be one of [type.googleapis.com/a.B]"
    ]


def test_bytes_rules() -> None:
    assert reasons("bytes", validate_pb2.BytesRules(min_len=2), b"a") == [
        "must be at least 2 bytes long, got 1"
    ]
    assert reasons("bytes", validate_pb2.BytesRules(ipv4=True), b"abcd") == []
    assert reasons("bytes", validate_pb2.BytesRules(ipv4=True), b"abc") == [
        "must be ipv4 address bytes"
    ]


def test_enum_rules_show_names() -> None:
    rules = validate_pb2.EnumRules(not_in=[1])
    assert reasons("enum", rules, 1) == ["must not be one of [UDP]"]
    assert reasons("enum", validate_pb2.EnumRules(defined_only=True), 7) == [
        "must be a defined value of Protocol, got 7"
    ]


def test_rules_are_compiled_once_per_message_type() -> None:
    """LDS may deliver thousands of listeners: plans are built once and reused."""
    listener = listener_with(good_hcm())
    validate_message(listener)
    plan = validation._plans["envoy.config.listener.v3.Listener"]
    assert validate_message(listener) == []
    assert validation._plans["envoy.config.listener.v3.Listener"] is plan


def test_required_wrapper_and_duration_fields() -> None:
    from envoy.config.core.v3 import health_check_pb2

    check = health_check_pb2.HealthCheck()
    errors = validate_message(check)
    assert "timeout: is required" in errors
    assert "interval: is required" in errors
    assert "unhealthy_threshold: is required" in errors  # a UInt32Value with message.required
    check.timeout.FromMilliseconds(0)
    assert "timeout: must be > 0s, got 0s" in validate_message(check)
