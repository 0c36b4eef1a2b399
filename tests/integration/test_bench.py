#!/usr/bin/env python3
"""`ioplex bench echo` and `ioplex bench http` against the real binary (SPEC §2
"ioplex bench", issue #8): behaviour only, never speed.

- echo: zero errors against `ioplex echo` (raw, --lines, --framed, idle
  connections, threads, every backend); non-zero exit against a Python echo
  server that flips a byte now and then.
- http: zero errors against small Python servers (keep-alive, pipelined,
  chunked, HTTP/1.0 http.server, one that closes after every response, which
  must be reopened and counted); errors and exit 1 against servers that lie
  about Content-Length.
- --rate runs open loop and reports; --json parses and has the documented
  keys; no progress line ('\\r') unless stdout is a terminal (and one when it
  is); --server-pid reports CPU per request; bad options, addresses and URLs:
  one line on stderr, exit 2.

Every server listens on port 0; every wait is bounded; runs are short
(-d 0.5), cases run a few at a time."""
import http.server
import json
import os
import pty
import random
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

import harness
from harness import Fail, Skip, check

T = 20  # seconds: the bound on every wait (a bench run is ~1 s, more under ASan)
URING = True
D = ["-d", "0.5"]


# ---- running the bench -----------------------------------------------------------


def bench(*args, timeout=T):
    """Run `ioplex bench ARGS`; returns the CompletedProcess (text)."""
    try:
        return subprocess.run([harness.EXE, "bench", *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Fail(f"bench {args}: still running after {timeout} s")


def no_sanitizer(r, args):
    check("Sanitizer" not in r.stderr and "runtime error" not in r.stderr,
          f"bench {args}: {r.stderr}")


def bench_json(*args, want=0):
    """Run with --json; check the exit status and that stdout is one JSON
    object; return it."""
    r = bench(*args, "--json")
    no_sanitizer(r, args)
    check(r.returncode == want, f"bench {args}: exit {r.returncode}, want {want}; "
                                f"stderr {r.stderr!r} stdout {r.stdout!r}")
    try:
        obj = json.loads(r.stdout)
    except ValueError as e:
        raise Fail(f"bench {args}: stdout is not JSON ({e}): {r.stdout!r}")
    check(isinstance(obj, dict) and r.stdout.count("\n") == 1,
          f"bench {args}: want one JSON object on one line: {r.stdout!r}")
    return obj, r


COMMON_KEYS = {"duration_s", "rate", "mb_per_s", "latency_us", "errors", "error_kinds",
               "conns", "idle", "threads", "backend"}
LATENCY_KEYS = {"p50", "p90", "p99", "p999", "max"}


def check_keys(obj, unit, extra=()):
    missing = (COMMON_KEYS | {unit} | set(extra)) - set(obj)
    check(not missing, f"JSON lacks {missing}: {obj}")
    lat = obj["latency_us"]
    check(LATENCY_KEYS <= set(lat), f"latency_us lacks {LATENCY_KEYS - set(lat)}: {lat}")
    for k in LATENCY_KEYS:
        check(isinstance(lat[k], (int, float)) and lat[k] >= 0, f"latency {k}: {lat[k]}")
    if obj[unit]:
        check(lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"],
              f"percentiles out of order: {lat}")
    check(obj["duration_s"] > 0, f"duration_s {obj['duration_s']}")


def ok_run(obj, unit):
    check(obj["errors"] == 0, f"errors: {obj}")
    check(obj[unit] > 0 and obj["rate"] > 0, f"nothing counted: {obj}")


# ---- servers -----------------------------------------------------------------------


class Echo:
    """`ioplex echo ARGS -l 127.0.0.1:0 --quiet`; .addr from its listening line."""

    def __init__(self, *args):
        self.p = subprocess.Popen([harness.EXE, "echo", "-l", "127.0.0.1:0", "--quiet", *args],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.p.stdout], [], [], T)
        line = self.p.stdout.readline() if ready else ""
        m = re.fullmatch(r"listening (\S+)\n", line)
        if not m:
            self.close()
            raise Fail(f"ioplex echo {args}: no listening line: {line!r}")
        self.addr = m.group(1)

    def close(self):
        if self.p.poll() is None:
            self.p.terminate()
        try:
            self.p.communicate(timeout=T)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate(timeout=T)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class PyServer:
    """A thread-per-connection TCP server on 127.0.0.1:0 running handle(sock)
    for each connection.  Sockets time out, so no thread outlives T."""

    def __init__(self, handle):
        self.handle = handle
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(512)
        self.ls.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._accept, daemon=True)
        self.th.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            s.settimeout(T)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._run, args=(s,), daemon=True).start()

    def _run(self, s):
        try:
            self.handle(s, self.stop)
        except OSError:
            pass
        finally:
            s.close()

    def close(self):
        self.stop.set()
        self.th.join(T)
        self.ls.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def corrupting_echo(first=3, every=40):
    """Echo, but flip one bit of the piece received `first`, and of every
    `every`th after it."""

    def handle(s, stop):
        n = 0
        while not stop.is_set():
            data = s.recv(65536)
            if not data:
                return
            n += 1
            if n % every == first % every:
                data = bytes([data[0] ^ 0x20]) + data[1:]
            s.sendall(data)

    return handle


