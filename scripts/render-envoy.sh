#!/usr/bin/env bash
# Renders envoy/gateway.yaml.tmpl to stdout. Every placeholder has a default that matches
# `make run`; override with environment variables of the same name. Nothing is written
# unless every placeholder was replaced.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${GATEWAY_ADDRESS:=127.0.0.1}"
: "${GATEWAY_PORT:=8080}"
: "${ENVOY_ADMIN_PORT:=9901}"
# Envoy's own loopback listener for the filter's pool-manager calls (retried there).
: "${POOL_MANAGER_HOP_PORT:=9902}"
: "${POOL_MANAGER_HOST:=127.0.0.1}"
: "${POOL_MANAGER_PORT:=9090}"
# Every pool-manager instance as host:port, comma-separated (default: the one above).
: "${POOL_MANAGERS:=$POOL_MANAGER_HOST:$POOL_MANAGER_PORT}"
endpoints=""
IFS=, read -ra instances <<<"$POOL_MANAGERS"
for instance in "${instances[@]}"; do
  host=${instance%:*} port=${instance##*:}
  [[ -n $host && $port =~ ^[0-9]+$ ]] || { echo "render-envoy: bad POOL_MANAGERS entry '$instance' (host:port)" >&2; exit 1; }
  endpoints+="${endpoints:+, }{endpoint: {address: {socket_address: {address: $host, port_value: $port}}}}"
done
: "${FILTER_WASM:=$root/target/wasm32-wasip1/release/mm_filter.wasm}"
rendered=$(sed -e "s|{{GATEWAY_ADDRESS}}|$GATEWAY_ADDRESS|g" \
    -e "s|{{GATEWAY_PORT}}|$GATEWAY_PORT|g" \
    -e "s|{{ENVOY_ADMIN_PORT}}|$ENVOY_ADMIN_PORT|g" \
    -e "s|{{POOL_MANAGER_ENDPOINTS}}|[$endpoints]|g" \
    -e "s|{{POOL_MANAGER_HOP_PORT}}|$POOL_MANAGER_HOP_PORT|g" \
    -e "s|{{FILTER_WASM}}|$FILTER_WASM|g" \
    "$root/envoy/gateway.yaml.tmpl")
if leftover=$(grep -v '^\s*#' <<<"$rendered" | grep -m1 '{{'); then
  echo "render-envoy: unknown placeholder left in the template: $leftover" >&2
  exit 1
fi
printf '%s\n' "$rendered"
