#!/usr/bin/env python3
"""`ioplex http`'s features beyond the basics (SPEC §8) against the real
binary: configured headers (--cors and its preflights, --header,
--cache-control, --content-type), listings a person reads (columns, sorting,
a JSON form, hostile names, and a real browser when chromium is installed),
precompressed siblings and --compress, several ranges.

The client, the response checks and the server process are test_http.py's
(Conn parses strictly, common() checks what every response carries); the
document root is this script's own.  Every feature also runs on every
backend x model against one server with all the options on (combo())."""
import json
import os
import re
import subprocess
import sys

import harness
import test_http as th
from harness import BACKENDS, MODELS, T, Fail, Skip, check, tmp_path
from test_http import Conn, Server, expect_status, get, one, req

E = ["--backend", "epoll"]
MTIME = 1700000000
DATA = {}  # URL path -> bytes


def _write(path, data, mtime=MTIME):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)
    os.utime(path, (mtime, mtime))


def make_root():
    root = tmp_path("root")
    os.mkdir(root, 0o755)
    files = {
        "hello.txt": b"hello, world\n",
        "data.zzqx": b"unknown extension\n",
        "noext": b"no extension at all\n",
        "page.html": b"<!doctype html><title>page</title>\n",
    }
    for name, content in files.items():
        _write(os.path.join(root, name), content)
        DATA["/" + name] = content
    th.ROOT = root
    return root


# ---- configured headers ----------------------------------------------------------

ALL = ["--cors", "--header", "X-Test: one two", "--header", "X-Frame-Options: DENY",
       "--cache-control", "max-age=60, public", "--content-type", "text/x-unknown"]


def check_configured(r, what, file):
    """What ALL adds: on every response, and Cache-Control only on files."""
    check(r.get("Access-Control-Allow-Origin") == "*", f"{what}: no ACAO *: {r!r}")
    check(r.get("X-Test") == "one two" and r.get("X-Frame-Options") == "DENY",
          f"{what}: --header lines missing: {r!r}")
    cc = r.all("Cache-Control")
    if file:
        check(cc == ["max-age=60, public"], f"{what}: Cache-Control {cc}: {r!r}")
    else:
        check(cc == [], f"{what}: Cache-Control on a non-file: {r!r}")


def check_headers(addr, what):
    with Conn(addr) as c:
        for target, status, file in (("/hello.txt", 200, True), ("/missing", 404, False),
                                     ("/", 200, False)):
            c.send(req(target))
            r = c.response(f"{what}: GET {target}")
            expect_status(r, status, f"{what}: GET {target}")
            check_configured(r, f"{what}: GET {target}", file)
        c.send(req("/hello.txt", headers=["Range: bytes=0-4"]))
        r = c.response(f"{what}: range")
        check(r.status == 206 and r.body == b"hello", f"{what}: range: {r!r}")
        check_configured(r, f"{what}: range", True)
        c.send(req("/hello.txt", headers=[f"If-None-Match: {r.get('ETag')}"]))
        r = c.response(f"{what}: 304")
        check(r.status == 304, f"{what}: 304: {r!r}")
        check_configured(r, f"{what}: 304", True)
        for path, ctype in (("/data.zzqx", "text/x-unknown"), ("/noext", "text/x-unknown"),
                            ("/page.html", "text/html"), ("/hello.txt", "text/plain")):
            c.send(req(path, "HEAD"))
            r = c.response(f"{what}: HEAD {path}", head=True)
            check(r.ctype() == ctype, f"{what}: {path}: Content-Type {r.get('Content-Type')!r},"
                  f" want {ctype}")
        # A preflight: 204, no body, the requested headers echoed.
        c.send(req("/hello.txt", "OPTIONS", headers=[
            "Origin: http://example.com", "Access-Control-Request-Method: GET",
            "Access-Control-Request-Headers: X-Custom, range"]))
        r = c.response(f"{what}: preflight")
        check(r.status == 204 and r.body == b"" and r.get("Content-Length") is None,
              f"{what}: preflight: {r!r}")
        check(r.get("Access-Control-Allow-Methods") == "GET, HEAD"
              and r.get("Access-Control-Allow-Headers") == "X-Custom, range",
              f"{what}: preflight headers: {r!r}")
        check_configured(r, f"{what}: preflight", False)
        c.send(req("*", "OPTIONS"))
        r = c.response(f"{what}: OPTIONS *")
        check(r.status == 204 and "OPTIONS" in (r.get("Allow") or ""), f"{what}: OPTIONS *: {r!r}")
        c.send(req("/hello.txt"))  # the connection goes on after them
        r = c.response(f"{what}: after OPTIONS")
        check(r.status == 200 and r.body == DATA["/hello.txt"], f"{what}: after: {r!r}")
    # Requested headers that are not tokens are not echoed: 400.
    r = one(addr, req("/", "OPTIONS", headers=["Access-Control-Request-Headers: a b, c"]),
            f"{what}: bad request headers")
    check(r.status == 400 and r.get("Access-Control-Allow-Headers") is None, f"{what}: {r!r}")
    r = one(addr, req("/hello.txt", "POST", headers=["Content-Length: 0"]), f"{what}: POST")
    check(r.status == 405 and r.get("Allow") == "GET, HEAD, OPTIONS", f"{what}: POST: {r!r}")


