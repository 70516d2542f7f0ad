#!/usr/bin/env python3
"""Splits a window of `mm-bench --parts instructions` by the Wasm VM boundary, with the
dump's call graph: the calls from V8's generated code (the filter) into Envoy (host
calls, grouped by the Envoy function called: each host function has its own), the
entries from Envoy into the generated code, and what the generated code runs itself.
Envoy's binary is stripped, so functions are addresses; which host call is which comes
from comparing targets (the no-op filter makes exactly one, `get_header_map_value`).

    scripts/callgrind-hostcalls.py WINDOW_DUMP IDLE_DUMP WINDOW_SECONDS [REQUESTS [IDLE_SECONDS]]

WINDOW_DUMP is a measured window (bench/results/callgrind/<letter>.cg.2 to .4), IDLE_DUMP
the same target's idle window (<letter>.cg.1), WINDOW_SECONDS how long the window took
(instructions.json: (raw - net) * requests / idle rate). Figures are per request, the
idle window's calls subtracted at the same rate."""
import collections
import re
import sys


def parse(path):
    """Self cost per (object, function) and call edges (caller, callee) -> [calls, cost]."""
    objects, functions = {}, {}

    def define(table, rest):
        m = re.match(r"(\(\d+\))(?:\s+(.*))?$", rest.strip())
        if not m:
            return rest.strip()
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
            return m.group(2)
        return table.get(m.group(1), m.group(1))

    ob = fn = ""
    cob = cfn = None
    calls = None
    self_cost = collections.Counter()
    edges = collections.defaultdict(lambda: [0, 0])
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                ob = define(objects, line[3:])
            elif line.startswith("cob="):
                cob = define(objects, line[4:])
            elif line.startswith("fn="):
                fn, cob = define(functions, line[3:]), None
            elif line.startswith("cfn="):
                cfn = define(functions, line[4:])
            elif line.startswith("calls="):
                calls = int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                cost = int(parts[-1]) if len(parts) > 1 else 0
                if calls is not None:
                    edge = edges[((ob, fn), (cob if cob is not None else ob, cfn))]
                    edge[0] += calls
                    edge[1] += cost
                    calls, cob = None, None
                else:
                    self_cost[(ob, fn)] += cost
    return self_cost, edges


def is_generated(ob, fn):
    """V8's code: no object, and mapped high (valgrind loads Envoy itself low)."""
    if ob != "???":
        return False
    try:
        return int(fn.split("'")[0], 16) >= 1 << 32
    except ValueError:
        return False


def split(path):
    _, edges = parse(path)
    out = {"host": collections.defaultdict(lambda: [0, 0]), "entries": [0, 0]}
    into_envoy = collections.defaultdict(lambda: [0, 0])
    for (caller, callee), (calls, cost) in edges.items():
        if is_generated(*caller) and not is_generated(*callee):
            into_envoy[callee[1]][0] += calls
            into_envoy[callee[1]][1] += cost
        if not is_generated(*caller) and is_generated(*callee) and "'" not in caller[1]:
            out["entries"][0] += calls
            out["entries"][1] += cost
    # Every host call goes through one trampoline (the callee costing the most); below it,
    # one function per host function.
    trampoline = max(into_envoy, key=lambda k: into_envoy[k][1], default=None)
    for (caller, callee), (calls, cost) in edges.items():
        if caller[1] == trampoline:
            out["host"][callee[1]][0] += calls
            out["host"][callee[1]][1] += cost
    out["trampoline"] = into_envoy.get(trampoline, [0, 0])
    return out


def main():
    window, idle, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    requests = float(sys.argv[4]) if len(sys.argv) > 4 else 200.0
    idle_seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
    w, i = split(window), split(idle)
    share = seconds / idle_seconds

    def per_request(a, b):
        return (a - b * share) / requests

    calls = per_request(w["trampoline"][0], i["trampoline"][0])
    host = per_request(w["trampoline"][1], i["trampoline"][1])
    entries = per_request(w["entries"][1], i["entries"][1])
    print(f"entries into the VM, inclusive: {entries:8.0f} per request")
    print(f"  host calls:                   {host:8.0f} ({calls:.2f} calls)")
    print(f"  the generated code's own:     {entries - host:8.0f}")
    print("host functions (calls and instructions per request):")
    for fn in sorted(w["host"], key=lambda k: -w["host"][k][1]):
        c = per_request(w["host"][fn][0], i["host"].get(fn, [0, 0])[0])
        cost = per_request(w["host"][fn][1], i["host"].get(fn, [0, 0])[1])
        if cost >= 100:
            print(f"  {fn}  {c:6.2f}  {cost:8.0f}")


if __name__ == "__main__":
    main()
