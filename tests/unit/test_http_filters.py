"""build_filter_chain: which network filter chains are accepted, and the one-line errors."""

from __future__ import annotations

import copy

import pytest
from envoy.config.listener.v3 import listener_components_pb2
from google.protobuf import any_pb2, json_format

from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError
from xds_proxy.listener.context import FilterChainContext
from xds_proxy.network_filters import build_filter_chain
from xds_proxy.stats import Stats

HCM_TYPE = (
    "type.googleapis.com/"
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DIRECT_TYPE = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
HCM = {
    "name": "envoy.filters.network.http_connection_manager",
    "typed_config": {
        "@type": HCM_TYPE,
        "stat_prefix": "web",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [ROUTER],
    },
}


def build(filters: list[dict], path: str = "filters"):
    """The chain as a listener compiles it: PGV rules and the support table (config/) first,
    then building; the first error is what an LDS NACK says."""
    messages = [json_format.ParseDict(f, listener_components_pb2.Filter()) for f in filters]
    for index, message in enumerate(messages):
        require_valid(message, f"{path}[{index}]")
    return build_filter_chain(messages, FilterChainContext(Stats(), "l"), path)


def _stdout_log(text_format: str) -> dict:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string": text_format}},
        },
    }


def hcm(**changes: object) -> dict:
    config = copy.deepcopy(HCM)
    for key, value in changes.items():
        if value is None:
            del config["typed_config"][key]
        else:
            config["typed_config"][key] = value
    return config


def test_valid_chains_build() -> None:
    assert callable(build([hcm()]))
    assert callable(build([hcm(codec_type="HTTP1")]))
    assert callable(build([{"name": "d", "typed_config": {"@type": DIRECT_TYPE}}]))
    assert callable(build([]))


def test_build_is_cheap_and_gives_fresh_protocols() -> None:
    factory = build([hcm()])
    assert factory() is not factory()


TYPE_TAIL = HCM_TYPE.split("/")[-1]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (
            [hcm(route_config=None)],
            "filters[0].typed_config: one of rds, route_config, scoped_routes is required",
        ),
        (
            [hcm(rds={"route_config_name": "r", "config_source": {"ads": {}}}, route_config=None)],
            "filters[0].typed_config.rds: not supported here (no RDS)",
        ),
        (
            [hcm(stat_prefix=None)],
            "filters[0].typed_config.stat_prefix: must not be empty",
        ),
        ([hcm(codec_type="HTTP3")], "filters[0].typed_config.codec_type: HTTP3 not supported"),
        ([hcm(via="proxy")], "filters[0].typed_config.via: not supported"),
        (
            [hcm(access_log=[_stdout_log("%START_TIME% %NOT_AN_OPERATOR%")])],
            "filters[0].typed_config.access_log[0].typed_config.log_format.text_format_source:"
            " command operator %NOT_AN_OPERATOR% is not supported",
        ),
        (
            [hcm(access_log=[_stdout_log("%REQ(:PATH)% %FILTER_STATE(x)%")])],
            "filters[0].typed_config.access_log[0].typed_config.log_format.text_format_source:"
            " command operator %FILTER_STATE% is not supported",
        ),
        (
            [hcm(access_log=[_stdout_log("50% off")])],
            "filters[0].typed_config.access_log[0].typed_config.log_format.text_format_source:"
            " Incorrect configuration: 50% off. Couldn't find valid command at position 2",
        ),
        (
            [
                hcm(
                    access_log=[
                        {
                            **_stdout_log("%PROTOCOL%"),
                            "filter": {"header_filter": {"header": {"name": "x"}}},
                        }
                    ]
                )
            ],
            "filters[0].typed_config.access_log[0].filter.header_filter: not supported",
        ),
        (
            [hcm(max_request_headers_kb=9000)],
            "filters[0].typed_config.max_request_headers_kb: must be <= 8192, got 9000",
        ),
        (
            [hcm(http_filters=[])],
            "filters[0].typed_config.http_filters: without envoy.filters.http.router nothing "
            "answers: not supported",
        ),
        (
            [hcm(http_filters=[ROUTER, ROUTER])],
            "filters[0].typed_config.http_filters[0]: Error: terminal filter named "
            "envoy.filters.http.router of type envoy.filters.http.router must be the last "
            "filter in a http filter chain.",
        ),
        (
            [hcm(http_filters=[{"name": "x", "typed_config": {"@type": DIRECT_TYPE}}, ROUTER])],
            "filters[0].typed_config.http_filters[0].typed_config: @type 'type.googleapis.com/"
            "envoy.extensions.filters.network.direct_response.v3.Config' not supported",
        ),
        (
            [hcm(common_http_protocol_options={"max_requests_per_connection": 3})],
            "filters[0].typed_config.common_http_protocol_options.max_requests_per_connection: "
            "not supported yet",
        ),
        (
            [hcm(), hcm()],
            "filters[0]: Error: terminal filter named envoy.filters.network.http_connection_"
            f"manager of type {TYPE_TAIL} must be the last filter in a network filter chain.",
        ),
        (
            [{"name": "t", "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "t"}}],
            "filters[0].typed_config: one of cluster, weighted_clusters is required",
        ),
        (
            [{"name": "foo", "typed_config": {"@type": ROUTER_TYPE}}],
            "filters[0].typed_config: @type 'type.googleapis.com/envoy.extensions.filters.http."
            "router.v3.Router' not supported",
        ),
        ([{"name": "nothing"}], "filters[0].typed_config: is required"),
    ],
)
def test_chain_errors(filters: list[dict], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build(filters)
    assert str(error.value) == message


def test_error_path_prefix_is_the_callers() -> None:
    with pytest.raises(ConfigError, match=r"^filter_chains\[2\]\.filters\[0\]\.typed_config: "):
        build([hcm(route_config=None)], path="filter_chains[2].filters")


def test_undecodable_typed_config() -> None:
    broken = listener_components_pb2.Filter(
        name="hcm", typed_config=any_pb2.Any(type_url=HCM_TYPE, value=b"\xff\xff\xff")
    )
    with pytest.raises(ConfigError, match=r"^filters\[0\]\.typed_config: cannot decode "):
        build_filter_chain([broken], FilterChainContext(Stats(), "l"))


def test_direct_response_body_sources(tmp_path, monkeypatch) -> None:
    body_file = tmp_path / "body"
    body_file.write_bytes(b"from a file")
    assert callable(
        build(
            [
                {
                    "name": "d",
                    "typed_config": {
                        "@type": DIRECT_TYPE,
                        "response": {"filename": str(body_file)},
                    },
                }
            ]
        )
    )
    missing = {"filename": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match=r"^filters\[0\]\.typed_config\.response\.filename: "):
        build([{"name": "d", "typed_config": {"@type": DIRECT_TYPE, "response": missing}}])
