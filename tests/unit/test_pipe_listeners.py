"""Listeners on a UNIX stream socket (`address.pipe`): the pure manager's view of the
address (equal by path, as Envoy compares pipes) and the socket pool binding real ones;
upstream endpoints on one."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf import json_format

from tests.unit.listener_fixtures import FakeSocketPool, chain
from tests.unit.test_listener_manager import Clock, Compiler
from xds_proxy.config.cluster import build_cluster_config
from xds_proxy.errors import ConfigError
from xds_proxy.listener.actions import PipeAddress, fixed_address
from xds_proxy.listener.manager import (
    BindError,
    ListenerManager,
    ReserveSockets,
    listener_addresses,
)
from xds_proxy.listener.sockets import ListenSocketPool
from xds_proxy.stats import Stats


def pipe_listener(name: str, path: str, mode: int = 0, body: str = "hello"):
    result = listener_pb2.Listener(name=name)
    result.address.pipe.path = path
    result.address.pipe.mode = mode
    result.filter_chains.append(chain(body))
    return result


def test_a_pipe_is_equal_by_its_path_only() -> None:
    assert PipeAddress("/s", 0o600) == PipeAddress("/s", 0o644)
    assert PipeAddress("/s") != PipeAddress("/t")
    assert fixed_address(PipeAddress("/s"))
    assert listener_addresses(pipe_listener("p", "/s", 0o640)) == [PipeAddress("/s", 0o640)]


def test_an_abstract_pipe_takes_no_mode() -> None:
    assert listener_addresses(pipe_listener("p", "@name")) == [PipeAddress("@name")]
    with pytest.raises(ConfigError, match=r"^Cannot set mode for Abstract AF_UNIX sockets$"):
        listener_addresses(pipe_listener("p", "@name", 0o600))


def test_two_listeners_on_one_path_and_a_mode_change_shares_the_socket() -> None:
    pool = FakeSocketPool()
    manager = ListenerManager(Stats(), pool, Compiler(), Clock())
    result = manager.apply_sotw("1", [pipe_listener("a", "/s"), pipe_listener("b", "/s")])
    assert result.nack_message == (
        "Error adding/updating listener(s) b: error adding listener: 'b' has duplicate address "
        "'/s' as existing listener, to check if the listener has duplicated addresses with "
        "other listeners or 'enable_reuse_port' is set to 'false' for the listener\n"
    )
    first = manager.active["a"].id
    manager.apply_sotw("2", [pipe_listener("a", "/s", 0o600, body="two")])
    second = manager.active["a"].id
    assert second != first
    assert pool.by_version[second] == pool.by_version.get(first, pool.by_version[second])
    assert pool.binds == [PipeAddress("/s")]  # bound once, shared by the new version


def test_the_pool_removes_a_stale_file_and_applies_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "l.sock"
    path.write_text("stale")
    pool = ListenSocketPool()
    pool.reserve(ReserveSockets(1, (PipeAddress(str(path), 0o640),), None))
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert pool.bound_addresses(1) == [PipeAddress(str(path))]
    pool.listen(1)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(path))
    # A second version on the same path shares the socket (no re-bind).
    inode = os.stat(path).st_ino
    pool.reserve(ReserveSockets(2, (PipeAddress(str(path), 0o600),), None))
    assert pool.sockets_for(2)[0] is pool.sockets_for(1)[0]
    assert os.stat(path).st_ino == inode
    pool.close_all()
    assert path.exists()  # as Envoy, the file stays


def test_abstract_pipes_and_bind_errors(tmp_path: Path) -> None:
    pool = ListenSocketPool()
    name = f"@xds-proxy-test-{os.getpid()}"
    pool.reserve(ReserveSockets(1, (PipeAddress(name),), None))
    pool.listen(1)
    with socket.socket(socket.AF_UNIX) as client:
        client.connect("\0" + name[1:])
    missing = str(tmp_path / "no" / "dir.sock")
    with pytest.raises(BindError, match=f"^cannot bind '{missing}': No such file or directory$"):
        pool.reserve(ReserveSockets(2, (PipeAddress(missing),), None))
    pool.close_all()


def test_a_pipe_endpoint_only_in_a_static_cluster() -> None:
    pipe = {"endpoint": {"address": {"pipe": {"path": "/run/up.sock"}}}}
    document = {
        "name": "p",
        "type": "STATIC",
        "load_assignment": {"cluster_name": "p", "endpoints": [{"lb_endpoints": [pipe]}]},
    }
    config = build_cluster_config(json_format.ParseDict(document, cluster_pb2.Cluster()), "c")
    assert [(e.host, e.port) for e in config.endpoints] == [("/run/up.sock", -1)]
    document["type"] = "STRICT_DNS"
    with pytest.raises(ConfigError, match=r"\.endpoint\.address\.pipe: not supported yet"):
        build_cluster_config(json_format.ParseDict(document, cluster_pb2.Cluster()), "c")
