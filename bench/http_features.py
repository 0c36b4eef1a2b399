#!/usr/bin/env python3
"""bench/http_features.py - what `ioplex http`'s content codings cost, in
server CPU per request, beside nginx and h2o (run by bench/http-features.sh).

Every row is one server under `wrk -t1 -cCONNS -dDUR` (server pinned to
CPU SERVER_CPU, wrk to CLIENT_CPU); server CPU is the sum of the
process's threads' run time (/proc/PID/task/*/schedstat, ns) over the run,
divided by the requests wrk completed.  Rows are measured in rounds (every
row once per round, REPEAT rounds) so that a load change on the machine
hits every row alike; the table shows the median and the range.

Rows:
  main  /hello /4k.bin /1m.bin        a build of main, no options
  ours  /hello /4k.bin /1m.bin        this branch, no options
  ours  /4k.bin  AE: gzip             served from 4k.bin.gz (a sibling)
  ours  /4k.bin  no AE                the same root (identity; Vary added)
  ours --compress  /t64k.txt AE: gzip a 64 KiB text file, copy from memory
  ours  /same.bin                     an uncompressed file of the copy's size
  h2o compress: ON  /t64k.txt AE gzip h2o compresses on every request
  h2o  /same.bin
  nginx gzip_static /4k.bin AE gzip, nginx /4k.bin

Usage: http_features.py OURS MAIN_IOPLEX OUTDIR  (environment: REPEAT=5,
DUR=5, CONNS=50, SERVER_CPU=0, CLIENT_CPU=1)."""
import gzip
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPEAT = int(os.environ.get("REPEAT", "5"))
DUR = int(os.environ.get("DUR", "5"))
CONNS = int(os.environ.get("CONNS", "50"))
SCPU = os.environ.get("SERVER_CPU", "0")
CCPU = os.environ.get("CLIENT_CPU", "1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_roots(base):
    plain = os.path.join(base, "plain")  # no siblings: main vs ours
    pre = os.path.join(base, "pre")  # 4k.bin + 4k.bin.gz
    z = os.path.join(base, "z")  # the 64 KiB text file and one of its copy's size
    for d in (plain, pre, z):
        os.makedirs(d)
    pattern = bytes((i * 7 + (i >> 8) * 13) & 0xFF for i in range(1 << 20))
    for d in (plain, pre):
        open(os.path.join(d, "hello"), "wb").write(b"Hello, World!")
        open(os.path.join(d, "4k.bin"), "wb").write(pattern[:4096])
        open(os.path.join(d, "1m.bin"), "wb").write(pattern)
    open(os.path.join(pre, "4k.bin.gz"), "wb").write(gzip.compress(pattern[:4096], 6))
    os.utime(os.path.join(pre, "4k.bin.gz"))
    # Text that compresses as prose or markup does (about 3:1 with gzip),
    # from a fixed seed: words of a 2000-word vocabulary, Zipf-like.
    import random
    rnd = random.Random(18)
    vocab = ["".join(rnd.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rnd.randint(2, 9)))
             for _ in range(2000)]
    words = [vocab[min(int(rnd.paretovariate(0.6)) - 1, 1999)] + rnd.choice(" \n, . ")
             for _ in range(20000)]
    text = "".join(words).encode()[:65536]
    open(os.path.join(z, "t64k.txt"), "wb").write(text)
    return plain, pre, z, text


class Server:
    def __init__(self, name, argv, port, cwd=None):
        self.name, self.port = name, port
        self.log = open(os.path.join(OUT, f"{name}.log"), "wb")
        self.p = subprocess.Popen(["taskset", "-c", SCPU, *argv], stdout=self.log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{name} did not start")

    def pids(self):
        """The serving processes: nginx's worker, else the process."""
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.p.pid)],
                              capture_output=True, text=True).stdout.split()
        return [int(k) for k in kids] if self.name.startswith("nginx") and kids else [self.p.pid]

    def cpu_ns(self):
        total = 0
        for pid in self.pids():
            for t in os.listdir(f"/proc/{pid}/task"):
                try:
                    total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
                except (OSError, ValueError):
                    pass
        return total

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def fetch(port, path, ae):
    r = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                               headers={"Accept-Encoding": ae} if ae else {})
    with urllib.request.urlopen(r, timeout=10) as f:
        return f.headers.get("Content-Encoding"), f.read()


def wrk(port, path, ae):
    cmd = ["taskset", "-c", CCPU, "wrk", "-t1", f"-c{CONNS}", f"-d{DUR}s", "--timeout", "5s"]
    if ae:
        cmd += ["-H", f"Accept-Encoding: {ae}"]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"], capture_output=True,
                         text=True, timeout=DUR + 60).stdout
    n = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return n, int(bad.group(1)) if bad else 0


def h2o_conf(root, port, compress):
    path = os.path.join(OUT, f"h2o-{port}.conf")
    extra = "        compress: ON\n" if compress else ""
    open(path, "w").write(f"""user: root
listen:
  host: 127.0.0.1
  port: {port}
num-threads: 1
error-log: {OUT}/h2o-error.log
hosts:
  default:
    paths:
      /:
        file.dir: {root}
{extra}""")
    return path


