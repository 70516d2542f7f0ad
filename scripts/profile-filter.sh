#!/usr/bin/env bash
# Where the filter's own code spends a warm request, natively: runs the ignored test
# `warm_requests_for_a_profiler` (filter/src/stream/alloc_tests.rs: N warm V2 infers through
# the stream with a host that only hands out canned headers) under callgrind, built as the
# Wasm module is (release, LTO, the filter at opt-level 3) but with symbols, and lists the
# functions by self instructions per request. Envoy's side of the host calls is not in it
# (BENCHMARKS.md's instructions part counts that); x86 code is not V8's, so compare the
# shares, not the absolute counts with the Wasm module's.
#   scripts/profile-filter.sh [REQUESTS]    (default 20000; valgrind from apt)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
requests=${1:-20000}
command -v valgrind >/dev/null || { echo "apt-get install valgrind" >&2; exit 1; }
# The release profile strips symbols; keep them (and line tables) for this build only.
export CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
bin=$(cargo test -q --release -p mm-filter --lib --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "mm_filter":
        print(m["executable"])')
[ -x "$bin" ] || { echo "no test binary built for mm-filter" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
MM_WARM_REQUESTS=$requests valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
  --toggle-collect='*alloc_tests::warm_request' \
  "$bin" --ignored --exact stream::alloc_tests::warm_requests_for_a_profiler --test-threads=1 \
  >"$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/cg")
echo "warm requests: $requests; instructions: $total; per request: $((total / requests))"
echo
echo "self instructions per request, by function (inlined code counted where it was inlined):"
callgrind_annotate --threshold=100 --show-percs=no --auto=no "$out/cg" 2>/dev/null | python3 -c '
import re, sys
n = int(sys.argv[1])
by = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s+(\S.*?):(.+?)(?: \[.*\])?$", line)
    if not m or "PROGRAM TOTALS" in line:
        continue
    fn = re.sub(r" \([\d,]+x\)$", "", m.group(3))
    by[fn] = by.get(fn, 0) + int(m.group(1).replace(",", ""))
for fn, ir in sorted(by.items(), key=lambda kv: -kv[1])[:30]:
    print(f"{ir / n:8.0f}  {fn}")
' "$requests"
