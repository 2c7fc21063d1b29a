#!/usr/bin/env bash
# `make test-compose`: build the images and run the compose `tests` service against the
# control-plane, proxy and backend services, on a machine with no Docker engine running and
# no registry: Debian's docker.io, docker-compose and debootstrap are installed when missing
# (as root), a private dockerd is started (docker/dockerd.sh) and stopped again, the base
# image comes from debootstrap (docker/base-image.sh) unless XDS_PROXY_BASE names another,
# and the images install wheels built on the host (docker/build-wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [[ -z "${XDS_PROXY_BASE:-}" ]] && ! command -v debootstrap >/dev/null; then
    need+=(debootstrap)
fi
if ((${#need[@]})); then
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "test-compose: needs ${need[*]} (Debian packages); install them first" >&2
        exit 1
    fi
    echo "test-compose: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" >/dev/null || {
        apt-get update -q >/dev/null
        apt-get install -y -q "${need[@]}" >/dev/null
    }
fi

started_here=false
pidfile="${XDS_DOCKER_RUN:-/run/xds-proxy-docker}/dockerd.pid"
[[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null || started_here=true
DOCKER_HOST="$(docker/dockerd.sh start)"
export DOCKER_HOST
[[ -f "$pidfile" ]] || started_here=false  # an engine that was already running is reused
# The legacy builder: Debian's engine has no buildx, and nothing here needs BuildKit.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
export XDS_PROXY_BASE="${XDS_PROXY_BASE:-xds-proxy-base:bookworm}"
if [[ "$XDS_PROXY_BASE" == xds-proxy-base:* ]]; then
    docker/base-image.sh "$XDS_PROXY_BASE"
fi
docker/build-wheels.sh

# Short drains for the tests; every published port on any free host port (no fixed ports).
export XDS_PROXY_DRAIN_TIME_S=3 XDS_PROXY_DRAIN_STRATEGY=immediate
export XDS_PROXY_ADMIN_PORT= XDS_PROXY_WEB_PORT= XDS_PROXY_API_PORT= STUB_CONTROL_PORT=
project="xds-proxy-test-$$"
run=("${compose[@]}" -p "$project" --profile tests)

cleanup() {
    "${run[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    if $started_here; then docker/dockerd.sh stop; fi
}
trap cleanup EXIT

"${run[@]}" build
status=0
"${run[@]}" up --no-build --abort-on-container-exit --exit-code-from tests || status=$?
if ((status != 0)); then
    echo "test-compose: the tests service failed (exit $status); service logs above" >&2
fi
exit "$status"
