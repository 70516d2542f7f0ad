#!/usr/bin/env bash
# Runs the whole gateway on this machine, on loopback only:
#
#   client --> Envoy (gateway :8080, Wasm filter) --> pool-manager (:9090) --> Triton r0 (:8000), r1 (:8010)
#
#   scripts/stack.sh up      start two Triton replicas, the pool-manager and Envoy; register
#                            the example models from models/; print the URLs
#   scripts/stack.sh down    stop exactly the processes `up` recorded (idempotent)
#   scripts/stack.sh run     up, one inference per example model through the gateway, then stay
#                            in the foreground until Ctrl-C / SIGTERM (or a process dies), then down
#   scripts/stack.sh status  which recorded processes are alive (exit 0 all up, 1 some dead, 3 not up)
#
# State lives in the ignored .run/ folder: pids ("name pid" per line, written as each process
# starts), logs/<name>.log, model-repository/ (shared by the replicas and the pool-manager),
# envoy.yaml (rendered), stack.env (ports and shm prefixes of the running stack),
# gateway-token (mode 0600, new on every `up`: the secret the filter sends with its calls
# to the pool-manager's /internal/v1/* routes; Envoy gets it in MM_GATEWAY_TOKEN).
#
# Environment overrides (defaults in brackets): GATEWAY_PORT [8080], ENVOY_ADMIN_PORT [9901],
# POOL_MANAGER_HOP_PORT [9902] (Envoy's loopback listener for the filter's pool-manager calls),
# POOL_MANAGER_PORT [9090], R0_HTTP_PORT [8000], R0_GRPC_PORT [8001], R0_METRICS_PORT [8002],
# R1_HTTP_PORT [8010], R1_GRPC_PORT [8011], R1_METRICS_PORT [8012], REPLICA_MEMORY [2Gi],
# STACK_WAIT_SECS [60] (bound on each readiness wait), POOL_MANAGER_BIN, FILTER_WASM,
# TRITONSERVER, ENVOY (binaries; default to the ones the Makefile builds / install-deps installs),
# STACK_RUN_DIR [.run] (the state folder; an absolute path; the tests use their own).
#
# HA=1 (`make up HA=1`): high availability (issue 17). A 3-member etcd on loopback
# (Debian's etcd-server, installed by scripts/install-deps.sh; client ports ETCD1_PORT
# [2379], ETCD2_PORT [22379], ETCD3_PORT [32379], each peer port one above; data in
# .run/etcd/) and two pool-managers sharing it (POOL_MANAGER_PORT and POOL_MANAGER2_PORT
# [9190]; one leads, the other follows and forwards), Envoy listing both.
set -euo pipefail
# No job control: a background job then shares this script's process group, so `setsid`
# calls setsid() itself instead of forking, and $! is the server's own PID.
set +m

