#!/usr/bin/env python3
"""`ioplex http` against the real binary (SPEC §2 "Common server options" and
"ioplex http [DIR]").

A document root is built in a temp dir at start: files of 13 B, 4 KiB and
1 MiB, MIME samples, a directory of awkward names for the listing (HTML
specials, '#', '?', '%', UTF-8), symlinks that stay inside and ones that lead
out, a secret file next to the root, a mode-000 file and directory, and
directories named like hosts (evil.example, etc, x, \\evil) for the
open-redirect cases.  Every server listens on port 0 and is found through
its `listening ADDR` lines.

The full battery (t_* functions, each with its own server) runs on the event
model with epoll; every backend x model combination runs a representative
subset against one server (combo()), the timeouts and the graceful stop run
under every model, and --workers / --processes get smoke runs.  Responses
are parsed strictly (Conn.response / common()): status line, Date, Server,
Content-Length, HTML error bodies, and nothing extra after a HEAD or a 304.
Cases run in parallel threads; every socket call, queue read and process
wait has a timeout, so a hang fails its case instead of the suite; a failing
case shows what its servers said (sanitizer reports).  Exit 77 (skipped) when
the binary has no `http` command yet."""
import concurrent.futures
import email.utils
import html.parser
import http.client
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from datetime import datetime

import harness
from harness import (BACKENDS, MODELS, T, Fail, Skip, check, children, has_ipv6, send_bg,
                     sockaddr, tmp_path)

ROOT = None
URING = True  # io_uring usable here (probed in main)
IPV6 = True

E = ["--backend", "epoll"]  # the full battery runs on the event model with epoll

MTIME = 1700000000  # every fixture file's mtime (in the past: If-Modified-Since tests)
DATA = {}  # URL path -> bytes, filled by make_root()
SECRET = b"TOPSECRET-" + os.urandom(8).hex().encode()
SECRET2 = b"TOPSECRET2-" + os.urandom(8).hex().encode()
FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep"
                     r"|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT")
STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')

# /list/: name on disk -> content (None: a directory)
LISTING = {
    "a.txt": b"a\n",
    "B.txt": b"B\n",
    "zeta.txt": b"zeta\n",
    "<b>&\"x'.txt": b"html special\n",
    "a b#?.txt": b"space hash question\n",
    "100%.txt": b"percent\n",
    "caf\u00e9-\u00fc.txt": b"utf-8 name\n",
    "dir": None,
    "x y": None,
}


def short(b, n=200):
    b = bytes(b)
    return repr(b if len(b) <= n else b[:n] + b"...")


# ---- the document root -------------------------------------------------------


def _write(path, data, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (MTIME, MTIME))


def make_root():
    """TMP/root is DIR; TMP/secret and TMP/outside/ lie next to it."""
    global ROOT
    _write(tmp_path("secret"), SECRET + b"\n")
    os.mkdir(tmp_path("outside"), 0o755)
    _write(tmp_path("outside/secret2"), SECRET2 + b"\n")
    ROOT = tmp_path("root")
    os.mkdir(ROOT, 0o755)
    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
           b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05"
           b"\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82")
    files = {
        "hello": b"hello, world\n",  # 13 bytes, no extension
        "4k": os.urandom(4096),
        "1m": os.urandom(1 << 20),
        "empty": b"",
        "a b.txt": b"a b\n",
        "page.html": b"<!doctype html><title>page</title>\n",
        "style.css": b"body { color: red }\n",
        "img.png": png,
        "data.zzqx": b"unknown extension\n",
        "notes.txt": b"plain text\n",
        "mut.txt": b"version 1\n",
        "mut-uring.txt": b"version 1\n",
        "sub/index.html": b"<!doctype html><title>sub index</title>\n",
        "nolist/one.txt": b"one\n",
        "list/dir/inner.txt": b"inner\n",
        "list/x y/deep.txt": b"deep\n",
        "evil.example/f.txt": b"not elsewhere\n",  # the open-redirect directories
        "etc/f.txt": b"etc\n",
        "x/f.txt": b"x\n",
        "\\evil/f.txt": b"backslash\n",
    }
    for name, content in LISTING.items():
        if content is not None:
            files["list/" + name] = content
    for name, content in files.items():
        path = os.path.join(ROOT, name)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        _write(path, content)
        DATA["/" + name] = content
    os.symlink("hello", os.path.join(ROOT, "link-in"))
    os.symlink("../hello", os.path.join(ROOT, "sub/link-up"))
    os.symlink("../secret", os.path.join(ROOT, "link-out"))
    os.symlink(tmp_path("secret"), os.path.join(ROOT, "link-abs-out"))
    os.symlink("../../secret", os.path.join(ROOT, "sub/esc"))
    os.symlink("../outside", os.path.join(ROOT, "linkdir-out"))
    _write(os.path.join(ROOT, "noread.txt"), b"you cannot read me\n", 0o000)
    os.mkdir(os.path.join(ROOT, "noreaddir"), 0o755)
    _write(os.path.join(ROOT, "noreaddir/x.txt"), b"x\n")
    os.chmod(os.path.join(ROOT, "noreaddir"), 0o000)


def lm(path):
    """The Last-Modified a file under ROOT must carry."""
    return email.utils.formatdate(os.stat(os.path.join(ROOT, path.lstrip("/"))).st_mtime,
                                  usegmt=True)


# ---- the server process ------------------------------------------------------


class Server(harness.Server):
    """`ioplex http DIR ARGS -l ...` on port 0 (harness.Server); DIR is ROOT
    unless root says otherwise ("": none)."""

    err_tail = 2000

    def __init__(self, *args, root=None, **kw):
        super().__init__(["http", *([] if root == "" else [root or ROOT])], *args, **kw)


# ---- an HTTP client that shows the bytes ---------------------------------------


def req(target, method="GET", version="HTTP/1.1", host="test", headers=(), body=b""):
    """A request head (plus body) as bytes; target may be bytes (raw)."""
    if isinstance(target, str):
        target = target.encode()
    head = method.encode() + b" " + target + b" " + version.encode() + b"\r\n"
    if host is not None:
        head += b"Host: " + host.encode() + b"\r\n"
    for h in headers:
        head += (h.encode() if isinstance(h, str) else h) + b"\r\n"
    return head + b"\r\n" + body


class Resp:
    def __init__(self, version, status, reason, headers, raw):
        self.version, self.status, self.reason = version, status, reason
        self.headers = headers  # [(name, value)] in order
        self.raw = raw  # the head's bytes
        self.body = b""

    def all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def get(self, name):
        v = self.all(name)
        return v[-1] if v else None

    def ctype(self):
        v = self.get("Content-Type") or ""
        return v.split(";")[0].strip().lower()

    def __repr__(self):
        return f"<{self.raw.decode('latin-1')!r} + {len(self.body)} body bytes>"


SINGLE = ("content-length", "content-type", "date", "server", "etag", "last-modified",
          "connection", "location", "content-range", "accept-ranges", "allow")


class Conn:
    """A client connection that parses responses strictly (CRLF, status line
    `HTTP/1.1 CODE REASON`, Date + Server everywhere, Content-Length except on
    304, HTML bodies on errors) and keeps what follows for the next one."""

    def __init__(self, addr, rcvbuf=None):
        fam, _, sa = sockaddr(addr)
        self.s = socket.socket(fam, socket.SOCK_STREAM)
        self.s.settimeout(T)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.connect(sa)
        if fam != socket.AF_UNIX:
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data):
        self.s.sendall(data)

    def _more(self, what):
        try:
            chunk = self.s.recv(1 << 20)
        except socket.timeout:
            raise Fail(f"{what}: nothing more within {T} s; have {short(self.buf)}")
        except ConnectionResetError:
            raise Fail(f"{what}: connection reset; have {short(self.buf)}")
        if not chunk:
            raise Fail(f"{what}: EOF; have {short(self.buf)}")
        self.buf += chunk

    def response(self, what, head=False):
        """One response; head=True: the request was HEAD (no body)."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                break
            check(len(self.buf) < 1 << 16, f"{what}: no end of head in {short(self.buf)}")
            self._more(what)
        raw = bytes(self.buf[:i + 4])
        del self.buf[:i + 4]
        lines = raw[:-4].split(b"\r\n")
        m = re.fullmatch(rb"(HTTP/\d\.\d) (\d{3}) ([^\r\n]*)", lines[0])
        check(m, f"{what}: status line {lines[0]!r}")
        headers = []
        for ln in lines[1:]:
            check(b"\n" not in ln and b"\r" not in ln, f"{what}: bare CR/LF in {raw!r}")
            name, sep, value = ln.partition(b":")
            check(sep and re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name),
                  f"{what}: header line {ln!r}")
            headers.append((name.decode(), value.strip(b" \t").decode("latin-1")))
        r = Resp(m.group(1).decode(), int(m.group(2)), m.group(3).decode("latin-1"), headers, raw)
        cl = r.all("Content-Length")
        if r.status == 204:  # RFC 9110 §8.6: never in a 204
            check(not cl, f"{what}: Content-Length in a 204: {raw!r}")
        elif r.status != 304:
            check(len(cl) == 1 and re.fullmatch(r"\d+", cl[0]),
                  f"{what}: Content-Length {cl} in {raw!r}")
        if head or r.status == 304 or r.status < 200 or r.status == 204:
            n = 0
        else:
            n = int(cl[0])
        while len(self.buf) < n:
            self._more(f"{what} (body: {len(self.buf)} of {n} bytes)")
        r.body = bytes(self.buf[:n])
        del self.buf[:n]
        common(r, what, head)
        return r

    def eof(self, what):
        """The server closes now, with nothing more to send."""
        try:
            while True:
                chunk = self.s.recv(1 << 16)
                if not chunk:
                    break
                self.buf += chunk
        except socket.timeout:
            raise Fail(f"{what}: the server did not close the connection within {T} s")
        except ConnectionResetError:
            pass
        check(not self.buf, f"{what}: unexpected bytes before the close: {short(self.buf)}")

    def silent(self, secs, what):
        check(not self.buf, f"{what}: unexpected bytes {short(self.buf)}")
        self.s.settimeout(secs)
        try:
            got = self.s.recv(100)
            raise Fail(f"{what}: got {got!r}, want silence for {secs} s")
        except socket.timeout:
            pass
        finally:
            self.s.settimeout(T)

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
        return False


def common(r, what, head):
    """What every response must carry."""
    ctx = f"{what}: {r.raw!r}"
    check(r.version == "HTTP/1.1" and r.reason.strip(), f"{ctx}: status line")
    for k, _ in r.headers:
        check(k.lower() not in SINGLE or len(r.all(k)) == 1, f"{ctx}: {k} twice")
    d = r.get("Date")
    check(d and FIXDATE.fullmatch(d), f"{ctx}: Date {d!r}")
    dt = email.utils.parsedate_to_datetime(d).timestamp()
    check(abs(dt - time.time()) < 120, f"{ctx}: Date {d!r} is not now")
    check(r.get("Server"), f"{ctx}: no Server")
    if r.status >= 400:
        check(r.ctype() == "text/html", f"{ctx}: error without Content-Type text/html")
        if not head:
            check(b"<" in r.body and len(r.body) < 4096, f"{ctx}: error body {short(r.body)}")
    if r.status == 405:
        check(r.get("Allow") in ("GET, HEAD", "GET, HEAD, OPTIONS"),  # OPTIONS: --cors
              f"{ctx}: 405 without `Allow: GET, HEAD`")


def one(addr, data, what, head=False, closes=None):
    """One request on a fresh connection -> its response.  closes=True: the
    server must close after it, with Connection: close."""
    with Conn(addr) as c:
        c.send(data)
        r = c.response(what, head)
        if closes:
            check((r.get("Connection") or "").lower() == "close",
                  f"{what}: no `Connection: close` on {r.raw!r}")
            c.eof(what)
        return r


def get(addr, target, what=None, **kw):
    head = kw.get("method") == "HEAD"
    return one(addr, req(target, **kw), what or f"{kw.get('method', 'GET')} {target}", head)


def expect_file(r, path, what, head=False):
    data = DATA[path]
    check(r.status == 200, f"{what}: status {r.status}, want 200: {r!r}")
    check(r.get("Content-Length") == str(len(data)),
          f"{what}: Content-Length {r.get('Content-Length')}, want {len(data)}")
    if not head:
        check(r.body == data, f"{what}: {len(r.body)} body bytes differ from the file")


def expect_status(r, status, what):
    if isinstance(status, int):
        status = (status,)
    check(r.status in status, f"{what}: status {r.status}, want {status}: {r!r} {short(r.body)}")


def parallel(fns, what, timeout=3 * T):
    """Run fns at once on threads; the first real failure (not the broken
    barrier it causes in the others) is raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futs = [pool.submit(f) for f in fns]
        done, pending = concurrent.futures.wait(futs, timeout=timeout)
        check(not pending, f"{what}: {len(pending)} of {len(fns)} clients hung")
        errs = [f.exception() for f in futs if f.exception()]
    real = [e for e in errs if not isinstance(e, threading.BrokenBarrierError)]
    if real or errs:
        e = (real or errs)[0]
        if isinstance(e, Fail):
            raise Fail(f"{what}: {len(errs)} clients failed, e.g. {e}")
        raise Fail(f"{what}: {len(errs)} clients failed, e.g. "
                   + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return [f.result() for f in futs]


# ---- checks shared by the matrix and the battery ----------------------------------


class LinkParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.tags, self._href, self._text = [], [], None, ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), ""

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, self._text))
            self._href = None

    def handle_data(self, data):
        if self._href is not None:
            self._text += data


