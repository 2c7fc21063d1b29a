"""xds-proxy: an Envoy-compatible proxy whose listeners are driven by xDS."""

# The [project] version of pyproject.toml (tests/unit/test_version.py keeps them equal). Read
# here rather than from the installed metadata: importing importlib.metadata costs every start.
__version__ = "0.1.0"
