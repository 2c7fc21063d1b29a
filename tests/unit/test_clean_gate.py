"""The LDS gate's compiled fast path (xds_proxy/config/clean.py) against the walks it skips.

`is_clean` may answer "not clean" when in doubt, but never "clean" for a listener in which the
PGV walk (pgv.py) or the support walk (support.py) finds an error. Listeners here are valid
ones mutated one field at a time anywhere in their tree, inside packed `Any`s too, so every
rule kind and every table meets both answers.
"""

from __future__ import annotations

import copy
import os

import pytest
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fleet import distinct_listener
from tests.unit.listener_fixtures import chain, hcm_filter, listener
from tests.unit.test_hostile_listeners import (
    FUZZ_PORT,
    SENTINEL_PORT,
    direct_filter,
    listener_messages,
    tcp_filter,
)
from xds_proxy import extensions
from xds_proxy.config.clean import is_clean
from xds_proxy.config.pgv import validate_message
from xds_proxy.config.support import check_listener, listener_errors, unsupported
from xds_proxy.errors import ConfigError

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 0)

TYPE_URLS = [
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/no.such.Type",
    "",
]
SCALARS: dict[int, list[object]] = {
    FieldDescriptor.CPPTYPE_BOOL: [True, False],
    FieldDescriptor.CPPTYPE_INT32: [0, 1, -1, 7, 2**31 - 1],
    FieldDescriptor.CPPTYPE_INT64: [0, 1, -1, 2**40],
    FieldDescriptor.CPPTYPE_UINT32: [0, 1, 7, 65535, 65536, 2**32 - 1],
    FieldDescriptor.CPPTYPE_UINT64: [0, 1, 2**40],
    FieldDescriptor.CPPTYPE_DOUBLE: [0.0, -1.0, 0.5, 150.0],
    FieldDescriptor.CPPTYPE_FLOAT: [0.0, -1.0, 0.5, 150.0],
    FieldDescriptor.CPPTYPE_STRING: ["", "x", "/a", "*", "127.0.0.1", "bad\nvalue", ":path"],
}


def slow_errors(config: listener_pb2.Listener) -> list[str]:
    return validate_message(config) + unsupported(config, "")


def fleet_listener(i: int) -> listener_pb2.Listener:
    message = listener_pb2.Listener()
    json_format.ParseDict(distinct_listener("fuzz", i, 10000 + i), message)
    return message