root=$(cd "$(dirname "$0")/.." && pwd)
RUN=${STACK_RUN_DIR:-$root/.run}
case "$RUN" in /*) ;; *) RUN="$PWD/$RUN" ;; esac
LOGS="$RUN/logs"
PIDS="$RUN/pids"
STACK_ENV="$RUN/stack.env"
GATEWAY_TOKEN_FILE="$RUN/gateway-token"
REPO="$RUN/model-repository"
ENVOY_YAML="$RUN/envoy.yaml"

HOST=127.0.0.1
GATEWAY_PORT=${GATEWAY_PORT:-8080}
ENVOY_ADMIN_PORT=${ENVOY_ADMIN_PORT:-9901}
POOL_MANAGER_HOP_PORT=${POOL_MANAGER_HOP_PORT:-9902}
POOL_MANAGER_PORT=${POOL_MANAGER_PORT:-9090}
R0_HTTP_PORT=${R0_HTTP_PORT:-8000}
R0_GRPC_PORT=${R0_GRPC_PORT:-8001}
R0_METRICS_PORT=${R0_METRICS_PORT:-8002}
R1_HTTP_PORT=${R1_HTTP_PORT:-8010}
R1_GRPC_PORT=${R1_GRPC_PORT:-8011}
R1_METRICS_PORT=${R1_METRICS_PORT:-8012}
PORT_VARS=(GATEWAY_PORT ENVOY_ADMIN_PORT POOL_MANAGER_HOP_PORT POOL_MANAGER_PORT R0_HTTP_PORT R0_GRPC_PORT R0_METRICS_PORT
  R1_HTTP_PORT R1_GRPC_PORT R1_METRICS_PORT)
HA=${HA:-0}
case "$HA" in 0|1) ;; *) echo "[stack] error: HA must be 0 or 1, not '$HA'" >&2; exit 1 ;; esac
POOL_MANAGER2_PORT=${POOL_MANAGER2_PORT:-9190}
ETCD1_PORT=${ETCD1_PORT:-2379}
ETCD2_PORT=${ETCD2_PORT:-22379}
ETCD3_PORT=${ETCD3_PORT:-32379}
ETCD_BIN=${ETCD_BIN:-etcd}
if [ "$HA" = 1 ]; then
  PORT_VARS+=(POOL_MANAGER2_PORT ETCD1_PORT ETCD2_PORT ETCD3_PORT)
fi
REPLICA_MEMORY=${REPLICA_MEMORY:-2Gi}
STACK_WAIT_SECS=${STACK_WAIT_SECS:-60}
STOP_WAIT_SECS=10
# The stack's own token is the only one: never one exported in the caller's shell.
unset MM_GATEWAY_TOKEN

POOL_MANAGER_BIN=${POOL_MANAGER_BIN:-$root/target/debug/pool-manager}
FILTER_WASM=${FILTER_WASM:-$root/target/wasm32-wasip1/release/mm_filter.wasm}
TRITONSERVER=${TRITONSERVER:-$root/.tools/bin/tritonserver}
ENVOY=${ENVOY:-$root/.tools/bin/envoy}
# The script's own small Python helpers, isolated (-I) from the caller's PYTHONPATH,
# PYTHONHOME and user site: a venv or a stray PYTHONHOME must not break them. (Triton gets
# an environment of its own from the .tools/bin/tritonserver wrapper.)
if [ -x /usr/bin/python3 ]; then PYBIN=/usr/bin/python3; else PYBIN=python3; fi
py() { "$PYBIN" -I "$@"; }

# The example models: name, memory to declare, a sample request (from models/README.md).
MODELS=(linear xor_mlp anomaly)
declare -A MODEL_MEMORY=([linear]=32Mi [xor_mlp]=64Mi [anomaly]=48Mi)
declare -A MODEL_REQUEST=(
  [linear]='{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
  [xor_mlp]='{"inputs":[{"name":"x","shape":[4,2],"datatype":"FP32","data":[0,0,0,1,1,0,1,1]}]}'
  [anomaly]='{"inputs":[{"name":"readings","shape":[3,3],"datatype":"FP32","data":[21,55,1013,28,50,1013,20,15,1013]}]}'
)

say() { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] %s\n' "$*" >&2; }
die() { warn "error: $*"; exit 1; }

# Prints the last lines of a process's log, indented.
log_tail() { # name
  local f="$LOGS/$1.log"
  if [ -s "$f" ]; then
    warn "last lines of $f:"
    tail -n 30 "$f" | sed 's/^/    /' >&2
  fi
}

# Alive = exists and is not a zombie.
is_alive() { # pid
  local state
  [ -r "/proc/$1/stat" ] || return 1
  state=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# The binary each recorded name runs; a recorded PID is only ours if its command line names
# that binary and this checkout's .run/ folder (every process gets a path under it).
expected_binary() { # name
  case "$1" in
    r[0-9]*) echo tritonserver ;;
    pool-manager|pool-manager-2) echo pool-manager ;;
    etcd-[0-9]) echo etcd ;;
    envoy) echo envoy ;;
    *) echo "?unknown?" ;;
  esac
}

is_ours() { # name pid
  local cmd
  is_alive "$2" || return 1
  cmd=$(tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null) || return 1
  [[ "$cmd" == *"$(expected_binary "$1")"* && "$cmd" == *"$RUN/"* ]]
}

# Live processes of the session a recorded process leads (each was started with setsid, so
# its PID is also its session and process-group id): the server and its children (Triton's
# Python backend stubs).
session_members() { # sid
  ps -e -o pid= -o sid= -o stat= 2>/dev/null | awk -v s="$1" '$2 == s && $3 !~ /^Z/ { print $1 }'
}

# Reads .run/pids into the arrays P_NAMES / P_PIDS.
read_pids() {
  P_NAMES=()
  P_PIDS=()
  [ -f "$PIDS" ] || return 0
  local name pid
  while read -r name pid _; do
    [ -n "${name:-}" ] && [[ "${pid:-}" =~ ^[0-9]+$ ]] || continue
    P_NAMES+=("$name")
    P_PIDS+=("$pid")
  done <"$PIDS"
}

any_recorded_alive() {
  read_pids
  local i
  for i in "${!P_PIDS[@]}"; do
    if is_ours "${P_NAMES[$i]}" "${P_PIDS[$i]}"; then return 0; fi
  done
  return 1
}

# Stops every recorded process that is still ours: SIGTERM to each process group (newest
# first), wait up to STOP_WAIT_SECS for all of them, then SIGKILL what is left.
stop_all() {
  read_pids
  if [ ${#P_PIDS[@]} -eq 0 ]; then
    rm -f "$PIDS"
    return 0
  fi
  local i name pid targets=() target_names=()
  for ((i = ${#P_PIDS[@]} - 1; i >= 0; i--)); do
    name=${P_NAMES[$i]}
    pid=${P_PIDS[$i]}
    if is_ours "$name" "$pid"; then
      say "stopping $name (pid $pid)"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      targets+=("$pid")
      target_names+=("$name")
    elif is_alive "$pid"; then
      warn "$name: pid $pid is alive but is not the $(expected_binary "$name") this stack started (PID reused?); leaving it alone"
    elif [ -n "$(session_members "$pid")" ]; then
      # The server is gone but children of it (in its session) are not: stop them.
      say "stopping leftovers of $name (session $pid)"
      kill -TERM -- "-$pid" 2>/dev/null || true
      targets+=("$pid")
      target_names+=("$name")
    else
      say "$name (pid $pid) was not running"
    fi
  done
  local deadline=$((SECONDS + STOP_WAIT_SECS)) left
  while :; do
    left=()
    for i in "${!targets[@]}"; do
      if is_alive "${targets[$i]}" || [ -n "$(session_members "${targets[$i]}")" ]; then left+=("$i"); fi
    done
    [ ${#left[@]} -eq 0 ] && break
    if [ $SECONDS -ge $deadline ]; then
      for i in "${left[@]}"; do
        warn "${target_names[$i]} (pid ${targets[$i]}) did not stop within ${STOP_WAIT_SECS}s; sending SIGKILL"
        kill -KILL -- "-${targets[$i]}" 2>/dev/null || true
        local m
        for m in $(session_members "${targets[$i]}"); do kill -KILL "$m" 2>/dev/null || true; done
      done
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  local survivors=0
  for i in "${!targets[@]}"; do
    if is_alive "${targets[$i]}" || [ -n "$(session_members "${targets[$i]}")" ]; then
      warn "${target_names[$i]} (pid ${targets[$i]}) is still running"
      survivors=1
    fi
  done
  if [ $survivors -ne 0 ]; then
    warn "some processes survived SIGKILL; kept $PIDS"
    return 1
  fi
  # Envoy leaves its hot-restart shared memory (/dev/shm/envoy_shared_memory_<base id>0)
  # behind even on a clean exit; --base-id-path told us which one is ours.
  local base_id
  base_id=$(cat "$RUN/envoy.base-id" 2>/dev/null || true)
  if [[ "$base_id" =~ ^[0-9]+$ ]]; then rm -f "/dev/shm/envoy_shared_memory_${base_id}0"; fi
  rm -f "$RUN/envoy.base-id" "$GATEWAY_TOKEN_FILE"
  # Python backend shared memory left behind by a killed Triton (our prefixes are unique).
  if [ -f "$STACK_ENV" ]; then
    local prefix
    for prefix in $(sed -n 's/^SHM_PREFIX_[A-Za-z0-9]*=//p' "$STACK_ENV"); do
      [ -n "$prefix" ] && rm -f /dev/shm/"$prefix"* 2>/dev/null || true
    done
  fi
  rm -f "$PIDS"
}

port_in_use() { # port
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
  fi
}

port_accepts() { # port
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Waits until GET url answers 200 (and, if given, a body matching pattern); fails, pointing
# at the log, when the process dies or STACK_WAIT_SECS pass.
wait_http() { # name pid url [body-pattern]
  local name=$1 pid=$2 url=$3 pattern=${4:-} deadline=$((SECONDS + STACK_WAIT_SECS)) out code err=""
  while :; do
    if ! is_alive "$pid"; then
      log_tail "$name"
      die "$name (pid $pid) exited during startup; see $LOGS/$name.log"
    fi
    if out=$(curl -sS --max-time 2 -w '\n%{http_code}' "$url" 2>&1); then
      code=${out##*$'\n'}
      if [ "$code" = 200 ] && { [ -z "$pattern" ] || grep -q "$pattern" <<<"${out%$'\n'*}"; }; then
        return 0
      fi
      err="HTTP $code: ${out%$'\n'*}"
    else
      err=$out
    fi
    if [ $SECONDS -ge $deadline ]; then
      log_tail "$name"
      die "$name not ready after ${STACK_WAIT_SECS}s ($url: ${err//$'\n'/ }); see $LOGS/$name.log"
    fi
    sleep 0.3
  done
}

# Starts a process in its own session / process group and records its PID at once.
STARTED_PID=
start_proc() { # name cmd...
  local name=$1
  shift
  # fd 9 is the lock of `up`: the servers must not inherit (and so keep holding) it.
  setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 9>&- &
  STARTED_PID=$!
  echo "$name $STARTED_PID" >>"$PIDS"
}

lock() {
  mkdir -p "$RUN"
  exec 9>"$RUN/.lock"
  # Long enough for a concurrent `down` (at most ~STOP_WAIT_SECS) to finish.
  flock -w 30 9 || die "another scripts/stack.sh up/down is in progress (lock $RUN/.lock)"
}
unlock() { exec 9>&-; }

check_prereqs() {
  local f
  for f in "$POOL_MANAGER_BIN" "$TRITONSERVER" "$ENVOY"; do
    [ -x "$f" ] || die "$f is missing (build with make, install tools with scripts/install-deps.sh)"
  done
  [ -f "$FILTER_WASM" ] || die "$FILTER_WASM is missing (build the filter with make)"
  command -v curl >/dev/null || die "curl is required"
  command -v setsid >/dev/null || die "setsid (util-linux) is required"
  py -c 'import json, urllib.parse' 2>/dev/null || die "python3 is required"
  local var p seen=" "
  for var in "${PORT_VARS[@]}"; do
    p=${!var}
    [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "invalid port $var='$p'"
    [[ "$seen" != *" $p "* ]] || die "port $p is configured twice ($var and another *_PORT)"
    seen+="$p "
  done
}

check_ports_free() {
  local var busy=() first=
  for var in "${PORT_VARS[@]}"; do
    if port_in_use "${!var}"; then
      busy+=("${!var} ($var)")
      first=${first:-$var}
    fi
  done
  if [ ${#busy[@]} -gt 0 ]; then
    local alt=$((${!first} + 10000))
    [ $alt -le 65535 ] || alt=$((${!first} - 10000))
    die "port(s) already in use: ${busy[*]}; stop whatever listens there or choose another port, e.g. $first=$alt make up"
  fi
}

# Whether the running stack (stack.env) listens on the ports this invocation asks for.
same_ports_as_running() {
  [ -f "$STACK_ENV" ] || return 1
  local var line
  for var in "${PORT_VARS[@]}"; do
    line=$(grep -m1 "^$var=" "$STACK_ENV" || true)
    [ "$line" = "$var=${!var}" ] || return 1
  done
}

print_urls() {
  cat <<EOF

  gateway (V2 inference)   http://$HOST:$GATEWAY_PORT/v2/models/{name}/infer
  pool-manager admin API   http://$HOST:$POOL_MANAGER_PORT/api/v1/models  (/api/v1/replicas, /healthz, /metrics)
  Envoy admin              http://$HOST:$ENVOY_ADMIN_PORT/
  replica r0 (Triton)      http://$HOST:$R0_HTTP_PORT  (gRPC $HOST:$R0_GRPC_PORT, metrics http://$HOST:$R0_METRICS_PORT/metrics)
  replica r1 (Triton)      http://$HOST:$R1_HTTP_PORT  (gRPC $HOST:$R1_GRPC_PORT, metrics http://$HOST:$R1_METRICS_PORT/metrics)
  logs                     $LOGS/

EOF
}

# --- up ---------------------------------------------------------------------------------

UP_DONE=0
UP_FAILED_NAME=
on_up_exit() {
  local rc=$?
  if [ "$UP_DONE" != 1 ]; then
    [ -n "$UP_FAILED_NAME" ] && log_tail "$UP_FAILED_NAME"
    case $rc in
      130 | 143) warn "up interrupted; stopping what was started" ;;
      *) warn "up failed; stopping what was started" ;;
    esac
    stop_all || true
    [ $rc -eq 0 ] && rc=1
  fi
  exit $rc
}

start_replica() { # name http grpc metrics
  local name=$1 prefix="mm${$}${1}x"
  echo "SHM_PREFIX_$name=$prefix" >>"$STACK_ENV"
  start_proc "$name" "$TRITONSERVER" \
    --model-repository="$REPO" \
    --model-control-mode=explicit \
    --strict-readiness=false \
    --disable-auto-complete-config \
    --exit-timeout-secs=5 \
    --http-address="$HOST" --grpc-address="$HOST" --metrics-address="$HOST" \
    --http-port="$2" --grpc-port="$3" --metrics-port="$4" \
    --backend-config=python,shm-region-prefix-name="$prefix"
  say "started $name (pid $STARTED_PID) on :$2, log $LOGS/$name.log"
}

start_pool_manager() { # name port data-dir instance-id [store flags...]
  local name=$1 port=$2 data=$3 id=$4
  shift 4
  local ha=()
  [ -z "$id" ] || ha=(--instance-id "$id" --advertise-url "http://$HOST:$port" "$@")
  start_proc "$name" "$POOL_MANAGER_BIN" \
    "${GATEWAY_TOKEN_ARGS[@]}" \
    --listen "$HOST:$port" \
    --model-repository "$REPO" \
    --data-dir "$data" \
    --replica "name=r0,url=http://$HOST:$R0_HTTP_PORT,memory=$REPLICA_MEMORY,grpcPort=$R0_GRPC_PORT" \
    --replica "name=r1,url=http://$HOST:$R1_HTTP_PORT,memory=$REPLICA_MEMORY,grpcPort=$R1_GRPC_PORT" \
    "${ha[@]}"
  local pid=$STARTED_PID
  say "started $name (pid $pid) on :$port, log $LOGS/$name.log"
  wait_http "$name" "$pid" "http://$HOST:$port/healthz"
  say "status page: http://$HOST:$port/ui (mmctl: MMCTL_URL=http://$HOST:$port target/debug/mmctl models list)"
  STARTED_PID=$pid
}

# A 3-member etcd on loopback (HA=1); sets STORE_ARGS for the pool-managers.
start_etcd() {
  command -v "$ETCD_BIN" >/dev/null || die "etcd not found: run make deps (Debian's etcd-server)"
  local i port cluster="" urls=() pids=()
  for i in 1 2 3; do
    port=ETCD${i}_PORT
    port=${!port}
    cluster+="${cluster:+,}e$i=http://$HOST:$((port + 1))"
    urls+=("$HOST:$port")
  done
  rm -rf "$RUN/etcd"
  for i in 1 2 3; do
    port=ETCD${i}_PORT
    port=${!port}
    start_proc "etcd-$i" "$ETCD_BIN" --name "e$i" --data-dir "$RUN/etcd/e$i" \
      --listen-client-urls "http://$HOST:$port" --advertise-client-urls "http://$HOST:$port" \
      --listen-peer-urls "http://$HOST:$((port + 1))" \
      --initial-advertise-peer-urls "http://$HOST:$((port + 1))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "mm-local-$$" --heartbeat-interval 50 --election-timeout 500
    pids+=("$STARTED_PID")
  done
  for i in 1 2 3; do
    port=ETCD${i}_PORT
    wait_http "etcd-$i" "${pids[$((i - 1))]}" "http://$HOST:${!port}/health" '"health":"true"'
  done
  STORE_ARGS=(--store "etcd://$(IFS=,; echo "${urls[*]}")" --store-prefix /mm/local/ --lease-ttl 5s)
  say "etcd cluster up on ${urls[*]}"
}

register_model() { # name
  local name=$1 dir="$root/models/$1" body out code
  [ -f "$dir/config.pbtxt" ] || die "example model $dir is missing"
  body=$(py -c '
import json, sys, urllib.parse
print(json.dumps({"storageUri": "file://" + urllib.parse.quote(sys.argv[1]), "memory": sys.argv[2]}))
' "$dir" "${MODEL_MEMORY[$name]}")
  out=$(curl -sS --max-time 30 -X PUT -H 'content-type: application/json' --data-binary "$body" \
    -w '\n%{http_code}' "http://$HOST:$POOL_MANAGER_PORT/api/v1/models/$name") \
    || die "registering $name: pool-manager unreachable: $out"
  code=${out##*$'\n'}
  case "$code" in
    2??) say "registered $name (HTTP $code, memory ${MODEL_MEMORY[$name]})" ;;
    *) UP_FAILED_NAME=pool-manager; die "registering $name failed: HTTP $code: ${out%$'\n'*}" ;;
  esac
}

# A fresh random gateway token (256 bits, hex) in GATEWAY_TOKEN_FILE, readable by this user
# only; sets GATEWAY_TOKEN.
new_gateway_token() {
  GATEWAY_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  [[ "$GATEWAY_TOKEN" =~ ^[0-9a-f]{64}$ ]] || die "could not read 32 random bytes from /dev/urandom"
  rm -f "$GATEWAY_TOKEN_FILE"
  (umask 077 && printf '%s\n' "$GATEWAY_TOKEN" >"$GATEWAY_TOKEN_FILE")
}

# The pool-manager's gateway-token flags. A binary without --gateway-token-file (older than
# the check) gets none, and the stack says loudly that its internal routes are open.
gateway_token_args() {
  local help
  help=$("$POOL_MANAGER_BIN" --help 2>&1 || true)
  if grep -q -- '--gateway-token-file' <<<"$help"; then
    GATEWAY_TOKEN_ARGS=(--gateway-token-file "$GATEWAY_TOKEN_FILE")
  else
    GATEWAY_TOKEN_ARGS=()
    warn "warning: $POOL_MANAGER_BIN has no --gateway-token-file: its /internal/v1/* routes accept reports from anyone"
  fi
}

cmd_up() {
  check_prereqs
  lock
  if any_recorded_alive; then
    # `make up` twice: the second one only reports, if everything is running as asked.
    # (cmd_status in a subshell: it loads the running stack's stack.env.)
    if [ "$STACK_CMD" = up ] && same_ports_as_running && (cmd_status >/dev/null); then
      unlock
      say "stack already up; nothing to start (make status, make down)"
      print_urls
      return 0
    fi
    (cmd_status >&2) || true
    if [ "$STACK_CMD" = run ]; then
      die "a stack is already up (above, from make up): use it as it is, or make down first"
    elif ! same_ports_as_running; then
      die "a stack is already up on other ports (above); make down first"
    fi
    die "part of the stack has died (above); make down, then make up"
  fi
  if [ -f "$PIDS" ]; then
    say "removing stale $PIDS (none of its processes is running)"
    stop_all || die "could not clean up the stale stack in $PIDS"
  fi
  check_ports_free

  local t0=$SECONDS
  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkdir -p "$LOGS"
  rm -rf "$REPO"
  mkdir -p "$REPO"
  rm -f "$RUN/envoy.base-id"
  : >"$PIDS"
  cat >"$STACK_ENV" <<EOF
GATEWAY_PORT=$GATEWAY_PORT
ENVOY_ADMIN_PORT=$ENVOY_ADMIN_PORT
POOL_MANAGER_HOP_PORT=$POOL_MANAGER_HOP_PORT
POOL_MANAGER_PORT=$POOL_MANAGER_PORT
R0_HTTP_PORT=$R0_HTTP_PORT
R0_GRPC_PORT=$R0_GRPC_PORT
R0_METRICS_PORT=$R0_METRICS_PORT
R1_HTTP_PORT=$R1_HTTP_PORT
R1_GRPC_PORT=$R1_GRPC_PORT
R1_METRICS_PORT=$R1_METRICS_PORT
EOF
  if [ "$HA" = 1 ]; then
    printf '%s=%s\n' POOL_MANAGER2_PORT "$POOL_MANAGER2_PORT" ETCD1_PORT "$ETCD1_PORT" \
      ETCD2_PORT "$ETCD2_PORT" ETCD3_PORT "$ETCD3_PORT" >>"$STACK_ENV"
  fi

  # 1. Two Triton replicas, started together, then waited for.
  start_replica r0 "$R0_HTTP_PORT" "$R0_GRPC_PORT" "$R0_METRICS_PORT"
  local r0=$STARTED_PID
  start_replica r1 "$R1_HTTP_PORT" "$R1_GRPC_PORT" "$R1_METRICS_PORT"
  local r1=$STARTED_PID
  wait_http r0 "$r0" "http://$HOST:$R0_HTTP_PORT/v2/health/ready"
  wait_http r1 "$r1" "http://$HOST:$R1_HTTP_PORT/v2/health/ready"
  say "replicas ready ($((SECONDS - t0))s)"

  # 2. The pool-manager (HA: an etcd cluster and two of them), with the gateway token the
  #    filter will send.
  new_gateway_token
  gateway_token_args
  local pool_managers=$HOST:$POOL_MANAGER_PORT
  if [ "$HA" = 1 ]; then
    start_etcd
    start_pool_manager pool-manager "$POOL_MANAGER_PORT" "$RUN/data" pm-a "${STORE_ARGS[@]}"
    local pm1=$STARTED_PID
    start_pool_manager pool-manager-2 "$POOL_MANAGER2_PORT" "$RUN/data-2" pm-b "${STORE_ARGS[@]}"
    pool_managers+=",$HOST:$POOL_MANAGER2_PORT"
    # Registrations below need a leader (either instance forwards to it).
    wait_http pool-manager "$pm1" "http://$HOST:$POOL_MANAGER_PORT/readyz"
  else
    start_pool_manager pool-manager "$POOL_MANAGER_PORT" "$RUN/data" ""
  fi

  # 3. Envoy with the Wasm filter.
  GATEWAY_ADDRESS=$HOST GATEWAY_PORT=$GATEWAY_PORT ENVOY_ADMIN_PORT=$ENVOY_ADMIN_PORT \
    POOL_MANAGER_HOP_PORT=$POOL_MANAGER_HOP_PORT POOL_MANAGERS=$pool_managers POOL_MANAGER_PORT=$POOL_MANAGER_PORT FILTER_WASM=$FILTER_WASM \
    bash "$root/scripts/render-envoy.sh" >"$ENVOY_YAML.tmp" || die "rendering the Envoy config failed"
  mv "$ENVOY_YAML.tmp" "$ENVOY_YAML"
  # Envoy (1.40, this build) terminates itself when its parent process exits (it gets a
  # SIGTERM the moment this script ends), so it runs under a small bash that stays its
  # parent. The recorded PID is that bash: it leads the session, its command line names
  # envoy and .run/envoy.yaml, and it exits when Envoy does. The token goes in Envoy's
  # environment (never on a command line, which any user can read), from where the
  # template's host_env_keys hands it to the filter.
  MM_GATEWAY_TOKEN=$GATEWAY_TOKEN start_proc envoy bash -c '"$0" "$@" & wait $!' \
    "$ENVOY" -c "$ENVOY_YAML" --use-dynamic-base-id --base-id-path "$RUN/envoy.base-id" \
    --concurrency 2 --log-level warn
  local ev=$STARTED_PID
  say "started envoy (pid $ev) on :$GATEWAY_PORT (admin :$ENVOY_ADMIN_PORT), log $LOGS/envoy.log"
  wait_http envoy "$ev" "http://$HOST:$ENVOY_ADMIN_PORT/ready" LIVE
  local deadline=$((SECONDS + STACK_WAIT_SECS))
  until port_accepts "$GATEWAY_PORT"; do
    is_alive "$ev" || { UP_FAILED_NAME=envoy; die "envoy exited during startup"; }
    [ $SECONDS -lt $deadline ] || { UP_FAILED_NAME=envoy; die "gateway port $GATEWAY_PORT does not accept connections after ${STACK_WAIT_SECS}s"; }
    sleep 0.3
  done

  # 4. The example models (loaded lazily by the first request for each).
  local m
  for m in "${MODELS[@]}"; do register_model "$m"; done

  UP_DONE=1
  trap - EXIT INT TERM
  unlock
  say "stack up in $((SECONDS - t0))s"
  print_urls
  cat <<EOF
Try (the first request for a model loads it):

  curl -sS --max-time 120 -H 'content-type: application/json' \\
    -d '${MODEL_REQUEST[linear]}' \\
    http://$HOST:$GATEWAY_PORT/v2/models/linear/infer

expected: output "y", shape [1,1], data [7.0], i.e.
  {"model_name":"linear","model_version":"1","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],"data":[7.0]}]}
EOF
  [ "$STACK_CMD" = run ] || printf '\nStop with: make down   (or scripts/stack.sh down)\n'
}

# --- down / status ----------------------------------------------------------------------

cmd_down() {
  lock
  if [ ! -f "$PIDS" ]; then
    say "stack is not up (no $PIDS); nothing to stop"
    return 0
  fi
  stop_all || die "could not stop everything; see above"
  say "stack down"
}

cmd_status() {
  read_pids
  if [ ${#P_PIDS[@]} -eq 0 ]; then
    say "stack is not up"
    return 3
  fi
  local i alive=0 dead=0
  for i in "${!P_PIDS[@]}"; do
    if is_ours "${P_NAMES[$i]}" "${P_PIDS[$i]}"; then
      printf '  %-13s pid %-8s running\n' "${P_NAMES[$i]}" "${P_PIDS[$i]}"
      alive=$((alive + 1))
    elif is_alive "${P_PIDS[$i]}"; then
      printf '  %-13s pid %-8s NOT OURS (pid reused by another program)\n' "${P_NAMES[$i]}" "${P_PIDS[$i]}"
      dead=$((dead + 1))
    else
      printf '  %-13s pid %-8s DEAD (log %s)\n' "${P_NAMES[$i]}" "${P_PIDS[$i]}" "$LOGS/${P_NAMES[$i]}.log"
      dead=$((dead + 1))
    fi
  done
  if [ -f "$STACK_ENV" ]; then
    # shellcheck disable=SC1090
    . "$STACK_ENV"
    if [ $alive -gt 0 ]; then print_urls; fi
  fi
  [ $dead -eq 0 ] || return 1
}

# --- run --------------------------------------------------------------------------------

# Checks one inference answer against the expected values in models/README.md.
check_answer() { # model response-json
  py -c '
import json, math, sys
name, raw = sys.argv[1], sys.argv[2]
want = {
    "linear": {"y": [7.0]},
    "xor_mlp": {"probability": [0.006692851, 0.9933072, 0.9933072, 0.006692851]},
    "anomaly": {"score": [0.5, 4.0, 3.5], "is_anomaly": [False, True, True]},
}[name]
try:
    outs = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
except Exception as e:
    sys.exit(f"unexpected answer: {e}")
for out, data in want.items():
    got = outs.get(out)
    ok = got is not None and len(got) == len(data) and all(
        (g == w) if isinstance(w, bool) else math.isclose(g, w, rel_tol=1e-5, abs_tol=1e-6)
        for g, w in zip(got, data))
    if not ok:
        sys.exit(f"{out}: got {got}, want {data}")
' "$1" "$2"
}

smoke_test() {
  local m out code body summary failed=0
  say "one inference per example model through the gateway (http://$HOST:$GATEWAY_PORT):"
  for m in "${MODELS[@]}"; do
    if ! out=$(curl -sS --max-time 120 -H 'content-type: application/json' --data-binary "${MODEL_REQUEST[$m]}" \
      -w '\n%{http_code}' "http://$HOST:$GATEWAY_PORT/v2/models/$m/infer" 2>&1); then
      warn "  $m: request failed: $out"
      failed=1
      continue
    fi
    code=${out##*$'\n'}
    body=${out%$'\n'*}
    if [ "$code" != 200 ]; then
      warn "  $m: HTTP $code: $body"
      failed=1
    elif summary=$(check_answer "$m" "$body" 2>&1); then
      say "  $m: OK  $body"
    else
      warn "  $m: WRONG ANSWER ($summary): $body"
      failed=1
    fi
  done
  return $failed
}

RUN_STOPPING=0
on_run_signal() {
  [ "$RUN_STOPPING" = 1 ] && return
  RUN_STOPPING=1
  echo
  say "signal received; stopping the stack"
  cmd_down || true
  exit 0
}

cmd_run() {
  cmd_up
  trap on_run_signal INT TERM
  if ! smoke_test; then
    warn "not every example model answered correctly; stopping"
    cmd_down || true
    exit 1
  fi
  read_pids
  local names=("${P_NAMES[@]}") pids=("${P_PIDS[@]}") i
  say "serving every example model; Ctrl-C to stop"
  while :; do
    for i in "${!pids[@]}"; do
      if ! is_ours "${names[$i]}" "${pids[$i]}"; then
        RUN_STOPPING=1
        if ! flock -n "$RUN/.lock" true 2>/dev/null || [ ! -f "$PIDS" ]; then
          # Not a crash: a `make down` elsewhere is stopping (or has stopped) the stack.
          say "the stack is being stopped by another scripts/stack.sh down"
          flock -w 30 "$RUN/.lock" true 2>/dev/null || true
          exit 0
        fi
        warn "${names[$i]} (pid ${pids[$i]}) died; stopping the rest"
        log_tail "${names[$i]}"
        cmd_down || true
        exit 1
      fi
    done
    sleep 1 &
    wait $! || true
  done
}

usage() {
  echo "usage: $0 up|down|run|status" >&2
  exit 2
}

[ $# -eq 1 ] || usage
STACK_CMD=$1
case "$1" in
  up) cmd_up ;;
  down) cmd_down ;;
  run) cmd_run ;;
  status) cmd_status ;;
  *) usage ;;
esac