def stalling_echo(start=0.25, end=0.65):
    """Echo, but answer nothing from `start` to `end` seconds after the first
    byte (a server stalled by a GC pause, a disk, a lock...)."""
    t0 = []
    lock = threading.Lock()

    def handle(s, stop):
        while not stop.is_set():
            data = s.recv(65536)
            if not data:
                return
            now = time.monotonic()
            with lock:
                t0.append(now)
                first = t0[0]
            if first + start <= now < first + end:
                time.sleep(first + end - now)
            s.sendall(data)

    return handle


BODY = b"Hello, World!"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nHello\r\n8;ext=1\r\n, World!\r\n0\r\nX-Trailer: 1\r\n\r\n")


def http_handler(mode):
    """A raw HTTP/1.1 responder for GETs, pipelined ones too.  mode:
    keepalive, close (Connection: close after each response), drop (closes
    after each response without saying so), chunked, fragmented (responses
    in pieces of a few bytes, chunked and not in turn), lie-short
    (Content-Length smaller than the body), lie-long (larger, then close)."""

    def response():
        if mode == "chunked":
            return CHUNKED
        length = {"lie-short": 5, "lie-long": 20}.get(mode, len(BODY))
        conn = b"Connection: close\r\n" if mode == "close" else b""
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                % (length, conn, BODY))

    def send(s, data, rnd):
        if mode != "fragmented":
            s.sendall(data)
            return
        while data:  # pieces of 1 to 9 bytes, each its own segment
            k = rnd.randint(1, 9)
            s.sendall(data[:k])
            data = data[k:]

    def handle(s, stop):
        buf = b""
        rnd = random.Random(7)
        n = 0
        while not stop.is_set():
            while b"\r\n\r\n" not in buf:
                data = s.recv(65536)
                if not data:
                    return
                buf += data
            head, buf = buf.split(b"\r\n\r\n", 1)
            if not head.startswith(b"GET "):
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            n += 1
            send(s, response() if mode != "fragmented" or n % 2 else CHUNKED, rnd)
            if mode in ("close", "drop", "lie-long"):
                return

    return handle


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """python -m http.server's machinery (HTTP/1.0: one response per
    connection), answering every GET with BODY."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


# ---- echo cases ------------------------------------------------------------------


def echo_ok(server_args, *bench_args):
    with Echo(*server_args) as e:
        obj, _ = bench_json("echo", e.addr, "-c", "4", *D, *bench_args)
        check_keys(obj, "msgs", ("mode", "size"))
        ok_run(obj, "msgs")
        return obj


def t_echo_raw():
    obj = echo_ok((), "-s", "100")
    check(obj["mode"] == "raw" and obj["size"] == 100, f"{obj}")
    check(abs(obj["mb_per_s"] - obj["rate"] * 100 / 1e6) < 0.01 * obj["mb_per_s"] + 1e-6,
          f"MB/s is not msgs/s * size: {obj}")


def t_echo_lines():
    echo_ok(("--lines",), "--lines", "-s", "50")


def t_echo_lines_one_byte():
    echo_ok(("--lines",), "--lines", "-s", "1")  # empty lines


def t_echo_framed():
    echo_ok(("--framed",), "--framed", "-s", "300")


def t_echo_framed_empty():
    echo_ok(("--framed",), "--framed", "-s", "4")  # N = 0 frames


def t_echo_large():
    echo_ok((), "-s", "200000")  # replies come back in pieces


def t_echo_idle_threads():
    obj = echo_ok((), "--idle", "20", "--threads", "2", "-c", "6")
    check(obj["idle"] == 20 and obj["threads"] == 2 and obj["conns"] == 6, f"{obj}")


def t_echo_no_spin():
    obj = echo_ok((), "--no-spin", "--threads", "2")
    check(obj["spin"] is False, f"spin: {obj.get('spin')}")


def t_echo_warmup():
    obj = echo_ok((), "--warmup", "0.3")
    check(abs(obj["duration_s"] - 0.5) < 0.05, f"duration_s {obj['duration_s']}")


def t_echo_unix():
    with tempfile.TemporaryDirectory(prefix="ioplex-bench-") as d:
        path = os.path.join(d, "e.sock")
        p = subprocess.Popen([harness.EXE, "echo", "-l", "unix:" + path, "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([p.stdout], [], [], T)
            check(ready and p.stdout.readline().startswith("listening"), "no listening line")
            obj, _ = bench_json("echo", "unix:" + path, "-c", "3", *D)
            ok_run(obj, "msgs")
        finally:
            p.terminate()
            p.communicate(timeout=T)


def echo_backend(backend, edge):
    if "uring" in backend and not URING:
        raise Skip("io_uring refused here")
    obj = echo_ok((), "--backend", backend, *(["--edge"] if edge else []), "-d", "0.3")
    check(obj["backend"] == backend, f"backend {obj['backend']}, want {backend}")


def t_echo_corrupted():
    with PyServer(corrupting_echo()) as srv:
        obj, r = bench_json("echo", srv.addr, "-c", "2", *D, want=1)
        check(obj["errors"] > 0 and obj["error_kinds"].get("mismatch", 0) > 0,
              f"no mismatch counted: {obj}")
        check("mismatch" in r.stderr, f"stderr does not say why: {r.stderr!r}")
        r = bench("echo", srv.addr, "-c", "2", *D)  # the text report fails the same way
        check(r.returncode == 1 and "errors" in r.stdout, f"text: {r.returncode} {r.stdout!r}")


def t_echo_idle_corrupted():
    """An idle connection's first echo is wrong: the run does not start."""
    with PyServer(corrupting_echo(first=1)) as srv:
        r = bench("echo", srv.addr, "-c", "1", "--idle", "3", *D)
        check(r.returncode == 1, f"exit {r.returncode}, want 1: {r.stderr!r}")
        check(len(r.stderr.strip().splitlines()) == 1 and "mismatch" in r.stderr,
              f"want one line saying mismatch: {r.stderr!r}")


