"""config/warm.py: the typical listener it checks passes the gate's fast path, so warming
compiles the checks a real first push uses (a listener the fast path refused would go
through the slow walks and compile nothing)."""

from __future__ import annotations

from xds_proxy.config import clean
from xds_proxy.config.support import listener_errors
from xds_proxy.config.warm import typical_listener


def test_the_typical_listener_is_clean() -> None:
    listener = typical_listener()
    assert clean.is_clean(listener)
    assert listener_errors(listener) == []