def listing_entries(r, base, what):
    """(href, text) of the entries of a listing at base, in order (the
    parent link and anything outside base left out)."""
    check(r.status == 200 and r.ctype() == "text/html", f"{what}: {r!r}")
    try:
        text = r.body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Fail(f"{what}: the listing is not UTF-8: {e}")
    ct = (r.get("Content-Type") or "").lower().replace(" ", "")
    check("charset=utf-8" in ct or re.search(r"<meta[^>]*charset=\"?utf-8", text, re.I),
          f"{what}: no UTF-8 charset (Content-Type {r.get('Content-Type')!r}, no <meta>)")
    p = LinkParser()
    p.feed(text)
    out = []
    for href, label in p.links:
        if href.startswith("?"):  # a column head that sorts this listing
            continue
        full = urllib.parse.urljoin(base, href)
        if full.startswith(base) and full != base:
            out.append((href, label.strip()))
    return out


def check_listing(addr, what, deep=True):
    """/list/: every name once, HTML-escaped, sorted, dirs with '/', hrefs
    percent-encoded; deep: every href answers 200 with the right bytes."""
    base = "/list/"
    r = get(addr, base, f"{what}: listing")
    ents = listing_entries(r, base, f"{what}: listing")
    want = {n + ("/" if c is None else "") for n, c in LISTING.items()}
    labels = [t for _, t in ents]
    check(sorted(labels) == sorted(want),
          f"{what}: listing names {labels}, want {sorted(want)}; body {short(r.body, 3000)}")
    check(b"<b>&" not in r.body, f"{what}: a name is not HTML-escaped: {short(r.body, 3000)}")
    dirs = [n for n in labels if n.endswith("/")]
    files = [n for n in labels if not n.endswith("/")]
    orders = []
    for key in (None, str.casefold, lambda n: n.rstrip("/"),
                lambda n: n.rstrip("/").casefold(), lambda n: n.encode()):
        orders.append(sorted(labels, key=key))
        orders.append(sorted(dirs, key=key) + sorted(files, key=key))
    check(labels in orders, f"{what}: listing not sorted: {labels}")
    for href, label in ents:
        check(href.isascii() and not re.search(r"[\s#?\"<>]", href),
              f"{what}: href {href!r} for {label!r} is not percent-encoded")
        rel = urllib.parse.urljoin(base, href)[len(base):]
        check(urllib.parse.unquote(rel, errors="strict") == label,
              f"{what}: href {href!r} decodes to {urllib.parse.unquote(rel)!r}, not {label!r}")
    if deep:
        with Conn(addr) as c:
            for href, label in ents:
                target = urllib.parse.urljoin(base, href)
                c.send(req(target))
                r2 = c.response(f"{what}: GET {target} (href of {label!r})")
                expect_status(r2, 200, f"{what}: GET {target} (href of {label!r})")
                if not label.endswith("/"):
                    check(r2.body == LISTING[label], f"{what}: {target}: body {short(r2.body)}")


def pipeline_plan():
    return [
        (req("/hello"), lambda r: expect_file(r, "/hello", "pipelined GET /hello"), False),
        (req("/4k", "HEAD"), lambda r: expect_file(r, "/4k", "pipelined HEAD /4k", True), True),
        (req("/missing"), lambda r: expect_status(r, 404, "pipelined 404"), False),
        (req("/4k"), lambda r: expect_file(r, "/4k", "pipelined GET /4k"), False),
        (req("/sub"), lambda r: check(r.status == 301 and r.get("Location") == "/sub/",
                                      f"pipelined /sub: {r!r}"), False),
        (req("/1m"), lambda r: expect_file(r, "/1m", "pipelined GET /1m"), False),
        (req("/hello", "HEAD"), lambda r: expect_file(r, "/hello", "pipelined HEAD", True), True),
        (req("/a%20b.txt"), lambda r: expect_file(r, "/a b.txt", "pipelined /a%20b.txt"), False),
        (req("/4k", headers=["Range: bytes=1-3"]),
         lambda r: check(r.status == 206 and r.body == DATA["/4k"][1:4],
                         f"pipelined range: {r!r}"), False),
        (req("/sub/", headers=["Connection: close"]),
         lambda r: expect_file(r, "/sub/index.html", "pipelined /sub/ (close)"), False),
    ]


def check_pipeline(addr, what, dribble=False):
    """10 requests in one send (or dribbled in 7-byte pieces) -> 10
    responses, in order, then the close the last one asked for."""
    plan = pipeline_plan()
    data = b"".join(p[0] for p in plan)
    with Conn(addr) as c:
        if dribble:
            def run():
                for i in range(0, len(data), 7):
                    c.s.sendall(data[i:i + 7])
                    time.sleep(0.002)
            th = threading.Thread(target=run, daemon=True)
            th.start()
        else:
            c.send(data)
        for i, (_, fn, head) in enumerate(plan):
            r = c.response(f"{what}: pipelined response {i + 1}", head)
            try:
                fn(r)
            except Fail as e:
                raise Fail(f"{what}: response {i + 1}: {e}")
        c.eof(f"{what}: after the pipelined Connection: close")
        if dribble:
            th.join(T)


TRAVERSAL = [
    "/../secret", "/..%2fsecret", "/%2e%2e/secret", "/%2E%2E%2Fsecret", "/a/../../secret",
    "//../secret", "/./../secret", "/..\\secret", "/..%5csecret", "/sub/../../secret",
    "/sub/..%2f..%2fsecret", "/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/../../../../../../etc/passwd", "/.%2e/secret", "/%2e./secret",
    "http://127.0.0.1/../secret", "http://127.0.0.1/%2e%2e/secret",
    "/link-out", "/link-abs-out", "/sub/esc", "/linkdir-out/secret2", "/linkdir-out/",
    "/linkdir-out/../secret",
]
TRAVERSAL_SAMPLE = ["/../secret", "/%2e%2e%2fsecret", "/link-out", "/linkdir-out/secret2"]


def check_traversal(addr, targets, what):
    for t in targets:
        r = get(addr, t, f"{what}: GET {t}")
        check(r.status in (400, 403, 404), f"{what}: GET {t}: {r!r} {short(r.body)}")
        for bad in (SECRET, SECRET2, b"root:x:0:0"):
            check(bad not in r.body, f"{what}: GET {t} served a file outside DIR")


def many_clients(addr, n, what, reqs=2, close=False):
    """n clients at once (connected first, then released together), each
    GET /4k reqs times keep-alive (close: one request with Connection: close)."""
    barrier = threading.Barrier(n)

    def client(i):
        with Conn(addr) as c:
            barrier.wait(T)
            for k in range(reqs):
                last = close and k == reqs - 1
                c.send(req("/4k", headers=["Connection: close"] if last else []))
                r = c.response(f"{what}: client {i} request {k + 1}")
                expect_file(r, "/4k", f"{what}: client {i} request {k + 1}")
            if close:
                c.eof(f"{what}: client {i}")
    parallel([lambda i=i: client(i) for i in range(n)], what)


def graceful_idle(srv, what, n=1, limit=2.0):
    """Idle keep-alive connections only: SIGTERM -> exit 0 well within the
    grace, and the idle connections are closed."""
    conns = [Conn(srv.addr) for _ in range(n)]
    try:
        for c in conns:
            c.send(req("/hello"))
            expect_file(c.response(f"{what}: before the stop"), "/hello", what)
        t0 = time.monotonic()
        srv.kill_with(signal.SIGTERM)
        srv.wait_exit(timeout=T)
        took = time.monotonic() - t0
        check(took < limit, f"{what}: with only idle keep-alive connections the stop took "
                            f"{took:.2f} s (limit {limit} s)")
        for c in conns:
            c.eof(f"{what}: an idle connection after the stop")
    finally:
        for c in conns:
            c.close()


