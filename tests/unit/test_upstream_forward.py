"""Route `route` actions and header mutations (pure parts of xds_proxy/upstream/forward.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import json_format

from xds_proxy.config.support import require_valid
from xds_proxy.errors import ConfigError
from xds_proxy.upstream.forward import DownstreamRequest, ForwardAction, HeaderMutations
from xds_proxy.upstream.stream import RequestHead


def action(document: dict, kind: str = "prefix", value: str = "/") -> ForwardAction:
    message = json_format.ParseDict(document, route_components_pb2.RouteAction())
    require_valid(message, "route")  # the support table's gate (config/)
    return ForwardAction(message, "route", kind, value)


def mutations(document: dict) -> HeaderMutations:
    message = json_format.ParseDict(document, route_components_pb2.Route())
    return HeaderMutations(message, "routes[0]")


def test_single_cluster_and_defaults() -> None:
    forward = action({"cluster": "web"})
    assert forward.pick_cluster(random.Random()) == "web"
    assert forward.timeout_s == 15.0
    assert forward.not_found_status == 503
    assert forward.rewrite_path(b"/a") is None
    assert forward.host_rewrite is None


def test_timeout_zero_disables_and_not_found_code() -> None:
    forward = action({"cluster": "web", "timeout": "0s", "cluster_not_found_response_code": 1})
    assert forward.timeout_s is None
    assert forward.not_found_status == 404


def test_weighted_clusters_follow_weights() -> None:
    forward = action(
        {
            "weighted_clusters": {
                "clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]
            }
        }
    )
    rng = random.Random(11)
    picks = Counter(forward.pick_cluster(rng) for _ in range(4000))
    assert 800 < picks["a"] < 1200
    assert picks["a"] + picks["b"] == 4000


def test_weighted_clusters_zero_weight_never_picked() -> None:
    forward = action(
        {
            "weighted_clusters": {
                "clusters": [{"name": "a", "weight": 0}, {"name": "b", "weight": 5}]
            }
        }
    )
    assert {forward.pick_cluster(random.Random(seed)) for seed in range(50)} == {"b"}


def test_prefix_rewrite_keeps_the_rest_and_the_query() -> None:
    forward = action({"cluster": "web", "prefix_rewrite": "/v2/"}, "prefix", "/api/")
    assert forward.rewrite_path(b"/api/users?x=1") == b"/v2/users?x=1"
    whole = action({"cluster": "web", "prefix_rewrite": "/"}, "prefix", "/strip")
    assert whole.rewrite_path(b"/strip/me") == b"//me"


def test_host_rewrite_literal() -> None:
    assert (
        action({"cluster": "w", "host_rewrite_literal": "x.example"}).host_rewrite == b"x.example"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, r"^route: one of cluster, cluster_header, weighted_clusters, .* is required$"),
        (
            {"cluster": "w", "retry_policy": {"retry_priority": {"name": "p"}}},
            r"^route\.retry_policy\.retry_priority: not supported yet$",
        ),
        ({"cluster_header": "x-c"}, r"^route\.cluster_header: not supported$"),
        (
            {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}},
            r"^route\.weighted_clusters: Sum of weights in the weighted_cluster must be greater",
        ),
        (
            {"weighted_clusters": {"clusters": []}},
            r"^route\.weighted_clusters\.clusters: must have at least 1 item, got 0$",
        ),
        (
            {
                "weighted_clusters": {
                    "clusters": [{"name": "a", "weight": 1, "request_headers_to_add": []}],
                    "runtime_key_prefix": "x",
                }
            },
            r"^route\.weighted_clusters\.runtime_key_prefix: not supported$",
        ),
    ],
)
def test_action_errors(document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        action(document)


def test_prefix_rewrite_needs_prefix_or_path_match() -> None:
    with pytest.raises(ConfigError, match=r"^route\.prefix_rewrite: Cannot use prefix_rewrite"):
        action({"cluster": "w", "prefix_rewrite": "/x"}, "safe_regex", "")


def test_header_mutations_append_actions() -> None:
    level = mutations(
        {
            "request_headers_to_add": [
                {"header": {"key": "X-Add", "value": "1"}},
                {"header": {"key": "x-add", "value": "2"}},
                {"header": {"key": "x-absent", "value": "new"}, "append_action": "ADD_IF_ABSENT"},
                {"header": {"key": "x-keep", "value": "no"}, "append_action": "ADD_IF_ABSENT"},
                {
                    "header": {"key": "x-over", "value": "o"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
                {"header": {"key": "x-only", "value": "o"}, "append_action": "OVERWRITE_IF_EXISTS"},
                {"header": {"key": "x-empty", "value": ""}},
                {"header": {"key": "x-legacy", "value": "l"}, "append": False},
            ],
            "request_headers_to_remove": ["X-Gone"],
        }
    )
    headers = [
        (b"x-keep", b"yes"),
        (b"x-over", b"old"),
        (b"x-over", b"old2"),
        (b"x-gone", b"bye"),
        (b"x-legacy", b"old"),
    ]
    level.apply_request(headers)
    assert headers == [
        (b"x-keep", b"yes"),
        (b"x-add", b"1"),
        (b"x-add", b"2"),
        (b"x-absent", b"new"),
        (b"x-over", b"o"),
        (b"x-legacy", b"l"),
    ]


def test_response_mutations_and_percent_escape() -> None:
    level = mutations(
        {
            "response_headers_to_add": [{"header": {"key": "x-pct", "value": "100%%"}}],
            "response_headers_to_remove": ["x-internal"],
        }
    )
    headers = [(b"x-internal", b"1"), (b"content-type", b"text/plain")]
    level.apply_response(headers)
    assert headers == [(b"content-type", b"text/plain"), (b"x-pct", b"100%")]
    assert not level.empty


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"request_headers_to_add": [{"header": {"key": ":path", "value": "/"}}]},
            r"^routes\[0\]\.request_headers_to_add\[0\]\.header\.key: ':-prefixed'",
        ),
        (
            {"request_headers_to_remove": ["host"]},
            r"^routes\[0\]\.request_headers_to_remove\[0\]: ':-prefixed' or host",
        ),
        (
            {
                "response_headers_to_add": [
                    {"header": {"key": "x", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}}
                ]
            },
            r"^routes\[0\]\.response_headers_to_add\[0\]\.header\.value: format specifiers",
        ),
        (
            {
                "request_headers_to_add": [
                    {
                        "header": {"key": "x", "value": "1"},
                        "append": True,
                        "append_action": "ADD_IF_ABSENT",
                    }
                ]
            },
            r"^routes\[0\]\.request_headers_to_add\[0\]: Both append and append_action",
        ),
    ],
)
def test_mutation_errors(document: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        mutations(document)


def _request(url: bytes = b"/", headers: list | None = None) -> DownstreamRequest:
    return DownstreamRequest(b"GET", url, b"orig.example", headers or [])


def test_host_rewrite_header_uses_the_header_when_present_and_not_empty() -> None:
    forward = action({"cluster": "c", "host_rewrite_header": "X-Host"})
    assert forward.rewritten_host(_request(headers=[(b"x-host", b"h")])) == b"h"
    assert forward.rewritten_host(_request(headers=[(b"x-host", b"")])) is None
    assert forward.rewritten_host(_request()) is None


def test_host_rewrite_path_regex_matches_the_path_without_its_query() -> None:
    rewrite = {"pattern": {"regex": "^/svc/([^/]+)/(.*)$"}, "substitution": "\\2.\\1"}
    forward = action({"cluster": "c", "host_rewrite_path_regex": rewrite})
    assert forward.rewritten_host(_request(b"/svc/a/b?x=/svc/q/r")) == b"b.a"
    assert action({"cluster": "c"}).rewritten_host(_request()) is None


def test_auto_host_rewrite_takes_the_hosts_name_once_chosen() -> None:
    head = RequestHead(b"GET", b"/", b"orig.example", [], host_from_upstream=True)
    head.use_host_name("")
    assert (head.authority, head.headers) == (b"orig.example", [])
    head.use_host_name("named.example")
    assert head.authority == b"named.example"
    assert head.headers == [(b"x-envoy-original-host", b"orig.example")]
    quiet = RequestHead(b"GET", b"/", b"o", [], host_from_upstream=True, keep_original_host=False)
    quiet.use_host_name("n")
    assert (quiet.authority, quiet.headers) == (b"n", [])
    untouched = RequestHead(b"GET", b"/", b"o", [])
    untouched.use_host_name("n")
    assert untouched.authority == b"o"
