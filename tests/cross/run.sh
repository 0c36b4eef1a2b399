#!/bin/sh
# tests/cross/run.sh - build src/coro/ and coro_check.c for aarch64 and run
# them under qemu-user, so the aarch64 context switch is exercised on an
# x86-64 machine.  Needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and
# qemu-user (not installed by scripts/install-deps: CI skips this, exit 77).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cc=${CROSS_CC:-aarch64-linux-gnu-gcc}
qemu=${QEMU:-qemu-aarch64}
if ! command -v "$cc" >/dev/null 2>&1 || ! command -v "$qemu" >/dev/null 2>&1; then
    echo "skip: $cc or $qemu missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)"
    exit 77
fi
out=${TMPDIR:-/tmp}/ioplex-cross-$$
mkdir -p "$out"
trap 'rm -rf "$out"' EXIT
"$cc" -std=gnu11 -O2 -Wall -Wextra -Werror -static -pthread -I"$root/include" -I"$root/src" \
    "$root/src/coro/coro.c" "$root/src/coro/stack.c" "$root/src/coro/switch_aarch64.S" \
    "$root/tests/cross/coro_check.c" -o "$out/coro_check"
"$qemu" "$out/coro_check"