def check_body_limits(addr, what):
    """Bodies over 1 MiB, all sent before the client reads: the answer (413,
    or for chunked possibly the file) arrives intact, then the close.  A
    plain close with unread input would reset the connection and destroy the
    answer in the client's buffer; a lingering close keeps it."""
    with Conn(addr) as c:
        th = send_bg(c.s, req("/hello", headers=["Content-Length: 2000000"], body=b"z" * 2000000))
        th.join(T)
        time.sleep(0.3)
        expect_status(c.response(f"{what}: Content-Length 2000000 with the body sent"), 413,
                      f"{what}: GET with Content-Length: 2000000 and the body sent")
    with Conn(addr) as c:
        th = send_bg(c.s, req("/hello", headers=["Transfer-Encoding: chunked"])
                     + b"100001\r\n" + b"z" * 0x100001 + b"\r\n0\r\n\r\n" + req("/4k"))
        th.join(T)
        time.sleep(0.3)
        r = c.response(f"{what}: GET with a chunked body of 1 MiB + 1, read after sending it all")
        expect_status(r, (413, 200), f"{what}: GET with a chunked body of 1 MiB + 1")
        c.eof(f"{what}: GET with a chunked body of 1 MiB + 1: the request after it is not answered")


def check_many_pipelined(addr, what, n=300):
    """n requests sent while the answers (1.2 MB) pile up unread for a while:
    every one answered, in order (backpressure both ways)."""
    paths = ["/hello" if i % 3 else "/4k" for i in range(n)]
    with Conn(addr) as c:
        th = send_bg(c.s, b"".join(req(p) for p in paths))
        time.sleep(0.2)
        for i, p in enumerate(paths):
            r = c.response(f"{what}: pipelined {i + 1} of {n}")
            expect_file(r, p, f"{what}: pipelined {i + 1} of {n}")
        th.join(T)
        check(th.error is None, f"{what}: sending {n} requests: {th.error}")


def check_rude_clients(addr, what):
    """Clients that half-close after the request get the whole answer; ones
    that reset mid-response hurt nobody."""
    with Conn(addr) as c:
        c.send(req("/1m"))
        c.s.shutdown(socket.SHUT_WR)
        expect_file(c.response(f"{what}: half-closed client"), "/1m", f"{what}: half-closed client")
        c.eof(f"{what}: half-closed client")
    for i in range(10):
        with Conn(addr) as c:
            c.send(req("/1m") * 2)
            c.s.recv(1000 * i + 1)
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    expect_file(get(addr, "/4k"), "/4k", f"{what}: after 10 resets mid-response")


# target -> the Location of its 301: built from the resolved path, never a
# network-path reference (//host) or one a browser reads as such (/\host)
REDIRECTS = [
    ("//evil.example", "/evil.example/"), ("//etc", "/etc/"), ("///x", "/x/"),
    ("//./x", "/x/"), ("//x?q=1", "/x/?q=1"), ("http://h//x", "/x/"),
    ("http://h//evil.example?a=1", "/evil.example/?a=1"), ("/\\evil", "/%5Cevil/"),
    ("//\\evil", "/%5Cevil/"), ("/%5Cevil", "/%5Cevil/"), ("/%2F%2Fevil.example", "/evil.example/"),
    ("/x/..//x", "/x/"),
    ('//x?a="b"\\\x9b#frag', "/x/?a=%22b%22%5C%9B"), ("//x?%41%zz", "/x/?%41%25zz"),
    ("/list/x%20y", "/list/x%20y/"),
]
REDIRECT_SAMPLE = [REDIRECTS[i] for i in (0, 2, 5, 7, 12)]
LOCATION = re.compile(r"/(?![/\\])[\w.~!$&'()*+,;=:@%/-]*(\?[\w.~!$&'()*+,;=:@%/?-]*)?", re.A)


def check_redirects(addr, cases, what):
    with Conn(addr) as c:
        for t, loc in cases:
            c.send(req(t.encode("latin-1")))
            r = c.response(f"{what}: GET {t!r}")
            got = r.get("Location")
            check(r.status == 301 and got == loc,
                  f"{what}: GET {t!r}: want 301 Location {loc}: {r!r}")
            check(LOCATION.fullmatch(got), f"{what}: GET {t!r}: Location {got!r} not a path")


# Host values RFC 9112 3.2 makes a 400, and some it must not
BAD_HOSTS = ["a b", "a/b", "a@b", "[::1", "h:80:80", "a, b", "a,b", "[::1]x", "h:8a", "a%zz",
             "a\\b", 'a"b', "caf\u00e9", "[fe80::1%eth0]", "u:p@h", "a?b", "a#b"]
GOOD_HOSTS = ["", "example.com", "example.com:8080", "127.0.0.1:80", "[::1]", "[::1]:8000",
              "a%20b", "h:"]


def check_hosts(addr, bad, good, what):
    for h in bad:
        for version in ("HTTP/1.1", "HTTP/1.0"):
            w = f"{what}: {version} Host {h!r}"
            r = one(addr, req("/hello", version=version, host=None,
                              headers=[b"Host: " + h.encode()]), w, closes=True)
            expect_status(r, 400, w)
    w = f"{what}: two Host lines"
    expect_status(one(addr, req("/hello", headers=["Host: b"]), w, closes=True), 400, w)
    with Conn(addr) as c:
        for h in good:
            c.send(req("/hello", host=h))
            expect_file(c.response(f"{what}: Host {h!r}"), "/hello", f"{what}: Host {h!r}")


def check_if_range(addr, what, full=False):
    """Range + If-Range: 206 only when the validator is the file's; else 200
    with the whole file (RFC 9110 13.1.5)."""
    d = DATA["/4k"]
    with Conn(addr) as c:
        c.send(req("/4k"))
        r = c.response(f"{what}: GET /4k")
        tag, mod = r.get("ETag"), r.get("Last-Modified")
        cases = [('"nope"', False), (tag, True)]
        if full:
            other = email.utils.formatdate(MTIME - 1, usegmt=True)
            rfc850 = time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(MTIME))
            cases += [(f"W/{tag}", False), (mod, True), (rfc850, True), (other, False),
                      ("not a date", False), ("", False), ("*", False), (f"{tag}, {tag}", False),
                      (tag[:-1], False), (tag.strip('"'), False)]
        for ir, ok in cases:
            for method in ("GET", "HEAD") if full else ("GET",):
                w = f"{what}: {method} Range: bytes=10-19, If-Range: {ir}"
                c.send(req("/4k", method, headers=["Range: bytes=10-19", f"If-Range: {ir}"]))
                r = c.response(w, head=method == "HEAD")
                if ok:
                    check(r.status == 206 and r.get("Content-Range") == "bytes 10-19/4096"
                          and r.get("Content-Length") == "10", f"{w}: want 206: {r!r}")
                    check(method == "HEAD" or r.body == d[10:20], f"{w}: body")
                else:
                    check(r.status == 200 and r.get("Content-Range") is None
                          and r.get("Content-Length") == "4096", f"{w}: want 200: {r!r}")
                    check(method == "HEAD" or r.body == d, f"{w}: not the whole file")
        if full:  # a failed If-Range ignores the Range, even an unsatisfiable one
            w = f"{what}: Range: bytes=99999-, If-Range: \"nope\""
            c.send(req("/4k", headers=["Range: bytes=99999-", 'If-Range: "nope"']))
            r = c.response(w)
            check(r.status == 200 and r.body == d, f"{w}: want 200: {r!r}")
            w = f"{what}: If-Range without Range"
            c.send(req("/4k", headers=[f"If-Range: {tag}"]))
            r = c.response(w)
            check(r.status == 200 and r.body == d, f"{w}: want 200: {r!r}")
            w = f"{what}: If-Range {tag} on /1m"
            c.send(req("/1m", headers=["Range: bytes=1000000-", f"If-Range: {tag}"]))
            r = c.response(w)
            check(r.status == 200 and r.body == DATA["/1m"], f"{w}: another file's tag: {r!r}")


# raw target -> how the access log must show it (bytes outside printable
# ASCII, '"' and backslash as \xHH)
LOG_ESCAPES = [
    (b'/q"-200-1-"x', r"/q\x22-200-1-\x22x"),
    (b"/csi\x9b2J\xc2\x9b31m", r"/csi\x9B2J\xC2\x9B31m"),
    (b"/back\\slash?\xfe=\xff", r"/back\x5Cslash?\xFE=\xFF"),
]


def check_log_escapes(srv, what, tag):
    for i, (t, shown) in enumerate(LOG_ESCAPES):
        t += f"?{tag}={i}".encode() if b"?" not in t else f"&{tag}={i}".encode()
        shown += f"?{tag}={i}" if "?" not in shown else f"&{tag}={i}"
        expect_status(one(srv.addr, req(t), f"{what}: GET {t!r}"), 404, f"{what}: GET {t!r}")
        srv.wait_stderr(r'^127\.0\.0\.1 - - \[[^]]+\] "GET ' + re.escape(shown)
                        + r' HTTP/1\.1" 404 \d+$')
    for ln in srv.stderr().splitlines():
        check(re.fullmatch(r"[\x20-\x7e]*", ln), f"{what}: raw bytes on stderr: {ln!r}")


def check_no_stall(a, what):
    """Sequential keep-alive requests, each waiting for its answer: a head
    and its file sent as separate small segments would wait for the
    client's delayed ACK (Nagle), about 40 ms each."""
    with Conn(a) as c:
        t0 = time.monotonic()
        for i in range(40):
            c.send(req("/hello" if i % 2 else "/4k"))
            path = "/hello" if i % 2 else "/4k"
            expect_file(c.response(f"{what}: sequential {i}"), path, f"{what}: sequential {i}")
        took = time.monotonic() - t0
        check(took < 1.2, f"{what}: 40 sequential keep-alive requests took {took:.2f} s "
              "(a delayed-ACK stall per response?)")


