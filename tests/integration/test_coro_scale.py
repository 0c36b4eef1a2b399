#!/usr/bin/env python3
"""10,000 concurrent coroutine connections (issue #6): `ioplex echo --model
coro` keeps 10,000 clients open at once, each parked in recv, and echoes
every one byte-exact; on epoll and on io_uring.

The clients live in this process (its own fd limit), the server in its own,
so the two sides do not share the 20,000-fd budget."""
import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

N = 10000
BATCH = 500
T = 60  # seconds: the bound on each phase


def msg(i, round_):
    return (f"{round_}:{i:05d}:" + "x" * (i % 37)).encode() + b"\n"


def start(exe, backend):
    p = subprocess.Popen([exe, "echo", "-l", "127.0.0.1:0", "--quiet", "--model", "coro",
                          "--backend", backend, "--max-conns", "20000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("listening "):
        p.kill()
        err = p.stderr.read()
        if "io_uring" in err or "uring" in err:
            return None, None
        raise SystemExit(f"no listening line: {line!r} {err!r}")
    host, port = line.split()[1].rsplit(":", 1)
    return p, (host, int(port))


def echo_all(socks, round_):
    """Send every socket its message, then read every echo back."""
    sel = selectors.DefaultSelector()
    want = {}
    for i, s in enumerate(socks):
        data = msg(i, round_)
        s.sendall(data)
        want[s.fileno()] = (i, data, bytearray())
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + T
    while want:
        if time.monotonic() > deadline:
            raise SystemExit(f"round {round_}: {len(want)} echoes missing")
        for key, _ in sel.select(1.0):
            s = key.fileobj
            i, data, got = want[s.fileno()]
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"round {round_}: connection {i} closed early")
            got += chunk
            if len(got) >= len(data):
                if bytes(got) != data:
                    raise SystemExit(f"round {round_}: connection {i}: {bytes(got)!r} != {data!r}")
                sel.unregister(s)
                del want[s.fileno()]
    sel.close()


def run(exe, backend):
    p, addr = start(exe, backend)
    if p is None:
        print(f"skip {backend}: io_uring refused")
        return
    socks = []
    try:
        t0 = time.monotonic()
        for b in range(0, N, BATCH):
            batch = []
            for _ in range(BATCH):
                s = socket.create_connection(addr, timeout=T)
                batch.append(s)
            echo_all(batch, 0)  # every one accepted and served before the next batch
            socks += batch
        echo_all(socks, 1)  # all 10,000 open and parked at once
        for s in socks:
            s.shutdown(socket.SHUT_WR)
        for i, s in enumerate(socks):
            s.settimeout(T)
            if s.recv(1) != b"":
                raise SystemExit(f"connection {i}: no EOF after half-close")
        print(f"ok   {backend}: {N} concurrent coroutine connections, {time.monotonic() - t0:.1f} s")
    finally:
        for s in socks:
            s.close()
        p.terminate()
        try:
            rc = p.wait(T)
        except subprocess.TimeoutExpired:
            p.kill()
            raise SystemExit(f"{backend}: the server did not stop")
        if rc != 0:
            raise SystemExit(f"{backend}: exit status {rc}: {p.stderr.read()[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ioplex", required=True)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < N + 100:
        print(f"skip: fd limit {hard} < {N + 100}")
        sys.exit(77)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for backend in ("epoll", "uring"):
        run(a.ioplex, backend)


if __name__ == "__main__":
    main()
