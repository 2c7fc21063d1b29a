"""`/server_info` and `/config_dump` JSON on Envoy 1.40 and on ours.

`/server_info` prints default-valued fields (`"state": "LIVE"` is the enum's 0); the
remaining differences are listed below, each with its reason. `/config_dump` dumps every
config it was sent, including a rejected listener's extension that we do not build, and for
a type nobody knows answers Envoy's own text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2

from control_plane_stub.client import StubNack
from tests.helpers.envoy import EnvoyProcess
from tests.helpers.listeners import lds_bootstrap
from tests.helpers.procs import free_port
from tests.helpers.proxy import ProxyProcess
from tests.helpers.stub import StubProcess

pytestmark = pytest.mark.envoy

KINDS = {"envoy": EnvoyProcess, "xds-proxy": ProxyProcess}

# ServerInfo fields Envoy 1.40 prints that xds-protos 1.85's ServerInfo does not have.
NOT_IN_XDS_PROTOS = {"hot_restart_initializing"}
OPTIONS_NOT_IN_XDS_PROTOS = {"file_flush_min_size", "log_stacktrace_single_entry"}
# Options whose values differ for a reason: our own files, Envoy's access-log flush interval
# (we write no access logs yet), Envoy's log format string (ours has no source location),
# Envoy's hot-restart socket (ours is named after xds-proxy).
OPTIONS_DIFFERENT = {
    "config_path",
    "admin_address_path",
    "file_flush_interval",
    "log_format",
    "socket_path",
}
# Envoy adds its build version and its 500-odd extensions to the node; we send neither.
NODE_DIFFERENT = {"user_agent_name", "user_agent_build_version", "extensions"}

REDIS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Iterator[StubProcess]:
    process = StubProcess(tmp_path_factory.mktemp("stub")).start()
    yield process
    process.stop()


def start(kind: str, stub: StubProcess, workdir: Path, node_id: str = "") -> EnvoyProcess:
    bootstrap = lds_bootstrap(stub.xds_address, node_id=node_id or kind)
    process = KINDS[kind](bootstrap, workdir / kind).start()
    try:
        process.wait_ready()
    except Exception:
        process.stop()
        raise
    return process


def server_info(process: EnvoyProcess) -> dict:
    status, body = process.get("/server_info")
    assert status == 200, body
    return json.loads(body)


def test_server_info_prints_default_fields_as_envoy(stub: StubProcess, tmp_path: Path) -> None:
    infos = {}
    for kind in KINDS:
        process = start(kind, stub, tmp_path, node_id="server-info")
        try:
            infos[kind] = server_info(process)
        finally:
            process.stop()
    envoy, ours = infos["envoy"], infos["xds-proxy"]
    assert ours["state"] == envoy["state"] == "LIVE"
    assert list(ours) == [key for key in envoy if key not in NOT_IN_XDS_PROTOS]
    envoy_options, our_options = envoy["command_line_options"], ours["command_line_options"]
    assert our_options["drain_strategy"] == "Gradual" and our_options["base_id"] == "0"
    expected_options = {
        key: value
        for key, value in envoy_options.items()
        if key not in OPTIONS_NOT_IN_XDS_PROTOS | OPTIONS_DIFFERENT
    }
    assert {key: our_options[key] for key in expected_options} == expected_options
    assert set(our_options) == set(envoy_options) - OPTIONS_NOT_IN_XDS_PROTOS - {
        "file_flush_interval"  # a Duration (printed only when set): we have no flush interval
    }
    node_keys = [key for key in envoy["node"] if key not in NODE_DIFFERENT]
    assert {key: ours["node"][key] for key in node_keys} == {
        key: envoy["node"][key] for key in node_keys
    }


# -- /config_dump of rejected listeners ------------------------------------------------------


def rejected_listener(name: str, port: int, type_url: str, value: bytes) -> listener_pb2.Listener:
    """A listener with one network filter of `type_url` (both Envoy and we reject it)."""
    listener = listener_pb2.Listener(name=name)
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = port
    network_filter = listener.filter_chains.add().filters.add(name="envoy.filters.network.x")
    network_filter.typed_config.type_url = type_url
    network_filter.typed_config.value = value
    return listener


def push_rejected(stub: StubProcess, node: str, version: str, listeners: list) -> None:
    stub.client.set_resources(listeners=listeners, node=node, version=version, raw=True)
    with pytest.raises(StubNack):
        stub.client.wait(version, node=node, timeout=10)


def failed_configurations(body: str) -> dict[str, dict]:
    """Listener name -> the `failed_configuration` of its error state, from a full dump."""
    dump = json.loads(body)
    (listeners,) = [c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")]
    return {
        entry["name"]: entry["error_state"]["failed_configuration"]
        for entry in listeners.get("dynamic_listeners", [])
        if "name" in entry and "error_state" in entry
    }


def rejected_listeners() -> dict[str, listener_pb2.Listener]:
    redis = redis_proxy_pb2.RedisProxy(stat_prefix="redis")
    redis.settings.op_timeout.seconds = 1
    unknown_type = "type.googleapis.com/example.NoSuchType"
    return {
        "known": rejected_listener("known", free_port(), REDIS_TYPE, redis.SerializeToString()),
        "garbage": rejected_listener("garbage", free_port(), REDIS_TYPE, b"\xff\xff\xff"),
        "unknown": rejected_listener("unknown", free_port(), unknown_type, b"\x0a\x01x"),
        "no_host": rejected_listener("no_host", free_port(), "example.NoSuchType", b""),
    }


def config_dump_scenario(
    kind: str, stub: StubProcess, workdir: Path, listeners: dict[str, listener_pb2.Listener]
) -> list:
    known, garbage, unknown, no_host = (
        listeners[name] for name in ("known", "garbage", "unknown", "no_host")
    )
    process = start(kind, stub, workdir)
    seen: list = []
    try:
        push_rejected(stub, kind, "v1", [known, garbage])
        status, body = process.get("/config_dump")
        assert status == 200, body
        seen.append(failed_configurations(body))
        seen.append(process.get("/config_dump?resource=dynamic_listeners")[0])
        for version, listener in (("v2", unknown), ("v3", no_host)):
            push_rejected(stub, kind, version, [listener])
            seen.append(process.get("/config_dump"))
            seen.append(process.get("/config_dump?resource=dynamic_listeners"))
    finally:
        process.stop()
    return seen


def test_config_dump_of_rejected_extensions_matches_envoy(
    stub: StubProcess, tmp_path: Path
) -> None:
    """A type xds-protos knows but we do not build is dumped in full; bytes that do not parse
    as their type are dumped as the `@type` alone; a type nobody knows, or a type URL
    without a host, answers 200 with Envoy's error text instead of JSON."""
    listeners = rejected_listeners()
    envoy = config_dump_scenario("envoy", stub, tmp_path, listeners)
    ours = config_dump_scenario("xds-proxy", stub, tmp_path, listeners)
    failed = ours[0]
    typed_config = failed["known"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert typed_config == {
        "@type": REDIS_TYPE,
        "stat_prefix": "redis",
        "settings": {"op_timeout": "1s"},
    }
    assert failed["garbage"]["filter_chains"][0]["filters"][0]["typed_config"] == {
        "@type": REDIS_TYPE
    }
    assert ours[2] == (
        200,
        "Failed to convert protobuf message to JSON string: INVALID_ARGUMENT: could not find"
        " @type 'type.googleapis.com/example.NoSuchType'",
    )
    assert ours == envoy