def subset(srv, what, model):
    """The representative subset, for every backend x model."""
    a = srv.addr
    with Conn(a) as c:  # keep-alive: everything on one connection
        etag = None
        for path in ("/hello", "/4k", "/1m"):
            c.send(req(path))
            r = c.response(f"{what}: GET {path}")
            expect_file(r, path, f"{what}: GET {path}")
            if path == "/hello":
                etag = r.get("ETag")
        c.send(req("/4k", "HEAD"))
        r = c.response(f"{what}: HEAD /4k", head=True)
        expect_file(r, "/4k", f"{what}: HEAD /4k", head=True)
        c.silent(0.1, f"{what}: after HEAD")
        c.send(req("/missing"))
        expect_status(c.response(f"{what}: 404"), 404, f"{what}: GET /missing")
        c.send(req("/sub?q=1"))
        r = c.response(f"{what}: 301")
        check(r.status == 301 and r.get("Location") == "/sub/?q=1", f"{what}: /sub?q=1: {r!r}")
        c.send(req("/4k", headers=["Range: bytes=10-19"]))
        r = c.response(f"{what}: range")
        check(r.status == 206 and r.get("Content-Range") == "bytes 10-19/4096"
              and r.body == DATA["/4k"][10:20], f"{what}: range: {r!r}")
        c.send(req("/hello", headers=[f"If-None-Match: {etag}"]))
        r = c.response(f"{what}: 304")
        check(r.status == 304 and r.body == b"", f"{what}: If-None-Match {etag}: {r!r}")
        c.send(req("/hello", headers=["Connection: close"]))
        r = c.response(f"{what}: Connection: close")
        expect_file(r, "/hello", f"{what}: Connection: close")
        check((r.get("Connection") or "").lower() == "close", f"{what}: {r!r}")
        c.eof(f"{what}: after Connection: close")
    check_redirects(a, REDIRECT_SAMPLE, what)
    check_if_range(a, what)
    check_hosts(a, BAD_HOSTS[:6], GOOD_HOSTS[:2], what)
    check_no_stall(a, what)
    check_pipeline(a, what)
    check_traversal(a, TRAVERSAL_SAMPLE, what)
    check_listing(a, what, deep=False)
    check_body_limits(a, what)
    check_many_pipelined(a, what)
    check_rude_clients(a, what)
    if model == "iterative":
        many_clients(a, 20, what + " 20 clients", reqs=1, close=True)
    else:
        many_clients(a, 20, what + " 20 clients")


def combo(backend, model):
    what = f"{backend}/{model}"
    sock = tmp_path(f"h-{backend}-{model}.sock")
    srv = Server(*BACKENDS[backend], "--model", model, listen=("127.0.0.1:0", f"unix:{sock}"),
                 grace="10")
    with srv:
        subset(srv, what, model)
        with Conn(srv.addrs[1]) as c:
            c.send(req("/4k", headers=["Connection: close"]))
            expect_file(c.response(f"{what} unix"), "/4k", f"{what} unix")
        tag = f"/hello?combo={backend}-{model}"
        expect_file(get(srv.addr, tag), "/hello", f"{what}: {tag}")
        srv.wait_stderr(r'^127\.0\.0\.1 - - \[[^]]+\] "GET ' + re.escape(tag)
                        + r' HTTP/1\.1" 200 13$')
        check_log_escapes(srv, what, f"combo-{backend}-{model}")
        graceful_idle(srv, f"{what}: graceful stop", limit=3.0)


def smoke(*extra):
    what = " ".join(extra)
    with Server(*E, *extra, grace="10") as srv:
        if "--processes" in extra:  # the workers are forked after the `listening` lines
            end = time.monotonic() + T
            while len(kids := children(srv.pid)) < 2 and time.monotonic() < end:
                time.sleep(0.02)
            check(len(kids) == 2, f"{what}: {len(kids)} worker processes")
        with Conn(srv.addr) as c:
            for path in ("/hello", "/4k", "/1m"):
                c.send(req(path))
                expect_file(c.response(f"{what}: GET {path}"), path, f"{what}: GET {path}")
        check_pipeline(srv.addr, what)
        check_listing(srv.addr, what, deep=False)
        many_clients(srv.addr, 20, what + " 20 clients")
        graceful_idle(srv, f"{what}: graceful stop", n=3, limit=3.0)


# ---- the full battery (event model, epoll) -----------------------------------------


def t_files_http_client():
    with Server(*E) as srv:
        host, port = srv.addr.rsplit(":", 1)
        hc = http.client.HTTPConnection(host, int(port), timeout=T)
        try:
            for path in ("/hello", "/4k", "/1m", "/empty"):
                for k in range(2):  # keep-alive, and ETag stable across requests
                    hc.request("GET", path)
                    r = hc.getresponse()
                    body = r.read()
                    what = f"http.client GET {path}"
                    check(r.status == 200 and body == DATA[path],
                          f"{what}: {r.status}, {len(body)} bytes")
                    h = r.headers
                    check(h["Content-Length"] == str(len(DATA[path])), f"{what}: {h}")
                    check(h["Content-Type"] == "application/octet-stream",
                          f"{what}: Content-Type {h['Content-Type']!r}")
                    check(h["Last-Modified"] == lm(path),
                          f"{what}: Last-Modified {h['Last-Modified']!r}, want {lm(path)!r}")
                    check(h["ETag"] and STRONG_ETAG.fullmatch(h["ETag"]),
                          f"{what}: ETag {h['ETag']!r} is not a strong quoted tag")
                    check(h["Accept-Ranges"] == "bytes", f"{what}: {h}")
                    check(h["Server"] and h["Date"], f"{what}: {h}")
                    if k == 0:
                        tag = h["ETag"]
                    else:
                        check(h["ETag"] == tag, f"{what}: ETag {tag} then {h['ETag']}")
        finally:
            hc.close()
        tags = {get(srv.addr, p).get("ETag") for p in ("/hello", "/4k", "/1m", "/empty")}
        check(len(tags) == 4, f"different files share an ETag: {tags}")


def t_head():
    with Server(*E) as srv:
        with Conn(srv.addr) as c:
            for path in ("/hello", "/4k", "/1m", "/empty", "/page.html", "/missing", "/sub",
                         "/list/", "/list/x%20y/"):
                c.send(req(path))
                g = c.response(f"GET {path}")
                c.send(req(path, "HEAD"))
                h = c.response(f"HEAD {path}", head=True)
                c.silent(0.2, f"HEAD {path}: body bytes after the head")
                strip = lambda r: [(k.lower(), v) for k, v in r.headers if k.lower() != "date"]
                check(g.status == h.status and strip(g) == strip(h),
                      f"HEAD {path}: headers differ from GET:\n{g.raw!r}\n{h.raw!r}")
            c.send(req("/hello"))  # the connection is still in step
            expect_file(c.response("GET after HEADs"), "/hello", "GET after HEADs")
            c.send(req("/4k", "HEAD", headers=["Range: bytes=0-3"]))
            r = c.response("HEAD with Range", head=True)
            check(r.status == 206 and r.get("Content-Range") == "bytes 0-3/4096"
                  and r.get("Content-Length") == "4", f"HEAD with Range: {r!r}")
            c.silent(0.2, "HEAD with Range: body bytes after the head")
            c.send(req("/hello"))
            expect_file(c.response("GET after HEAD range"), "/hello", "GET after HEAD range")


def t_mime():
    want = {"/page.html": "text/html", "/style.css": "text/css", "/img.png": "image/png",
            "/notes.txt": "text/plain", "/data.zzqx": "application/octet-stream",
            "/hello": "application/octet-stream", "/sub/": "text/html"}
    with Server(*E) as srv:
        for path, ct in want.items():
            r = get(srv.addr, path)
            check(r.status == 200 and r.ctype() == ct,
                  f"GET {path}: Content-Type {r.get('Content-Type')!r}, want {ct}")
            check(r.get("Last-Modified") == lm(path if path != "/sub/" else "/sub/index.html"),
                  f"GET {path}: Last-Modified {r.get('Last-Modified')!r}")


def t_etag_changes():
    etag_changes(E, "mut", dirs=True)


def etag_changes(args, name, dirs=False):
    # Small files go from a cached mapping on the event model: a file that
    # changes size under it must be served whole and new, never stale.
    # Each caller its own names: cases run in parallel.
    path = os.path.join(ROOT, f"{name}.txt")
    with Server(*args) as srv:
        def fetch(what):
            r = get(srv.addr, f"/{name}.txt", what)
            check(r.status == 200, f"{what}: {r!r}")
            return r
        r1 = fetch(f"{name}.txt v1")
        check(r1.get("ETag") == fetch(f"{name}.txt again").get("ETag"), "ETag not stable")
        seen = {r1.get("ETag")}
        steps = [("grows", b"version two!\n", False), ("same size, new mtime", b"version TWO!\n",
                                                        False),
                 ("replaced by rename", b"version 3rd!\n", True), ("shrinks", b"v4\n", False)]
        for i, (how, content, rename) in enumerate(steps, 1):
            mtime = MTIME + 100 * i
            if rename:
                tmp = path + ".new"
                _write(tmp, content)
                os.utime(tmp, (mtime, mtime))
                os.replace(tmp, path)
            else:
                with open(path, "r+b") as f:
                    f.write(content)
                    f.truncate()
                os.utime(path, (mtime, mtime))
            r = fetch(f"{name}.txt {how}")
            check(r.body == content, f"{name}.txt {how}: stale body {r.body!r}, want {content!r}")
            check(r.get("Last-Modified") == email.utils.formatdate(mtime, usegmt=True),
                  f"{name}.txt {how}: Last-Modified {r.get('Last-Modified')!r}")
            check(r.get("ETag") not in seen, f"{name}.txt {how}: ETag {r.get('ETag')} reused")
            seen.add(r.get("ETag"))
            r0 = get(srv.addr, f"/{name}.txt", headers=[f"If-None-Match: {r1.get('ETag')}"])
            check(r0.status == 200 and r0.body == content, f"{name}.txt {how}: old ETag: {r0!r}")
        os.unlink(path)  # a cached open file must not outlive its name
        expect_status(get(srv.addr, f"/{name}.txt"), 404, f"{name}.txt deleted after being served")
        _write(path, b"back\n")
        r = get(srv.addr, f"/{name}.txt")
        check(r.status == 200 and r.body == b"back\n", f"{name}.txt created again: {r!r}")
        if not dirs:
            return
        d = os.path.join(ROOT, "changing")  # nor a listing its directory
        os.mkdir(d, 0o755)
        names = lambda: [t for _, t in listing_entries(get(srv.addr, "/changing/"), "/changing/",
                                                       "changing listing")]
        check(names() == [], f"an empty directory lists {names()}")
        _write(os.path.join(d, "new.txt"), b"new\n")
        check(names() == ["new.txt"], f"a listing after a file was added: {names()}")
        os.mkdir(os.path.join(d, "index.html"), 0o755)  # a directory named index.html
        r = get(srv.addr, "/changing/")
        check(r.status in (200, 403), f"a directory named index.html: {r!r}")


def t_methods():
    with Server(*E) as srv:
        for m in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"):
            r = one(srv.addr, req("/hello", m, headers=["Content-Length: 0"]), f"{m} /hello")
            expect_status(r, 405, f"{m} /hello")  # common() checks Allow and the HTML body
        for m in ("FOO", "get", "Get", "BREW"):
            r = one(srv.addr, req("/hello", m), f"{m} /hello")
            expect_status(r, 501, f"{m} /hello")
        r = one(srv.addr, req("/hello", "POST", headers=["Content-Length: 5"], body=b"x=1&y"),
                "POST with a body")
        expect_status(r, 405, "POST with a body")


