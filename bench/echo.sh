#!/usr/bin/env bash
# bench/echo.sh - the stream layer's raw-echo micro-server (bench/stream_echo)
# beside the peers' echo servers, under ../shared/peers/run-echo.sh: one run
# of the script per ioplex backend, so that each table has raw epoll, the
# libraries and ioplex measured together.  Knobs pass through to run-echo.sh
# (SERVERS, CONFIGS, REPEAT, DUR, MEM...); BACKENDS="epoll uring" picks ours.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$here/../shared/peers}
out=$here/bench/out
mkdir -p "$out"
cmake -S "$here" -B "$here/build-bench" -DIOPLEX_BENCH=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build-bench" -j"$(nproc)" --target bench_stream_echo >/dev/null
for b in ${BACKENDS:-epoll uring}; do
    echo "## stream_echo --backend $b"
    RESULTS=$out OURS_ECHO_CMD="$here/build-bench/bench/stream_echo -l 127.0.0.1:{port} --backend $b" \
        "$peers/run-echo.sh"
done
