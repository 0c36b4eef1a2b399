#!/usr/bin/env bash
# bench/ab.sh - two builds of ioplex in one run: `ioplex http` under the
# peers' run-http.sh (nginx beside each) and `ioplex echo` under run-echo.sh
# (the raw epoll peer beside each),
# the two builds alternating inside every repeat, so that a ratio B/A is
# taken minutes apart at most on a machine others load too.
#
#   A=/path/to/base/build/ioplex B=build/ioplex bench/ab.sh
#
# Knobs: REPEAT=3  BACKENDS="uring epoll"  URLS="/hello /4k.bin /1m.bin"
#   DUR=5  ECHO_CONFIGS="100:64:0 1000:64:0"  MEM=1 (idle memory, 9000 echo
#   connections, once per build and backend)  PEERS=../shared/peers
# Prints the medians and the per-repeat B/A ratios (median [range]); raw rows
# under bench/out/ab-STAMP/.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$here/../shared/peers}
A=${A:?A=path to the base ioplex} B=${B:-$here/build/ioplex}
REPEAT=${REPEAT:-3}
BACKENDS=${BACKENDS:-"uring epoll"}
out=$here/bench/out/ab-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
export DUR=${DUR:-5}

for rep in $(seq "$REPEAT"); do
    for be in $BACKENDS; do
        for side in A B; do
            bin=${!side}
            RESULTS=$out/http-$side-$be-$rep SERVERS=nginx URLS=${URLS:-"/hello /4k.bin /1m.bin"} \
                REPEAT=1 MEM=0 OURS_HTTP_CMD="$bin http {root} -l 127.0.0.1:{port} --quiet --backend $be --model event" \
                "$peers/run-http.sh" >/dev/null 2>>"$out/log"
            RESULTS=$out/echo-$side-$be-$rep SERVERS=raw CONFIGS=${ECHO_CONFIGS:-"100:64:0 1000:64:0"} \
                REPEAT=1 MEM=0 OURS_ECHO_CMD="$bin echo -l 127.0.0.1:{port} --quiet --backend $be --model event" \
                "$peers/run-echo.sh" >/dev/null 2>>"$out/log"
        done
    done
done
if [ "${MEM:-1}" = 1 ]; then
    for be in $BACKENDS; do
        for side in A B; do
            bin=${!side}
            RESULTS=$out/mem-$side-$be SERVERS=raw CONFIGS=1:64:0 DUR=1 REPEAT=1 MEM=1 MEM_SERVERS=raw \
                OURS_ECHO_CMD="$bin echo -l 127.0.0.1:{port} --quiet --backend $be --model event" \
                "$peers/run-echo.sh" >/dev/null 2>>"$out/log"
        done
    done
fi

python3 - "$out" <<'PY'
import csv, glob, os, statistics, sys
out = sys.argv[1]
def rows(pat):
    for f in glob.glob(os.path.join(out, pat)):
        yield from csv.DictReader(open(f))
def us(r, n):
    try:
        return float(r["srv_cpu_pct"]) / 100 / float(r[n]) * 1e6
    except (ValueError, ZeroDivisionError, KeyError):
        return None
def med(v):
    v = [x for x in v if x is not None]
    return (statistics.median(v), min(v), max(v)) if v else None
def fmt(m, nd=1):
    return "–" if not m else f"{m[0]:.{nd}f} [{m[1]:.{nd}f}–{m[2]:.{nd}f}]"
cell = {}  # (kind, be, key, side, rep) -> (ours µs, nginx µs)
for path in glob.glob(os.path.join(out, "*-*-*-*")):
    kind, side, be, rep = os.path.basename(path).split("-")
    if kind == "mem":
        continue
    for f in glob.glob(path + "/*.csv"):
        for r in csv.DictReader(open(f)):
            if kind == "http":
                cell.setdefault((kind, be, r["url"], side, rep), {})[r["server"]] = us(r, "req_per_s")
            elif "msgs_per_s" in r:
                key = f"C={r['conns']} S={r['size']}"
                cell.setdefault((kind, be, key, side, rep), {})[r["server"]] = us(r, "msgs_per_s")
keys = sorted({k[:3] for k in cell})
print("server CPU per request (http) or round trip (echo), µs: median [range] of the repeats;")
print("peer: nginx (http) or the raw epoll echo server (echo), same invocation\n")
print("| bench | backend | row | A | B | B/A per repeat | A/peer | B/peer |")
print("|---|---|---|---|---|---|---|---|")
for k in keys:
    reps = sorted({c[4] for c in cell if c[:3] == k})
    a = [cell.get(k + ("A", r), {}).get("ours") for r in reps]
    b = [cell.get(k + ("B", r), {}).get("ours") for r in reps]
    ba = [y / x for x, y in zip(a, b) if x and y]
    peer = "nginx" if k[0] == "http" else "raw"
    def vs(side):
        return [c["ours"] / c[peer] for c in (cell.get(k + (side, r), {}) for r in reps)
                if c.get("ours") and c.get(peer)]
    an, bn = vs("A"), vs("B")
    print(f"| {k[0]} | {k[1]} | {k[2]} | {fmt(med(a))} | {fmt(med(b))} | {fmt(med(ba), 3)} | {fmt(med(an), 2)} | {fmt(med(bn), 2)} |")
mem = []
for path in sorted(glob.glob(os.path.join(out, "mem-*"))):
    _, side, be = os.path.basename(path).split("-")
    for f in glob.glob(path + "/echomem-*.csv"):
        for r in csv.DictReader(open(f)):
            if r["server"] == "ours":
                mem.append(f"{side} {be}: {r['bytes_per_conn']} B")
if mem:
    print("\nidle memory per connection (9000 idle echo connections, event model): " + ", ".join(mem))
print(f"\nraw rows: {out}")
PY
