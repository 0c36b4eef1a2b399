#!/usr/bin/env python3
"""`ioplex http` and `ioplex echo` over TLS against the real binary.

Certificates (ECDSA P-256 and RSA, an encrypted key) are made by the openssl
command into the scratch directory; none is committed.  Clients: python's
ssl module, curl --cacert and `openssl s_client`.  Every backend x model
runs an HTTP download, keep-alive and a raw echo."""
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import harness
from harness import BACKENDS, MODELS, T, Fail, Skip, check, tmp_path

URING = True
TLS_MODELS = MODELS
C = {}  # name -> path of the certificates and keys


def sh(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise Fail(f"{' '.join(cmd)}: {r.stderr}")


def make_certs():
    req = ["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
           "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    for name, key in (("ec", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                      ("rsa", ["-newkey", "rsa:2048"])):
        C[name + ".crt"], C[name + ".key"] = tmp_path(name + ".crt"), tmp_path(name + ".key")
        sh(*req, *key, "-keyout", C[name + ".key"], "-out", C[name + ".crt"])
    C["enc.key"], C["pw"], C["badpw"] = tmp_path("enc.key"), tmp_path("pw"), tmp_path("badpw")
    sh("openssl", "pkey", "-in", C["ec.key"], "-aes256", "-passout", "pass:sesame",
       "-out", C["enc.key"])
    with open(C["pw"], "w") as f:
        f.write("sesame\n")
    with open(C["badpw"], "w") as f:
        f.write("wrong\n")
    root = tmp_path("www")
    os.makedirs(root)
    C["root"] = root
    with open(os.path.join(root, "small.txt"), "wb") as f:
        f.write(b"hello over tls\n")
    C["big"] = bytes((i * 7 + (i >> 11)) & 0xFF for i in range(3 << 20))
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(C["big"])


def tls_args(kind="ec", key=None):
    return ["--tls-cert", C[kind + ".crt"], "--tls-key", key or C[kind + ".key"]]


class Http(harness.Server):
    def __init__(self, *args, **kw):
        super().__init__(["http", C["root"]], *args, **kw)


class Echo(harness.Server):
    def __init__(self, *args, **kw):
        super().__init__(["echo"], *args, **kw)


def client_ctx(ca="ec", **kw):
    ctx = ssl.create_default_context(cafile=C[ca + ".crt"])
    ctx.set_alpn_protocols(["http/1.1"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def hostport(addr):
    check(addr.startswith("tls:"), f"listening {addr}: no tls: prefix")
    host, port = addr[4:].rsplit(":", 1)
    return host, int(port)


def connect(addr, ctx=None, name="localhost", session=None):
    s = socket.create_connection(hostport(addr), timeout=T)
    return (ctx or client_ctx()).wrap_socket(s, server_hostname=name, session=session)


def recv_all(s, limit=1 << 30):
    out = bytearray()
    while len(out) < limit:
        b = s.recv(1 << 16)
        if not b:
            break
        out += b
    return bytes(out)


def http_get(s, path, close=True):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
              f"{'Connection: close' if close else ''}\r\n\r\n".encode())


def split_response(data):
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def get(addr, path, **kw):
    with connect(addr, **kw) as s:
        http_get(s, path)
        return split_response(recv_all(s))


# ---- cases -------------------------------------------------------------------


def combo(backend, model):
    args = [*BACKENDS[backend], "--model", model, *tls_args()]
    with Http(*args, "--quiet") as srv:
        head, body = get(srv.addr, "/big.bin")
        check(head.startswith("HTTP/1.1 200"), f"head {head!r}")
        check(body == C["big"], f"body: {len(body)} bytes, want {len(C['big'])}")
        with connect(srv.addr) as s:
            check(s.selected_alpn_protocol() == "http/1.1", f"alpn {s.selected_alpn_protocol()}")
            # keep-alive: two requests on one connection
            http_get(s, "/small.txt", close=False)
            http_get(s, "/small.txt")
            data = recv_all(s)
            check(data.count(b"hello over tls\n") == 2, f"keep-alive: {data[:300]!r}")
    with Echo(*args) as srv:
        with connect(srv.addr) as s:
            check(s.selected_alpn_protocol() is None, "echo has no ALPN")
            # one thread per SSL object: OpenSSL's are not to be shared, so
            # 16 KiB out, then the same back, 20 times
            msg = os.urandom(16384 * 20)
            got = bytearray()
            for i in range(0, len(msg), 16384):
                s.sendall(msg[i:i + 16384])
                while len(got) < i + 16384:
                    b = s.recv(65536)
                    check(b, f"echo: EOF after {len(got)} bytes")
                    got += b
            check(bytes(got) == msg, "echo: bytes differ")


def bad(args, word):
    r = subprocess.run([harness.EXE, "http", C["root"], "-l", "127.0.0.1:0", "--model", "thread",
                        *args], capture_output=True, text=True, timeout=T)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2, f"{args}: exit {r.returncode}, want 2: {r.stderr!r}")
    check(len(lines) == 1 and word in lines[0], f"{args}: stderr {r.stderr!r}, want {word!r}")
    check(r.stdout == "", f"{args}: stdout {r.stdout!r}")


BAD = [
    (lambda: ["--tls-cert", "/nonexistent.crt", "--tls-key", C["ec.key"]], "/nonexistent.crt"),
    (lambda: ["--tls-cert", C["ec.crt"], "--tls-key", C["rsa.key"]], "does not match"),
    (lambda: ["--tls-cert", C["ec.crt"], "--tls-key", C["enc.key"]], "password"),
    (lambda: ["--tls-cert", C["ec.crt"], "--tls-key", C["enc.key"],
              "--tls-password-file", C["badpw"]], "wrong password"),
    (lambda: ["--tls-cert", C["ec.crt"], "--tls-key", C["enc.key"],
              "--tls-password-file", "/nonexistent.pw"], "password file"),
    (lambda: ["--tls-cert", C["ec.crt"]], "go together"),
    (lambda: ["-l", "tls:127.0.0.1:0"], "need --tls-cert"),
    (lambda: ["--tls-key", C["ec.crt"], "--tls-cert", C["ec.key"]], "certificate"),
]


def t_password_file_rsa_and_curl():
    args = ["--model", "thread", "--tls-password-file", C["pw"], *tls_args(key=C["enc.key"])]
    with Http(*args, "--quiet") as srv:
        host, port = hostport(srv.addr)
        r = subprocess.run(["curl", "-sS", "--cacert", C["ec.crt"], "--tlsv1.3",
                            f"https://localhost:{port}/big.bin"], capture_output=True, timeout=T)
        check(r.returncode == 0 and r.stdout == C["big"], f"curl: {r.returncode} {r.stderr!r}")
        # curl checks the name: 127.0.0.1 is in the certificate too, "other" is not
        r = subprocess.run(["curl", "-sS", "--cacert", C["ec.crt"], "--resolve",
                            f"other:{port}:127.0.0.1", f"https://other:{port}/small.txt"],
                           capture_output=True, timeout=T)
        check(r.returncode != 0, "curl accepted a certificate for the wrong name")
    with Http("--model", "coro", *tls_args("rsa"), "--quiet") as srv:
        head, body = get(srv.addr, "/small.txt", ctx=client_ctx("rsa"))
        check(body == b"hello over tls\n", f"rsa: {head!r}")


def t_openssl_s_client():
    for model in TLS_MODELS:
        # -ign_eof: s_client keeps reading after its input ends, until the
        # server closes the idle connection
        with Echo("--model", model, *tls_args(), "--idle-timeout", "1") as srv:
            host, port = hostport(srv.addr)
            r = subprocess.run(["openssl", "s_client", "-connect", f"{host}:{port}", "-CAfile",
                                C["ec.crt"], "-verify_return_error", "-quiet", "-ign_eof"],
                               input=b"ping s_client\n", capture_output=True, timeout=T)
            check(b"ping s_client\n" in r.stdout, f"{model}: s_client got {r.stdout!r} "
                                                   f"{r.stderr[-300:]!r}")


def t_plain_beside_tls():
    with Http("--model", "thread", *tls_args(), "--quiet",
              listen=("127.0.0.1:0", "tls:127.0.0.1:0")) as srv:
        plain, tls = srv.addrs
        check(not plain.startswith("tls:") and tls.startswith("tls:"), f"{srv.addrs}")
        host, port = plain.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=T) as s:
            http_get(s, "/small.txt")
            check(recv_all(s).endswith(b"hello over tls\n"), "plain listener")
        check(get(tls, "/small.txt")[1] == b"hello over tls\n", "tls listener")


def t_old_versions_refused():
    with Http("--model", "thread", *tls_args(), "--quiet") as srv:
        for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ctx.maximum_version = v
            try:
                get(srv.addr, "/small.txt", ctx=ctx)
            except (ssl.SSLError, ConnectionError):
                continue
            raise Fail(f"{v} was accepted")
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_ctx()
            ctx.minimum_version = ctx.maximum_version = v
            check(get(srv.addr, "/small.txt", ctx=ctx)[1] == b"hello over tls\n", f"{v}")


def resumption(model):
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with Http("--model", model, *tls_args(), "--quiet") as srv:
            ctx = client_ctx()
            ctx.maximum_version = v
            session = None
            for i in range(3):
                with connect(srv.addr, ctx=ctx, session=session) as s:
                    http_get(s, "/small.txt")
                    recv_all(s)  # the TLS 1.3 ticket comes with the data
                    check(s.session_reused == (i > 0), f"{v} round {i}: reused {s.session_reused}")
                    session = s.session
            check(session is not None and session.has_ticket, f"{v}: no ticket")


def garbage_and_stall(model):
    args = ["--model", model, *tls_args(), "--idle-timeout", "1"]
    with Echo(*args) as srv:
        host, port = hostport(srv.addr)
        # garbage where a ClientHello belongs: closed, and said
        for _ in range(20):
            with socket.create_connection((host, port), timeout=T) as g:
                g.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    while g.recv(4096):
                        pass
                except ConnectionError:
                    pass
        srv.wait_stderr("handshake with")
        fails = srv.stderr().count("handshake with")
        check(fails <= 3, f"{fails} lines for 20 bad handshakes in well under 3 s")
        # a stalled handshake (half a ClientHello) is closed after the timeout
        stall = socket.create_connection((host, port), timeout=T)
        stall.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        t0 = time.monotonic()
        if model != "iterative":  # others are served meanwhile
            with connect(srv.addr) as s:
                s.sendall(b"still served\n")
                check(s.recv(100) == b"still served\n", "a good client beside a stalled one")
        try:
            check(stall.recv(100) == b"", "stalled handshake: bytes?")
        except ConnectionError:
            pass
        check(time.monotonic() - t0 < 5, "the stalled handshake was not closed in time")
        stall.close()
        with connect(srv.addr) as s:
            s.sendall(b"after\n")
            check(s.recv(100) == b"after\n", "served after the stall")


def reload(model):
    cert, key = tmp_path(f"live-{model}.crt"), tmp_path(f"live-{model}.key")
    shutil.copy(C["ec.crt"], cert)
    shutil.copy(C["ec.key"], key)
    with Echo("--model", model, "--tls-cert", cert, "--tls-key", key) as srv:
        old = connect(srv.addr)
        old.sendall(b"one\n")
        check(old.recv(10) == b"one\n", "before reload")
        stop = threading.Event()
        errors = []

        def traffic():  # handshakes under way during the reloads
            while not stop.is_set():
                try:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                    with connect(srv.addr, ctx=ctx) as s:
                        s.sendall(b"x")
                        if s.recv(1) != b"x":
                            errors.append("short echo")
                except OSError as e:
                    errors.append(repr(e))
        th = threading.Thread(target=traffic, daemon=True)
        th.start()
        try:
            # a bad pair: the old one stays, and a line says why
            shutil.copy(C["rsa.crt"], cert)
            srv.kill_with(signal.SIGHUP)
            srv.wait_stderr("the old pair stays")
            connect(srv.addr).close()  # still the EC certificate
            # a good pair: new handshakes get it
            shutil.copy(C["rsa.key"], key)
            srv.kill_with(signal.SIGHUP)
            srv.wait_stderr("reloaded")
            with connect(srv.addr, ctx=client_ctx("rsa")) as s:
                s.sendall(b"two\n")
                check(s.recv(10) == b"two\n", "after reload")
            try:
                connect(srv.addr).close()
                raise Fail("the old certificate is still served")
            except ssl.SSLError:
                pass
            old.sendall(b"three\n")
            check(old.recv(10) == b"three\n", "the connection from before goes on")
            old.close()
        finally:
            stop.set()
            th.join(T)
        check(not errors, f"traffic during reloads: {errors[:3]}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def slow_reader_and_truncation(model, backend):
    path = os.path.join(C["root"], f"huge-{model}-{backend}.bin")
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    with Http("--model", model, *BACKENDS[backend], *tls_args(), "--quiet") as srv:
        base = rss_kib(srv.pid)
        s = connect(srv.addr)
        http_get(s, "/" + os.path.basename(path))
        got = len(s.recv(4096))
        time.sleep(0.5)  # the server fills what the socket takes, then waits
        grown = rss_kib(srv.pid) - base
        # the file is 64 MiB: buffering it shows; the bound is a few 10 KiB
        # (more under ASan, whose quarantine keeps freed buffers)
        check(grown < 24 << 10, f"server RSS grew {grown} KiB for one slow TLS reader")
        # truncate the file under the download: the connection ends, the server lives
        with open(path, "r+b") as f:
            f.truncate(256 << 10)
        try:
            while True:  # what the kernel buffered (MiBs), then the end
                b = s.recv(1 << 16)
                if not b:
                    break
                got += len(b)
        except (ssl.SSLError, ConnectionError):
            pass
        s.close()
        check(got < 32 << 20, f"{got} bytes of a file cut short")
        check(get(srv.addr, "/small.txt")[1] == b"hello over tls\n", "served after truncation")
    os.unlink(path)


def bench(*args):
    return subprocess.run([harness.EXE, "bench", *args, "-c", "2", "-d", "0.3", "--json"],
                          capture_output=True, text=True, timeout=T + 10)


def t_bench_clients():
    import json
    with Http(*tls_args(), "--quiet") as h, Echo(*tls_args()) as e:
        hp, ep = hostport(h.addr)[1], hostport(e.addr)[1]
        for be in ("epoll", "uring", "poll"):
            r = bench("http", f"https://127.0.0.1:{hp}/big.bin", "--cacert", C["ec.crt"],
                      "--backend", be)
            check(r.returncode == 0, f"bench http {be}: {r.returncode} {r.stderr!r}")
            j = json.loads(r.stdout)
            check(isinstance(j, dict), f"bench http {be}: {r.stdout[:200]!r}")
            r = bench("echo", f"127.0.0.1:{ep}", "--tls", "--cacert", C["ec.crt"], "-s", "1000",
                      "--backend", be)
            check(r.returncode == 0, f"bench echo {be}: {r.returncode} {r.stderr!r}")
        # the wrong trust anchor fails the run; --insecure does not care
        r = bench("echo", f"127.0.0.1:{ep}", "--tls", "--cacert", C["rsa.crt"])
        check(r.returncode == 1, f"wrong CA: exit {r.returncode} {r.stderr!r}")
        r = bench("echo", f"127.0.0.1:{ep}", "--tls", "--insecure")
        check(r.returncode == 0, f"--insecure: exit {r.returncode} {r.stderr!r}")
        r = bench("echo", f"127.0.0.1:{ep}", "--cacert", C["ec.crt"])
        check(r.returncode == 2, f"--cacert without TLS: exit {r.returncode}")
        r = bench("http", f"https://127.0.0.1:{hp}/", "--cacert", "/nonexistent.pem")
        check(r.returncode == 2 and "/nonexistent.pem" in r.stderr, f"{r.stderr!r}")


def t_ktls():
    with open("/proc/sys/net/ipv4/tcp_available_ulp") as f:
        ulps = f.read().split()
    if "tls" not in ulps:
        raise Skip("the kernel offers no tls ULP here (kernel TLS test skipped)")
    with Http("--model", "thread", *tls_args(), "--quiet") as srv:
        check("kernel offers kernel TLS" in srv.stderr(), f"{srv.stderr()!r}")
        check(get(srv.addr, "/big.bin")[1] == C["big"], "download with kTLS offered")


def cases():
    out = []
    for b in BACKENDS:
        for m in TLS_MODELS:
            out.append((f"combo {b}/{m}", lambda b=b, m=m: combo(b, m)))
    for i, (args, word) in enumerate(BAD):
        out.append((f"bad {i} ({word})", lambda a=args, w=word: bad(a(), w)))
    for m in TLS_MODELS:
        out.append((f"garbage and stall {m}", lambda m=m: garbage_and_stall(m)))
        out.append((f"resumption {m}", lambda m=m: resumption(m)))
        if m != "iterative":  # one client at a time: the old one would block the rest
            out.append((f"reload under traffic {m}", lambda m=m: reload(m)))
    for m, b in (("thread", "epoll"), ("event", "epoll"), ("event", "epoll-edge"),
                 ("event", "uring"), ("event", "poll"), ("coro", "uring")):
        out.append((f"slow reader and truncation {b}/{m}",
                    lambda m=m, b=b: slow_reader_and_truncation(m, b)))
    for name, fn in sorted(globals().items()):
        if name.startswith("t_"):
            out.append((name[2:], fn))
    return out


def probe():
    global URING
    r = subprocess.Popen([harness.EXE, "echo", "--backend", "uring", "-l", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        URING = r.stdout.readline().startswith("listening ")
    finally:
        if r.poll() is None:
            r.terminate()
        r.communicate(timeout=T)


def main():
    a = harness.parse_args(jobs=3)
    if not shutil.which("openssl"):
        print("skip: no openssl command")
        return 77
    probe()
    with harness.tmp_dir("ioplex-tls-"):
        make_certs()
        return harness.run_cases(cases(), a, uring=URING, reports=True)


if __name__ == "__main__":
    sys.exit(main())
