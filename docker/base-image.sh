#!/usr/bin/env bash
# Build the local base image (default name xds-proxy-base:bookworm) when Docker Hub is out of
# reach: Debian bookworm from debootstrap (its Python 3.11 matches the wheels built on the
# host), imported with `docker import`. Does nothing when the image exists already.
set -euo pipefail

IMAGE="${1:-xds-proxy-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: present"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    echo "docker/base-image.sh: no debootstrap: apt-get install -y debootstrap" >&2
    exit 1
fi
ROOT="$(mktemp -d /tmp/xds-proxy-rootfs.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "base image $IMAGE: debootstrap bookworm into $ROOT"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -n 20 "$ROOT.log" >&2
    exit 1
}
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
rm -f "$ROOT.log"
echo "base image $IMAGE: imported"