def t_versions_and_host():
    with Server(*E) as srv:
        a = srv.addr
        expect_status(one(a, req("/hello", host=None), "1.1 without Host"), 400,
                      "HTTP/1.1 without Host")
        expect_status(one(a, req("/hello", headers=["Host: other"]), "two Hosts"), 400,
                      "HTTP/1.1 with two Host headers")
        expect_status(one(a, req("/hello", version="HTTP/2.0"), "HTTP/2.0"), 505,
                      "HTTP/2.0 request line")
        expect_status(one(a, req("/hello", version="HTTP/3.0"), "HTTP/3.0"), 505,
                      "HTTP/3.0 request line")
        expect_status(one(a, req("/hello", version="HTTP/1"), "HTTP/1"), (400, 505),
                      "HTTP/1 request line")
        expect_status(one(a, req("/hello", version="http/1.1"), "http/1.1"), 400,
                      "lower-case http/1.1")
        r = one(a, req("/hello", version="HTTP/1.0", host=None), "1.0 without Host", closes=None)
        expect_file(r, "/hello", "HTTP/1.0 without Host")


def t_targets():
    with Server(*E) as srv:
        a = srv.addr
        for t in ("http://127.0.0.1/hello", "http://example.com:8080/hello", "/hello?x=1",
                  "/hello?", "/%68%65llo", "/./hello", "/sub/../hello", "/sub/./../hello",
                  "//hello", "/link-in", "/sub/link-up", "/hello?a=/../secret"):
            r = get(a, t, f"GET {t}")
            check(r.status == 200 and r.body == DATA["/hello"],
                  f"GET {t}: want 200 with /hello: {r!r} {short(r.body)}")
        expect_file(get(a, "/a%20b.txt"), "/a b.txt", "GET /a%20b.txt")
        r = get(a, "http://127.0.0.1/sub?q=1")
        check(r.status == 301 and r.get("Location") == "/sub/?q=1",
              f"absolute-form directory without a slash: {r!r}")


def t_bad_targets():
    with Server(*E) as srv:
        for t in (b"/hello%00", b"/%00", b"/hel%00lo", b"/%zz", b"/%4", b"/hello%", b"/hel%4g",
                  b"/he\x00llo", b"/\x00"):
            r = one(srv.addr, req(t), f"GET {t!r}")
            expect_status(r, 400, f"GET {t!r}")
        expect_file(get(srv.addr, "/hello"), "/hello", "still serving after bad targets")


def t_traversal():
    with Server(*E) as srv:
        check_traversal(srv.addr, TRAVERSAL, "traversal")
        r = get(srv.addr, "/linkdir-out")
        check(r.status in (301, 403, 404), f"/linkdir-out: {r!r}")
        for t in ("/link-in", "/sub/link-up"):  # symlinks that stay inside are served
            expect_file(get(srv.addr, t), "/hello", f"symlink inside DIR {t}")


def t_directories():
    with Server(*E) as srv:
        a = srv.addr
        for t, loc in (("/sub", "/sub/"), ("/sub?q=1", "/sub/?q=1"),
                       ("/list/x%20y", "/list/x%20y/"),
                       ("/list/dir?a=1&b=2", "/list/dir/?a=1&b=2")):
            r = get(a, t)
            check(r.status == 301 and r.get("Location") == loc,
                  f"GET {t}: want 301 Location {loc}: {r!r}")
        for t in ("/sub/", "/sub/index.html", "/sub/?q=1"):
            expect_file(get(a, t), "/sub/index.html", f"GET {t}")
        for t in ("/missing", "/missing/", "/sub/missing.html", "/list/nope/"):
            expect_status(get(a, t), 404, f"GET {t}")
        expect_status(get(a, "/hello/"), 404, "a file with a trailing slash")
        check_listing(a, "listing")
        r = get(a, "/list/x%20y/")
        ents = listing_entries(r, "/list/x%20y/", "nested listing")
        check([t for _, t in ents] == ["deep.txt"], f"nested listing: {ents}")
        r = get(a, "/")  # the root lists too
        names = {t for _, t in listing_entries(r, "/", "root listing")}
        check({"hello", "sub/", "list/", "a b.txt"} <= names, f"root listing: {sorted(names)}")


def t_open_redirect():
    with Server(*E) as srv:
        check_redirects(srv.addr, REDIRECTS, "open redirect")
        for t, loc in REDIRECTS:  # and the Location leads where the request meant
            r = get(srv.addr, loc)
            check(r.status == 200 and r.ctype() == "text/html", f"GET {loc} (from {t!r}): {r!r}")


def t_host_validation():
    with Server(*E) as srv:
        check_hosts(srv.addr, BAD_HOSTS, GOOD_HOSTS, "Host")


def t_if_range():
    with Server(*E) as srv:
        check_if_range(srv.addr, "If-Range", full=True)


def t_access_log_escapes():
    with Server(*E) as srv:
        check_log_escapes(srv, "access log", "esc")


def t_no_listing():
    with Server(*E, "--no-listing") as srv:
        for t in ("/list/", "/nolist/", "/"):
            expect_status(get(srv.addr, t), 403, f"--no-listing GET {t}")
        expect_file(get(srv.addr, "/sub/"), "/sub/index.html", "--no-listing with index.html")
        expect_file(get(srv.addr, "/nolist/one.txt"), "/nolist/one.txt", "--no-listing a file")


def t_unreadable(src=None):
    """Permissions are the kernel's: a file or directory the server's user
    cannot read is a 403.  As root reads everything, the server runs as
    nobody, from a copy of the program (src, default EXE) and of the files it
    serves in a place nobody can reach (harness.as_user): the checkout and
    TMP may not be."""
    with harness.as_user("nobody", src) as (nobody, d, exe):
        root = os.path.join(d, "root")
        os.mkdir(root, 0o755)
        for name in ("hello", "4k"):
            shutil.copy2(os.path.join(ROOT, name), os.path.join(root, name))
        _write(os.path.join(root, "noread.txt"), b"you cannot read me\n", 0o000)
        os.mkdir(os.path.join(root, "noreaddir"), 0o755)
        _write(os.path.join(root, "noreaddir/x.txt"), b"x\n")
        os.chmod(os.path.join(root, "noreaddir"), 0o000)
        with Server(*E, root=root, user=nobody, exe=exe, cwd=d) as srv:
            expect_file(get(srv.addr, "/hello"), "/hello", "as nobody: a readable file")
            expect_status(get(srv.addr, "/noread.txt"), 403, "as nobody: a mode 000 file")
            expect_status(get(srv.addr, "/noread.txt", method="HEAD"), 403, "as nobody: HEAD")
            expect_status(get(srv.addr, "/noreaddir/"), 403, "as nobody: a mode 000 directory")
            expect_file(get(srv.addr, "/4k"), "/4k", "as nobody: still serving")


def t_unreadable_private_checkout():
    """The same with the program in a folder only its owner can enter, as a
    clone under root's home (mode 0700) leaves it."""
    if os.geteuid() != 0:
        raise Skip("not root: cannot start the server as nobody")
    private = tmp_path("private")
    os.makedirs(os.path.join(private, "build"), 0o755)
    os.chmod(private, 0o700)
    src = os.path.join(private, "build", "ioplex")
    shutil.copy(harness.EXE, src)
    t_unreadable(src)


def t_conditional():
    with Server(*E) as srv:
        a = srv.addr
        r = get(a, "/4k")
        tag, mod = r.get("ETag"), r.get("Last-Modified")
        older = email.utils.formatdate(MTIME - 3600, usegmt=True)
        newer = email.utils.formatdate(MTIME + 3600, usegmt=True)
        cases = [
            ([f"If-None-Match: {tag}"], 304),
            (["If-None-Match: *"], 304),
            (['If-None-Match: "other-tag"'], 200),
            ([f'If-None-Match: "x", {tag}, "y"'], 304),
            ([f"If-None-Match: W/{tag}"], 304),  # weak comparison (RFC 9110 13.1.2)
            ([f"If-Modified-Since: {mod}"], 304),
            ([f"If-Modified-Since: {newer}"], 304),
            ([f"If-Modified-Since: {older}"], 200),
            (["If-Modified-Since: not a date"], 200),
            (['If-None-Match: "other-tag"', f"If-Modified-Since: {mod}"], 200),  # INM wins
            ([f"If-None-Match: {tag}", f"If-Modified-Since: {older}"], 304),
            ([f"If-None-Match: {tag}", "Range: bytes=0-3"], 304),
            (['If-None-Match: "x"', f"If-None-Match: {tag}"], 304),  # one list (RFC 9110 5.3)
        ]
        with Conn(a) as c:
            for hdrs, want in cases:
                for method in ("GET", "HEAD"):
                    what = f"{method} /4k {hdrs}"
                    c.send(req("/4k", method, headers=hdrs))
                    r = c.response(what, head=method == "HEAD")
                    check(r.status == want, f"{what}: status {r.status}, want {want}: {r!r}")
                    if want == 304:
                        check(r.get("ETag") == tag, f"{what}: 304 without the ETag: {r!r}")
                        cl = r.get("Content-Length")
                        check(cl in (None, "4096"), f"{what}: 304 with Content-Length {cl}")
                    elif method == "GET":
                        check(r.body == DATA["/4k"], f"{what}: body")
            c.send(req("/hello"))  # a 304 sent no body: the connection is in step
            expect_file(c.response("GET after the 304s"), "/hello", "GET after the 304s")


