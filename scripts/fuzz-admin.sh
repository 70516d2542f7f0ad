#!/usr/bin/env bash
# Fuzzes the pool-manager's HTTP API with schemathesis (PyPI) against the OpenAPI document
# the pool-manager itself serves (GET /api/v1/openapi.json): it must answer no request with
# a 5xx, and every answer must match the document (status, content type, body schema).
# Bounded (FUZZ_ADMIN_SECONDS, default 120 s; FUZZ_ADMIN_EXAMPLES per operation, default
# 100); not part of `make test`.
#
# schemathesis is installed (idempotently) into its own venv, .tools/schemathesis, never
# into the system Python. The pool-manager runs in a fresh network namespace with only
# loopback: a fuzzed registration may name any https:// or s3:// URI, and nothing it
# pulls may leave the machine.
#
# What is fuzzed: every documented operation but the live event stream (it never ends by
# design). The pool-manager has a gateway token that schemathesis is not given, so the
# internal routes answer 401 as documented (their handlers are covered by the unit and
# end-to-end tests); its replicas are loopback ports nobody listens on, so no load runs.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
SCHEMATHESIS_VERSION=4.32.5
venv="$tools/schemathesis"
log() { printf '[fuzz-admin] %s\n' "$*" >&2; }

if [ "${1:-}" != --inside ]; then
  if [ ! -e "$venv/.installed-$SCHEMATHESIS_VERSION" ]; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into .tools/schemathesis"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    touch "$venv/.installed-$SCHEMATHESIS_VERSION"
  fi
  (cd "$root" && cargo build --quiet -p pool-manager --bin pool-manager)
  if [ "$(id -u)" = 0 ]; then
    exec unshare --net -- bash "$0" --inside
  fi
  exec unshare --net --map-root-user -- bash "$0" --inside
fi

# Inside the private network namespace from here on.
ip link set lo up
seconds=${FUZZ_ADMIN_SECONDS:-120}
examples=${FUZZ_ADMIN_EXAMPLES:-100}
work=$(mktemp -d)
pm_pid=
cleanup() {
  if [ -n "$pm_pid" ]; then kill "$pm_pid" 2>/dev/null || true; wait "$pm_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/repository" "$work/models"
cp -r "$root/models/linear" "$work/models/linear"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/gateway-token"
port=9090
"$root/target/debug/pool-manager" --listen "127.0.0.1:$port" \
  --model-repository "$work/repository" --data-dir "$work/data" \
  --replica name=r0,url=http://127.0.0.1:9,memory=1Gi \
  --replica name=r1,url=http://127.0.0.1:10,memory=2Gi \
  --allowed-storage-root "$work/models" \
  --gateway-token-file "$work/gateway-token" \
  >"$work/pool-manager.log" 2>&1 &
pm_pid=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
  kill -0 "$pm_pid" 2>/dev/null || { cat "$work/pool-manager.log" >&2; exit 1; }
  sleep 0.1
done

log "schemathesis against http://127.0.0.1:$port/api/v1/openapi.json (${seconds}s, ${examples} examples per operation)"
status=0
# From the scratch directory: schemathesis keeps a cache in its working directory.
cd "$work"
"$venv/bin/schemathesis" run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --checks all \
  `# A spec can be valid JSON for the schema and still be refused (no such directory,` \
  `# larger than every replica): 400 is the right answer there.` \
  --exclude-checks positive_data_acceptance \
  --exclude-path /api/v1/events/stream \
  --max-time "$seconds" --max-examples "$examples" \
  `# One worker: CPython 3.11's ast.parse is not thread-safe, and hypothesis parses` \
  `# lambdas while it generates ("AST constructor recursion depth mismatch").` \
  --request-timeout 15 --workers 1 --no-color \
  --generation-database none || status=$?

if ! kill -0 "$pm_pid" 2>/dev/null; then
  log "the pool-manager died during the run"
  tail -50 "$work/pool-manager.log" >&2
  exit 1
fi
if grep -q "panicked" "$work/pool-manager.log"; then
  log "the pool-manager panicked during the run"
  grep -A5 "panicked" "$work/pool-manager.log" | head -40 >&2
  exit 1
fi
exit "$status"
