#!/usr/bin/env python3
"""The ioplex program's contract for options: --help / --version, one line on
stderr and exit status 2 for anything bad, and `bench loop`'s CSV rows in the
format ../shared/peers/run-loop.sh reads."""
import argparse
import re
import subprocess
import sys

FAILS = []


def run(exe, *args, timeout=60):
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("FAIL", what)


def bad(exe, *args):
    r = run(exe, *args)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2, f"{args}: exit {r.returncode}, want 2")
    check(len(lines) == 1, f"{args}: {len(lines)} lines on stderr, want 1: {r.stderr!r}")
    check(r.stdout == "", f"{args}: stdout not empty: {r.stdout!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ioplex", required=True)
    exe = ap.parse_args().ioplex

    r = run(exe, "--help")
    check(r.returncode == 0 and "usage" in r.stdout, "--help")
    r = run(exe, "--version")
    check(r.returncode == 0 and re.fullmatch(r"ioplex \d+\.\d+\.\d+\n", r.stdout), "--version")
    for sub in (["bench", "--help"], ["bench", "loop", "--help"]):
        r = run(exe, *sub)
        check(r.returncode == 0 and r.stdout, f"{sub} help")

    bad(exe)
    bad(exe, "--bogus")
    bad(exe, "nosuchcommand")
    bad(exe, "bench", "loop", "-n")
    bad(exe, "bench", "loop", "-n", "x")
    bad(exe, "bench", "loop", "--backend", "kqueue")
    bad(exe, "bench", "loop", "-a", "5", "-n", "2")

    r = run(exe, "bench", "loop", "--backend", "all", "-n", "40", "-a", "4", "-w", "40",
            "-r", "3", "--csv")
    check(r.returncode == 0, f"bench loop all: exit {r.returncode} {r.stderr}")
    rows = r.stdout.strip().splitlines()
    row_re = re.compile(r"^ioplex,[a-z_0-9-]+,40,4,40,[0-9.]+,[0-9.]+$")
    check(all(row_re.match(x) for x in rows), f"CSV rows: {rows}")
    names = {x.split(",")[1] for x in rows}
    check({"select", "poll", "epoll", "epoll-et"} <= names, f"backends: {names}")

    # select cannot watch fds >= FD_SETSIZE: run-loop.sh's exit 3 means skipped
    r = run(exe, "bench", "loop", "--backend", "select", "-n", "1200", "-a", "10", "-w", "10",
            "-r", "2", "--csv")
    check(r.returncode == 3 and "FD_SETSIZE" in r.stderr, f"select over FD_SETSIZE: {r}")

    print("ok" if not FAILS else f"{len(FAILS)} failures")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
