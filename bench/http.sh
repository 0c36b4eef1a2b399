#!/usr/bin/env bash
# bench/http.sh - `ioplex http` beside nginx, h2o, evhttp and python under
# ../shared/peers/run-http.sh (wrk -t1 -c100, server on CPU 0, wrk on CPU 1),
# once per (backend, model) in RUNS (default "epoll:event uring:event"; a
# backend "epoll-edge" or "uring-edge" adds --edge).
# Knobs pass through to run-http.sh (SERVERS, URLS, REPEAT, DUR, MEM...).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$here/../shared/peers}
out=$here/bench/out
mkdir -p "$out"
cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build" -j"$(nproc)" --target ioplex >/dev/null
for run in ${RUNS:-epoll:event uring:event}; do
    b=${run%%:*} m=${run#*:} edge=
    case $b in *-edge) b=${b%-edge} edge=--edge ;; esac
    echo "## ioplex http --backend $b $edge --model $m"
    RESULTS=$out OURS_HTTP_CMD="$here/build/ioplex http {root} -l 127.0.0.1:{port} --quiet --backend $b $edge --model $m" \
        "$peers/run-http.sh"
done
