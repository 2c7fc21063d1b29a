# xds-proxy, control-plane-stub and the demo backend in one image; installed from wheels built
# on the host (docker/build-wheels.sh), so the build needs no network.
#
#   docker/build-wheels.sh && docker build -t xds-proxy .              # python:3.11-slim base
#   docker/base-image.sh && docker build --build-arg BASE=xds-proxy-base:bookworm -t xds-proxy .
#
# The second line is for hosts without a registry: a Debian bookworm base from debootstrap
# (its Python 3.11 matches the wheels). Targets: `runtime` (the default; no pip, no
# compilers) and `tests` (runtime + pytest and the repo's tests, for the compose `tests`
# service). A real Envoy for comparison has its own file: docker/envoy.Dockerfile.
ARG BASE=python:3.11-slim

FROM ${BASE} AS runtime
RUN groupadd --system xds && useradd --system --gid xds --home-dir /srv --no-create-home xds \
    && mkdir -p /srv && chown xds:xds /srv
COPY build/wheels/runtime/ /tmp/wheels/
RUN python3 -m venv /opt/xds-proxy \
    && /opt/xds-proxy/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        --disable-pip-version-check xds-proxy \
    && /opt/xds-proxy/bin/python -m pip uninstall -q -y pip setuptools \
    && rm -rf /tmp/wheels
COPY examples/ /srv/examples/
COPY docker/compose/ /srv/compose/
ENV PATH=/opt/xds-proxy/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /srv
USER xds
EXPOSE 9901 10000 10001 18000 18001 8080
CMD ["xds-proxy", "--help"]

FROM runtime AS tests
USER root
COPY build/wheels/tests/ /tmp/wheels/
RUN /opt/xds-proxy/bin/python -m ensurepip >/dev/null \
    && /opt/xds-proxy/bin/python -m pip install --no-cache-dir --no-index \
        --find-links /tmp/wheels --disable-pip-version-check pytest pytest-asyncio \
    && rm -rf /tmp/wheels
COPY pyproject.toml /srv/
COPY tests/ /srv/tests/
USER xds
CMD ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", \
     "tests/integration/test_compose_traffic.py"]

# The default target (last stage): the runtime image.
FROM runtime