def base_listeners() -> list[listener_pb2.Listener]:
    """Valid listeners of several shapes: HCM with routes, direct_response, tcp_proxy, a
    filter chain match and a listener filter."""
    matched = listener("matched", 10001, chains=[chain("a", source_prefix="10.0.0.0/8")])
    matched.listener_filters.add(name="envoy.filters.listener.tls_inspector")
    matched.listener_filters[
        0
    ].typed_config.type_url = (
        "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    )
    other = listener("other", 10002)
    other.filter_chains[0].filters[0].CopyFrom(direct_filter(b"body"))
    tcp = listener("tcp", 10003)
    tcp.filter_chains[0].filters[0].CopyFrom(tcp_filter("upstream"))
    return [fleet_listener(3), fleet_listener(8), matched, other, tcp]


BASES = base_listeners()


def _sub_messages(message: Message) -> list[Message]:
    found = []
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            found += [value[key] for key in value if isinstance(value[key], Message)]
        elif field.is_repeated:
            found += list(value)
        else:
            found.append(value)
    return found


def _set_one(draw: st.DrawFn, target: Message) -> None:
    """Set, clear or append one field of `target` to a value drawn from a hostile few."""
    if not target.DESCRIPTOR.fields:
        return  # an empty message type (the router's config)
    field = draw(st.sampled_from(list(target.DESCRIPTOR.fields)))
    if draw(st.integers(0, 4)) == 0:
        target.ClearField(field.name)
        return
    holder = getattr(target, field.name)
    try:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key_type = field.message_type.fields_by_name["key"].cpp_type
                key = draw(st.sampled_from(SCALARS.get(key_type, ["k"])))
                value_field = field.message_type.fields_by_name["value"]
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    holder[key].SetInParent()
                else:
                    holder[key] = draw(st.sampled_from(SCALARS[value_field.cpp_type]))
                return
            item = holder.add() if field.is_repeated else holder
            item.SetInParent()
            if field.message_type.full_name == "google.protobuf.Any":
                item.type_url = draw(st.sampled_from(TYPE_URLS))
            return
        if field.type == FieldDescriptor.TYPE_ENUM:
            value = draw(st.sampled_from([v.number for v in field.enum_type.values] + [99]))
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = draw(st.sampled_from([b"", b"x", b"\x00\x01"]))
        else:
            value = draw(st.sampled_from(SCALARS[field.cpp_type]))
        if field.is_repeated:
            holder.append(value)
        else:
            setattr(target, field.name, value)
    except (TypeError, ValueError):
        pass  # a value out of the field's range: this example mutates nothing


@st.composite
def mutated_listeners(draw: st.DrawFn) -> listener_pb2.Listener:
    """A valid listener with 1-3 fields changed anywhere below it (inside `Any`s too)."""
    result = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        target: Message = result
        packed: list[tuple[Message, Message]] = []  # (the Any, its unpacked message)
        for _ in range(draw(st.integers(0, 9))):
            below = _sub_messages(target)
            if not below:
                break
            target = draw(st.sampled_from(below))
            if target.DESCRIPTOR.full_name == "google.protobuf.Any":
                if extensions.message_class(target.type_url) is None:
                    break
                try:
                    inner = extensions.unpack(target, "")
                except ConfigError:
                    break
                packed.append((target, inner))
                target = inner
        _set_one(draw, target)
        for holder, inner in reversed(packed):
            holder.value = inner.SerializeToString()
    return result


def test_valid_listeners_take_the_fast_path() -> None:
    """Without this, a fast path that never answers "clean" would pass every other test."""
    for config in [*BASES, *(fleet_listener(i) for i in range(50))]:
        assert slow_errors(config) == []
        assert is_clean(config), config.name


def test_each_kind_of_error_is_not_clean() -> None:
    unsupported_field = fleet_listener(1)
    unsupported_field.tcp_backlog_size.value = 5  # the table refuses it
    empty_prefix = listener(
        "p", 10000, chains=[listener_components_pb2.FilterChain(filters=[hcm_filter("x", "")])]
    )
    unknown_filter = listener("u", 10000)
    unknown_filter.filter_chains[0].filters[0].typed_config.type_url = "type.googleapis.com/x.Y"
    not_yet = listener("n", 10000)
    not_yet_hcm = _hcm_with()
    not_yet_hcm.common_http_protocol_options.max_requests_per_connection.value = 3
    not_yet.filter_chains[0].filters[0].typed_config.Pack(not_yet_hcm)
    # An optional HTTP filter of a type the category lacks: the support walk skips it, PGV
    # still looks inside (a tcp_proxy config without its stat_prefix).
    optional_invalid = listener("o", 10000)
    hcm = _hcm_with()
    http_filter = hcm.http_filters.add(name="odd", is_optional=True)
    http_filter.typed_config.Pack(tcp_proxy_pb2.TcpProxy(cluster="c"))
    hcm.http_filters.insert(0, hcm.http_filters.pop())  # the router stays last
    optional_invalid.filter_chains[0].filters[0].typed_config.Pack(hcm)
    cases = (unsupported_field, empty_prefix, unknown_filter, not_yet, optional_invalid)
    for config in cases:
        assert slow_errors(config) != []
        assert not is_clean(config)


def _hcm_with(**fields: object) -> hcm_pb2.HttpConnectionManager:
    config = hcm_pb2.HttpConnectionManager()
    hcm_filter("x").typed_config.Unpack(config)
    for name, value in fields.items():
        setattr(config, name, value)
    return config


@pytest.mark.timeout(600)  # FUZZ_EXAMPLES may ask for many more examples than the default
@settings(
    max_examples=EXAMPLES or 1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_listeners())
def test_a_clean_answer_means_both_walks_find_nothing(config: listener_pb2.Listener) -> None:
    if is_clean(config):
        assert slow_errors(config) == []
    assert listener_errors(config) == (validate_message(config) or check_listener(config))


@pytest.mark.timeout(600)
@settings(max_examples=EXAMPLES or 300, deadline=None, suppress_health_check=list(HealthCheck))
@given(listener_messages(FUZZ_PORT, SENTINEL_PORT))
def test_hostile_listeners_are_clean_only_without_errors(config: listener_pb2.Listener) -> None:
    if is_clean(config):
        assert slow_errors(config) == []
