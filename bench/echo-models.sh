#!/usr/bin/env bash
# bench/echo-models.sh - `ioplex echo` (the server framework + echo protocol)
# beside the raw epoll peer, under ../shared/peers/run-echo.sh, once per
# (backend, model) in RUNS (default "epoll:event uring:event epoll:thread";
# "thread-ceiling" runs bench/thread_echo.c, the bare thread-per-connection
# server that bounds what the thread model can reach).
# Knobs pass through to run-echo.sh (SERVERS, CONFIGS, REPEAT, DUR, MEM...).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS:-$here/../shared/peers}
out=$here/bench/out
mkdir -p "$out"
cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build" -j"$(nproc)" --target ioplex >/dev/null
for run in ${RUNS:-epoll:event uring:event epoll:thread}; do
    if [ "$run" = thread-ceiling ]; then
        # The bare thread-per-connection server: what the thread model
        # could reach if the framework cost nothing.
        make -C "$here/bench" "$out/thread_echo" >/dev/null
        echo "## bench/thread_echo.c (thread per connection, nothing else)"
        RESULTS=$out OURS_ECHO_CMD="$out/thread_echo {port}" "$peers/run-echo.sh"
        continue
    fi
    b=${run%%:*} m=${run#*:}
    echo "## ioplex echo --backend $b --model $m"
    RESULTS=$out OURS_ECHO_CMD="$here/build/ioplex echo -l 127.0.0.1:{port} --quiet --backend $b --model $m" \
        "$peers/run-echo.sh"
done
