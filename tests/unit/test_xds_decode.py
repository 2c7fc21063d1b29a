"""Decoding SotW listener responses: all or nothing, Envoy's rejection texts."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from xds_proxy.xds.decode import (
    LISTENER_TYPE_URL,
    RESOURCE_WRAPPER_TYPE_URL,
    ResponseDecodeError,
    Unchanged,
    debug_string,
    decode_listeners,
    decode_sotw_listeners,
)

CLUSTER_TYPE_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def response(*resources: any_pb2.Any) -> discovery_pb2.DiscoveryResponse:
    result = discovery_pb2.DiscoveryResponse(
        version_info="v4", nonce="n4", type_url=LISTENER_TYPE_URL
    )
    result.resources.extend(resources)
    return result


def packed(msg) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(msg)
    return value


def named(name: str, port: int = 80) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name=name)
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = port
    return listener


def test_listeners_in_response_order() -> None:
    listeners = decode_listeners(response(packed(named("b")), packed(named("a", 81))))
    assert [(x.name, x.address.socket_address.port_value) for x in listeners] == [
        ("b", 80),
        ("a", 81),
    ]
    assert decode_listeners(response()) == []


def test_corrupt_bytes_reject_with_envoys_unpack_message() -> None:
    bad = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\xff\xff\xff")
    with pytest.raises(ResponseDecodeError) as caught:
        decode_listeners(response(packed(named("a")), bad))
    assert str(caught.value) == (
        "Unable to unpack as envoy.config.listener.v3.Listener: goo.gle/debugstr  \n"
        'type_url: "type.googleapis.com/envoy.config.listener.v3.Listener"\n'
        'value: "\\377\\377\\377"\n'
    )


def test_invalid_utf8_in_a_string_field_does_not_decode() -> None:
    # field 1 (name), length 2, bytes that are not UTF-8
    bad = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\x0a\x02\xff\xfe")
    with pytest.raises(ResponseDecodeError, match=r"^Unable to unpack as"):
        decode_listeners(response(bad))


def test_wrong_resource_type_rejects_with_the_whole_response_printed() -> None:
    wrong = any_pb2.Any(type_url=CLUSTER_TYPE_URL)
    with pytest.raises(ResponseDecodeError) as caught:
        decode_listeners(response(packed(named("a")), wrong))
    text = str(caught.value)
    assert text.startswith(
        f"{CLUSTER_TYPE_URL} does not match the message-wide type URL {LISTENER_TYPE_URL} "
        'in DiscoveryResponse goo.gle/debugstr  \nversion_info: "v4"\nresources {\n'
        f'  [{LISTENER_TYPE_URL}] {{\n    name: "a"\n'
    )
    assert f"  [{CLUSTER_TYPE_URL}] {{\n  }}\n" in text
    assert text.endswith(f'type_url: "{LISTENER_TYPE_URL}"\nnonce: "n4"\n')


def test_debug_string_of_a_response_holding_corrupt_bytes_does_not_raise() -> None:
    bad = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\xff")
    text = debug_string(response(bad))
    assert 'value: "\\377"' in text


def test_resource_wrapper_is_opened_and_heartbeats_skipped() -> None:
    wrapped = discovery_pb2.Resource(name="a", version="1")
    wrapped.resource.Pack(named("a"))
    heartbeat = discovery_pb2.Resource(name="b", version="1")
    listeners = decode_listeners(response(packed(wrapped), packed(heartbeat), packed(named("c"))))
    assert [x.name for x in listeners] == ["a", "c"]
    assert packed(wrapped).type_url == RESOURCE_WRAPPER_TYPE_URL


def test_resource_wrapper_holding_another_type_is_rejected() -> None:
    wrapped = discovery_pb2.Resource(name="a")
    wrapped.resource.Pack(cluster_pb2.Cluster(name="a"))
    with pytest.raises(ResponseDecodeError, match=r"^Unable to unpack as envoy.config.listener"):
        decode_listeners(response(packed(wrapped)))


def test_validator_rejects_the_whole_response_in_envoys_words() -> None:
    def validate(listener: listener_pb2.Listener) -> str | None:
        return "ListenerValidationError.Name: bad" if listener.name == "x" else None

    assert [x.name for x in decode_listeners(response(packed(named("a"))), validate)] == ["a"]
    with pytest.raises(ResponseDecodeError) as caught:
        decode_listeners(response(packed(named("a")), packed(named("x"))), validate)
    # as Envoy 1.40 words it: the listener's DebugString, then the violation
    assert str(caught.value) == (
        'goo.gle/debugstr  \nname: "x"\naddress {\n  socket_address {\n'
        '    address: "127.0.0.1"\n    port_value: 80\n  }\n}\n'
        ": Proto constraint validation failed (ListenerValidationError.Name: bad)"
    )


def test_a_resource_sent_again_byte_for_byte_is_the_body_decoded_before() -> None:
    unchanged: Unchanged[listener_pb2.Listener] = Unchanged()
    first = decode_sotw_listeners(response(packed(named("a")), packed(named("b"))), None, unchanged)
    again = decode_sotw_listeners(
        response(packed(named("a")), packed(named("b", 81))), None, unchanged
    )
    assert again[0].body is first[0].body  # the same bytes: not parsed again
    assert again[0] is first[0]  # nor wrapped again: the whole decoded resource of then
    assert (
        again[1].body is not first[1].body and again[1].body.address.socket_address.port_value == 81
    )
    corrupt = any_pb2.Any(type_url=LISTENER_TYPE_URL, value=b"\xff\xff")
    with pytest.raises(ResponseDecodeError):
        decode_sotw_listeners(response(packed(named("a")), corrupt), None, unchanged)
    # a response that did not decode leaves what the last good one held
    last = decode_sotw_listeners(response(packed(named("b", 81))), None, unchanged)
    assert last[0].body is again[1].body
