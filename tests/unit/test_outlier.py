"""The outlier detector (pure apart from its interval timer, which these tests drive by
hand with an injected clock): ejection times grow with repeated ejections and shrink again,
success-rate ejection follows Envoy's mean - factor x stdev rule, and the split mode counts
local-origin failures apart."""

from __future__ import annotations

import random

from xds_proxy.config.health_check import OutlierDetectionConfig
from xds_proxy.stats import Stats
from xds_proxy.upstream.host import Host
from xds_proxy.upstream.outlier import OutlierDetector, Result


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _detector(config: OutlierDetectionConfig, hosts: list[Host]):
    clock = Clock()
    stats = Stats()
    detector = OutlierDetector("c", config, stats, lambda: None, random.Random(1), clock)
    detector.set_hosts(hosts)
    return detector, clock, stats


def _tick(detector: OutlierDetector, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    detector.run_interval()


def test_ejection_time_backs_off_and_recovers() -> None:
    hosts = [Host(("127.0.0.1", port)) for port in (1, 2)]
    config = OutlierDetectionConfig(
        consecutive_5xx=2, max_ejection_percent=100, interval_s=10, base_ejection_time_s=30
    )
    detector, clock, stats = _detector(config, hosts)
    bad = hosts[1]
    for _ in range(2):
        detector.put_http_status(bad, 500)
    assert bad.failed_outlier_check
    _tick(detector, clock, 29)
    assert bad.failed_outlier_check  # 30 s for a first ejection
    _tick(detector, clock, 1)
    assert not bad.failed_outlier_check
    for _ in range(2):
        detector.put_http_status(bad, 503)
    _tick(detector, clock, 30)
    assert bad.failed_outlier_check  # the second ejection lasts 2 x 30 s
    _tick(detector, clock, 30)
    assert not bad.failed_outlier_check
    assert stats.value("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx") == 2
    assert stats.value("cluster.c.outlier_detection.ejections_active") == 0


def test_success_rate_ejects_the_outlier() -> None:
    hosts = [Host(("127.0.0.1", port)) for port in range(1, 6)]
    config = OutlierDetectionConfig(max_ejection_percent=100, success_rate_request_volume=10)
    detector, clock, stats = _detector(config, hosts)
    for host in hosts:
        for request in range(20):
            failing = host is hosts[0] and request % 2 == 0
            detector.put_http_status(host, 500 if failing else 200)
    _tick(detector, clock, 10)  # the interval's numbers become the last interval's
    _tick(detector, clock, 10)
    assert [host.failed_outlier_check for host in hosts] == [True] + [False] * 4
    assert stats.value("cluster.c.outlier_detection.ejections_enforced_success_rate") == 1


def test_split_mode_counts_local_origin_failures_apart() -> None:
    hosts = [Host(("127.0.0.1", port)) for port in (1, 2)]
    config = OutlierDetectionConfig(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=2,
        consecutive_5xx=100,
        max_ejection_percent=100,
    )
    detector, _, stats = _detector(config, hosts)
    detector.put_result(hosts[0], Result.CONNECT_FAILED)
    detector.put_result(hosts[0], Result.CONNECT_SUCCESS)  # resets the local-origin count
    detector.put_result(hosts[0], Result.CONNECT_FAILED)
    assert not hosts[0].failed_outlier_check
    detector.put_result(hosts[0], Result.TIMEOUT)
    assert hosts[0].failed_outlier_check
    name = "cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure"
    assert stats.value(name) == 1
