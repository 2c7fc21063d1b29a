"""The supported-fields policy table and the extensions registry."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2

from xds_proxy import extensions
from xds_proxy.bootstrap import message_from_dict
from xds_proxy.config.rules import Extension, NotYet, Supported, Values
from xds_proxy.config.support import check_listener, unsupported
from xds_proxy.config.table import LEAF_TYPES, TABLE
from xds_proxy.errors import ConfigError


@pytest.mark.parametrize("message_name", sorted(TABLE))
def test_table_names_real_messages_and_fields(message_name: str) -> None:
    """A typo in the table would silently refuse a field: every name must exist."""
    cls = extensions.resolve_message_class(message_name)
    assert cls is not None, message_name
    fields = cls.DESCRIPTOR.fields_by_name
    for field_name, rule in TABLE[message_name].items():
        assert field_name in fields, f"{message_name}.{field_name}"
        descriptor = fields[field_name]
        if isinstance(rule, Values) and descriptor.enum_type is not None:
            for value in rule.allowed:
                assert value in descriptor.enum_type.values_by_name, f"{field_name}: {value}"
        if isinstance(rule, Extension):
            assert rule.category in extensions.CATEGORIES
            assert descriptor.message_type is not None
        if isinstance(rule, Supported) and rule.fields is not None:
            _check_override(descriptor.message_type, rule, f"{message_name}.{field_name}")


def _check_override(descriptor, rule: Supported, where: str) -> None:
    """A per-place table names real fields too, down through nested overrides."""
    inner = descriptor.fields_by_name
    assert set(rule.fields) <= set(inner), where
    for name, nested in rule.fields.items():
        if isinstance(nested, Supported) and nested.fields is not None:
            _check_override(inner[name].message_type, nested, f"{where}.{name}")


def test_message_types_reached_by_supported_fields_have_a_table() -> None:
    """Following every accepted message field from the tables lands on a table or a leaf."""
    missing = []
    for message_name, fields in TABLE.items():
        descriptor = extensions.resolve_message_class(message_name).DESCRIPTOR
        for field_name, rule in fields.items():
            if not isinstance(rule, Supported):
                continue
            if rule.fields is not None:
                continue  # checked against its own field table
            field = descriptor.fields_by_name[field_name]
            target = field.message_type
            if target is None:
                continue
            if target.GetOptions().map_entry:
                target = target.fields_by_name["value"].message_type
                if target is None:
                    continue
            name = target.full_name
            if name not in TABLE and name not in LEAF_TYPES:
                missing.append(f"{message_name}.{field_name} -> {name}")
    assert missing == []


def _not_yet_rules():
    for fields in TABLE.values():
        for rule in fields.values():
            yield from _nested_not_yet(rule)


def _nested_not_yet(rule):
    if isinstance(rule, NotYet):
        yield rule
    elif isinstance(rule, Values):
        yield from (value for value in rule.allowed.values() if isinstance(value, NotYet))
    elif isinstance(rule, Supported) and rule.fields is not None:
        for nested in rule.fields.values():
            yield from _nested_not_yet(nested)


def test_not_yet_rules_say_why_in_words() -> None:
    reasons = [rule.reason for rule in _not_yet_rules()] + list(extensions.NOT_YET.values())
    assert reasons
    for reason in reasons:
        assert len(reason.split()) >= 3, reason
        assert "issue" not in reason.lower() and "#" not in reason, reason


def direct_listener(**extra) -> listener_pb2.Listener:
    doc = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.direct_response",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "direct_response.v3.Config",
                            "response": {"inline_string": "hi"},
                        },
                    }
                ]
            }
        ],
        **extra,
    }
    return message_from_dict(doc, listener_pb2.Listener)


def test_check_listener_accepts_a_direct_response_listener() -> None:
    assert check_listener(direct_listener()) == []


def test_check_listener_paths_start_at_the_callers_prefix() -> None:
    listener = direct_listener(freebind=True, tcp_backlog_size=5)
    assert check_listener(listener) == [
        "freebind: not supported",
        "tcp_backlog_size: not supported",
    ]
    assert check_listener(listener, "listeners[2]") == [
        "listeners[2].freebind: not supported",
        "listeners[2].tcp_backlog_size: not supported",
    ]


def test_listener_filters() -> None:
    listener = direct_listener(
        listener_filters=[
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                    "tls_inspector.v3.TlsInspector"
                },
            },
            {
                "name": "envoy.filters.listener.original_dst",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                    "original_dst.v3.OriginalDst"
                },
            },
        ]
    )
    assert check_listener(listener) == [
        "listener_filters[1].typed_config: @type 'type.googleapis.com/envoy.extensions.filters."
        "listener.original_dst.v3.OriginalDst' not supported",
    ]


def test_the_same_message_has_rules_per_place() -> None:
    """`max_requests_per_connection` is read for clusters, not yet for the HCM."""
    hcm = http_connection_manager_pb2.HttpConnectionManager(stat_prefix="s")
    hcm.common_http_protocol_options.max_requests_per_connection.value = 3
    listener = direct_listener()
    listener.filter_chains[0].filters[0].typed_config.Pack(hcm)
    assert (
        "filter_chains[0].filters[0].typed_config.common_http_protocol_options"
        ".max_requests_per_connection: not supported yet"
    ) in check_listener(listener)
    cluster = cluster_pb2.Cluster(name="c")
    cluster.common_http_protocol_options.max_requests_per_connection.value = 3
    assert unsupported(cluster, "c") == []


def test_tcp_proxy_fields_are_checked() -> None:
    listener = direct_listener()
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster="c")
    listener.filter_chains[0].filters[0].typed_config.Pack(proxy)
    assert check_listener(listener) == []
    proxy.hash_policy.add().source_ip.SetInParent()
    listener.filter_chains[0].filters[0].typed_config.Pack(proxy)
    assert check_listener(listener) == []
    proxy.on_demand.SetInParent()
    listener.filter_chains[0].filters[0].typed_config.Pack(proxy)
    assert check_listener(listener) == [
        "filter_chains[0].filters[0].typed_config.on_demand: not supported"
    ]


def test_direct_response_data_sources() -> None:
    listener = direct_listener()
    config = direct_pb2.Config()
    config.response.environment_variable = "BODY"
    listener.filter_chains[0].filters[0].typed_config.Pack(config)
    assert check_listener(listener) == []
    config.response.watched_directory.path = "/tmp"
    listener.filter_chains[0].filters[0].typed_config.Pack(config)
    assert check_listener(listener) == [
        "filter_chains[0].filters[0].typed_config.response.watched_directory: not supported"
    ]


def test_any_without_type() -> None:
    listener = direct_listener()
    listener.filter_chains[0].filters[0].typed_config.CopyFrom(any_pb2.Any())
    assert check_listener(listener) == [
        "filter_chains[0].filters[0].typed_config: @type is required"
    ]


# --- extensions registry ----------------------------------------------------------------------


def test_categories_do_not_overlap() -> None:
    seen: set[str] = set()
    for types in extensions.CATEGORIES.values():
        assert not (seen & set(types))
        seen |= set(types)
    assert set(extensions.NOT_YET) <= seen


def test_message_class_and_unpack() -> None:
    url = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
    assert extensions.message_class(url) is direct_pb2.Config
    assert extensions.message_class("type.googleapis.com/no.Such") is None
    packed = any_pb2.Any()
    packed.Pack(direct_pb2.Config(response={"inline_string": "x"}))
    assert extensions.unpack(packed, "p").response.inline_string == "x"
    with pytest.raises(ConfigError) as caught:
        extensions.unpack(any_pb2.Any(type_url="type.googleapis.com/no.Such"), "a.b")
    assert str(caught.value) == "a.b: unknown @type 'type.googleapis.com/no.Such'"
    with pytest.raises(ConfigError) as caught:
        extensions.unpack(any_pb2.Any(type_url=url, value=b"\xff\xff"), "a.b")
    assert str(caught.value) == f"a.b: cannot decode the value of @type '{url}'"


def test_is_implemented() -> None:
    hcm = extensions.TYPE_URL_PREFIX + extensions.HCM
    tcp = extensions.TYPE_URL_PREFIX + extensions.TCP_PROXY
    assert extensions.is_implemented(hcm)
    assert extensions.is_implemented(tcp)
    assert extensions.category_of(tcp) == "network_filter"
    assert extensions.category_of("type.googleapis.com/x.Y") is None


def test_resolve_imports_packages_on_demand() -> None:
    cls = extensions.resolve_message_class("envoy.extensions.filters.http.cors.v3.Cors")
    assert (
        cls is not None and cls.DESCRIPTOR.full_name == "envoy.extensions.filters.http.cors.v3.Cors"
    )
    assert extensions.resolve_message_class("envoy.no.such.v3.Thing") is None
    nested = extensions.resolve_message_class(
        "envoy.config.route.v3.RouteAction.RequestMirrorPolicy"
    )
    assert nested is not None