def t_headers():
    with Server(*E, *ALL) as srv:
        check_headers(srv.addr, "headers")


def t_no_cors_options():
    """Without --cors OPTIONS stays a known method we do not allow, and no
    configured header appears."""
    with Server(*E) as srv:
        r = one(srv.addr, req("/hello.txt", "OPTIONS", headers=[
            "Access-Control-Request-Method: GET"]), "OPTIONS without --cors")
        check(r.status == 405 and r.get("Allow") == "GET, HEAD", f"{r!r}")
        r = get(srv.addr, "/hello.txt")
        for h in ("Access-Control-Allow-Origin", "Cache-Control", "X-Test"):
            check(r.get(h) is None, f"without options: {h} in {r!r}")
        r = get(srv.addr, "/data.zzqx", method="HEAD")
        check(r.ctype() == "application/octet-stream", f"default type: {r!r}")


def t_long_headers():
    """Many long --header lines: every response still carries them all."""
    lines = [f"X-Long-{i}: " + "v" * 300 for i in range(20)]
    args = [a for ln in lines for a in ("--header", ln)]
    with Server(*E, *args) as srv:
        for target in ("/hello.txt", "/missing", "/", "/" + "d" * 2000):
            r = get(srv.addr, target)
            for i in range(20):
                check(r.get(f"X-Long-{i}") == "v" * 300, f"{target}: X-Long-{i}: {r!r}")


BAD = [
    ["--header", "Bad Name: x"], ["--header", "X-A: a\r\nX-B: b"], ["--header", "X-A: a\nb"],
    ["--header", "NoColon"], ["--header", ": empty name"], ["--header", "X-Empty:"],
    ["--header"], ["--cache-control", ""], ["--cache-control", "a\rb"],
    ["--content-type", "text/plain\n"], ["--cors=1"],
]


def bad(*args):
    th.bad(th.ROOT, *args)


# ---- the matrix ---------------------------------------------------------------------


def combo(backend, model):
    what = f"{backend}/{model}"
    with Server(*BACKENDS[backend], "--model", model, *ALL, grace="10") as srv:
        check_headers(srv.addr, what)


# ---- the runner ----------------------------------------------------------------------


def cases():
    out = []
    for name, fn in sorted(globals().items()):
        if name.startswith("t_"):
            out.append((name[2:], fn))
    for b in BACKENDS:
        for m in MODELS:
            out.append((f"combo {b}/{m}", lambda b=b, m=m: combo(b, m)))
    for args in BAD:
        out.append((f"bad {args!r}", lambda args=args: bad(*args)))
    return out


def main():
    a = harness.parse_args(jobs=6, no_uring=True)
    th.probe(a.no_uring)
    with harness.tmp_dir("ioplex-httpf-"):
        make_root()
        return harness.run_cases(cases(), a, uring=th.URING, reports=True)


if __name__ == "__main__":
    sys.exit(main())
