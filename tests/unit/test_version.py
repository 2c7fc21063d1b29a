"""The version xds-proxy reports as its xDS user agent is the project's version."""

from __future__ import annotations

import tomllib
from pathlib import Path

from envoy.config.core.v3 import base_pb2

import xds_proxy
from xds_proxy.xds.transport import USER_AGENT_NAME, client_node

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_package_version_is_the_pyproject_version() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert xds_proxy.__version__ == project["version"]


def test_the_node_sent_names_our_user_agent_and_version() -> None:
    node = base_pb2.Node(id="n", cluster="c")
    sent = client_node(node)
    assert (sent.id, sent.user_agent_name, sent.user_agent_version) == (
        "n",
        USER_AGENT_NAME,
        xds_proxy.__version__,
    )
    assert not node.user_agent_name  # the bootstrap's node is left as it is
