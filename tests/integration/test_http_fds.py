#!/usr/bin/env python3
"""`ioplex http` out of file descriptors (RLIMIT_NOFILE lowered in the server's
child before it runs), on the real binary.

- truncated: the event and coro models with the fd table filled by idle
  connections, two slots freed, then `GET /big2.bin` (not asked for before,
  so not cached): the new connection takes one slot and opening the file the
  other, so keeping the file for the rest of the body finds none.  The client must get a whole 200 or a 503 that sent
  nothing before it, never a 200 whose body ends before its Content-Length.
  Every backend.
- thread-cache: the thread model (every backend) and fork with 60 keep-alive
  clients asking for 3 small files each under a limit of 200: all 180 are
  200, and while the clients sit idle the server holds the 3 files at most,
  not one per file per connection (/proc/PID/fd)."""
import os
import re
import resource
import socket
import sys
import threading
import time

import harness
from harness import BACKENDS, T, Fail, check, children, tmp_path

ROOT = None
BIG = 8 << 20  # more than a loopback socket takes at once
SMALL = {"a.txt": b"a" * 100, "b.txt": b"b" * 2000, "c.txt": b"c" * 30000}


def make_root():
    global ROOT
    ROOT = tmp_path("root")
    os.mkdir(ROOT)
    for name in ("big.bin", "big2.bin"):
        with open(os.path.join(ROOT, name), "wb") as f:
            f.write(os.urandom(BIG))
    for name, data in SMALL.items():
        with open(os.path.join(ROOT, name), "wb") as f:
            f.write(data)


def nofile(n):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


class Server(harness.Server):
    err_tail = 2000

    def __init__(self, limit, *args):
        super().__init__(["http", ROOT], "--quiet", *args, preexec=nofile(limit))


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return 0


def wait_fds(pid, cond, what):
    end = time.monotonic() + T
    while not cond(fds(pid)):
        check(time.monotonic() < end, f"{what}: the server holds {fds(pid)} fds")
        time.sleep(0.02)


def connect(addr, rcvbuf=None):
    host, port = addr.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(T)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, int(port)))
    return s


class Reader:
    """Responses off one connection: (status, head, body, eof)."""

    def __init__(self, s):
        self.s, self.buf = s, b""

    def more(self):
        try:
            d = self.s.recv(1 << 20)
        except ConnectionResetError:
            d = b""
        self.buf += d
        return bool(d)

    def response(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            if not self.more():
                return None, self.buf, b"", True
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        n = int(m.group(1)) if m else 0
        eof = False
        while len(self.buf) < n and not eof:
            eof = not self.more()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, head, body, eof


def alive(s):
    """The server has not closed s (it accepted it and keeps it)."""
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(T)


def kept_by(conns):
    """The connections the server accepted and keeps: those still open once
    the set stops changing (it sheds its backlog every 100 ms at EMFILE)."""
    end = time.monotonic() + T
    now = [s for s in conns if alive(s)]
    while True:
        time.sleep(0.3)
        before, now = now, [s for s in now if alive(s)]
        if now == before:
            return now
        check(time.monotonic() < end, "the server keeps shedding connections")


def truncated(backend, model):
    limit = 64
    with Server(limit, *BACKENDS[backend], "--model", model) as srv:
        # A first response of the file: the stream context makes its spare
        # descriptor, the file may be cached.
        with connect(srv.addr) as w:
            w.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            st, _, body, _ = Reader(w).response()
            check(st == 200 and len(body) == BIG, f"warm-up: {st}, {len(body)} bytes")
        idle = []
        try:
            for _ in range(2 * limit):
                idle.append(connect(srv.addr))
            wait_fds(srv.pid, lambda n: n >= limit, "filling the fd table")
            kept = kept_by(idle)
            check(len(kept) >= 2, f"only {len(kept)} connections kept")
            for s in kept[:2]:
                s.close()
            wait_fds(srv.pid, lambda n: n <= limit - 2, "freeing two slots")
            with connect(srv.addr, rcvbuf=65536) as c:
                c.sendall(b"GET /big2.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                st, head, body, eof = Reader(c).response()
            check(st in (200, 503), f"status {st}: {head[:200]!r}")
            if st == 200:
                check(len(body) == BIG, f"a 200 of {BIG} bytes ended after {len(body)}")
            else:
                check(re.search(rb"\r\nconnection: close", head, re.I), f"503 without close: {head!r}")
        finally:
            for s in idle:
                s.close()
        # Descriptors back: the server serves again.
        wait_fds(srv.pid, lambda n: n < limit - 8, "after the clients left")
        with connect(srv.addr) as w:
            w.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            st, _, body, _ = Reader(w).response()
            check(st == 200 and len(body) == BIG, f"afterwards: {st}, {len(body)} bytes")


def fetch_all(addr, files, barrier, conns):
    """One keep-alive connection: GET each file, then stay (in conns)."""
    s = connect(addr)
    conns.append(s)
    r = Reader(s)
    barrier.wait(T)
    out = []
    for name in files:
        s.sendall(f"GET /{name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        st, _, body, _ = r.response()
        out.append((name, st, body == SMALL[name]))
    return out


def thread_cache(backend, model="thread"):
    limit, nclients = 200, 60
    with Server(limit, *BACKENDS[backend], "--model", model) as srv:
        barrier = threading.Barrier(nclients)
        conns, results, errors = [], [None] * nclients, []

        def run(i):
            try:
                results[i] = fetch_all(srv.addr, list(SMALL), barrier, conns)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                barrier.abort()

        ths = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(nclients)]
        try:
            for th in ths:
                th.start()
            for th in ths:
                th.join(3 * T)
            check(not errors, f"{len(errors)} clients failed, e.g. {errors[:1]!r}")
            check(all(results), "a client hung")
            bad = [x for r in results for x in r if x[1] != 200 or not x[2]]
            check(not bad, f"{len(bad)} of {3 * nclients} not a whole 200: {bad[:5]}")
            # Every client idle on its keep-alive connection: the server holds
            # its connections and (at most) the three files, plus a few of its
            # own (listener, loop, std streams ...).
            time.sleep(0.1)
            pids = [srv.pid] + children(srv.pid)
            held = sum(fds(p) for p in pids)
            own = 24 * len(pids) if model == "fork" else 24
            check(held <= nclients + len(SMALL) * (len(pids) if model == "fork" else 1) + own,
                  f"{held} fds held by {len(pids)} processes for {nclients} idle connections")
        finally:
            for s in conns:
                s.close()


def cases():
    out = []
    for b in BACKENDS:
        for m in ("event", "coro"):
            out.append((f"truncated {b}/{m}", lambda b=b, m=m: truncated(b, m)))
        out.append((f"thread-cache {b}/thread", lambda b=b: thread_cache(b)))
    out.append(("thread-cache epoll/fork", lambda: thread_cache("epoll", "fork")))
    return out


def main():
    a = harness.parse_args(jobs=3, no_uring=True)
    uring = not a.no_uring
    with harness.tmp_dir("ioplex-http-fds-"):
        os.chmod(harness.TMP, 0o755)
        make_root()
        return harness.run_cases(cases(), a, uring=uring, reports=True)


if __name__ == "__main__":
    sys.exit(main())