def t_echo_rate_stall():
    """Coordinated omission: a 0.4 s stall holds up every request scheduled
    in it, and open-loop latency (from the scheduled time) shows it in p90;
    closed-loop latency sees only the few requests that were in flight."""
    with PyServer(stalling_echo()) as srv:
        obj, _ = bench_json("echo", srv.addr, "-c", "2", "-d", "1", "--rate", "400")
        check(obj["latency_us"]["p90"] > 100000, f"open loop p90: {obj['latency_us']}")
    with PyServer(stalling_echo()) as srv:
        obj, _ = bench_json("echo", srv.addr, "-c", "2", "-d", "1")
        lat = obj["latency_us"]
        check(lat["p90"] < 50000 and lat["max"] > 300000, f"closed loop: {lat}")


def t_echo_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now
    r = bench("echo", f"127.0.0.1:{port}", "-c", "2", *D)
    check(r.returncode == 1, f"exit {r.returncode}, want 1: {r.stderr!r}")
    check(len(r.stderr.strip().splitlines()) == 1 and "refused" in r.stderr,
          f"want one line saying refused: {r.stderr!r}")


def t_echo_rate():
    with Echo() as e:
        obj, _ = bench_json("echo", e.addr, "-c", "4", "-d", "1", "--rate", "2000")
        check_keys(obj, "msgs")
        ok_run(obj, "msgs")
        check(obj["rate_target"] == 2000, f"rate_target {obj.get('rate_target')}")
        # open loop: close to the asked rate, never far above it
        check(1400 <= obj["rate"] <= 2200, f"rate {obj['rate']} for --rate 2000")


