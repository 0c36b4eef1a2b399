#!/usr/bin/env bash
# bench/http-features.sh - what precompressed siblings and --compress cost
# (server CPU per request) beside nginx gzip_static and h2o's compress, and
# that a server without these options costs what main's does: main is
# built from `git archive main` in build-main-bench/ and measured in the
# same rounds.  Knobs: REPEAT (5), DUR (5 s), CONNS (50), SERVER_CPU (0),
# CLIENT_CPU (1).  The table goes to stdout, per-run lines to stderr.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/bench/out/features
mkdir -p "$out"
cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build" -j2 --target ioplex >/dev/null
src=$here/build-main-bench/src
rm -rf "$src" && mkdir -p "$src"
git -C "$here" archive main | tar -x -C "$src"
cmake -S "$src" -B "$here/build-main-bench/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build-main-bench/build" -j2 --target ioplex >/dev/null
echo "main: $(git -C "$here" rev-parse --short main), ours: $(git -C "$here" rev-parse --short HEAD)"
python3 "$here/bench/http_features.py" "$here/build/ioplex" "$here/build-main-bench/build/ioplex" "$out"