def t_ranges():
    d = DATA["/4k"]
    cases = [
        ("bytes=0-3", 0, 3), ("bytes=10-", 10, 4095), ("bytes=-5", 4091, 4095),
        ("bytes=5-1000000", 5, 4095), ("bytes=4095-4095", 4095, 4095), ("bytes=-5000", 0, 4095),
        ("bytes=0-0", 0, 0), ("bytes=2-3", 2, 3),
    ]
    with Server(*E) as srv:
        with Conn(srv.addr) as c:
            for spec, lo, hi in cases:
                what = f"Range: {spec}"
                c.send(req("/4k", headers=[f"Range: {spec}"]))
                r = c.response(what)
                check(r.status == 206, f"{what}: status {r.status}: {r!r}")
                check(r.get("Content-Range") == f"bytes {lo}-{hi}/4096",
                      f"{what}: Content-Range {r.get('Content-Range')!r}, "
                      f"want bytes {lo}-{hi}/4096")
                check(r.body == d[lo:hi + 1] and r.get("Content-Length") == str(hi - lo + 1),
                      f"{what}: {len(r.body)} body bytes, want {hi - lo + 1}")
            for spec in ("bytes=99999-", "bytes=4096-", "bytes=4096-5000"):
                c.send(req("/4k", headers=[f"Range: {spec}"]))
                r = c.response(f"Range: {spec}")
                check(r.status == 416 and r.get("Content-Range") == "bytes */4096",
                      f"Range: {spec}: want 416 with `Content-Range: bytes */4096`: {r!r}")
            # Several ranges: multipart (test_http_features.py looks inside).
            for spec, ok in (("bytes=0-1,3-4", (206,)), ("items=0-3", (200,)),
                             ("bytes=5-3", (200, 416)), ("bytes=abc", (200, 416)),
                             ("bytes=", (200, 416))):
                c.send(req("/4k", headers=[f"Range: {spec}"]))
                r = c.response(f"Range: {spec}")
                check(r.status in ok, f"Range: {spec}: status {r.status}, want {ok}: {r!r}")
                if r.status == 200:
                    check(r.body == d, f"Range: {spec}: 200 without the whole file")
            c.send(req("/1m", headers=["Range: bytes=1000000-"]))
            r = c.response("Range on 1m")
            check(r.status == 206 and r.body == DATA["/1m"][1000000:]
                  and r.get("Content-Range") == f"bytes 1000000-{(1 << 20) - 1}/{1 << 20}",
                  f"Range: bytes=1000000- on /1m: {r!r}")
            c.send(req("/empty", headers=["Range: bytes=0-"]))
            r = c.response("Range on an empty file")
            check(r.status in (200, 416), f"Range: bytes=0- on an empty file: {r!r}")
            if r.status == 416:
                check(r.get("Content-Range") == "bytes */0", f"empty file 416: {r!r}")


def t_keepalive():
    with Server(*E) as srv:
        a = srv.addr
        with Conn(a) as c:
            for i in range(6):
                path = ("/hello", "/4k", "/missing")[i % 3]
                c.send(req(path))
                r = c.response(f"keep-alive request {i + 1}")
                check((r.get("Connection") or "").lower() != "close", f"keep-alive: {r!r}")
            c.silent(0.3, "keep-alive: the connection stays open")
            c.send(req("/hello", headers=["Connection: close"]))
            r = c.response("Connection: close")
            check((r.get("Connection") or "").lower() == "close", f"Connection: close: {r!r}")
            c.eof("after Connection: close")
        with Conn(a) as c:  # HTTP/1.0 closes by default
            c.send(req("/hello", version="HTTP/1.0"))
            expect_file(c.response("HTTP/1.0"), "/hello", "HTTP/1.0")
            c.eof("HTTP/1.0 without keep-alive")
        with Conn(a) as c:  # ... unless it asks for keep-alive
            for i in range(3):
                c.send(req("/4k", version="HTTP/1.0", headers=["Connection: keep-alive"]))
                r = c.response(f"HTTP/1.0 keep-alive {i + 1}")
                expect_file(r, "/4k", f"HTTP/1.0 keep-alive {i + 1}")
                check((r.get("Connection") or "").lower() == "keep-alive",
                      f"HTTP/1.0 keep-alive: the response lacks `Connection: keep-alive`: {r!r}")
            c.send(req("/4k", version="HTTP/1.0"))
            expect_file(c.response("HTTP/1.0 last"), "/4k", "HTTP/1.0 last")
            c.eof("HTTP/1.0 after a request without keep-alive")
        with Conn(a) as c:  # Connection: a token list, case-insensitive
            c.send(req("/hello", headers=["Connection: foo, CLOSE"]))
            c.response("Connection: foo, CLOSE")
            c.eof("Connection: foo, CLOSE")


def t_header_case():
    """Header names are case-insensitive, values trimmed, tokens too."""
    with Server(*E) as srv:
        tag = get(srv.addr, "/4k").get("ETag")
        with Conn(srv.addr) as c:
            c.send(req("/4k", host=None, headers=["hOST: x", "rANGE: bytes=0-3  "]))
            r = c.response("lower-case Range")
            check(r.status == 206 and r.body == DATA["/4k"][:4], f"rANGE: {r!r}")
            c.send(req("/4k", host=None, headers=["host: x", f"if-none-match: {tag}"]))
            r = c.response("lower-case If-None-Match")
            check(r.status == 304, f"if-none-match: {r!r}")
            c.send(req("/hello", host=None, headers=["HOST: x", "content-LENGTH: 2"], body=b"ab"))
            expect_file(c.response("content-LENGTH body"), "/hello", "content-LENGTH body")
            c.send(req("/hello", headers=["cOnNeCtIoN: Close"]))
            r = c.response("cOnNeCtIoN: Close")
            c.eof("cOnNeCtIoN: Close")
        with Conn(srv.addr) as c:
            c.send(req("/hello", version="HTTP/1.0", headers=["Connection: Keep-Alive"]))
            expect_file(c.response("1.0 Keep-Alive"), "/hello", "HTTP/1.0 Keep-Alive")
            c.send(req("/hello", headers=["Connection: close"]))
            expect_file(c.response("after 1.0 Keep-Alive"), "/hello", "after 1.0 Keep-Alive")
            c.eof("after Connection: close")


def t_pipelining():
    with Server(*E) as srv:
        check_pipeline(srv.addr, "pipelining")
        check_many_pipelined(srv.addr, "pipelining", 2000)
        check_rude_clients(srv.addr, "rude clients")
        check_pipeline(srv.addr, "pipelining dribbled", dribble=True)
        with Conn(srv.addr) as c:  # a head split at awkward places
            data = req("/4k", headers=["X-Filler: " + "f" * 300])
            for piece in (data[:1], data[1:5], data[5:20], data[20:-2], data[-2:-1], data[-1:]):
                c.send(piece)
                time.sleep(0.02)
            expect_file(c.response("a head in pieces"), "/4k", "a head in pieces")


def idle_timeout(model="event", backend="epoll"):
    """--idle-timeout: an active client outlives it; an idle keep-alive
    connection is closed that long after its *last* response (some slack
    for a loaded machine: the server's clock starts before we see the
    response), and never more than 2 s late."""
    base = [*BACKENDS[backend], "--model", model, "--idle-timeout"]
    what = f"--idle-timeout 0.5 {backend}/{model}"
    with Server(*base, "0.5") as srv:
        with Conn(srv.addr) as c:
            for i in range(12):  # active for 1.2 s in all
                c.send(req("/hello"))
                expect_file(c.response(f"{what}: active client, request {i + 1}"), "/hello",
                            f"{what}: an active client")
                time.sleep(0.1)
        with Conn(srv.addr) as c:
            c.send(req("/hello"))
            expect_file(c.response(what), "/hello", what)
            t0 = time.monotonic()
            c.eof(f"{what}: an idle keep-alive connection")
            took = time.monotonic() - t0
            check(0.3 <= took <= 2.0, f"{what}: closed {took:.2f} s after the response")
    what = f"--idle-timeout 2 {backend}/{model}"
    with Server(*base, "2") as srv:
        def client(i):
            with Conn(srv.addr) as c:
                c.send(req("/hello"))
                expect_file(c.response(what), "/hello", what)
                t1 = time.monotonic()
                time.sleep(1.5)  # idle for most of the limit: the clock restarts now
                late = time.monotonic() - t1 > 1.8  # a loaded machine slept too long
                c.send(req("/hello"))
                try:
                    r = c.response(f"{what}: after 1.5 s")
                except Fail:
                    if late:
                        return None  # closed for being idle 1.8 s or more: fair
                    raise
                expect_file(r, "/hello", f"{what}: after 1.5 s")
                t0 = time.monotonic()
                c.eof(f"{what}: an idle keep-alive connection")
                return time.monotonic() - t0
        n = 1 if model == "iterative" else 3  # iterative: one client at a time
        took = [x for x in parallel([lambda i=i: client(i) for i in range(n)], what) if x]
        check(all(1.7 <= x <= 4.0 for x in took),
              f"{what}: closed {', '.join(f'{x:.2f}' for x in took)} s after the last response "
              "(which answered a request sent 1.5 s after the one before)")


def header_timeout(model="event", backend="epoll"):
    """Slowloris: a head dribbled a byte per 0.3 s is cut off at about 1 s,
    while other clients are served as usual (iterative: served after it)."""
    with Server(*BACKENDS[backend], "--model", model, "--header-timeout", "1") as srv:
        result = {}

        def slow():
            with Conn(srv.addr) as c:
                t0 = time.monotonic()
                c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                while time.monotonic() - t0 < 6:
                    r, _, _ = select.select([c.s], [], [], 0.3)
                    if r:
                        try:
                            got = c.s.recv(4096)
                        except ConnectionResetError:
                            got = b""
                        result["got"] = got
                        if got and not got.startswith(b"HTTP/1.1 408"):
                            break
                        if got:  # a 408: the close must follow
                            c.s.settimeout(2)
                            try:
                                while c.s.recv(4096):
                                    pass
                            except (socket.timeout, ConnectionResetError):
                                pass
                        break
                    try:
                        c.s.send(b"a")
                    except (BrokenPipeError, ConnectionResetError):
                        break
                result["took"] = time.monotonic() - t0
        th = threading.Thread(target=slow, daemon=True)
        th.start()
        t0 = time.monotonic()
        while model != "iterative" and th.is_alive() and time.monotonic() - t0 < 2.5:
            t1 = time.monotonic()
            expect_file(get(srv.addr, "/4k"), "/4k", "another client during slowloris")
            check(time.monotonic() - t1 < 1.0, "slowloris: another client waited "
                                               f"{time.monotonic() - t1:.2f} s")
            time.sleep(0.15)
        th.join(T)
        check(not th.is_alive(), "slowloris client thread hung")
        got, took = result.get("got"), result.get("took")
        check(got in (b"",) or (got or b"").startswith(b"HTTP/1.1 408"),
              f"--header-timeout 1: the slow client got {got!r}")
        check(took is not None and 0.8 <= took <= 3.0,
              f"--header-timeout 1: the slow client was closed after {took} s, want ~1 s")
        with Conn(srv.addr) as c:  # the limit is on the head, not on the connection
            for _ in range(4):
                c.send(req("/hello"))
                expect_file(c.response("keep-alive past the header timeout"), "/hello", "ka")
                time.sleep(0.4)


