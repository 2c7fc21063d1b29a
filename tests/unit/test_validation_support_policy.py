"""The supported-fields policy table and the extensions registry."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2

from xds_proxy import extensions, support_policy
from xds_proxy.bootstrap import message_from_dict
from xds_proxy.errors import ConfigError
from xds_proxy.support_policy import TABLE, Extension, Later, Values, check_listener


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
        if isinstance(rule, support_policy.Supported) and rule.fields is not None:
            inner = descriptor.message_type.fields_by_name
            assert set(rule.fields) <= set(inner), f"{message_name}.{field_name}"


def test_message_types_reached_by_supported_fields_have_a_table() -> None:
    """Following every accepted message field from the tables lands on a table or a leaf."""
    missing = []
    for message_name, fields in TABLE.items():
        descriptor = extensions.resolve_message_class(message_name).DESCRIPTOR
        for field_name, rule in fields.items():
            built_later = (
                isinstance(rule, Later) and rule.issue in support_policy.IMPLEMENTED_ISSUES
            )
            if not (isinstance(rule, support_policy.Supported) or built_later):
                continue
            if isinstance(rule, support_policy.Supported) and rule.fields is not None:
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
            if name not in TABLE and name not in support_policy.LEAF_TYPES:
                missing.append(f"{message_name}.{field_name} -> {name}")
    assert missing == []


def test_later_issues_are_real_issue_numbers() -> None:
    issues = {
        rule.issue
        for fields in TABLE.values()
        for rule in fields.values()
        if isinstance(rule, Later)
    }
    issues |= {
        rule.issue
        for fields in TABLE.values()
        for rule in fields.values()
        if isinstance(rule, Values)
        for rule in rule.allowed.values()
        if isinstance(rule, Later)
    }
    issues |= set(extensions.LATER.values())
    assert issues <= set(range(3, 15))


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


def test_implemented_issue_switches_later_features_on(monkeypatch: pytest.MonkeyPatch) -> None:
    hcm = http_connection_manager_pb2.HttpConnectionManager(stat_prefix="s")
    hcm.common_http_protocol_options.max_stream_duration.seconds = 5
    listener = direct_listener()
    listener.filter_chains[0].filters[0].typed_config.Pack(hcm)
    later = (
        "filter_chains[0].filters[0].typed_config.common_http_protocol_options"
        ".max_stream_duration: not supported yet"
    )
    assert later in check_listener(listener)
    monkeypatch.setattr(
        support_policy, "IMPLEMENTED_ISSUES", support_policy.IMPLEMENTED_ISSUES | {14}
    )
    assert later not in check_listener(listener)


def test_tcp_proxy_fields_are_checked() -> None:
    listener = direct_listener()
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster="c")
    listener.filter_chains[0].filters[0].typed_config.Pack(proxy)
    assert check_listener(listener) == []
    proxy.hash_policy.add().source_ip.SetInParent()
    listener.filter_chains[0].filters[0].typed_config.Pack(proxy)
    assert check_listener(listener) == [
        "filter_chains[0].filters[0].typed_config.hash_policy: not supported"
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
    assert set(extensions.LATER) <= seen


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
