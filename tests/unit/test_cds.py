"""The pure parts of CDS: decoding a SotW response and applying it to the cluster manager
(Envoy's CdsApiImpl/CdsApiHelper semantics), and the ACK/NACK and stats of a subscription."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from xds_proxy.stats import Stats
from xds_proxy.upstream.manager import ClusterManager
from xds_proxy.xds.cds import (
    CDS_STATS_PREFIX,
    CLUSTER_TYPE_URL,
    CdsClient,
    apply_sotw_clusters,
    decode_sotw_clusters,
)
from xds_proxy.xds.decode import ResponseDecodeError
from xds_proxy.xds.sotw import SotwSubscription, SubscriptionStats


def cluster(name: str, port: int = 10001, host: str = "127.0.0.1") -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": host, "port_value": port}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        },
        cluster_pb2.Cluster(),
    )


def response(*clusters: cluster_pb2.Cluster, version: str = "1") -> discovery_pb2.DiscoveryResponse:
    reply = discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=CLUSTER_TYPE_URL, nonce="n" + version
    )
    for item in clusters:
        reply.resources.add().Pack(item)
    return reply


@pytest.fixture
def manager() -> ClusterManager:
    clusters = ClusterManager(Stats())
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.static_resources.clusters.append(cluster("static", 9))
    clusters.add_static(bootstrap)
    return clusters


# -- decode ---------------------------------------------------------------------------------


def test_decode_keeps_order_and_opens_resource_wrappers() -> None:
    reply = response(cluster("a"), cluster("b"))
    wrapper = discovery_pb2.Resource(name="c", version="7")
    wrapper.resource.Pack(cluster("c"))
    reply.resources.add().Pack(wrapper)
    assert [c.name for c in decode_sotw_clusters(reply)] == ["a", "b", "c"]


def test_decode_rejects_a_resource_of_another_type() -> None:
    reply = response(cluster("a"))
    reply.resources.add().Pack(listener_pb2.Listener(name="l"))
    with pytest.raises(ResponseDecodeError, match="does not match the message-wide type URL"):
        decode_sotw_clusters(reply)


def test_decode_rejects_corrupt_bytes() -> None:
    reply = response()
    reply.resources.add(type_url=CLUSTER_TYPE_URL, value=b"\xff\xff\xff")
    with pytest.raises(ResponseDecodeError, match=r"Unable to unpack as envoy\.config\.cluster"):
        decode_sotw_clusters(reply)


# -- apply ----------------------------------------------------------------------------------


def test_sotw_adds_updates_and_removes_dynamic_clusters_only(manager: ClusterManager) -> None:
    assert apply_sotw_clusters(manager, [cluster("a"), cluster("b")]) == (True, None)
    assert set(manager.clusters) == {"static", "a", "b"}
    first_a = manager.get("a")
    assert apply_sotw_clusters(manager, [cluster("a"), cluster("b")]) == (False, None)
    assert manager.get("a") is first_a  # identical: untouched
    assert apply_sotw_clusters(manager, [cluster("a", 10002)]) == (True, None)
    assert set(manager.clusters) == {"static", "a"}
    assert manager.get("a") is not first_a
    assert apply_sotw_clusters(manager, []) == (True, None)
    assert set(manager.clusters) == {"static"}
    assert manager.stats.counter("cluster_manager.cluster_added").value == 3
    assert manager.stats.counter("cluster_manager.cluster_modified").value == 1
    assert manager.stats.counter("cluster_manager.cluster_removed").value == 2


def test_a_static_cluster_name_is_skipped_silently(manager: ClusterManager) -> None:
    static = manager.get("static")
    assert apply_sotw_clusters(manager, [cluster("static", 1234)]) == (False, None)
    assert manager.get("static") is static


def test_invalid_and_duplicate_clusters_nack_but_the_others_apply(
    manager: ClusterManager,
) -> None:
    applied, error = apply_sotw_clusters(
        manager, [cluster("good"), cluster("bad", host="not-an-ip"), cluster("good", 2)]
    )
    assert applied
    assert error is not None
    assert error.startswith("Error adding/updating cluster(s) bad: ")
    assert error.endswith(", good: duplicate cluster good found")
    assert set(manager.clusters) == {"static", "good"}
    kept = manager.records["good"].message  # the first 'good' stays, as in Envoy
    assert kept == cluster("good").SerializeToString(deterministic=True)


def test_a_rejected_update_still_removes_the_missing_clusters(manager: ClusterManager) -> None:
    apply_sotw_clusters(manager, [cluster("old")])
    applied, error = apply_sotw_clusters(manager, [cluster("bad", host="nope")])
    assert applied and error is not None
    assert set(manager.clusters) == {"static"}


# -- subscription (ACK/NACK, stats) ---------------------------------------------------------


def test_subscription_acks_nacks_and_counts_under_cds_stats(manager: ClusterManager) -> None:
    stats = Stats()
    handles = SubscriptionStats.create(stats, CDS_STATS_PREFIX, CDS_STATS_PREFIX + "control_plane.")
    subscription = SotwSubscription(
        CLUSTER_TYPE_URL, bootstrap_pb2.Bootstrap().node, handles, decode_sotw_clusters
    )

    def apply(_version: str, clusters: list) -> str | None:
        return apply_sotw_clusters(manager, clusters)[1]

    first = subscription.on_stream_established()
    assert first.type_url == CLUSTER_TYPE_URL and not first.resource_names
    ack = subscription.on_response(response(cluster("a"), version="1"), apply, 5)
    assert ack.accepted and ack.request.version_info == "1"
    nack = subscription.on_response(response(cluster("a", host="x"), version="2"), apply, 6)
    assert not nack.accepted
    assert nack.request.version_info == "1" and nack.request.response_nonce == "n2"
    assert nack.request.error_detail.message.startswith("Error adding/updating cluster(s) a: ")
    assert stats.counter("cluster_manager.cds.update_success").value == 1
    assert stats.counter("cluster_manager.cds.update_rejected").value == 1
    assert stats.counter("cluster_manager.cds.update_attempt").value == 3
    assert stats.text_readout("cluster_manager.cds.version_text").value == "1"
    assert stats.gauge("cluster_manager.cds.control_plane.connected_state").value == 1


# -- configuration --------------------------------------------------------------------------


def cds_bootstrap(api_type: str = "GRPC", ads: bool = False) -> bootstrap_pb2.Bootstrap:
    source = {
        "api_type": api_type,
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
    }
    dynamic: dict = {"cds_config": {"initial_fetch_timeout": "2s"}}
    if ads:
        dynamic["cds_config"]["ads"] = {}
        dynamic["ads_config"] = source
    else:
        dynamic["cds_config"]["api_config_source"] = source
    document = {
        "dynamic_resources": dynamic,
        "static_resources": {"clusters": [json_format.MessageToDict(cluster("xds", 18000))]},
    }
    return json_format.ParseDict(document, bootstrap_pb2.Bootstrap())


@pytest.mark.parametrize("ads", [False, True])
def test_client_reads_its_source_and_names_stats_as_envoy(ads: bool) -> None:
    stats = Stats()
    client = CdsClient(cds_bootstrap(ads=ads), stats, ClusterManager(stats), lambda: None)
    assert client.server.aggregated is ads
    assert client.server.target == "127.0.0.1:18000"
    assert client.server.initial_fetch_timeout_s == 2.0
    expected = "control_plane." if ads else "cluster_manager.cds.control_plane."
    assert expected + "connected_state" in stats.gauges
    assert CdsClient.configured(cds_bootstrap())
    assert not CdsClient.configured(bootstrap_pb2.Bootstrap())


def test_delta_cds_client_opens_the_delta_streams() -> None:
    stats = Stats()
    client = CdsClient(cds_bootstrap("DELTA_GRPC"), stats, ClusterManager(stats), lambda: None)
    assert client.server.delta
    assert client.type_url == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