def t_max_header():
    with Server(*E, "--max-header", "1024") as srv:
        a = srv.addr
        r = one(a, req("/hello", headers=["X-Fill: " + "a" * 850]), "a head just under 1024")
        expect_file(r, "/hello", "--max-header 1024: a head of ~900 bytes")
        r = one(a, req("/hello", headers=["X-Long: " + "a" * 1100]), "long header")
        expect_status(r, 431, "--max-header 1024: a 1100-byte header")
        r = one(a, req("/hello", headers=[f"X-H{i}: " + "b" * 40 for i in range(30)]), "many")
        expect_status(r, 431, "--max-header 1024: 30 headers of 50 bytes")
        r = one(a, req("/" + "c" * 1100), "long request line")
        expect_status(r, 414, "--max-header 1024: a 1100-byte request line")
        r = one(a, req("/hello?" + "q" * 1100), "long query")
        expect_status(r, 414, "--max-header 1024: a 1100-byte query")
    with Server(*E) as srv:  # the default: 8192
        a = srv.addr
        r = one(a, req("/hello", headers=["X-Fill: " + "a" * 7000]), "7000-byte header")
        expect_file(r, "/hello", "default --max-header: a 7000-byte header")
        r = one(a, req("/hello", headers=["X-Long: " + "a" * 9000]), "9000-byte header")
        expect_status(r, 431, "default --max-header: a 9000-byte header")
        with Conn(a) as c:  # far more than the limit, all sent before reading: 431, no reset
            th = send_bg(c.s, req("/hello", headers=["X-Long: " + "a" * 300000]))
            th.join(T)
            time.sleep(0.3)
            expect_status(c.response("a 300 KB header"), 431, "a 300 KB header")
        r = one(a, req("/" + "c" * 9000), "9000-byte request line")
        expect_status(r, 414, "default --max-header: a 9000-byte request line")


MALFORMED = [
    b"HELLO\r\n\r\n",
    b"GET /hello\r\n\r\n",
    b"GET /hello HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Foo : y\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  folded\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"0\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40) + b"\r\n\r\n",  # TLS
    b" GET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET hello HTTP/1.1\r\nHost: x\r\n\r\n",
]


def t_malformed():
    with Server(*E) as srv:
        for data in MALFORMED:
            what = f"malformed {data[:70]!r}"
            with Conn(srv.addr) as c:
                c.send(data + req("/4k"))  # a valid request after it must not be answered
                r = c.response(what)
                expect_status(r, (400, 413) if b"99999999999" in data else 400, what)
                check((r.get("Connection") or "").lower() == "close",
                      f"{what}: no `Connection: close`: {r!r}")
                c.eof(what + ": the server must close after a 400")
        with Conn(srv.addr) as c:  # 400, then 200 KB more: the 400 is not lost to a reset
            th = send_bg(c.s, b"HELLO\r\n\r\n" + req("/hello") * 5000)
            th.join(T)
            time.sleep(0.3)
            expect_status(c.response("a 400 with much more sent"), 400, "a 400, then 200 KB")
        r = one(srv.addr, req("/hello", headers=["Transfer-Encoding: gzip"]), "TE gzip")
        expect_status(r, (400, 501), "Transfer-Encoding: gzip")
        expect_file(get(srv.addr, "/hello"), "/hello", "still serving after malformed requests")


def t_request_bodies():
    with Server(*E) as srv:
        a = srv.addr
        with Conn(a) as c:  # a body on GET is read and thrown away
            c.send(req("/hello", headers=["Content-Length: 10"], body=b"0123456789") + req("/4k"))
            expect_file(c.response("GET with a 10-byte body"), "/hello", "GET with a body")
            expect_file(c.response("the request after it"), "/4k", "the request after a body")
            c.send(req("/hello", "HEAD", headers=["Content-Length: 3"], body=b"abc"))
            expect_file(c.response("HEAD with a body", head=True), "/hello", "HEAD+body", True)
            c.send(req("/hello", headers=["Content-Length: 5"]))  # a late body that
            time.sleep(0.1)                                         # looks like a request
            c.send(b"GET ")
            time.sleep(0.1)
            c.send(b"/" + req("/4k"))
            expect_file(c.response("GET with a late body"), "/hello", "GET with a late body")
            expect_file(c.response("after a late body"), "/4k", "after a late body")
            chunked = (b"5\r\nhello\r\n3;ext=1\r\nabc\r\n10\r\n" + b"z" * 16 + b"\r\n"
                       b"0\r\nTrailer-A: x\r\n\r\n")
            c.send(req("/hello", headers=["Transfer-Encoding: chunked"], body=chunked)
                   + req("/4k"))
            expect_file(c.response("chunked GET body"), "/hello", "GET with a chunked body")
            expect_file(c.response("after a chunked body"), "/4k", "after a chunked body")
        with Conn(a) as c:  # exactly 1 MiB is still fine
            th = send_bg(c.s, req("/hello", headers=[f"Content-Length: {1 << 20}"],
                                  body=b"y" * (1 << 20)) + req("/4k"))
            expect_file(c.response("GET with a 1 MiB body"), "/hello", "GET with a 1 MiB body")
            expect_file(c.response("after a 1 MiB body"), "/4k", "after a 1 MiB body")
            th.join(T)
        r = one(a, req("/hello", headers=["Content-Length: 2000000"]), "Content-Length 2000000",
                closes=True)
        expect_status(r, 413, "GET with Content-Length: 2000000")
        check_body_limits(a, "bodies")
        with Conn(a) as c:  # a bad chunk: 400 (or the answer, then the close)
            c.send(req("/hello", headers=["Transfer-Encoding: chunked"]) + b"zz\r\nabc\r\n")
            r = c.response("bad chunk size")
            check(r.status in (200, 400), f"a bad chunk size: {r!r}")
            if r.status == 200:
                r2 = None
                try:
                    r2 = c.response("bad chunk size, second")
                except Fail:
                    pass
                check(r2 is None or r2.status == 400, f"a bad chunk size: then {r2!r}")
            else:
                c.eof("after a bad chunk size")


def t_slow_reader():
    """A client that pipelines 4 x 1 MiB and reads nothing for 2 s does not
    hold up 10 others; then it reads all 4 MiB."""
    with Server(*E) as srv:
        slow = Conn(srv.addr, rcvbuf=16384)
        with slow:
            slow.send(req("/1m") * 4)
            t0 = time.monotonic()

            def fast(i):
                t1 = time.monotonic()
                with Conn(srv.addr) as c:
                    for path in ("/4k", "/1m", "/hello"):
                        c.send(req(path))
                        expect_file(c.response(f"fast client {i} {path}"), path, f"fast {i}")
                return time.monotonic() - t1
            took = parallel([lambda i=i: fast(i) for i in range(10)], "slow reader: fast clients")
            check(max(took) < 2.0, f"slow reader: fast clients took up to {max(took):.2f} s")
            time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
            for i in range(4):
                expect_file(slow.response(f"slow reader response {i + 1}"), "/1m", "slow reader")


def t_concurrent_200():
    with Server(*E) as srv:
        many_clients(srv.addr, 200, "200 clients")


def t_access_log():
    with Server(*E) as srv:
        a = srv.addr
        stamp = r"\[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\]"
        expect_file(get(a, "/hello?log=1"), "/hello", "log 1")
        m = srv.wait_stderr(r'^127\.0\.0\.1 - - ' + stamp
                            + r' "GET /hello\?log=1 HTTP/1\.1" 200 13$')
        when = datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S %z")
        check(abs(when.timestamp() - time.time()) < 120, f"access log time {m.group(1)}")
        get(a, "/4k?log=2", method="HEAD")
        srv.wait_stderr(r'^127\.0\.0\.1 - - ' + stamp + r' "HEAD /4k\?log=2 HTTP/1\.1" 200 -$')
        r = get(a, "/nope?log=3")
        srv.wait_stderr(r'^127\.0\.0\.1 - - ' + stamp
                        + rf' "GET /nope\?log=3 HTTP/1\.1" 404 {len(r.body)}$')
        get(a, "/4k?log=4", headers=["Range: bytes=0-3"])
        srv.wait_stderr(r'^127\.0\.0\.1 - - ' + stamp + r' "GET /4k\?log=4 HTTP/1\.1" 206 4$')
        tag = get(a, "/4k").get("ETag")
        get(a, "/4k?log=5", headers=[f"If-None-Match: {tag}"])
        srv.wait_stderr(r'^127\.0\.0\.1 - - ' + stamp + r' "GET /4k\?log=5 HTTP/1\.1" 304 -$')
        one(a, req("/hello?log=6", version="HTTP/1.0", host=None), "1.0")
        srv.wait_stderr(r'^127\.0\.0\.1 - - ' + stamp + r' "GET /hello\?log=6 HTTP/1\.0" 200 13$')
        one(a, req("/hello?log=7", "POST", headers=["Content-Length: 0"]), "POST")
        srv.wait_stderr(r'"POST /hello\?log=7 HTTP/1\.1" 405 \d+$')
        lines = [ln for ln in srv.stderr().splitlines() if "log=" in ln]
        check(len(lines) == 7, f"access log: {len(lines)} lines for 7 requests: {lines}")
        for ln in srv.stderr().splitlines():
            check(ln.startswith("ioplex: ") or re.match(r"\S+ - - \[", ln),
                  f"stderr line neither access log nor diagnostic: {ln!r}")


def t_access_log_peers():
    """The peer in the log is looked up once per connection and kept by fd:
    connections from ::1 and 127.0.0.1 taking turns (each closed, so the
    next one gets the same fd number) must each be logged with their own."""
    if not IPV6:
        raise Skip("no IPv6")
    with Server(*E, listen=("127.0.0.1:0", "[::1]:0")) as srv:
        for i in range(6):
            v6 = i % 2 == 0
            addr, host = (srv.addrs[1], "[::1]") if v6 else (srv.addrs[0], None)
            kw = {"host": host} if host else {}
            expect_file(get(addr, f"/hello?peer={i}", **kw), "/hello", f"peer {i}")
            who = r"::1" if v6 else r"127\.0\.0\.1"
            srv.wait_stderr(rf'^{who} - - \[[^]]+\] "GET /hello\?peer={i} HTTP/1\.1" 200 13$')


def t_quiet():
    with Server(*E, "--quiet") as srv:
        for t in ("/hello", "/missing", "/4k"):
            get(srv.addr, t)
        one(srv.addr, req("/x", "POST", headers=["Content-Length: 0"]), "POST")
        time.sleep(0.2)
        srv.stop()
        check(not re.search(r'"(GET|POST) /', srv.stderr()),
              f"--quiet: access log on stderr: {srv.stderr()!r}")


def graceful_inflight(model="event", backend="epoll"):
    """SIGTERM while a 1 MiB response is read slowly: every byte arrives, the
    connection closes after it, the server exits 0."""
    srv = Server(*BACKENDS[backend], "--model", model, grace="5")
    try:
        with Conn(srv.addr, rcvbuf=16384) as c:
            c.send(req("/1m"))
            while b"\r\n\r\n" not in c.buf or len(c.buf) < 65536:
                c._more("graceful: the start of the response")
            srv.kill_with(signal.SIGTERM)
            t0 = time.monotonic()
            while len(c.buf) < (1 << 20) and time.monotonic() - t0 < 1.0:
                time.sleep(0.02)
                c.buf += c.s.recv(16384)
            r = c.response("graceful: the response in flight")
            expect_file(r, "/1m", "graceful: the response in flight")
            c.eof("graceful: the close after the in-flight response")
        srv.wait_exit(timeout=T)
    finally:
        srv.kill()


