#!/usr/bin/env bash
# bench/loop.sh - event-loop overhead (issue #3): ioplex beside the peers.
#
#   1. ../shared/peers/run-loop.sh with OURS_LOOP_CMD = `ioplex bench loop`:
#      the raw select/poll/epoll loop, libevent, libev, libuv and ioplex, in
#      one run, each pinned to CPU $SERVER_CPU.
#   2. The raw io_uring loop (bench/lb_uring_raw.c on the peers' driver)
#      against ioplex's uring backend, plus ioplex epoll-et and uring-et, on
#      the same CPU, one after the other for each (N, A), REPEAT times (the
#      order of raw and ioplex alternates from one repeat to the next).
#   Then bench/loop_table.py puts all rows in one set of tables, with the
#   ratio ioplex / raw per backend (target <= 1.05).
#
# Knobs (environment), as in run-loop.sh:
#   NS="100 500 1000 5000 9000"  AS="100 N"  W=1000  ROUNDS=25  REPEAT=3
#   BACKENDS="select poll epoll"            part 1: what the peers have
#   MORE_BACKENDS="uring epoll-et uring-et" part 2: what they lack (raw loop
#                                           for uring only; the edge rows are
#                                           ioplex alone)
#   IOPLEX=path/to/ioplex   default build/ioplex, built with CMake first
#   PEERS=path/to/peers     default ../../shared/peers from this directory
#   SERVER_CPU=0            the CPU every benchmark process is pinned to
#   QUIET_MAX=20            seconds to wait for an idle machine before each
#                           (N, A, backend) group, in both parts
# Output: the tables on stdout and in bench/out/loop-STAMP.md, raw rows in
# bench/out/loop-*.csv.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$(cd "$ROOT/../shared/peers" && pwd)}
OUT=$HERE/out
export NS=${NS:-"100 500 1000 5000 9000"} AS=${AS:-"100 N"} W=${W:-1000}
export ROUNDS=${ROUNDS:-25} REPEAT=${REPEAT:-3} BACKENDS=${BACKENDS:-"select poll epoll"}
MORE_BACKENDS=${MORE_BACKENDS:-"uring epoll-et uring-et"}
export RESULTS=$OUT # where run-loop.sh writes its raw rows

# wait_quiet, machine_facts, log, SERVER_CPU; run-loop.sh sources it too.
source "$PEERS/lib/common.sh"
export QUIET_MAX # run-loop.sh would wait 5 s at most

build_all() {
    if [ -z "${IOPLEX:-}" ]; then
        IOPLEX=$ROOT/build/ioplex
        cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
            cmake --build "$ROOT/build" --target ioplex -j"$(nproc)" >&2 ||
            { log "building ioplex failed"; exit 1; }
    fi
    [ -x "$IOPLEX" ] || { log "no ioplex program at $IOPLEX"; exit 1; }
    make -s -C "$HERE" PEERS="$PEERS" >&2 || { log "building bench/ failed"; exit 1; }
    build # the peers' programs (common.sh)
}

# one CSV REP IMPL BACKEND N A CMD...: run CMD pinned, append its row to CSV.
one() {
    local csv=$1 rep=$2 impl=$3 b=$4 n=$5 a=$6 out rc line
    shift 6
    out=$(timeout 120 taskset -c "$SERVER_CPU" "$@" 2>"$OUT/loop-last.err")
    rc=$?
    line=$(grep -E '^[A-Za-z0-9_.-]+,[a-z-]+,[0-9]+,' <<<"$out" | tail -n 1)
    if [ $rc -eq 0 ] && [ -n "$line" ]; then
        echo "$rep,$impl,${line#*,},ok,$quiet" >>"$csv"
    else
        echo "$rep,$impl,$b,$n,$a,$W,,,failed($rc),$quiet" >>"$csv"
        log "  $impl $b N=$n A=$a: failed ($rc): $(head -c 200 "$OUT/loop-last.err" | tr '\n' ' ')"
    fi
}

# Part 2: raw io_uring against ioplex.
uring_sweep() {
    local csv=$1 rep n a b seen raw_first
    echo "rep,impl,backend,N,active,writes,median_us,min_us,status,other_cpu_pct" >"$csv"
    local raw=("$OUT/loopbench-uring-raw" -b uring -w "$W" -r "$ROUNDS")
    local ours=("$IOPLEX" bench loop -w "$W" -r "$ROUNDS" --csv)
    for rep in $(seq "$REPEAT"); do
        for n in $NS; do
            seen=" "
            for a in $AS; do
                [ "$a" = N ] && a=$n
                [ "$a" -gt "$n" ] && continue
                case $seen in *" $a "*) continue ;; esac
                seen="$seen$a "
                quiet=$(wait_quiet)
                log "uring rep $rep  N=$n A=$a W=$W  (others ${quiet}% before)"
                raw_first=$((rep % 2))
                [ $raw_first = 1 ] && one "$csv" "$rep" raw uring "$n" "$a" "${raw[@]}" -n "$n" -a "$a"
                one "$csv" "$rep" ioplex uring "$n" "$a" "${ours[@]}" -b uring -n "$n" -a "$a"
                [ $raw_first = 0 ] && one "$csv" "$rep" raw uring "$n" "$a" "${raw[@]}" -n "$n" -a "$a"
                for b in $MORE_BACKENDS; do
                    [ "$b" = uring ] && continue
                    one "$csv" "$rep" ioplex "$b" "$n" "$a" "${ours[@]}" -b "$b" -n "$n" -a "$a"
                done
            done
        done
    done
}

main() {
    build_all
    mkdir -p "$OUT"
    local stamp peers_md uring_csv report peers_csv cmd
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    peers_md=$OUT/loop-peers-$stamp.md
    uring_csv=$OUT/loop-uring-$stamp.csv
    report=$OUT/loop-$stamp.md
    cmd="$IOPLEX bench loop --backend {backend} -n {n} -a {a} -w {w} -r {rounds} --csv"
    {
        echo "## Loop overhead, $stamp"
        echo
        machine_facts
        echo "- NS=\"$NS\" AS=\"$AS\" W=$W ROUNDS=$ROUNDS REPEAT=$REPEAT QUIET_MAX=$QUIET_MAX, pinned to CPU $SERVER_CPU"
        echo "- part 1: BACKENDS=\"$BACKENDS\" OURS_LOOP_NAME=ioplex OURS_LOOP_CMD='$cmd' $PEERS/run-loop.sh"
        echo "- part 2: $OUT/loopbench-uring-raw -b uring ... and $IOPLEX bench loop -b B ... --csv, B in: $MORE_BACKENDS"
        echo
    } >"$report"
    log "part 1: run-loop.sh, BACKENDS=\"$BACKENDS\""
    OURS_LOOP_NAME=ioplex OURS_LOOP_CMD=$cmd "$PEERS/run-loop.sh" >"$peers_md" || exit 1
    peers_csv=$(sed -n 's/^raw rows: //p' "$peers_md")
    [ -f "$peers_csv" ] || peers_csv=$PEERS/$peers_csv
    log "part 2: raw io_uring against ioplex, MORE_BACKENDS=\"$MORE_BACKENDS\""
    uring_sweep "$uring_csv"
    {
        sed -n '/^### syscall floor/,/^### loop/p' "$peers_md" | sed '$d'
        python3 "$HERE/loop_table.py" "$peers_csv" "$uring_csv"
        echo
        echo "raw rows: ${peers_csv#$ROOT/} ${uring_csv#$ROOT/}"
    } >>"$report"
    cat "$report"
}

main "$@"
