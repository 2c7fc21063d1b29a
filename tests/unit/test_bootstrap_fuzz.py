"""Whatever a document holds, loading it ends in a bootstrap or in one ConfigError line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_proxy.bootstrap import check_bootstrap, message_from_dict, parse_config_text
from xds_proxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    yaml.safe_load((REPO / "examples" / name).read_text())
    for name in ("bootstrap-static.yaml", "bootstrap.yaml", "bootstrap-ads.yaml")
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "-1s", "0.5s", "V3", "GRPC", "STATIC", "HTTP2", "::1", "@type", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.sampled_from(["@type", "name", "value"])),
            inner,
            max_size=3,
        ),
    ),
    max_leaves=8,
)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in the document where a value can be replaced."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, item in doc.items():
            found += paths(item, (*prefix, key))
    elif isinstance(doc, list):
        for position, item in enumerate(doc):
            found += paths(item, (*prefix, position))
    return found


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    result = copy.deepcopy(doc)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return result


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict:
    doc = draw(st.sampled_from(DOCS))
    path = draw(st.sampled_from(paths(doc)))
    return replaced(doc, path, draw(values))


def load(doc: Any) -> None:
    try:
        check_bootstrap(message_from_dict(doc, bootstrap_pb2.Bootstrap))
    except ConfigError as error:
        text = str(error)
        assert text and "\n" not in text
        assert ": " in text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_examples_load_or_fail_with_one_line(doc: dict) -> None:
    load(doc)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), values, max_size=4))
def test_random_top_level_documents(doc: dict) -> None:
    load(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_random_text_parses_or_fails_with_one_line(text: str) -> None:
    try:
        data = parse_config_text(text, "x.yaml", None)
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    load(data)
