#!/usr/bin/env bash
# bench/compare-client.sh - the load generator itself against the peers'
# clients, each pinned to CPU 1 against the same server pinned to CPU 0:
#
#   `ioplex bench echo` vs ../shared/peers/bin/echoload  on the raw epoll peer, C=100 S=64
#   `ioplex bench http` vs wrk -t1 -c100                 on h2o, /hello
#
# Alternating which client goes first, REPEAT times each; prints the
# medians and the ratio (targets: >= 1.2x echoload, >= 1.0x wrk).  Knobs as
# for bench/compare.sh (REPEAT, DUR, WARMUP, CLIENT_CONNS, ...).
exec "$(dirname "$0")/compare.sh" client
