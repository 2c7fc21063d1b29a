#!/usr/bin/env bash
# Start a private Docker engine for `make test-compose` (or reuse one that answers) and print
# the DOCKER_HOST to use; `docker/dockerd.sh stop` stops the one this script started.
#
# Why private: this machine has no engine running by default, and a separate socket, data root
# and pid file never touch an engine someone else runs. Containers only need a bridge network
# between themselves (no outbound traffic), so iptables is off.
set -euo pipefail

STATE_DIR="${XDS_DOCKER_STATE:-/var/lib/xds-proxy-docker}"
RUN_DIR="${XDS_DOCKER_RUN:-/run/xds-proxy-docker}"
SOCKET="unix://$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/dockerd.pid"
LOG="$RUN_DIR/dockerd.log"

answers() { DOCKER_HOST="$1" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

stop() {
    if [[ -f "$PIDFILE" ]]; then
        local pid
        pid="$(cat "$PIDFILE")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$PIDFILE"
    fi
}

start() {
    if [[ -n "${DOCKER_HOST:-}" ]] && answers "$DOCKER_HOST"; then
        echo "$DOCKER_HOST"; return
    fi
    if answers "unix:///var/run/docker.sock"; then
        echo "unix:///var/run/docker.sock"; return
    fi
    if answers "$SOCKET"; then
        echo "$SOCKET"; return
    fi
    if ! command -v dockerd >/dev/null; then
        echo "docker/dockerd.sh: no dockerd: apt-get install -y docker.io" >&2
        exit 1
    fi
    mkdir -p "$STATE_DIR" "$RUN_DIR"
    dockerd --host "$SOCKET" --data-root "$STATE_DIR" --exec-root "$RUN_DIR/exec" \
        --pidfile "$PIDFILE" --iptables=false --ip6tables=false --ip-masq=false \
        --bridge=none >"$LOG" 2>&1 &
    for _ in $(seq 1 300); do
        if answers "$SOCKET"; then echo "$SOCKET"; return; fi
        if [[ -f "$PIDFILE" ]] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "docker/dockerd.sh: dockerd did not start; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: docker/dockerd.sh [start|stop]" >&2; exit 2 ;;
esac
