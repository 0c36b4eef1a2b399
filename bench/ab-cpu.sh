#!/usr/bin/env bash
# bench/ab-cpu.sh BASE_EXE NEW_EXE - server CPU per request of two ioplex
# builds, interleaved in one run (base, new, base, new...) so that the load
# of a shared machine falls on both alike.  Server pinned to CPU 0, client
# (NEW_EXE's `ioplex bench`, --server-pid) to CPU 1.  Prints one line per
# run: CONFIG base|new US_PER_REQ RATE.
#   REPEAT=5 DUR=3 CONNS=100
#   CFGS="echo event epoll,echo event uring,echo thread epoll,http event epoll hello,..."
# Ends with the median per config and new/base (what bench/RESULTS.md
# reports).
set -u
base=$1 new=$2
REPEAT=${REPEAT:-5} DUR=${DUR:-3}
root=${TMPDIR:-/tmp}/ioplex-ab-www; mkdir -p $root; echo hello > $root/hello; head -c 4096 /dev/urandom > $root/4k.bin
run() { # exe label args...
    local exe=$1 label=$2; shift 2
    local out=${TMPDIR:-/tmp}/ioplex-ab-srv.$$; rm -f $out
    taskset -c 0 "$exe" "$@" -l 127.0.0.1:0 --quiet > $out 2>/dev/null &
    local pid=$!
    for i in $(seq 50); do grep -q listening $out 2>/dev/null && break; sleep 0.05; done
    local addr; addr=$(awk '/listening/{print $2; exit}' $out)
    echo "$pid $addr"
}
one() { # exe kind model backend
    local exe=$1 kind=$2 model=$3 be=$4 r
    if [ $kind = echo ]; then
        read pid addr < <(run $exe x echo --model $model --backend $be)
        r=$(taskset -c 1 $new bench echo $addr -c ${CONNS:-100} -s 64 -d $DUR --warmup 0.5 --server-pid $pid --json 2>/dev/null)
    else
        read pid addr < <(run $exe x http $root --model $model --backend $be)
        r=$(taskset -c 1 $new bench http http://$addr/$5 -c 100 -d $DUR --warmup 0.5 --server-pid $pid --json 2>/dev/null)
    fi
    kill $pid; wait $pid 2>/dev/null
    echo "$r" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["server_cpu_us_per_req"], d["rate"])'
}
log=${TMPDIR:-/tmp}/ioplex-ab.$$.txt; : > $log
IFS=,; for cfg in ${CFGS:-echo event epoll,echo event uring,echo thread epoll,http event epoll hello,http event uring hello,http event epoll 4k.bin}; do IFS=$' \t\n'
    for k in $(seq $REPEAT); do
        for which in base new; do
            exe=$base; [ $which = new ] && exe=$new
            echo "$cfg $which $(one $exe $cfg)" | tee -a $log
        done
    done
done
python3 - "$log" <<'PY'
import sys, statistics as st, collections
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    p = line.split()
    w = 'base' if 'base' in p else 'new'
    i = p.index(w)
    if p[i + 1] != 'None':
        d[' '.join(p[:i])][w].append(float(p[i + 1]))
for cfg, v in d.items():
    if v['base'] and v['new']:
        b, n = st.median(v['base']), st.median(v['new'])
        print(f"{cfg:24s} base {b:.3f} us/req [{min(v['base']):.3f}-{max(v['base']):.3f}]"
              f"  new {n:.3f} [{min(v['new']):.3f}-{max(v['new']):.3f}]  new/base {n / b:.3f}")
PY
rm -f "$log"