def nginx_conf(root, port, gzip_static):
    pre = os.path.join(OUT, f"nginx-{port}")
    os.makedirs(os.path.join(pre, "tmp"), exist_ok=True)
    g = "gzip_static on;" if gzip_static else ""
    open(os.path.join(pre, "nginx.conf"), "w").write(f"""worker_processes 1;
user root;
pid {pre}/nginx.pid;
error_log {pre}/error.log warn;
events {{ worker_connections 4096; use epoll; }}
http {{
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; open_file_cache max=1000 inactive=60s;
    default_type application/octet-stream;
    client_body_temp_path {pre}/tmp/body; proxy_temp_path {pre}/tmp/proxy;
    fastcgi_temp_path {pre}/tmp/fcgi; uwsgi_temp_path {pre}/tmp/uwsgi; scgi_temp_path {pre}/tmp/scgi;
    server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ root {root}; {g} }} }}
}}
""")
    return ["nginx", "-p", pre, "-c", os.path.join(pre, "nginx.conf"), "-e",
            os.path.join(pre, "error.log"), "-g", "daemon off;"]


def main():
    global OUT
    ours, main_exe, OUT = sys.argv[1:4]
    os.makedirs(OUT, exist_ok=True)
    base = tempfile.mkdtemp(prefix="ioplex-bench-features-")
    plain, pre, z, text = make_roots(base)
    q = ["--quiet", "--backend", "epoll"]
    # The copy's size, from the server itself: then a plain file of that size.
    port = free_port()
    s = Server("probe", [ours, "http", z, "-l", f"127.0.0.1:{port}", "--compress", *q], port)
    enc, body = fetch(port, "/t64k.txt", "gzip")
    s.stop()
    assert enc == "gzip" and gzip.decompress(body) == text
    open(os.path.join(z, "same.bin"), "wb").write(os.urandom(len(body)))
    rows = [  # (label, server kind, argv maker, path, Accept-Encoding, expected coding)
        ("main /hello", "main", plain, [], "/hello", None, None),
        ("ours /hello", "ours", plain, [], "/hello", None, None),
        ("main /4k.bin", "main", plain, [], "/4k.bin", None, None),
        ("ours /4k.bin", "ours", plain, [], "/4k.bin", None, None),
        ("main /1m.bin", "main", plain, [], "/1m.bin", None, None),
        ("ours /1m.bin", "ours", plain, [], "/1m.bin", None, None),
        ("ours /4k.bin (siblings, no AE)", "ours", pre, [], "/4k.bin", None, None),
        ("ours /4k.bin AE gzip -> 4k.bin.gz", "ours", pre, [], "/4k.bin", "gzip", "gzip"),
        ("ours --compress /t64k.txt AE gzip", "ours", z, ["--compress"], "/t64k.txt", "gzip",
         "gzip"),
        (f"ours /same.bin ({len(body)} B)", "ours", z, [], "/same.bin", None, None),
        ("h2o compress:ON /t64k.txt AE gzip", "h2o-c", z, [], "/t64k.txt", "gzip", "gzip"),
        (f"h2o /same.bin ({len(body)} B)", "h2o", z, [], "/same.bin", None, None),
        ("nginx /4k.bin", "nginx", pre, [], "/4k.bin", None, None),
        ("nginx gzip_static /4k.bin AE gzip", "nginx-g", pre, [], "/4k.bin", "gzip", "gzip"),
    ]
    results = {r[0]: [] for r in rows}
    for rnd in range(REPEAT):
        for label, kind, root, extra, path, ae, want in rows:
            port = free_port()
            if kind in ("ours", "main"):
                exe = ours if kind == "ours" else main_exe
                argv = [exe, "http", root, "-l", f"127.0.0.1:{port}", *q, *extra]
            elif kind.startswith("h2o"):
                argv = ["h2o", "-c", h2o_conf(root, port, kind == "h2o-c")]
            else:
                argv = nginx_conf(root, port, kind == "nginx-g")
            s = Server(kind, argv, port)
            try:
                enc, _ = fetch(port, path, ae)
                assert enc == want, f"{label}: Content-Encoding {enc}, want {want}"
                fetch(port, path, ae)  # the first request made any copy
                c0 = s.cpu_ns()
                n, bad = wrk(port, path, ae)
                c1 = s.cpu_ns()
            finally:
                s.stop()
            assert bad == 0 and n > 0, f"{label}: {bad} bad of {n}"
            results[label].append(((c1 - c0) / n / 1000.0, n / DUR))
            print(f"round {rnd + 1} {label}: {(c1 - c0) / n / 1000.0:.2f} us/req, {n / DUR:.0f} req/s",
                  file=sys.stderr, flush=True)
    print(f"| row | server CPU us/request, median [range] of {REPEAT} | req/s median |")
    print("|---|---|---|")
    for label, *_ in rows:
        us = [u for u, _ in results[label]]
        rps = [r for _, r in results[label]]
        print(f"| {label} | {statistics.median(us):.2f} [{min(us):.2f}-{max(us):.2f}] | "
              f"{statistics.median(rps):.0f} |")
    print()

    def ratio(a, b):
        ra = [x[0] for x in results[a]]
        rb = [x[0] for x in results[b]]
        per = [x / y for x, y in zip(ra, rb)]
        return f"{statistics.median(per):.3f} [{min(per):.3f}-{max(per):.3f}]"
    print("| ratio (per round, then median [range]) | CPU/request |")
    print("|---|---|")
    for a, b in (("ours /hello", "main /hello"), ("ours /4k.bin", "main /4k.bin"),
                 ("ours /1m.bin", "main /1m.bin"),
                 ("ours /4k.bin AE gzip -> 4k.bin.gz", "ours /4k.bin"),
                 ("ours /4k.bin (siblings, no AE)", "ours /4k.bin"),
                 ("ours --compress /t64k.txt AE gzip", rows[9][0]),
                 ("h2o compress:ON /t64k.txt AE gzip", rows[11][0]),
                 ("nginx gzip_static /4k.bin AE gzip", "nginx /4k.bin")):
        print(f"| {a} / {b} | {ratio(a, b)} |")


if __name__ == "__main__":
    main()
