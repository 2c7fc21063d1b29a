"""The compiled part of the package (everything else is in pyproject.toml): the access log's
core, xds_proxy/access_log/native.pyx, built with Cython."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("xds_proxy.access_log.native", ["xds_proxy/access_log/native.pyx"])])