def stalled(srv, n=16):
    """A connection with n x 1 MiB pipelined and nothing read: responses in
    flight that cannot finish."""
    c = Conn(srv.addr, rcvbuf=16384)
    c.send(req("/1m") * n)
    r, _, _ = select.select([c.s], [], [], T)
    check(r, "the response never started")
    return c


def t_graceful_idle():
    with Server(*E, grace="10") as srv:
        graceful_idle(srv, "graceful stop with idle keep-alive connections", n=3, limit=2.0)


def t_second_signal():
    srv = Server(*E, grace="60")
    try:
        with stalled(srv):
            srv.kill_with(signal.SIGTERM)
            time.sleep(0.5)
            check(srv.p.poll() is None, "second SIGTERM: the first signal did not wait "
                                        "for the response in flight")
            t0 = time.monotonic()
            srv.stop(timeout=5)
            check(time.monotonic() - t0 < 2, f"second SIGTERM: took {time.monotonic() - t0:.1f} s")
    finally:
        srv.kill()


def t_stopping_refuses_new():
    """During the grace period the server no longer accepts: a new client is
    refused (or closed) at once instead of waiting in the backlog."""
    srv = Server(*E, grace="60")
    try:
        with stalled(srv):
            srv.kill_with(signal.SIGTERM)
            time.sleep(0.3)
            check(srv.p.poll() is None, "stopping: the first signal did not wait")
            fam, _, sa = sockaddr(srv.addr)
            with socket.socket(fam) as s:
                s.settimeout(2)
                try:
                    s.connect(sa)
                    s.sendall(req("/hello"))
                    got = s.recv(100)
                    check(got == b"", f"stopping: a new connection was answered: {got!r}")
                except (ConnectionRefusedError, ConnectionResetError):
                    pass
                except socket.timeout:
                    raise Fail("stopping (SIGTERM, a response in flight, --grace 60): a new "
                               "connection is accepted by the kernel and then hangs unanswered "
                               "(the listener is still open)")
            srv.stop(timeout=5)
    finally:
        srv.kill()


def t_grace_expires():
    srv = Server(*E, grace="0.5")
    try:
        with stalled(srv):
            t0 = time.monotonic()
            srv.stop(timeout=6)
            took = time.monotonic() - t0
            check(0.4 <= took <= 4, f"--grace 0.5: stopped after {took:.2f} s")
    finally:
        srv.kill()


def t_sigint():
    with Server(*E, grace="10") as srv:
        with Conn(srv.addr) as c:
            c.send(req("/hello"))
            c.response("before SIGINT")
            t0 = time.monotonic()
            srv.stop(signal.SIGINT)
            check(time.monotonic() - t0 < 2, "SIGINT with an idle connection: slow stop")
            c.eof("after SIGINT")


def t_unix():
    path = tmp_path("http.sock")
    with Server(*E, listen=(f"unix:{path}",)) as srv:
        check(srv.addrs == [f"unix:{path}"], f"unix listening line {srv.addrs}")
        with Conn(srv.addr) as c:
            for p in ("/hello", "/1m"):
                c.send(req(p))
                expect_file(c.response(f"unix {p}"), p, f"unix {p}")
        check_pipeline(srv.addr, "unix")
    check(not os.path.exists(path), "unix socket file left behind after the stop")


def t_all_interfaces():
    """`-l :0` answers over ::1 and 127.0.0.1 alike: `listening [::]:PORT`,
    one dual-stack socket (0.0.0.0 where IPv6 is absent)."""
    with Server(*E, listen=(":0",)) as srv:
        want = r"\[::\]:[1-9]\d*" if IPV6 else r"0\.0\.0\.0:[1-9]\d*"
        check(re.fullmatch(want, srv.addr), f"-l :0 listening {srv.addr}")
        port = srv.addr.rsplit(":", 1)[1]
        for host in ("127.0.0.1", "[::1]") if IPV6 else ("127.0.0.1",):
            expect_file(get(f"{host}:{port}", "/4k", host=host), "/4k", f"-l :0 over {host}")
    if not IPV6:
        raise Skip("no IPv6 here: checked the 0.0.0.0 fallback only")


def t_ipv6():
    if not IPV6:
        raise Skip("no IPv6 loopback")
    with Server(*E, listen=("[::1]:0",)) as srv:
        check(re.fullmatch(r"\[::1\]:[1-9]\d*", srv.addr), srv.addr)
        expect_file(get(srv.addr, "/4k", host="[::1]"), "/4k", "ipv6")
        srv.wait_stderr(r'^\[?::1\]? - - \[.*"GET /4k HTTP/1\.1" 200 4096$')


def t_two_listeners():
    listen = ["127.0.0.1:0", f"unix:{tmp_path('two.sock')}"] + (["[::1]:0"] if IPV6 else [])
    with Server(*E, listen=listen) as srv:
        check(len(srv.addrs) == len(listen) and srv.addrs[0].startswith("127.0.0.1:"), srv.addrs)
        conns = [Conn(x) for x in srv.addrs]
        try:
            for c in conns:
                c.send(req("/hello"))
            for c, x in zip(conns, srv.addrs):
                expect_file(c.response(f"listener {x}"), "/hello", f"listener {x}")
        finally:
            for c in conns:
                c.close()


def t_default_dir():
    with Server(*E, root="", cwd=os.path.join(ROOT, "sub")) as srv:
        expect_file(get(srv.addr, "/"), "/sub/index.html", "DIR defaults to the current directory")


def t_help():
    r = subprocess.run([harness.EXE, "http", "--help"], capture_output=True, text=True, timeout=T)
    check(r.returncode == 0 and "usage: ioplex http" in r.stdout and r.stderr == "",
          f"http --help: {r}")
    for opt in ("--listen", "--no-listing", "--idle-timeout", "--header-timeout", "--max-header",
                "--quiet", "--backend", "--edge", "--model", "--workers", "--processes",
                "--max-conns", "--grace"):
        check(opt in r.stdout, f"http --help does not mention {opt}")


BAD = [
    ["-l", "udp:127.0.0.1:0"], ["{ROOT}", "-l", "127.0.0.1:0", "-l", "udp:127.0.0.1:0"],
    ["--bogus"], ["{ROOT}", "--bogus"], ["{TMP}/does-not-exist"], ["{ROOT}/hello"],
    ["{ROOT}", "{ROOT}"], ["{ROOT}", "--idle-timeout", "-1"], ["{ROOT}", "--idle-timeout", "x"],
    ["{ROOT}", "--header-timeout", "x"], ["{ROOT}", "--header-timeout", "-2"],
    ["{ROOT}", "--max-header", "abc"], ["{ROOT}", "--max-header", "-5"], ["{ROOT}", "-l"],
    ["{ROOT}", "-l", "nonsense"], ["{ROOT}", "--model", "actor"], ["{ROOT}", "--lines"],
    ["{ROOT}", "--edge", "--backend", "poll"], ["{ROOT}", "--no-listing=1"],
]


def bad(*args):
    args = [a.replace("{ROOT}", ROOT).replace("{TMP}", harness.TMP) for a in args]
    what = f"http {' '.join(args)}"
    r = subprocess.run([harness.EXE, "http", *args], capture_output=True, text=True, timeout=T,
                       stdin=subprocess.DEVNULL)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2, f"{what}: exit {r.returncode}, want 2; {r.stderr!r}")
    check(len(lines) == 1, f"{what}: {len(lines)} lines on stderr, want 1: {r.stderr!r}")
    check(r.stdout == "", f"{what}: stdout {r.stdout!r}")


def t_bad_busy_port():
    with Server(*E) as srv:
        bad("{ROOT}", "-l", srv.addr)


# ---- the runner ----------------------------------------------------------------------


SLOW_FIRST = ("timeout", "second_signal", "stopping", "slow_reader", "concurrent_200",
              "etag", "graceful", "malformed", "unreadable")


def cases():
    out = []
    for name, fn in sorted(globals().items()):
        if name.startswith("t_"):
            out.append((name[2:], fn))
    for b in BACKENDS:
        for m in MODELS:
            out.append((f"combo {b}/{m}", lambda b=b, m=m: combo(b, m)))
    for m in MODELS:
        out.append((f"idle-timeout {m}", lambda m=m: idle_timeout(m)))
        out.append((f"header-timeout {m}", lambda m=m: header_timeout(m)))
        out.append((f"graceful in-flight {m}", lambda m=m: graceful_inflight(m)))
    out.append(("idle-timeout uring-edge/event", lambda: idle_timeout("event", "uring-edge")))
    out.append(("etag changes uring/event", lambda: etag_changes(BACKENDS["uring"], "mut-uring")))
    out.append(("header-timeout select/event", lambda: header_timeout("event", "select")))
    out.append(("graceful in-flight uring/event", lambda: graceful_inflight("event", "uring")))
    out.append(("workers 2", lambda: smoke("--workers", "2")))
    out.append(("processes 2", lambda: smoke("--processes", "2")))
    out.append(("processes 2 coro workers 2",
                lambda: smoke("--processes", "2", "--model", "coro", "--workers", "2")))
    for args in BAD:
        out.append((f"bad {args}", lambda args=args: bad(*args)))
    out.sort(key=lambda c: not any(s in c[0] for s in SLOW_FIRST))  # the long ones first
    return out


def probe(no_uring):
    """Exit 77 when there is no `http` yet; io_uring and IPv6 availability."""
    global URING, IPV6
    r = subprocess.run([harness.EXE, "http", "--help"], capture_output=True, text=True, timeout=T)
    if r.returncode != 0 and "not available" in r.stderr:
        print(f"skip: {r.stderr.strip()}")
        sys.exit(77)
    if no_uring:
        URING = False
    else:
        probe_uring()
    IPV6 = has_ipv6()


def probe_uring():
    global URING
    p = subprocess.Popen([harness.EXE, "echo", "--backend", "uring", "-l", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        URING = p.stdout.readline().startswith("listening ")
    finally:
        if p.poll() is None:
            p.kill()  # a probe: no need for a graceful stop
        p.communicate(timeout=T)


def main():
    a = harness.parse_args(jobs=6, no_uring=True)
    probe(a.no_uring)
    with harness.tmp_dir("ioplex-http-") as tmp:
        try:
            make_root()
            return harness.run_cases(cases(), a, uring=URING, reports=True)
        finally:  # TemporaryDirectory cannot remove a mode 000 directory's contents
            nr = os.path.join(tmp, "root", "noreaddir")
            if os.path.isdir(nr):
                os.chmod(nr, 0o755)


if __name__ == "__main__":
    sys.exit(main())
