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
import gzip
import json
import os
import re
import subprocess
import sys

import cdp
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
    # /list/: sizes and times that sort differently from the names
    for name, (size, mtime) in SORTED.items():
        _write(os.path.join(root, "list", name), b"x" * size, mtime)
    os.mkdir(os.path.join(root, "list", "zz-dir"))
    os.mkdir(os.path.join(root, "list", "aa-dir"))
    os.utime(os.path.join(root, "list", "zz-dir"), (MTIME + 50, MTIME + 50))
    os.utime(os.path.join(root, "list", "aa-dir"), (MTIME + 60, MTIME + 60))
    _write(os.path.join(root, "list", "aa-dir", "inside.txt"), b"inside\n")
    # /hostile/: names a listing must survive (bytes: not all are UTF-8)
    hostile = os.path.join(root, "hostile").encode()
    os.mkdir(hostile)
    for name in HOSTILE:
        _write(os.path.join(hostile, name), b"hostile " + name + b"\n")
    os.mkdir(os.path.join(hostile, b"d'ir \"<x>\""))
    # /pc/: precompressed siblings
    for name, data in PRE.items():
        _write(os.path.join(root, "pc", name), data, MTIME + (1 if name != "page.txt" else 0))
        DATA["/pc/" + name] = data
    _write(os.path.join(root, "pc", "stale.txt"), b"the file is newer\n", MTIME + 100)
    _write(os.path.join(root, "pc", "stale.txt.gz"), gzip.compress(b"old"), MTIME)
    _write(os.path.join(root, "pc", "only-gz.txt"), b"only gzip here\n" * 40)
    _write(os.path.join(root, "pc", "only-gz.txt.gz"), gzip.compress(b"only gzip here\n" * 40))
    _write(os.path.join(root, "pc", "dir-sib.txt"), b"its .gz is a directory\n")
    os.mkdir(os.path.join(root, "pc", "dir-sib.txt.gz"))
    _write(tmp_path("outside.gz"), b"SECRET outside the root")
    _write(os.path.join(root, "pc", "link-sib.txt"), b"its .gz leads out\n")
    os.symlink(tmp_path("outside.gz"), os.path.join(root, "pc", "link-sib.txt.gz"))
    _write(os.path.join(root, "pc", "mut.txt"), b"mutable\n")
    _write(os.path.join(root, "pc", "mut.txt.gz"), gzip.compress(b"mutable\n"), MTIME + 1)
    # /z/: for --compress
    for name, data in ZFILES.items():
        _write(os.path.join(root, "z", name), data)
        DATA["/z/" + name] = data
    for name, n in (("r/small.bin", 5000), ("r/large.bin", 1 << 20)):
        data = os.urandom(n)
        _write(os.path.join(root, name), data)
        DATA["/" + name] = data
    th.ROOT = root
    return root


