#!/usr/bin/env python3
"""loop_table.py - Markdown tables for bench/loop.sh.

usage: loop_table.py RAW.csv [RAW.csv ...]

Reads the rows that ../shared/peers/run-loop.sh writes (and bench/loop.sh
appends in the same format):
    rep,impl,backend,N,active,writes,median_us,min_us,status,other_cpu_pct
and prints four tables: µs per round, ns per event, the ratio ioplex / raw per
backend, and ns per event at A=100 as N grows.  A cell is the median over the
repeats with [min-max] beside it; a ratio is the median of the per-repeat
ratios (raw and ioplex of one repeat ran minutes apart at most)."""
import csv
import statistics
import sys
from collections import defaultdict

BACKENDS = ["select", "poll", "epoll", "epoll-et", "uring", "uring-et"]
IMPLS = ["raw", "libevent", "libev", "libuv", "ioplex"]
TARGET = 1.05
# Edge-triggered rows have no raw loop of their own: compare with the raw
# level-triggered loop of the same kernel interface, and say so.
RAW_OF = {"epoll-et": "epoll", "uring-et": "uring"}


def fnum(x, nd=0):
    return f"{x:,.{nd}f}"


def cell(vals, nd=0):
    m = statistics.median(vals)
    if len(vals) == 1:
        return fnum(m, nd)
    return f"{fnum(m, nd)} [{fnum(min(vals), nd)}–{fnum(max(vals), nd)}]"


def md(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def load(paths):
    ok = defaultdict(dict)  # (backend, N, A, impl) -> {rep: (median, min, writes)}
    status = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                # run-loop.sh names ioplex's failed or skipped rows "ours"
                impl = "ioplex" if r["impl"] == "ours" else r["impl"]
                k = (r["backend"], int(r["N"]), int(r["active"]), impl)
                if r["status"] == "ok":
                    ok[k][r["rep"]] = (float(r["median_us"]), float(r["min_us"]), int(r["writes"]))
                else:
                    status.setdefault(k, r["status"])
    return ok, status


def keys_of(ok, status):
    ks = {k[:3] for k in list(ok) + list(status)}
    order = {b: i for i, b in enumerate(BACKENDS)}
    return sorted(ks, key=lambda k: (order.get(k[0], 99), k[0], k[1], k[2]))


def impls_of(ok, status):
    seen = {k[3] for k in list(ok) + list(status)}
    return [i for i in IMPLS if i in seen] + sorted(seen - set(IMPLS))


def per_round(ok, status, keys, impls):
    rows = []
    for b, n, a in keys:
        row = [b, n, a]
        for i in impls:
            d = ok.get((b, n, a, i))
            if d:
                v = list(d.values())
                row.append(cell([x[0] for x in v]) + f" (min {fnum(min(x[1] for x in v))})")
            else:
                row.append(status.get((b, n, a, i), "-"))
        rows.append(row)
    return rows


def ns_event(d, a):
    return [m * 1000 / (w + a) for m, _, w in d.values()]


def per_event(ok, status, keys, impls):
    rows = []
    for b, n, a in keys:
        row = [b, n, a]
        for i in impls:
            d = ok.get((b, n, a, i))
            row.append(fnum(statistics.median(ns_event(d, a))) if d else status.get((b, n, a, i), "-"))
        rows.append(row)
    return rows


def ratio_rows(ok, keys):
    rows = []
    for b, n, a in keys:
        ours = ok.get((b, n, a, "ioplex"))
        rb = RAW_OF.get(b, b)
        raw = ok.get((rb, n, a, "raw"))
        if not ours or not raw:
            continue
        reps = sorted(set(ours) & set(raw))
        if not reps:
            continue
        rs = [ours[r][0] / raw[r][0] for r in reps]
        mins = [ours[r][1] / raw[r][1] for r in reps]
        verdict = "yes" if statistics.median(rs) <= TARGET else "**no**"
        vs = "raw" if rb == b else f"raw {rb} (level)"
        rows.append([b, n, a, vs, cell(rs, 3), cell(mins, 3),
                     verdict if rb == b else "(no edge raw loop)"])
    return rows


def flat_rows(ok, keys, impls):
    ns = sorted({n for b, n, a in keys if a == 100})
    rows = []
    for b in BACKENDS:
        if b in ("select", "poll"):
            continue
        for i in impls:
            vals = [ok.get((b, n, 100, i)) for n in ns]
            if len(ns) < 2 or not vals[0] or not vals[-1]:
                continue
            meds = [statistics.median(ns_event(d, 100)) if d else None for d in vals]
            rows.append([b, i] + [fnum(m) if m else "-" for m in meds] + [f"{meds[-1] / meds[0]:.2f}"])
    return ["backend", "impl"] + [f"N={n}" for n in ns] + ["last / first"], rows


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    ok, status = load(sys.argv[1:])
    keys = keys_of(ok, status)
    impls = impls_of(ok, status)
    hdr = ["backend", "N", "active"] + impls
    print("µs per round (median of the repeats [their range], each the median of its rounds; min: the fastest round):\n")
    print(md(hdr, per_round(ok, status, keys, impls)))
    print("\nns per event (median round / (writes + active)):\n")
    print(md(hdr, per_event(ok, status, keys, impls)))
    print(f"\nioplex / raw, µs per round (median of the per-repeat ratios [range]; target ≤ {TARGET}).")
    print("The ratio of the fastest rounds is less exposed to other tasks on the machine:\n")
    hdr = ["backend", "N", "active", "against", "ratio of medians", "ratio of min rounds", f"≤ {TARGET}"]
    print(md(hdr, ratio_rows(ok, keys)))
    fh, fr = flat_rows(ok, keys, impls)
    print("\nns per event at A=100 as N grows (O(active) means flat):\n")
    print(md(fh, fr))


if __name__ == "__main__":
    main()
