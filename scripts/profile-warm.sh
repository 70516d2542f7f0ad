#!/usr/bin/env bash
# Where does a warm request's Envoy CPU go? Runs the warm path's no-op Wasm and gateway
# targets (and any other filter build: --filter-wasm LABEL=PATH.wasm) under `perf record`
# and prints, per target, Envoy's CPU time per request split into: the Wasm code itself
# (V8's compiled module), host calls made from Wasm, Envoy outside the VM, the kernel, and
# libc; then the top symbols. Extra arguments go to mm-bench (e.g. --seconds 20 --rounds 2).
#
#   scripts/profile-warm.sh
#   scripts/profile-warm.sh --filter-wasm no-usage=/tmp/mm_filter_no_usage.wasm
#
# Limits (see BENCHMARKS.md): Envoy's release binary is stripped, so its own functions show
# as addresses; V8 writes no perf map (its flags are fixed in proxy-wasm-cpp-host at build
# time; Envoy has no option to pass --perf-prof), so the Wasm functions are not named
# either, but every sample is attributed to one side of the VM boundary because the call
# chains unwind through V8's frames. The VM exposes no hardware counters: perf samples on
# the cpu-clock timer. For instruction counts (deterministic), run the `instructions` part:
#   target/release/mm-bench --parts instructions [--filter-wasm LABEL=PATH.wasm]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${PROFILE_OUT:-bench/results/perf}
log() { printf '[profile] %s\n' "$*" >&2; }

if ! command -v perf >/dev/null; then
  log "apt-get install linux-perf"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null
fi
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if ! perf record -q -e cpu-clock -o /dev/null -- true 2>/dev/null; then
  log "perf record does not work here (perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid));"
  log "compare builds without a profiler instead:"
  log "  target/release/mm-bench --parts warm --warm-targets noop,gateway --filter-wasm LABEL=PATH.wasm"
  log "  target/release/mm-bench --parts instructions --filter-wasm LABEL=PATH.wasm"
  exit 1
fi

bash scripts/install-deps.sh
cargo build -q -p pool-manager --bins
cargo build -q -p mm-filter -p mm-noop-filter --release --target wasm32-wasip1
cargo build -q --release -p mm-bench
rm -rf "$out" && mkdir -p "$out"
log "mm-bench --parts warm --warm-targets noop,gateway --perf-dir $out $*"
target/release/mm-bench --out "$out/results" --parts warm --warm-targets noop,gateway \
  --rounds 1 --seconds 10 --perf-dir "$out" "$@"

# One line per sample: where it was (the innermost frame's object) and whether a Wasm
# frame (V8's code, which perf maps to /tmp/perf-PID.map) is below it in the call chain.
classify() {
  perf script -i "$1" -F ip,sym,dso 2>/dev/null | awk '
    function flush() {
      if (n == 0) return
      if (self ~ /perf-[0-9]+\.map|\[JIT\]/) c = "wasm code"
      else if (jit) c = "host calls from wasm"
      else if (self ~ /kernel/) c = "kernel"
      else if (self ~ /bin\/envoy/) c = "envoy outside wasm"
      else if (self ~ /libc/) c = "libc"
      else c = "other"
      count[c]++; total++; n = 0; jit = 0
    }
    /^[^\t ]/ || /^$/ { flush(); next }
    {
      dso = $NF; gsub(/[()]/, "", dso)
      if (n == 0) self = dso
      else if (dso ~ /perf-[0-9]+\.map|\[JIT\]/) jit = 1
      n++
    }
    END {
      flush()
      for (c in count) printf "%s\t%d\t%d\n", c, count[c], total
    }'
}

# The section BENCHMARKS.md shows (scripts/bench.sh stitches it in after the warm path).
md=bench/results/profile.md
{
  echo "### Where a warm request's Envoy CPU goes (perf)"
  echo
  echo "\`scripts/profile-warm.sh $*\` ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)):"
  echo "the warm path's targets under \`perf record -g -e cpu-clock\` (Envoy \`--concurrency 2\`, \`wrk -t1 -c8\`),"
  echo "each sample put on one side of the Wasm VM boundary by its call chain; µs per request is the share"
  echo "times the Envoy CPU per request measured in the same run (perf's own overhead included). Envoy's"
  echo "binary is stripped and V8 writes no perf map, so functions are not named; see the script's header."
  echo
  echo "| target (round) | Wasm code | host calls from Wasm | Envoy outside the VM | kernel | libc | other | Envoy CPU µs/request |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  while IFS=$'\t' read -r file label round cpu requests; do
    [ -f "$out/$file" ] || continue
    classify "$out/$file" | awk -F'\t' -v l="$label ($round)" -v cpu="$cpu" '
      { n[$1] = $2; t = $3 }
      END {
        split("wasm code|host calls from wasm|envoy outside wasm|kernel|libc|other", order, "|")
        row = "| " l " |"
        for (i = 1; i <= 6; i++) {
          share = (t > 0) ? n[order[i]] / t : 0
          if (cpu == "-") row = row sprintf(" %.1f%% |", 100 * share)
          else row = row sprintf(" %.1f (%.1f%%) |", share * cpu, 100 * share)
        }
        print row " " cpu " |"
      }'
  done < "$out/runs.tsv"
} > "$md.tmp"
mv "$md.tmp" "$md"
echo; cat "$md"; echo

for f in "$out"/*.data; do
  echo "== top symbols (self), $(basename "$f")"
  perf report -i "$f" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep '%' | head -15
  echo
done
log "profiles in $out (perf report -i FILE); CPU figures include perf's own overhead"
