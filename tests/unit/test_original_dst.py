"""ORIGINAL_DST clusters: the builder's checks (Envoy's words) and the on-demand hosts."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from xds_proxy.config.cluster import DiscoveryType, build_cluster_config
from xds_proxy.config.original_dst import OriginalDstConfig
from xds_proxy.errors import ConfigError
from xds_proxy.stats import Counter
from xds_proxy.upstream.host import Host
from xds_proxy.upstream.original_dst import OriginalDstHosts, host_name, parse_destination


def _cluster(**fields: object) -> cluster_pb2.Cluster:
    document = {"name": "od", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", **fields}
    return json_format.ParseDict(document, cluster_pb2.Cluster())


def test_builds_the_settings_with_envoys_defaults() -> None:
    config = build_cluster_config(_cluster(), "c")
    assert config.discovery is DiscoveryType.ORIGINAL_DST
    assert config.original_dst == OriginalDstConfig(None, None, 5.0)
    config = build_cluster_config(
        _cluster(
            original_dst_lb_config={"use_http_header": True, "upstream_port_override": 8080},
            cleanup_interval="2s",
        ),
        "c",
    )
    assert config.original_dst == OriginalDstConfig("x-envoy-original-dst-host", 8080, 2.0)
    named = _cluster(original_dst_lb_config={"use_http_header": True, "http_header_name": "X-D"})
    assert build_cluster_config(named, "c").original_dst == OriginalDstConfig("x-d", None, 5.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"lb_policy": "ROUND_ROBIN"},
            "c: cluster: LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST. "
            "Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'",
        ),
        (
            {"original_dst_lb_config": {"http_header_name": "x-a"}},
            "c: ORIGINAL_DST cluster: invalid config http_header_name=x-a and use_http_header "
            "is false. Set use_http_header to true if http_header_name is desired.",
        ),
        (
            {"load_assignment": {"cluster_name": "od"}},
            "c: ORIGINAL_DST clusters must have no load assignment configured",
        ),
        ({"cleanup_interval": "0s"}, "c.cleanup_interval: must be > 0s, got 0s"),
    ],
)
def test_refused_as_envoy_refuses(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_cluster_config(_cluster(**fields), "c")
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("[::1]:8080", ("::1", 8080)),
        ("[0:0::1]:1", ("::1", 1)),
        ("10.0.0.1", None),
        ("::1:80", None),
        ("[10.0.0.1]:80", None),
        ("host.example:80", None),
        ("10.0.0.1:65536", None),
        ("10.0.0.1:", None),
        ("", None),
    ],
)
def test_parse_destination(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_destination(text) == parsed


class _Cluster:
    """The host list and its updates, as upstream/cluster.py keeps them."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []
        self.updates = 0

    def set_hosts(self, addresses: list[tuple[tuple[str, int], str]]) -> None:
        current = {host.address: host for host in self.hosts}
        self.hosts = [current.get(a) or Host(a, name) for a, name in addresses]
        self.updates += 1


def _hosts(config: OriginalDstConfig) -> tuple[OriginalDstHosts, _Cluster, Counter]:
    cluster, invalid = _Cluster(), Counter("invalid")
    return (
        OriginalDstHosts("od", config, invalid, lambda: cluster.hosts, cluster.set_hosts),
        (cluster),
        invalid,
    )


def test_a_destination_is_added_once_and_named_as_envoy() -> None:
    picker, cluster, invalid = _hosts(OriginalDstConfig("x-d"))
    first = picker.pick([(b"x-d", b"127.0.0.1:81"), (b"x-d", b"127.0.0.1:82")])
    assert first is not None and first.address == ("127.0.0.1", 81)
    assert first.hostname == "od127.0.0.1:81"
    assert picker.pick([(b"x-d", b"127.0.0.1:81")]) is first
    assert cluster.updates == 1
    v6 = picker.pick([(b"x-d", b"[::1]:81")])
    assert v6 is not None and v6.hostname == "od[::1]:81" == host_name("od", ("::1", 81))
    assert [h.address for h in cluster.hosts] == [("127.0.0.1", 81), ("::1", 81)]
    assert invalid.value == 0


def test_no_destination_no_host_and_an_invalid_header_is_counted() -> None:
    picker, cluster, invalid = _hosts(OriginalDstConfig("x-d"))
    assert picker.pick([]) is None
    assert picker.pick([(b"x-d", b"bogus")]) is None
    assert invalid.value == 1
    assert cluster.hosts == []


def test_the_restored_local_address_and_the_port_override() -> None:
    picker, _, _ = _hosts(OriginalDstConfig(None, port_override=9000))
    assert picker.destination([(b"x-envoy-original-dst-host", b"10.0.0.1:80")]) is None
    assert picker.destination([], ("10.0.0.2", 80)) == ("10.0.0.2", 9000)
    header_first, _, _ = _hosts(OriginalDstConfig("x-d"))
    assert header_first.destination([(b"x-d", b"10.0.0.1:1")], ("10.0.0.2", 2)) == (
        "10.0.0.1",
        1,
    )
    assert header_first.destination([(b"x-d", b"nope")], ("10.0.0.2", 2)) == ("10.0.0.2", 2)


def test_cleanup_removes_the_hosts_nothing_uses() -> None:
    picker, cluster, _ = _hosts(OriginalDstConfig("x-d"))
    busy = picker.pick([(b"x-d", b"127.0.0.1:1")])
    idle = picker.pick([(b"x-d", b"127.0.0.1:2")])
    pending = picker.pick([(b"x-d", b"127.0.0.1:3")])
    assert busy is not None and idle is not None and pending is not None
    busy.stats.cx_active = 1
    pending.stats.rq_pending_active = 1
    updates = cluster.updates
    picker.cleanup()
    assert cluster.hosts == [busy, pending]
    assert cluster.updates == updates + 1
    picker.cleanup()  # nothing to remove: no update
    assert cluster.updates == updates + 1