def _text(n, seed):
    import random
    rnd = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"static", b"server", b"ioplex", b"<div>"]
    return b" ".join(rnd.choice(words) for _ in range(n // 5))[:n]


ZFILES = {"text.txt": _text(65536, 1), "app.js": _text(20000, 2), "data.json": _text(9000, 3),
          "pic.svg": _text(4000, 4), "noise.txt": os.urandom(6000), "blob.bin": _text(30000, 5),
          "big.txt": _text(300000, 6), "tiny.txt": b"hi\n", "mut.txt": _text(8000, 7)}


PAGE = b"<p>" + b"compressible text, " * 200 + b"</p>\n"
PRE = {"page.txt": PAGE, "page.txt.gz": gzip.compress(PAGE, mtime=0),
       "page.txt.br": b"BR-bytes:" + os.urandom(40), "page.txt.zst": b"ZSTD-bytes:" + os.urandom(50)}


SORTED = {"b-small.txt": (10, MTIME + 30), "a-big.txt": (5000, MTIME + 10),
          "c-mid.txt": (700, MTIME + 20)}
HOSTILE = [b"q\"uote's.txt", b"<script>alert(1)", b"<img src=x onerror=document.title=1>.html", b"100%.txt", b"a#b", b"a?b=c",
           b"sp ace", b"caf\xc3\xa9", b"bad\xff\xfe", b"new\nline", b"tab\there", b"&amp;"]


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
    ["--content-type", "text/plain\n"], ["--cors=1"], ["--compress-max", "0"],
    ["--compress-max", "1X"], ["--compress-max", "-5"], ["--compress-memory", ""],
    ["--compress-memory", "2T"], ["--compress=yes"],
]


def bad(*args):
    th.bad(th.ROOT, *args)


# ---- listings ---------------------------------------------------------------------


class Rows(th.html.parser.HTMLParser):
    """The listing table: per row (href, text, size title, data-bytes,
    datetime); column heads (id -> href) and aria-sort."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.heads, self.sorted = [], {}, None
        self._row, self._a, self._in_body = None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self._in_body = True
        elif tag == "th" and "aria-sort" in a:
            self.sorted = a["aria-sort"]
        elif tag == "a" and not self._in_body and "id" in a:
            self.heads[a["id"]] = a["href"]
        elif tag == "tr" and self._in_body:
            self._row = {"href": None, "text": "", "title": None, "bytes": None, "time": None}
        elif self._row is not None and tag == "a":
            self._row["href"], self._a = a.get("href"), True
        elif self._row is not None and tag == "td" and "title" in a:
            self._row["title"], self._row["bytes"] = a["title"], a.get("data-bytes")
        elif self._row is not None and tag == "time":
            self._row["time"] = a.get("datetime")

    def handle_endtag(self, tag):
        if tag == "a":
            self._a = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._a and self._row is not None:
            self._row["text"] += data


def rows_of(r, what):
    check(r.status == 200 and r.ctype() == "text/html", f"{what}: {r!r}")
    check(r.get("Vary") == "Accept", f"{what}: no `Vary: Accept`: {r!r}")
    try:
        text = r.body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Fail(f"{what}: the listing is not UTF-8: {e}")
    check('name="viewport"' in text and "prefers-color-scheme: dark" in text.replace(":d", ": d")
          and "<style>" in text, f"{what}: no viewport / dark scheme / stylesheet")
    p = Rows()
    p.feed(text)
    return [row for row in p.rows if row["href"] and not row["href"].startswith("../")], p


def check_sorting(addr, what):
    """Every sort and order: directories first, then the key; links keep it."""
    files_by = {
        "name": ["a-big.txt", "b-small.txt", "c-mid.txt"],
        "size": ["b-small.txt", "c-mid.txt", "a-big.txt"],
        "time": ["a-big.txt", "c-mid.txt", "b-small.txt"],
    }
    dirs_by = {"name": ["aa-dir/", "zz-dir/"], "size": ["aa-dir/", "zz-dir/"],
               "time": ["zz-dir/", "aa-dir/"]}
    with Conn(addr) as c:
        for key in ("name", "size", "time"):
            for order in ("asc", "desc"):
                q = f"?sort={key}&order={order}"
                c.send(req("/list/" + q))
                rows, p = rows_of(c.response(f"{what}: /list/{q}"), f"{what}: /list/{q}")
                names = [row["text"] for row in rows]
                want_d, want_f = dirs_by[key], files_by[key]
                if order == "desc":
                    want_d, want_f = want_d[::-1], want_f[::-1]
                check(names == want_d + want_f, f"{what}: {q}: {names}, want {want_d + want_f}")
                check(p.sorted == ("ascending" if order == "asc" else "descending"),
                      f"{what}: {q}: aria-sort {p.sorted}")
                flip = "desc" if order == "asc" else "asc"
                check(p.heads.get(f"sort-{key}") == f"?sort={key}&order={flip}",
                      f"{what}: {q}: column head {p.heads}")
                keep = "" if (key, order) == ("name", "asc") else q
                for row in rows:
                    if row["text"].endswith("/"):
                        check(row["href"] == row["text"] + keep,
                              f"{what}: {q}: dir link {row['href']!r} does not keep the sort")
                    else:
                        check(row["href"] == row["text"], f"{what}: {q}: {row}")
                        size = len(DATA_LIST[row["text"]])
                        check(row["bytes"] == str(size) and str(size) in row["title"],
                              f"{what}: {q}: exact size of {row}")
        c.send(req("/list/aa-dir/?sort=size&order=desc"))
        r = c.response(f"{what}: followed")
        rows, p = rows_of(r, f"{what}: followed")
        check([row["text"] for row in rows] == ["inside.txt"] and p.sorted == "descending",
              f"{what}: the followed link's listing: {rows}")


DATA_LIST = {name: b"x" * size for name, (size, _) in SORTED.items()}


def check_json(addr, what):
    import datetime
    r = get(addr, "/list/", headers=["Accept: application/json"])
    check(r.status == 200 and r.ctype() == "application/json" and r.get("Vary") == "Accept",
          f"{what}: JSON listing: {r!r}")
    ents = json.loads(r.body)
    check([e["name"] for e in ents] == ["aa-dir", "zz-dir", "a-big.txt", "b-small.txt",
                                         "c-mid.txt"], f"{what}: JSON names {ents}")
    for e in ents:
        check(set(e) >= {"name", "type", "size", "mtime"}, f"{what}: keys {e}")
        st = os.stat(os.path.join(th.ROOT, "list", e["name"]))
        t = datetime.datetime.fromisoformat(e["mtime"].replace("Z", "+00:00")).timestamp()
        check(t == int(st.st_mtime), f"{what}: mtime of {e}")
        if e["name"].endswith("dir"):
            check(e["type"] == "dir", f"{what}: {e}")
        else:
            check(e["type"] == "file" and e["size"] == st.st_size, f"{what}: {e}")
    r = get(addr, "/list/?sort=size&order=desc",
            headers=["Accept: application/json;q=0.9, text/html;q=0.5"])
    names = [e["name"] for e in json.loads(r.body)]
    check(names == ["zz-dir", "aa-dir", "a-big.txt", "c-mid.txt", "b-small.txt"],
          f"{what}: JSON sorted by size desc: {names}")
    r = get(addr, "/list/", headers=["Accept: text/html,application/xhtml+xml,*/*;q=0.8"])
    check(r.ctype() == "text/html", f"{what}: a browser's Accept got {r!r}")
    r = get(addr, "/list/", method="HEAD", headers=["Accept: application/json"])
    check(r.status == 200 and r.ctype() == "application/json" and r.body == b"",
          f"{what}: HEAD JSON: {r!r}")


def check_hostile(addr, what):
    """Hostile names: the page is valid UTF-8, nothing unescaped, every link
    leads to its file; JSON parses and its urls lead there too."""
    r = get(addr, "/hostile/")
    rows, _ = rows_of(r, f"{what}: hostile")
    body = r.body.decode()
    check("<script>" not in body and "q\"uote" not in body, f"{what}: unescaped name in the page")
    check(len(rows) == len(HOSTILE) + 1, f"{what}: {len(rows)} rows, want {len(HOSTILE) + 1}")
    seen = set()
    with Conn(addr) as c:
        for row in rows:
            href = row["href"]
            check(href.isascii() and not re.search(r"[\s#?\"<>']", href.split("?")[0]),
                  f"{what}: href {href!r} is not percent-encoded")
            name = th.urllib.parse.unquote_to_bytes(href)
            c.send(req("/hostile/" + href))
            r2 = c.response(f"{what}: GET {href}")
            expect_status(r2, 200, f"{what}: GET {href}")
            if not name.endswith(b"/"):
                check(r2.body == b"hostile " + name + b"\n", f"{what}: {href}: {r2.body!r}")
            seen.add(name.rstrip(b"/"))
            shown = name.rstrip(b"/").decode("utf-8", "replace")
            shown = "".join("\ufffd" if ord(ch) < 32 else ch for ch in shown)
            check(row["text"].rstrip("/") == shown, f"{what}: {row['text']!r} for {name!r}")
    check(seen == set(HOSTILE) | {b"d'ir \"<x>\""}, f"{what}: names {seen}")
    r = get(addr, "/hostile/", headers=["Accept: application/json"])
    ents = json.loads(r.body)
    with Conn(addr) as c:
        for e in ents:
            c.send(req("/hostile/" + e["url"]))
            expect_status(c.response(f"{what}: JSON url {e['url']}"), 200, f"{what}: {e}")
    check(any(e["name"] == "bad\ufffd\ufffd" for e in ents), f"{what}: {ents}")


def t_listing():
    with Server(*E) as srv:
        check_sorting(srv.addr, "listing")
        check_json(srv.addr, "listing")
        check_hostile(srv.addr, "listing")


def output_dir():
    """Where a case leaves files for people to look at: test-output/ beside
    the program under test (the build tree)."""
    return os.path.join(os.path.dirname(harness.EXE), "test-output", "test_http_features")


ROWS_JS = ("[...document.querySelectorAll('tbody tr')].map(tr => [tr.querySelector('a').textContent,"
           " (tr.querySelector('td.s') || {}).dataset?.bytes || null])")


def t_browser():
    """A real browser: the hostile listing renders every name as text (no
    markup runs), a phone gets no horizontal scrolling, the dark scheme is
    dark, a click on a column head sorts, a directory link keeps the sort,
    a file link opens the file."""
    out = output_dir()
    with Server(*E) as srv, cdp.Browser(harness.TMP) as b:
        base = f"http://{srv.addr}/hostile/"
        b.goto(base)
        title = "Directory listing for /hostile/"
        check(b.js("document.title") == title, f"title {b.js('document.title')!r}")
        rows = b.js(ROWS_JS)
        names = [n for n, _ in rows if n != "../"]
        check(len(names) == len(HOSTILE) + 1, f"rows {names}")
        for name in HOSTILE:
            shown = "".join("\ufffd" if ord(ch) < 32 else ch
                            for ch in name.decode("utf-8", "replace"))
            check(shown in names, f"{shown!r} not shown as text: {names}")
        check(b.js("document.querySelectorAll('body img, body script').length") == 0,
              "a name became markup")
        light = b.js("getComputedStyle(document.body).backgroundColor")
        b.screenshot(os.path.join(out, "listing-light.png"))
        b.emulate(dark=True)
        dark = b.js("getComputedStyle(document.body).backgroundColor")
        lum = [sum(int(x) for x in re.findall(r"\d+", c)[:3]) for c in (light, dark)]
        check(lum[0] > 600 and lum[1] < 150, f"light {light}, dark {dark}: no dark scheme")
        b.screenshot(os.path.join(out, "listing-dark.png"))
        b.emulate(width=375, height=700, mobile=True, dark=False)
        b.goto(base)
        width = b.js("document.documentElement.scrollWidth")
        check(width <= 375, f"a phone scrolls sideways: {width} px wide")
        b.screenshot(os.path.join(out, "listing-phone.png"))
        b.emulate(width=1000, height=700)
        b.js("document.getElementById('sort-size').click()")
        b.wait_for("location.search === '?sort=size&order=asc'", "the sort link")
        rows = [r for r in b.js(ROWS_JS) if r[0] != "../"]
        check(rows[0][0] == "d'ir \"<x>\"/", f"directories first: {rows}")
        sizes = [int(n) for _, n in rows[1:]]
        check(sizes == sorted(sizes), f"not by size: {rows}")
        check(b.js("document.querySelector('th[aria-sort]').className") == "s", "aria-sort")
        b.js("[...document.querySelectorAll('tbody a')].find(a => a.textContent === "
             "'d\\'ir \"<x>\"/').click()")
        b.wait_for("location.pathname.endsWith('/hostile/d%27ir%20%22%3Cx%3E%22/')",
                   "the directory link")
        check(b.js("location.search") == "?sort=size&order=asc", "the sort was not kept")
        check(b.js("document.querySelector('h1').textContent")
              == "Directory listing for /hostile/d'ir \"<x>\"/", "the heading")
        b.screenshot(os.path.join(out, "listing-followed.png"))
        b.goto(base)
        b.js("[...document.querySelectorAll('tbody a')].find(a => a.textContent === "
             "'q\"uote\\'s.txt').click()")
        b.wait_for("document.contentType === 'text/plain'", "the file link")
        text = b.js("document.body.innerText")
        check(text.strip() == "hostile q\"uote's.txt", f"the file: {text!r}")


# ---- precompressed siblings ----------------------------------------------------------


def enc_get(c, path, ae, what, method="GET", headers=()):
    hs = ([f"Accept-Encoding: {ae}"] if ae is not None else []) + list(headers)
    c.send(req(path, method, headers=hs))
    return c.response(f"{what}: {method} {path} AE {ae!r}", head=method == "HEAD")


def check_precompressed(addr, what):
    p = "/pc/page.txt"
    picks = [(None, None), ("", None), ("gzip", "gz"), ("gzip, deflate, br, zstd", "br"),
             ("gzip, zstd", "zst"), ("br;q=0.5, gzip", "gz"), ("*", "br"),
             ("*;q=0.5, br;q=0", "zst"), ("gzip;q=0, identity", None), ("x-gzip", "gz"),
             ("identity;q=0, zstd", "zst"), ("compress", None)]
    etags = {}
    with Conn(addr) as c:
        for ae, ext in picks:
            r = enc_get(c, p, ae, what)
            want = DATA[p + "." + ext] if ext else PAGE
            coding = {"gz": "gzip", "br": "br", "zst": "zstd"}.get(ext)
            check(r.status == 200 and r.body == want, f"{what}: AE {ae!r}: {r!r}, want .{ext}")
            check(r.get("Content-Encoding") == coding, f"{what}: AE {ae!r}: {r!r}")
            check(r.get("Vary") == "Accept-Encoding", f"{what}: AE {ae!r}: no Vary: {r!r}")
            check(r.ctype() == "text/plain", f"{what}: AE {ae!r}: type {r!r}")
            etags.setdefault(coding, set()).add(r.get("ETag"))
        check(all(len(v) == 1 for v in etags.values()) and len(set.union(*etags.values())) == 4,
              f"{what}: one ETag per coding, all different: {etags}")
        check(gzip.decompress(enc_get(c, p, "gzip", what).body) == PAGE, f"{what}: gunzip")
        # HEAD, Range and conditionals apply to the representation served.
        r = enc_get(c, p, "gzip", what, "HEAD")
        check(r.get("Content-Length") == str(len(DATA[p + ".gz"])), f"{what}: HEAD: {r!r}")
        r = enc_get(c, p, "br", what, headers=["Range: bytes=2-11"])
        check(r.status == 206 and r.body == DATA[p + ".br"][2:12]
              and r.get("Content-Range") == f"bytes 2-11/{len(DATA[p + '.br'])}"
              and r.get("Content-Encoding") == "br" and r.get("Vary") == "Accept-Encoding",
              f"{what}: range of br: {r!r}")
        gz_tag = etags["gzip"].copy().pop()
        r = enc_get(c, p, "gzip", what, headers=[f"If-None-Match: {gz_tag}"])
        check(r.status == 304 and r.get("Vary") == "Accept-Encoding" and r.get("ETag") == gz_tag,
              f"{what}: 304 for gzip: {r!r}")
        r = enc_get(c, p, None, what, headers=[f"If-None-Match: {gz_tag}"])
        check(r.status == 200 and r.body == PAGE, f"{what}: gzip's ETag is not identity's: {r!r}")
        # Nothing acceptable: 406 (with Vary); identity refused but a sibling fits: served.
        for path, ae, status in ((p, "identity;q=0", 406), (p, "*;q=0", 406),
                                 ("/hello.txt", "identity;q=0", 406),
                                 ("/pc/only-gz.txt", "identity;q=0, br", 406),
                                 ("/pc/only-gz.txt", "identity;q=0, gzip", 200)):
            r = enc_get(c, path, ae, what)
            expect_status(r, status, f"{what}: {path} AE {ae!r}")
            check(r.get("Vary") == "Accept-Encoding", f"{what}: {path} AE {ae!r}: {r!r}")
        # No sibling: no Vary, as before.  A sibling older than its file, a
        # directory or a symlink out of the root is no sibling.
        for path in ("/hello.txt", "/pc/stale.txt", "/pc/dir-sib.txt", "/pc/link-sib.txt"):
            r = enc_get(c, path, "gzip, br, zstd", what)
            check(r.status == 200 and r.get("Content-Encoding") is None and r.get("Vary") is None
                  and b"SECRET" not in r.body, f"{what}: {path}: {r!r}")
        # The sibling itself, asked for by name: a file like any other.
        r = enc_get(c, p + ".gz", "gzip", what)
        check(r.status == 200 and r.body == DATA[p + ".gz"] and r.get("Content-Encoding") is None
              and r.get("ETag") != gz_tag, f"{what}: page.txt.gz by name: {r!r}")


def t_precompressed():
    with Server(*E) as srv:
        check_precompressed(srv.addr, "precompressed")


def t_precompressed_changes():
    """A file rewritten after its sibling: the sibling is older now, not
    sent (at once: the file is rechecked on every request)."""
    path = os.path.join(th.ROOT, "pc", "mut.txt")
    with Server(*E) as srv, Conn(srv.addr) as c:
        r = enc_get(c, "/pc/mut.txt", "gzip", "mut")
        check(r.get("Content-Encoding") == "gzip", f"before: {r!r}")
        with open(path, "r+b") as f:
            f.write(b"MUTABLE\n")
        os.utime(path, (MTIME + 10, MTIME + 10))
        r = enc_get(c, "/pc/mut.txt", "gzip", "mut")
        check(r.status == 200 and r.body == b"MUTABLE\n" and r.get("Content-Encoding") is None,
              f"after the file changed: {r!r}")


# ---- --compress ----------------------------------------------------------------------


def check_compress(addr, what, limit=65536 * 2):
    """Compressible types come compressed in the coding asked for (gzip
    round-trips; zstd has its magic), the same bytes every time; files that
    do not shrink by a tenth, other types and files over --compress-max
    stay identity; HEAD, Range and 304 apply to the copy."""
    with Conn(addr) as c:
        bodies = {}
        for path in ("/z/text.txt", "/z/app.js", "/z/data.json", "/z/pic.svg"):
            data = DATA[path]
            for ae, coding in (("gzip", "gzip"), ("zstd", "zstd"), ("br", "br"),
                               ("gzip, deflate, br, zstd", "br"), (None, None)):
                r = enc_get(c, path, ae, what)
                check(r.status == 200 and r.get("Content-Encoding") == coding
                      and r.get("Vary") == "Accept-Encoding", f"{what}: {path} AE {ae}: {r!r}")
                if coding:
                    check(len(r.body) <= len(data) * 0.9, f"{what}: {path} {coding}: "
                          f"{len(r.body)} of {len(data)} bytes")
                    check(bodies.setdefault((path, coding), r.body) == r.body,
                          f"{what}: {path} {coding}: other bytes the second time")
                else:
                    check(r.body == data, f"{what}: {path} identity")
            check(gzip.decompress(bodies[(path, "gzip")]) == data, f"{what}: {path}: gunzip")
            check(bodies[(path, "zstd")][:4] == b"\x28\xb5\x2f\xfd", f"{what}: zstd magic")
        p = "/z/text.txt"
        br = bodies[(p, "br")]
        r = enc_get(c, p, "br", what, headers=["Range: bytes=100-199"])
        check(r.status == 206 and r.body == br[100:200]
              and r.get("Content-Range") == f"bytes 100-199/{len(br)}", f"{what}: range: {r!r}")
        r = enc_get(c, p, "br", what, "HEAD")
        check(r.get("Content-Length") == str(len(br)) and r.get("Content-Encoding") == "br",
              f"{what}: HEAD: {r!r}")
        tag = r.get("ETag")
        r = enc_get(c, p, "br", what, headers=[f"If-None-Match: {tag}"])
        check(r.status == 304 and r.get("ETag") == tag, f"{what}: 304 on the copy: {r!r}")
        r = enc_get(c, p, "gzip", what, headers=[f"If-None-Match: {tag}"])
        check(r.status == 200 and r.get("ETag") not in (tag, None), f"{what}: gzip vs br: {r!r}")
        for path, vary in (("/z/noise.txt", True), ("/z/tiny.txt", True), ("/z/blob.bin", False),
                           ("/z/big.txt", limit > 300000)):
            r = enc_get(c, path, "gzip, br, zstd", what)
            check(r.status == 200 and r.body == DATA[path] and r.get("Content-Encoding") is None,
                  f"{what}: {path} should go as it is: {r!r}")
            check((r.get("Vary") == "Accept-Encoding") == vary, f"{what}: {path}: Vary {r!r}")
        # Siblings win over --compress.
        r = enc_get(c, "/pc/page.txt", "gzip", what)
        check(r.body == DATA["/pc/page.txt.gz"], f"{what}: the sibling, not a copy: {r!r}")
        r = enc_get(c, "/z/text.txt", "identity;q=0, compress", what)
        expect_status(r, 406, f"{what}: nothing acceptable")


def t_compress():
    with Server(*E, "--compress", "--compress-max", "128k") as srv:
        check_compress(srv.addr, "compress")


def t_compress_changes():
    """A file rewritten: the next response is a copy of the new bytes, with
    a new ETag."""
    path = os.path.join(th.ROOT, "z", "mut.txt")
    with Server(*E, "--compress") as srv, Conn(srv.addr) as c:
        r1 = enc_get(c, "/z/mut.txt", "gzip", "mut")
        check(gzip.decompress(r1.body) == DATA["/z/mut.txt"], f"before: {r1!r}")
        new = _text(8000, 99)
        with open(path, "wb") as f:
            f.write(new)
        os.utime(path, (MTIME + 5, MTIME + 5))
        r2 = enc_get(c, "/z/mut.txt", "gzip", "mut")
        check(gzip.decompress(r2.body) == new and r2.get("ETag") != r1.get("ETag"),
              f"after the change: {r2!r}")


def t_compress_memory():
    """A budget smaller than the copies: every response is still right,
    from many clients at once (copies evicted while others send them); a
    copy larger than the whole budget is not made again and again: after
    the first, identity."""
    with Server(*E, "--compress", "--compress-memory", "12k", "--workers", "2") as srv:
        def client(i):
            with Conn(srv.addr) as c:
                for k in range(30):
                    path = ("/z/text.txt", "/z/app.js", "/z/data.json", "/z/pic.svg")[(i + k) % 4]
                    r = enc_get(c, path, "gzip", f"client {i}")
                    body = gzip.decompress(r.body) if r.get("Content-Encoding") else r.body
                    check(body == DATA[path], f"client {i}: {path}")
        th.parallel([lambda i=i: client(i) for i in range(8)], "tiny budget")
    with Server(*E, "--compress", "--compress-memory", "4k") as srv, Conn(srv.addr) as c:
        big = DATA["/z/text.txt"]
        r = enc_get(c, "/z/text.txt", "gzip", "over budget")
        check(gzip.decompress(r.body) == big, f"over budget, first: {r!r}")
        r = enc_get(c, "/z/text.txt", "gzip", "over budget")
        check(r.body == big and r.get("Content-Encoding") is None, f"then identity: {r!r}")
        r = enc_get(c, "/z/pic.svg", "gzip", "fits")
        check(gzip.decompress(r.body) == DATA["/z/pic.svg"] and len(r.body) < 4096,
              f"a small copy still fits: {r!r}")


# ---- several ranges --------------------------------------------------------------------


def parts_of(r, what, size, ctype):
    """The parts of a multipart/byteranges body, strictly: [(first, last,
    bytes)]."""
    m = re.fullmatch(r"multipart/byteranges; boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})",
                     r.get("Content-Type") or "")
    check(r.status == 206 and m, f"{what}: {r!r}")
    b = m.group(1).encode()
    body = r.body
    check(body.startswith(b"--" + b + b"\r\n") and body.endswith(b"\r\n--" + b + b"--\r\n"),
          f"{what}: body frame {body[:80]!r} ... {body[-80:]!r}")
    out = []
    inner = b"\r\n" + body[:-len(b"\r\n--" + b + b"--\r\n")]
    for chunk in inner.split(b"\r\n--" + b + b"\r\n")[1:]:
        head, sep, data = chunk.partition(b"\r\n\r\n")
        check(sep, f"{what}: a part without headers: {chunk[:100]!r}")
        hs = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        check(hs.get(b"Content-Type") == ctype.encode(), f"{what}: part type {hs}")
        cr = re.fullmatch(rb"bytes (\d+)-(\d+)/(\d+)", hs.get(b"Content-Range", b""))
        check(cr and int(cr.group(3)) == size, f"{what}: part range {hs}")
        first, last = int(cr.group(1)), int(cr.group(2))
        check(len(data) == last - first + 1, f"{what}: part {first}-{last} has {len(data)} bytes")
        out.append((first, last, data))
    return out


def check_ranges(addr, what):
    with Conn(addr) as c:
        for path in ("/r/small.bin", "/r/large.bin"):
            data = DATA[path]
            size = len(data)
            for spec, want in (("0-9,100-199", [(0, 9), (100, 199)]),
                               ("100-199,0-9", [(0, 9), (100, 199)]),
                               ("0-9,5-20,21-30,-10", [(0, 30), (size - 10, size - 1)]),
                               ("0-0, 2-2 ,4-4", [(0, 0), (2, 2), (4, 4)]),
                               (f"0-1,{size + 5}-", [(0, 1)]),
                               (",".join(f"{i * 3}-{i * 3}" for i in range(16)),
                                [(i * 3, i * 3) for i in range(16)])):
                c.send(req(path, headers=[f"Range: bytes={spec}"]))
                r = c.response(f"{what}: {path} {spec}")
                if len(want) == 1:
                    a, b = want[0]
                    check(r.status == 206 and r.body == data[a:b + 1]
                          and r.get("Content-Range") == f"bytes {a}-{b}/{size}",
                          f"{what}: {path} {spec}: one range: {r!r}")
                    continue
                parts = parts_of(r, f"{what}: {path} {spec}", size, "application/octet-stream")
                check([(a, b) for a, b, _ in parts] == want, f"{what}: {spec}: {parts}")
                for a, b, got in parts:
                    check(got == data[a:b + 1], f"{what}: {path} {spec}: bytes of {a}-{b}")
                check(r.get("Accept-Ranges") == "bytes" and r.get("ETag"), f"{what}: {r!r}")
            # The whole file: more than 16 ranges, more bytes than the file,
            # an If-Range for another version.
            for hs in ([f"Range: bytes={','.join(f'{i * 3}-{i * 3}' for i in range(17))}"],
                       [f"Range: bytes=0-{size - 1},0-0"],
                       ["Range: bytes=0-1,3-4", 'If-Range: "other"']):
                c.send(req(path, headers=hs))
                r = c.response(f"{what}: {path} {hs}")
                check(r.status == 200 and r.body == data, f"{what}: {path} {hs}: {r!r}")
            c.send(req(path, headers=[f"Range: bytes={size}-,{size + 9}-{size + 20}"]))
            r = c.response(f"{what}: 416")
            check(r.status == 416 and r.get("Content-Range") == f"bytes */{size}", f"{r!r}")
            c.send(req(path, "HEAD", headers=["Range: bytes=0-1,3-4"]))
            r = c.response(f"{what}: HEAD", head=True)
            check(r.status == 206 and "multipart/byteranges" in r.get("Content-Type"),
                  f"{what}: HEAD: {r!r}")
        # Of a precompressed sibling: the parts are the sibling's bytes.
        gz = DATA["/pc/page.txt.gz"]
        c.send(req("/pc/page.txt", headers=["Range: bytes=0-3,10-12", "Accept-Encoding: gzip"]))
        r = c.response(f"{what}: ranges of .gz")
        parts = parts_of(r, f"{what}: ranges of .gz", len(gz), "text/plain")
        check([d for _, _, d in parts] == [gz[0:4], gz[10:13]]
              and r.get("Content-Encoding") == "gzip", f"{what}: {parts}")
        c.send(req("/hello.txt"))  # the connection goes on
        r = c.response(f"{what}: after")
        check(r.body == DATA["/hello.txt"], f"{what}: after the multipart responses: {r!r}")


def t_ranges():
    with Server(*E) as srv:
        check_ranges(srv.addr, "ranges")


def t_ranges_compressed():
    """Several ranges of a --compress copy: slices of the copy."""
    with Server(*E, "--compress") as srv, Conn(srv.addr) as c:
        c.send(req("/z/text.txt", headers=["Accept-Encoding: gzip"]))
        whole = c.response("whole").body
        c.send(req("/z/text.txt", headers=["Accept-Encoding: gzip", "Range: bytes=0-9,-20"]))
        r = c.response("parts")
        parts = parts_of(r, "copy parts", len(whole), "text/plain")
        check([d for _, _, d in parts] == [whole[:10], whole[-20:]], f"parts {parts}")


def t_no_listing_json():
    with Server(*E, "--no-listing") as srv:
        for accept in ("text/html", "application/json"):
            r = get(srv.addr, "/list/", headers=[f"Accept: {accept}"])
            expect_status(r, 403, f"--no-listing, Accept: {accept}")


# ---- the matrix ---------------------------------------------------------------------


def combo(backend, model):
    what = f"{backend}/{model}"
    with Server(*BACKENDS[backend], "--model", model, *ALL, grace="10") as srv:
        check_headers(srv.addr, what)
        check_sorting(srv.addr, what)
        check_json(srv.addr, what)
        check_precompressed(srv.addr, what)
    with Server(*BACKENDS[backend], "--model", model, "--compress", "--compress-max", "128k",
                grace="10") as srv:
        check_compress(srv.addr, what)
        check_ranges(srv.addr, what)


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
