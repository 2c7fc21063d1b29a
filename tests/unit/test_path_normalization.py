"""The path rules (http/path_normalization.py). The paths up to `/direct//x/../` are the
interop test's (tests/interop/test_hcm_fields_interop.py), with the results Envoy 1.40 gave;
the last three follow Envoy's canonicaliser for inputs its codecs refuse before it runs."""

from __future__ import annotations

import pytest

from xds_proxy.config.hcm import EscapedSlashes, PathSettings
from xds_proxy.http.path_normalization import (
    PathOutcome,
    PathRules,
    canonical_path,
    merge_slashes,
    unescape_slashes,
)

CANONICAL = [
    (b"/a/../b/./c//d", b"/b/c//d"),
    (b"/a%2Fb%2fc%5Cd%5ce", b"/a%2Fb%2fc%5Cd%5ce"),
    (b"/a/%2e%2E/b/%2E/c%41%7e%7E%20%3a%zz", b"/b/cA~~%20%3a%zz"),
    (b"/a\\b\\..\\c", b"/a/c"),
    (b"/../../x", b"/x"),
    (b"/a/%%32%65/b%%2e%41/%zz", b"/a/%252e/b%.A/%zz"),
    (b'/a/"<>^`{|}/b', b"/a/%22%3C%3E%5E%60%7B%7C%7D/b"),
    (b"/a/b/..", b"/a/"),
    (b"/a/.b/..c/%2e./.", b"/a/.b/"),
    (b"////", b"////"),
    (b"/direct//x/../", b"/direct//"),
    (b"", b"/"),
    (b"a/./b", b"/a/b"),
    (b"/\xc3\xa9", b"/%C3%A9"),
]


@pytest.mark.parametrize(("path", "expected"), CANONICAL)
def test_canonical_path_as_envoy(path: bytes, expected: bytes) -> None:
    assert canonical_path(path) == expected


def test_an_escaped_nul_cannot_be_canonicalised() -> None:
    assert canonical_path(b"/a/%00/b") is None


def test_merge_and_unescape_slashes() -> None:
    assert merge_slashes(b"////") == b"//"
    assert merge_slashes(b"/a//b///c/") == b"/a/b/c/"
    assert merge_slashes(b"/a/b") == b"/a/b"
    assert unescape_slashes(b"/a%2Fb%2fc%5Cd%5ce") == b"/a/b/c\\d\\e"


def _rules(normalize: bool, merge: bool, escaped: EscapedSlashes) -> PathRules:
    return PathRules(PathSettings(normalize, merge, escaped))


def test_the_query_is_never_touched() -> None:
    rules = _rules(True, True, EscapedSlashes.UNESCAPE_AND_FORWARD)
    assert rules.apply(b"/a/../b//c%2F?q=/x/../%2F") == (PathOutcome.CONTINUE, b"/b/c/?q=/x/../%2F")


def test_escaped_slash_actions() -> None:
    path = b"/a%2F../b?x"
    keep = _rules(False, False, EscapedSlashes.KEEP_UNCHANGED)
    assert keep.apply(path) == (PathOutcome.CONTINUE, path)
    reject = _rules(True, False, EscapedSlashes.REJECT_REQUEST)
    assert reject.apply(path) == (PathOutcome.REJECT, b"/a/../b?x")
    redirect = _rules(False, False, EscapedSlashes.UNESCAPE_AND_REDIRECT)
    assert redirect.apply(path) == (PathOutcome.REDIRECT, b"/a/../b?x")
    assert redirect.apply(b"/plain") == (PathOutcome.CONTINUE, b"/plain")
    forward = _rules(True, False, EscapedSlashes.UNESCAPE_AND_FORWARD)
    assert forward.apply(path) == (PathOutcome.CONTINUE, b"/b?x")
