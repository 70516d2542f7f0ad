#!/usr/bin/env bash
# make fuzz: runs every cargo-fuzz target of the filter's parsers (fuzz/fuzz_targets/) for
# FUZZ_SECONDS each (default 60), then scripts/fuzz-admin.sh (the admin API's fuzzing)
# if it exists. Not part of `make test`: it is bounded, but random.
#
# cargo-fuzz needs unstable compiler flags (-Z...); the project's toolchain is stable, so
# RUSTC_BOOTSTRAP=1 lets stable rustc take them. cargo-fuzz itself is installed from
# crates.io into .tools/cargo-fuzz (idempotent). New corpus entries go to
# fuzz/target/corpus/<target> (kept between runs, not committed); the committed seeds in
# fuzz/corpus/<target> are read only. A crash leaves its input in fuzz/artifacts/<target>/
# and makes the script exit 1 after every target has run.
#
# FUZZ_SECONDS=N      seconds per target (default 60)
# FUZZ_TARGETS="a b"  only these targets (default: all of `cargo fuzz list`)
# FUZZ_SANITIZER=s    address, none, ... (default none: the parsers have no unsafe code,
#                     and without ASan the fuzzers run about four times as many inputs)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
tools="$root/.tools/cargo-fuzz"

log() { printf '[fuzz] %s\n' "$*" >&2; }

case $FUZZ_SECONDS in
  '' | *[!0-9]*) log "FUZZ_SECONDS must be a whole number of seconds"; exit 2 ;;
esac

if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION into .tools/cargo-fuzz"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1

read -r -a targets <<< "${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz | tr '\n' ' ')}"
log "building ${targets[*]}"
cargo fuzz build --fuzz-dir fuzz --sanitizer "$FUZZ_SANITIZER"

failed=()
for target in "${targets[@]}"; do
  log "$target: ${FUZZ_SECONDS}s"
  mkdir -p "fuzz/target/corpus/$target" "fuzz/corpus/$target"
  if ! cargo fuzz run --fuzz-dir fuzz --sanitizer "$FUZZ_SANITIZER" "$target" \
      "fuzz/target/corpus/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$target")
  fi
done

if [ -f scripts/fuzz-admin.sh ]; then
  log "admin API: scripts/fuzz-admin.sh"
  bash scripts/fuzz-admin.sh || failed+=(admin-api)
fi

if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
log "no crash in ${targets[*]}"