def t_echo_server_pid():
    with Echo() as e:
        obj, _ = bench_json("echo", e.addr, "-c", "4", *D, "--server-pid", str(e.p.pid))
        ok_run(obj, "msgs")
        v = obj.get("server_cpu_us_per_req")
        check(isinstance(v, (int, float)) and v >= 0, f"server_cpu_us_per_req: {v!r}")
        r = bench("echo", e.addr, "-c", "2", *D, "--server-pid", str(e.p.pid))
        check(r.returncode == 0 and "us CPU per msg" in r.stdout, f"text: {r.stdout!r}")


def t_echo_text_report():
    with Echo() as e:
        r = bench("echo", e.addr, "-c", "2", *D)
        check(r.returncode == 0, f"exit {r.returncode}: {r.stderr!r}")
        for word in ("msgs/s", "MB/s", "p50", "p90", "p99", "p99.9", "max", "errors    0"):
            check(word in r.stdout, f"no {word!r} in the report: {r.stdout!r}")
        check("\r" not in r.stdout and "\033" not in r.stdout,
              f"progress line on a pipe: {r.stdout!r}")
        check(r.stderr == "", f"stderr: {r.stderr!r}")


def t_echo_progress_on_tty():
    """On a terminal: a progress line ('\\r', rate so far) once a second."""
    with Echo() as e:
        master, slave = pty.openpty()
        p = subprocess.Popen([harness.EXE, "bench", "echo", e.addr, "-c", "2", "-d", "1.5"],
                             stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        end = time.monotonic() + T
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break  # EIO: the child closed the terminal
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        os.close(master)
        rc = p.wait(timeout=T)
        p.stderr.close()
        text = out.decode(errors="replace")
        check(rc == 0, f"exit {rc}: {text!r}")
        check(re.search(r"\r +1\.0 s +[0-9]+ msgs/s", text), f"no progress line: {text!r}")
        after = text.rsplit("\r\033[K", 1)
        check(len(after) == 2 and "msgs/s" in after[1] and "\r " not in after[1],
              f"the progress line is not cleared before the report: {text!r}")


# ---- http cases -------------------------------------------------------------------


def http_run(handler_mode, *args, want=0):
    with PyServer(http_handler(handler_mode)) as srv:
        return bench_json("http", f"http://{srv.addr}/hello", "-c", "4", *D, *args, want=want)


def t_http_keepalive():
    obj, _ = http_run("keepalive")
    check_keys(obj, "requests", ("status", "reopened", "pipeline"))
    ok_run(obj, "requests")
    check(obj["status"] == {"200": obj["status"]["200"]} and obj["status"]["200"] >= obj["requests"],
          f"status: {obj['status']}")
    check(obj["reopened"] == 0, f"reopened {obj['reopened']} on keep-alive")


def t_http_pipeline():
    obj, _ = http_run("keepalive", "--pipeline", "8", "--threads", "2")
    ok_run(obj, "requests")
    check(obj["pipeline"] == 8 and obj["reopened"] == 0, f"{obj}")


def t_http_chunked():
    obj, _ = http_run("chunked", "-p", "3")
    ok_run(obj, "requests")


def t_http_fragmented():
    obj, _ = http_run("fragmented", "-p", "2")
    ok_run(obj, "requests")


def t_http_close():
    """Connection: close after each response: reopened, counted, no error."""
    obj, _ = http_run("close")
    ok_run(obj, "requests")
    check(obj["reopened"] >= obj["requests"] - 4, f"reopened {obj['reopened']}: {obj}")


def t_http_drop():
    """Closes after each response without saying so: the request already sent
    on it goes out again on a new connection; no error."""
    obj, _ = http_run("drop", "-p", "2")
    ok_run(obj, "requests")
    check(obj["reopened"] > 0, f"{obj}")


def t_http_lie_short():
    obj, r = http_run("lie-short", want=1)
    check(obj["errors"] > 0 and obj["error_kinds"].get("bad_response", 0) > 0, f"{obj}")
    check("FAILED" in r.stderr, f"stderr: {r.stderr!r}")


def t_http_lie_long():
    obj, _ = http_run("lie-long", want=1)
    check(obj["error_kinds"].get("short_body", 0) > 0, f"{obj}")


def t_http_server_http10():
    """python's http.server (HTTP/1.0): one response per connection."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HelloHandler)
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    th.start()
    try:
        obj, _ = bench_json("http", f"http://127.0.0.1:{srv.server_address[1]}/x?y=1", "-c", "2",
                            *D)
        ok_run(obj, "requests")
        check(obj["reopened"] > 0 and list(obj["status"]) == ["200"], f"{obj}")
    finally:
        srv.shutdown()
        srv.server_close()
        th.join(T)


def t_http_rate():
    obj, _ = http_run("keepalive", "--rate", "1000", "-d", "1")
    ok_run(obj, "requests")
    check(obj["rate_target"] == 1000 and 700 <= obj["rate"] <= 1100, f"{obj}")


def t_http_404_counted():
    def handle(s, stop):
        while not stop.is_set() and s.recv(65536):
            s.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!")
    with PyServer(handle) as srv:
        obj, _ = bench_json("http", f"http://{srv.addr}/", "-c", "2", *D)
        check(obj["errors"] == 0 and "404" in obj["status"] and obj["non_2xx_3xx"] > 0, f"{obj}")


def t_http_text_report():
    with PyServer(http_handler("keepalive")) as srv:
        r = bench("http", f"http://{srv.addr}/hello", "-c", "2", *D)
        check(r.returncode == 0, f"exit {r.returncode}: {r.stderr!r}")
        for word in ("requests/s", "p99.9", "status", "200:", "reopened"):
            check(word in r.stdout, f"no {word!r} in {r.stdout!r}")
        check("\r" not in r.stdout, f"progress line on a pipe: {r.stdout!r}")


def t_http_ioplex_http():
    """`ioplex http` (when this build has it) serves a file without error."""
    r = subprocess.run([harness.EXE, "http", "--help"], capture_output=True, timeout=T)
    if r.returncode != 0:
        raise Skip("no `ioplex http` in this build")
    with tempfile.TemporaryDirectory(prefix="ioplex-bench-") as d:
        with open(os.path.join(d, "hello"), "wb") as f:
            f.write(BODY)
        p = subprocess.Popen([harness.EXE, "http", d, "-l", "127.0.0.1:0", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([p.stdout], [], [], T)
            line = p.stdout.readline() if ready else ""
            m = re.fullmatch(r"listening (\S+)\n", line)
            check(m, f"ioplex http: {line!r}")
            obj, _ = bench_json("http", f"http://{m.group(1)}/hello", "-c", "4", "-p", "2", *D)
            ok_run(obj, "requests")
            check(list(obj["status"]) == ["200"], f"{obj['status']}")
        finally:
            p.terminate()
            p.communicate(timeout=T)


# ---- bad command lines --------------------------------------------------------------

BAD = [
    ("echo",),
    ("echo", "127.0.0.1:1", "127.0.0.1:2"),
    ("echo", "nohostport"),
    ("echo", "127.0.0.1:99999"),
    ("echo", "127.0.0.1:0"),
    ("echo", "udp:127.0.0.1:9"),
    ("echo", "127.0.0.1:9", "-c", "0"),
    ("echo", "127.0.0.1:9", "-c", "x"),
    ("echo", "127.0.0.1:9", "-d", "0"),
    ("echo", "127.0.0.1:9", "-d", "soon"),
    ("echo", "127.0.0.1:9", "--warmup", "-1"),
    ("echo", "127.0.0.1:9", "--rate", "0"),
    ("echo", "127.0.0.1:9", "--lines", "--framed"),
    ("echo", "127.0.0.1:9", "--framed", "-s", "3"),
    ("echo", "127.0.0.1:9", "-s", "0"),
    ("echo", "127.0.0.1:9", "--backend", "kqueue"),
    ("echo", "127.0.0.1:9", "--backend", "poll", "--edge"),
    ("echo", "127.0.0.1:9", "--backend", "select", "-c", "2000"),
    ("echo", "127.0.0.1:9", "--server-pid", "999999999"),
    ("echo", "127.0.0.1:9", "--bogus"),
    ("echo", "127.0.0.1:9", "--json=yes"),
    ("echo", "127.0.0.1:9", "--insecure"),
    ("http", "http://127.0.0.1/", "--cacert", "/etc/hostname"),
    ("http",),
    ("http", "ftp://127.0.0.1/"),
    ("http", "127.0.0.1:8000/"),
    ("http", "http:///path"),
    ("http", "http://127.0.0.1:0/"),
    ("http", "http://127.0.0.1:70000/"),
    ("http", "http://127.0.0.1:80x/"),
    ("http", "http://[::1/"),
    ("http", "http://user@127.0.0.1/"),
    ("http", "http://127.0.0.1/a b"),
    ("http", "http://no-such-host.invalid/"),
    ("http", "http://127.0.0.1/", "--pipeline", "0"),
    ("http", "http://127.0.0.1/", "--lines"),
    ("http", "http://127.0.0.1/", "-t", "0"),
]


def bad(*args):
    r = bench(*args)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2, f"{args}: exit {r.returncode}, want 2; stderr {r.stderr!r}")
    check(len(lines) == 1, f"{args}: {len(lines)} lines on stderr, want 1: {r.stderr!r}")
    check(r.stdout == "", f"{args}: stdout not empty: {r.stdout!r}")


def t_help():
    for sub in ("echo", "http"):
        r = bench(sub, "--help")
        check(r.returncode == 0 and r.stdout.startswith("usage: ioplex bench " + sub) and
              "--rate" in r.stdout and "--json" in r.stdout, f"{sub} --help: {r.stdout!r}")


# ---- the runner ----------------------------------------------------------------------


def cases():
    out = [(name[2:], fn) for name, fn in sorted(globals().items()) if name.startswith("t_")]
    for b, edge in (("select", 0), ("poll", 0), ("epoll", 0), ("epoll", 1), ("uring", 0),
                    ("uring", 1)):
        out.append((f"echo backend {b}{'-edge' if edge else ''}",
                    lambda b=b, edge=edge: echo_backend(b, edge)))
    for args in BAD:
        out.append((f"bad {args}", lambda args=args: bad(*args)))
    return out


def probe():
    global URING
    r = subprocess.run([harness.EXE, "bench", "loop", "--backend", "uring", "-n", "4", "-a", "1", "-w",
                        "4", "-r", "1", "--csv"], capture_output=True, timeout=T)
    URING = r.returncode == 0


def main():
    a = harness.parse_args(jobs=4)
    probe()
    return harness.run_cases(cases(), a)


if __name__ == "__main__":
    sys.exit(main())
