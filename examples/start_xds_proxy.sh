#!/bin/sh
# Hot restart, the Envoy way: `xds-proxy-restarter examples/start_xds_proxy.sh` runs this script
# with RESTART_EPOCH=0, and again with the next epoch on every `kill -HUP <restarter pid>`.
# The new process takes the listen sockets over from the previous one (no refused connection),
# tells it to drain for --drain-time-s and to exit after --parent-shutdown-time-s.
# SIGTERM/SIGINT to the restarter stop every epoch.
#
# Override with the environment: XDS_PROXY (the command), XDS_PROXY_CONFIG (bootstrap),
# XDS_PROXY_BASE_ID (one per proxy on this host), XDS_PROXY_DRAIN_TIME_S,
# XDS_PROXY_PARENT_SHUTDOWN_TIME_S (keep it above the drain time).
set -e
exec ${XDS_PROXY:-xds-proxy} \
  -c "${XDS_PROXY_CONFIG:-examples/bootstrap.yaml}" \
  --restart-epoch "${RESTART_EPOCH:?run me with xds-proxy-restarter}" \
  --base-id "${XDS_PROXY_BASE_ID:-0}" \
  --drain-time-s "${XDS_PROXY_DRAIN_TIME_S:-60}" \
  --parent-shutdown-time-s "${XDS_PROXY_PARENT_SHUTDOWN_TIME_S:-90}" \
  --concurrency 1
