#!/usr/bin/env python3
"""`ioplex echo` against the real binary (SPEC §2 "Common server options" and
"ioplex echo").

Every server listens on port 0 and is found through its `listening ADDR`
lines.  The whole option matrix runs on the event model with epoll; every
other backend x model combination runs a representative subset (1 MiB raw
echo, Unix, half-close, split lines and frames, greeting, UDP, max-frame).
Cases run in parallel threads; every socket call, queue read and process
wait has a timeout, so a hang fails its case instead of the suite."""
import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import harness
from harness import (BACKENDS, MODELS, T, Fail, Skip, check, children, has_ipv6, send_bg,
                     sockaddr, tmp_path)

URING = True  # io_uring usable here (probed in main)
IPV6 = True

E = ["--backend", "epoll"]  # the full matrix runs on the event model with epoll


class Server(harness.Server):
    """`ioplex echo ARGS -l ...` on port 0 (harness.Server)."""

    def __init__(self, *args, **kw):
        super().__init__(["echo"], *args, **kw)

    def wait_stderr(self, text, timeout=T):
        end = time.monotonic() + timeout
        while text not in self.stderr():
            check(time.monotonic() < end, f"{self.cmd}: no {text!r} on stderr: {self.stderr()!r}")
            time.sleep(0.02)


def proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


# ---- clients -----------------------------------------------------------------


def connect(addr):
    fam, kind, sa = sockaddr(addr)
    s = socket.socket(fam, kind)
    s.settimeout(T)
    if kind == socket.SOCK_STREAM:
        s.connect(sa)
        if fam != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        check(chunk, f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_eof(s):
    """Everything until EOF (a reset counts as EOF)."""
    buf = bytearray()
    while True:
        try:
            chunk = s.recv(1 << 20)
        except ConnectionResetError:
            return bytes(buf)
        if not chunk:
            return bytes(buf)
        buf += chunk


def expect_closed(s, what):
    try:
        extra = recv_eof(s)
    except socket.timeout:
        raise Fail(f"{what}: the server did not close the connection")
    check(extra == b"", f"{what}: unexpected bytes before the close: {extra[:40]!r}")


def expect_silent(s, secs, what):
    s.settimeout(secs)
    try:
        got = s.recv(100)
        raise Fail(f"{what}: got {got!r}, want silence for {secs} s")
    except socket.timeout:
        pass
    finally:
        s.settimeout(T)


def join(th, what):
    th.join(T)
    check(not th.is_alive(), f"{what}: sending did not finish")
    check(th.error is None, f"{what}: send: {th.error}")


def echo(addr, data, what):
    """data out, the same bytes back."""
    with connect(addr) as s:
        th = send_bg(s, data)
        got = recv_exact(s, len(data))
        join(th, what)
    check(got == data, f"{what}: {len(data)} bytes echoed differently")


def send_chunks(s, data, sizes, pause=0.01):
    """data in pieces of the given sizes (the rest at once), paused, so that
    they arrive as separate segments."""
    i = 0
    for n in sizes:
        if i >= len(data):
            break
        s.sendall(data[i:i + n])
        i += n
        time.sleep(pause)
    if i < len(data):
        s.sendall(data[i:])


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def udp_ask(addr, data):
    fam, _, sa = sockaddr(addr)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(4):  # loopback does not drop, but a reply must never hang us
            s.sendto(data, sa)
            try:
                return s.recvfrom(65536)[0]
            except socket.timeout:
                continue
    raise Fail(f"udp {addr}: no reply to {data!r}")


# ---- checks shared by the matrix ----------------------------------------------------


def check_raw(srv, addr, what, size=1 << 20):
    echo(addr, os.urandom(size), f"{what}: raw {size} bytes")


def check_half_close(addr, what):
    data = os.urandom(300_000)
    with connect(addr) as s:
        th = send_bg(s, data)
        join(th, what)
        s.shutdown(socket.SHUT_WR)
        got = recv_eof(s)
    check(got == data, f"{what}: half-close: {len(got)} of {len(data)} bytes back")


def check_lines(addr, what, upper=False, prefix=b""):
    def reply(line):
        return prefix + (line.upper() if upper else line)
    with connect(addr) as s:
        send_chunks(s, b"hel" + b"lo\nwor" + b"ld\n\nx\n", [3, 6, 3, 1])
        want = b"".join(reply(x) for x in (b"hello\n", b"world\n", b"\n", b"x\n"))
        check(recv_exact(s, len(want)) == want, f"{what}: split lines")
        s.sendall(b"a\nb\nunterminated")
        s.shutdown(socket.SHUT_WR)
        got = recv_eof(s)
    want = reply(b"a\n") + reply(b"b\n")
    check(got == want, f"{what}: lines then EOF: {got!r}, want {want!r}")


FRAMES = [b"", b"hello", b"", b"x" * 70_000, b"end"]


def check_frames(addr, what, greeting=None):
    stream = b"".join(frame(p) for p in FRAMES)
    with connect(addr) as s:
        if greeting is not None:
            check(recv_exact(s, 4 + len(greeting)) == frame(greeting), f"{what}: greeting frame")
        send_chunks(s, stream, [1, 3, 2, 2, 1, 1, 1, 2, 3, 4, 3, 1])
        check(recv_exact(s, len(stream)) == stream, f"{what}: split frames")
        s.sendall(frame(b"abc") + frame(b""))
        s.shutdown(socket.SHUT_WR)
        got = recv_eof(s)
    check(got == frame(b"abc") + frame(b""), f"{what}: frames then EOF: {got!r}")


def check_max_frame(srv, addr, limit, what):
    with connect(addr) as s:
        s.sendall(frame(b"y" * limit))
        check(recv_exact(s, 4 + limit) == frame(b"y" * limit), f"{what}: frame at the limit")
        s.sendall(struct.pack(">I", limit + 1) + b"zz")
        expect_closed(s, f"{what}: frame over --max-frame")
    srv.wait_stderr(str(limit + 1))


# ---- the backend x model matrix -----------------------------------------------------


def combo(backend, model):
    what = f"{backend}/{model}"
    base = [*BACKENDS[backend], "--model", model]
    sock = tmp_path(f"m-{backend}-{model}.sock")
    with Server(*base, listen=("127.0.0.1:0", f"unix:{sock}")) as srv:
        check(re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", srv.addrs[0]), f"{what}: {srv.addrs}")
        check(srv.addrs[1] == f"unix:{sock}", f"{what}: {srv.addrs}")
        check_raw(srv, srv.addrs[0], what)
        check_raw(srv, srv.addrs[1], what + " unix", 128 << 10)
        check_half_close(srv.addrs[0], what)
    with Server(*base, "--lines", "--upper", "--prefix", "> ",
                listen=("127.0.0.1:0", "udp:127.0.0.1:0")) as srv:
        check_lines(srv.addrs[0], what, upper=True, prefix=b"> ")
        got = udp_ask(srv.addrs[1], b"ping me")
        check(got == b"> PING ME", f"{what}: udp reply {got!r}")
    with Server(*base, "--framed", "--greeting", "hi", "--max-frame", "100000") as srv:
        check_frames(srv.addrs[0], what, greeting=b"hi")
        with connect(srv.addrs[0]) as s:  # the greeting, then the refusal
            check(recv_exact(s, 6) == frame(b"hi"), f"{what}: greeting")
            s.sendall(struct.pack(">I", 100_001))
            expect_closed(s, f"{what}: frame over --max-frame")
        srv.wait_stderr("100001")


# ---- the full option matrix (event model, epoll) --------------------------------------


def t_lines():
    with Server(*E, "--lines") as srv:
        check_lines(srv.addrs[0], "lines")


def t_lines_upper_prefix():
    with Server(*E, "--lines", "--upper", "--prefix", "[p] ") as srv:
        check_lines(srv.addrs[0], "lines upper prefix", upper=True, prefix=b"[p] ")


def t_max_line():
    with Server(*E, "--lines", "--max-line", "8") as srv:
        with connect(srv.addrs[0]) as s:
            s.sendall(b"12345678\n")
            check(recv_exact(s, 9) == b"12345678\n", "max-line: a line at the limit")
            s.sendall(b"123456789")
            expect_closed(s, "max-line: a line over the limit")
        with connect(srv.addrs[0]) as s:
            send_chunks(s, b"abcdefghijklmnop\n", [4, 4, 4])
            expect_closed(s, "max-line: split line over the limit")


def t_frames():
    with Server(*E, "--framed") as srv:
        check_frames(srv.addrs[0], "frames")


def t_frames_upper_prefix():
    with Server(*E, "--framed", "--upper", "--prefix", "P:") as srv:
        with connect(srv.addrs[0]) as s:
            send_chunks(s, frame(b"abc") + frame(b""), [2, 2, 1, 1, 3])
            want = frame(b"P:ABC") + frame(b"P:")
            check(recv_exact(s, len(want)) == want, "framed upper prefix")


def t_max_frame():
    with Server(*E, "--framed", "--max-frame", "16") as srv:
        check_max_frame(srv, srv.addrs[0], 16, "max-frame")
        check("max-frame" in srv.stderr() and "ioplex: " in srv.stderr(), srv.stderr())


def t_greeting_raw():
    with Server(*E, "--greeting", "hello there", "--upper") as srv:
        with connect(srv.addrs[0]) as s:
            check(recv_exact(s, 11) == b"hello there", "greeting (raw, not upper-cased)")
            s.sendall(b"abc1")
            check(recv_exact(s, 4) == b"ABC1", "raw --upper")


def t_greeting_lines():
    with Server(*E, "--lines", "--greeting", "welcome\n", "--prefix", "> ") as srv:
        with connect(srv.addrs[0]) as s:
            check(recv_exact(s, 8) == b"welcome\n", "greeting (lines, no prefix)")
            s.sendall(b"x\n")
            check(recv_exact(s, 4) == b"> x\n", "lines reply after the greeting")


def t_greeting_framed():
    with Server(*E, "--framed", "--greeting", "hi there") as srv:
        check_frames(srv.addrs[0], "framed greeting", greeting=b"hi there")


def t_half_close():
    with Server(*E) as srv:
        check_half_close(srv.addrs[0], "raw")
    with Server(*E, "--framed") as srv:
        with connect(srv.addrs[0]) as s:
            s.sendall(frame(b"one") + frame(b"x" * 100_000))
            s.shutdown(socket.SHUT_WR)
            got = recv_eof(s)
        check(got == frame(b"one") + frame(b"x" * 100_000), "framed half-close")


def t_unix():
    path = tmp_path("echo.sock")
    with Server(*E, listen=(f"unix:{path}",)) as srv:
        check(srv.addrs == [f"unix:{path}"], f"unix listening line {srv.addrs}")
        check_raw(srv, srv.addrs[0], "unix")
        check_half_close(srv.addrs[0], "unix")
    check(not os.path.exists(path), "unix socket file left behind after the stop")


def t_udp():
    with Server(*E, "--lines", "--upper", "--prefix", "> ",
                listen=("udp:127.0.0.1:0",)) as srv:
        check(re.fullmatch(r"udp:127\.0\.0\.1:[1-9]\d*", srv.addrs[0]), srv.addrs[0])
        check(udp_ask(srv.addrs[0], b"hello") == b"> HELLO", "udp lines upper prefix")
        check(udp_ask(srv.addrs[0], b"") == b"> ", "udp empty datagram")
    with Server(*E, "--framed", "--prefix", "P:", listen=("udp:127.0.0.1:0",)) as srv:
        check(udp_ask(srv.addrs[0], b"abc") == b"P:abc", "udp framed: no header")
    with Server(*E, listen=("udp:127.0.0.1:0",)) as srv:
        data = os.urandom(1400)
        check(udp_ask(srv.addrs[0], data) == data, "udp raw")


def t_ipv6():
    if not IPV6:
        raise Skip("no IPv6 loopback")
    with Server(*E, listen=("[::1]:0",)) as srv:
        check(re.fullmatch(r"\[::1\]:[1-9]\d*", srv.addrs[0]), srv.addrs[0])
        check_raw(srv, srv.addrs[0], "ipv6")


def all_interfaces(*extra):
    """`-l :0` is every interface, IPv6 and IPv4: one [::] socket (printed
    `listening [::]:PORT`) served over ::1 and 127.0.0.1, for TCP and UDP
    alike and by every SO_REUSEPORT sibling; 0.0.0.0 where IPv6 is absent."""
    what = f"-l :0 {' '.join(extra)}"
    with Server(*E, *extra, listen=(":0", "udp::0")) as srv:
        any_host = r"\[::\]" if IPV6 else r"0\.0\.0\.0"
        for addr, prefix in zip(srv.addrs, ("", "udp:")):
            check(re.fullmatch(prefix + any_host + r":[1-9]\d*", addr), f"{what}: {srv.addrs}")
        tcp, udp = (a.rsplit(":", 1)[1] for a in srv.addrs)
        for host in ("127.0.0.1", "[::1]") if IPV6 else ("127.0.0.1",):
            concurrent_clients(f"{host}:{tcp}", 8, f"{what} over {host}")  # every worker's socket
            check_raw(srv, f"{host}:{tcp}", f"{what} over {host}", size=1 << 16)
            check(udp_ask(f"udp:{host}:{udp}", b"ping") == b"ping", f"{what}: udp over {host}")
    if not IPV6:
        raise Skip("no IPv6 here: checked the 0.0.0.0 fallback only")


def t_two_listeners():
    second = "[::1]:0" if IPV6 else f"unix:{tmp_path('two.sock')}"
    with Server(*E, "--lines", listen=("127.0.0.1:0", second)) as srv:
        check(len(srv.addrs) == 2 and srv.addrs[0].startswith("127.0.0.1:"), srv.addrs)
        with connect(srv.addrs[0]) as a, connect(srv.addrs[1]) as b:
            a.sendall(b"one\n")
            b.sendall(b"two\n")
            check(recv_exact(b, 4) == b"two\n" and recv_exact(a, 4) == b"one\n", "two listeners")


def max_conns(model, backend="epoll"):
    what = f"max-conns {backend}/{model}"
    with Server(*BACKENDS[backend], "--model", model, "--max-conns", "2") as srv:
        addr = srv.addrs[0]
        c1, c2 = connect(addr), connect(addr)
        with c1, c2:
            for c in (c1, c2):
                c.sendall(b"a")
                check(recv_exact(c, 1) == b"a", f"{what}: the first two are served")
            with connect(addr) as c3:  # waits in the backlog
                c3.sendall(b"3")
                expect_silent(c3, 0.5, f"{what}: third client")
                c1.close()
                check(recv_exact(c3, 1) == b"3", f"{what}: third served once one closed")


def t_iterative_one_at_a_time():
    with Server(*E, "--model", "iterative") as srv:
        with connect(srv.addrs[0]) as c1:
            c1.sendall(b"1")
            check(recv_exact(c1, 1) == b"1", "iterative: first client")
            with connect(srv.addrs[0]) as c2:
                c2.sendall(b"2")
                expect_silent(c2, 0.5, "iterative: second client while the first is served")
                c1.close()
                check(recv_exact(c2, 1) == b"2", "iterative: second served after the first")


def idle_timeout(model, backend="epoll"):
    what = f"idle-timeout {backend}/{model}"
    # An active client outlives the timeout (1 s here: a loaded machine may
    # stall the client for a few 100 ms between its messages).
    with Server(*BACKENDS[backend], "--model", model, "--idle-timeout", "1") as srv:
        with connect(srv.addrs[0]) as busy:
            for _ in range(15):  # active for 1.5 s in all
                busy.sendall(b"k")
                check(recv_exact(busy, 1) == b"k", f"{what}: an active client is served")
                time.sleep(0.1)
    with Server(*BACKENDS[backend], "--model", model, "--idle-timeout", "0.3") as srv:
        with connect(srv.addrs[0]) as s:
            s.sendall(b"x")
            check(recv_exact(s, 1) == b"x", what)
            t0 = time.monotonic()
            expect_closed(s, what)
            took = time.monotonic() - t0
            check(0.25 <= took <= 5, f"{what}: closed after {took:.2f} s")


def t_idle_default_never():
    with Server(*E) as srv:
        with connect(srv.addrs[0]) as s:
            expect_silent(s, 1.0, "no idle timeout by default")
            s.sendall(b"still here")
            check(recv_exact(s, 10) == b"still here", "idle connection still served")


def stalled_reply(srv, size=8 << 20):
    """A connection whose whole request (one frame) has arrived and whose
    reply has begun but is not read yet: a request in flight.  The client's
    receive buffer is pinned small (no autotuning), so that most of the reply
    waits in the server, beyond what the kernel's buffers hold."""
    fam, _, sa = sockaddr(srv.addrs[0])
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(T)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    s.connect(sa)
    payload = os.urandom(size)
    th = send_bg(s, frame(payload))
    r, _, _ = select.select([s], [], [], T)
    check(r, "the reply never started")
    return s, th, payload


def graceful(model, sig=signal.SIGTERM, backend="epoll"):
    what = f"graceful stop {backend}/{model}"
    srv = Server(*BACKENDS[backend], "--model", model, "--framed")
    try:
        s, th, payload = stalled_reply(srv)
        with s:
            srv.kill_with(sig)
            time.sleep(0.3)
            check(srv.p.poll() is None, f"{what}: exited with a reply still in flight")
            check(recv_exact(s, 4 + len(payload)) == frame(payload), f"{what}: reply")
            join(th, what)
            s.shutdown(socket.SHUT_WR)
            expect_closed(s, what)
        srv.wait_exit()
    finally:
        srv.kill()


def unacked(s):
    """Bytes sent on TCP socket s that the peer has not acknowledged yet."""
    return struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0" * 4))[0]


def stop_mid_stream(backend, model, listen="127.0.0.1:0", total=8 << 20):
    """SIGTERM while a client streams in without reading, every buffer on the
    way full and input the server has not read waiting in its kernel: each
    byte that reached the server before the stop comes back, in order, then
    EOF, never a reset (a close with input unread sends one, destroying the
    replies in flight), and the server exits.  The client then writes the
    rest and shuts its side down; the server may echo that too, or discard
    it after its FIN."""
    what = f"stop mid-stream {backend}/{model} {listen.split(':')[0]}"
    srv = Server(*BACKENDS[backend], "--model", model, listen=(listen,))
    try:
        fam, _, sa = sockaddr(srv.addr)
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            # Small client buffers (no autotuning): the server holds the rest.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            s.settimeout(T)
            s.connect(sa)
            data = os.urandom(total)
            s.setblocking(False)
            sent = 0
            while sent < total:  # until the socket stays full: the server reads no more
                try:
                    sent += s.send(data[sent:sent + (1 << 16)])
                except BlockingIOError:
                    if not select.select([], [s], [], 0.2)[1]:
                        break
            # What the server's kernel has: on TCP what it acknowledged, on
            # a Unix socket everything sent.
            reached = sent if fam == socket.AF_UNIX else sent - unacked(s)
            srv.kill_with()
            s.settimeout(T)

            def rest():
                try:
                    s.sendall(data[sent:])
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server may be done with us: only what reached it is owed
            writer = threading.Thread(target=rest, daemon=True)
            writer.start()
            got = bytearray()
            try:
                while chunk := s.recv(1 << 20):
                    got += chunk
            except ConnectionResetError:
                raise Fail(f"{what}: reset after {len(got)} bytes of the {reached} owed")
            except socket.timeout:
                raise Fail(f"{what}: no EOF within {T} s, {len(got)} of {reached} bytes back")
            check(got == data[:len(got)], f"{what}: the echo differs from what was sent")
            check(len(got) >= reached, f"{what}: {len(got)} bytes back, {reached} reached the server")
            writer.join(T)
        srv.wait_exit()
    finally:
        srv.kill()


def second_signal(model):
    what = f"second SIGTERM {model}"
    srv = Server(*E, "--model", model, "--framed", grace="60")
    try:
        s, th, _ = stalled_reply(srv)
        with s:
            srv.kill_with()
            time.sleep(0.5)
            check(srv.p.poll() is None, f"{what}: the first signal did not wait")
            t0 = time.monotonic()
            srv.stop(timeout=5)
            check(time.monotonic() - t0 < 3, f"{what}: took {time.monotonic() - t0:.1f} s")
    finally:
        srv.kill()


def stop_in_flight(grace, lo, hi):
    """A request in flight at SIGTERM: the server is gone within [lo, hi] s."""
    srv = Server(*E, "--framed", grace=grace)
    try:
        s, th, _ = stalled_reply(srv)
        with s:
            t0 = time.monotonic()
            srv.stop(timeout=6)
            took = time.monotonic() - t0
            check(lo <= took <= hi, f"--grace {grace}: stopped after {took:.2f} s")
    finally:
        srv.kill()


def t_grace_expires():
    stop_in_flight("0.5", 0.4, 5)


def t_grace_zero():
    """--grace 0 is no grace (the library's default would be 10 s)."""
    stop_in_flight("0", 0, 2)


def t_fork_no_zombie():
    with Server(*E, "--model", "fork") as srv:
        socks = [connect(srv.addrs[0]) for _ in range(5)]
        try:
            for i, s in enumerate(socks):
                s.sendall(b"%d" % i)
                check(recv_exact(s, 1) == b"%d" % i, "fork: served")
            kids = children(srv.pid)
            check(len(kids) == 5, f"fork: {len(kids)} children for 5 connections")
        finally:
            for s in socks:
                s.close()
        end = time.monotonic() + 5
        while children(srv.pid) and time.monotonic() < end:
            time.sleep(0.05)
        left = {k: proc_state(k) for k in children(srv.pid)}
        check(not left, f"fork: children left after the clients closed: {left}")


def concurrent_clients(addr, n, what):
    socks = [connect(addr) for _ in range(n)]
    try:
        for i, s in enumerate(socks):
            s.sendall(b"client %d\n" % i)
        for i, s in enumerate(socks):
            want = b"client %d\n" % i
            check(recv_exact(s, len(want)) == want, f"{what}: client {i}")
    finally:
        for s in socks:
            s.close()


def t_workers():
    with Server(*E, "--workers", "3") as srv:
        end = time.monotonic() + T  # the threads start after the `listening` line
        while (threads := len(os.listdir(f"/proc/{srv.pid}/task"))) < 3 and time.monotonic() < end:
            time.sleep(0.02)
        check(threads >= 3, f"--workers 3: {threads} threads")
        concurrent_clients(srv.addrs[0], 12, "--workers 3")
        check_raw(srv, srv.addrs[0], "--workers 3")


def processes(*extra):
    what = f"--processes 2 {' '.join(extra)}"
    sock = tmp_path(f"procs{'-'.join(extra)}.sock")
    with Server(*E, "--processes", "2", *extra, listen=("127.0.0.1:0", f"unix:{sock}")) as srv:
        end = time.monotonic() + T  # the workers are forked after the `listening` lines
        while len(kids := children(srv.pid)) < 2 and time.monotonic() < end:
            time.sleep(0.02)
        check(len(kids) == 2, f"{what}: {len(kids)} worker processes")
        for addr in srv.addrs:
            concurrent_clients(addr, 12, what)
        check_raw(srv, srv.addrs[0], what)
    check(all(proc_state(k) in (None, "Z") for k in kids), f"{what}: workers outlived the server")


def t_sigint():
    graceful("event", signal.SIGINT)


def t_coro_stack_size():
    with Server(*E, "--model", "coro", "--stack-size", "32") as srv:
        check_raw(srv, srv.addrs[0], "coro --stack-size 32")


def t_help():
    r = subprocess.run([harness.EXE, "echo", "--help"], capture_output=True, text=True, timeout=T)
    check(r.returncode == 0 and "usage: ioplex echo" in r.stdout and r.stderr == "",
          f"echo --help: {r}")
    for opt in ("--listen", "--backend", "--edge", "--model", "--workers", "--processes",
                "--max-conns", "--idle-timeout", "--grace", "--quiet", "--lines", "--max-line",
                "--framed", "--max-frame", "--upper", "--prefix", "--greeting"):
        check(opt in r.stdout, f"echo --help does not mention {opt}")


def t_quiet_and_defaults():
    # --quiet is accepted; the default listener (127.0.0.1:8001) may be taken
    # on a shared machine, so only the option itself is checked here.
    with Server(*E, "--quiet", "--max-conns", "5", "--idle-timeout", "0") as srv:
        check_raw(srv, srv.addrs[0], "--quiet", 1000)


def bad(*args, wrap=()):
    what = f"echo {' '.join(args)}"
    r = subprocess.run([*wrap, harness.EXE, "echo", *args], capture_output=True, text=True, timeout=T,
                       stdin=subprocess.DEVNULL)
    lines = r.stderr.strip().splitlines()
    check(r.returncode == 2, f"{what}: exit {r.returncode}, want 2; {r.stderr!r}")
    check(len(lines) == 1, f"{what}: {len(lines)} lines on stderr, want 1: {r.stderr!r}")
    check(r.stdout == "", f"{what}: stdout {r.stdout!r}")


BAD = [
    ["--bogus"], ["extra-argument"], ["-l"], ["--edge=1"],
    ["--lines", "--framed"], ["--prefix", "x"], ["--upper", "--prefix", ""],
    ["--max-line", "10"], ["--max-frame", "10"], ["--lines", "--max-line", "0"],
    ["--lines", "--max-line", "ten"], ["--framed", "--max-frame", "-5"],
    ["--workers", "2", "--model", "iterative"], ["--workers", "2", "--model", "thread"],
    ["--workers", "1", "--model", "fork"], ["--model", "actor"],
    ["--backend", "kqueue"], ["--edge", "--backend", "select"], ["--edge", "--backend", "poll"],
    ["--workers", "0"], ["--workers", "x"], ["--processes", "0"], ["--max-conns", "0"],
    ["--max-conns", "-3"], ["--workers", "64", "--processes", "64"],
    ["--idle-timeout", "-1"], ["--idle-timeout", "abc"], ["--idle-timeout", "nan"],
    ["--idle-timeout", "inf"], ["--grace", "1s"], ["--grace", ""],
    ["-l", "nonsense"], ["-l", "127.0.0.1:99999"], ["-l", "1.2.3:80"], ["-l", "::1:80"],
    ["-l", "192.0.2.1:0"], ["-l", "unix:/nonexistent-dir/x.sock"], ["-l", "unix:"],
    ["-l", "127.0.0.1:0", "-l", "127.0.0.1:99999"],
    ["--stack-size", "128"], ["--model", "coro", "--stack-size", "8"],
    ["--model", "coro", "--stack-size", "big"],
]


def t_bad_busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        bad("-l", f"127.0.0.1:{s.getsockname()[1]}")
    with Server(*E) as srv:  # a port that ioplex itself holds
        bad("-l", srv.addrs[0])


# Runs argv[1:] with io_uring_setup(2) refused (EPERM) by a seccomp filter,
# as a container policy would; exit 77 if the filter cannot be installed.
NO_URING = r"""
import ctypes, os, sys
class F(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]
class P(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(F))]
# load nr; if nr == io_uring_setup (425 on every arch): return ERRNO|EPERM; allow
prog = (F * 4)(F(0x20, 0, 0, 0), F(0x15, 0, 1, 425), F(0x06, 0, 0, 0x00050001),
               F(0x06, 0, 0, 0x7fff0000))
fprog = P(4, prog)
libc = ctypes.CDLL(None, use_errno=True)
z = ctypes.c_ulong(0)
if (libc.prctl(38, ctypes.c_ulong(1), z, z, z) != 0 or
        libc.prctl(22, ctypes.c_ulong(2), ctypes.byref(fprog), z, z) != 0):
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def t_uring_refused():
    wrap = [sys.executable, "-c", NO_URING]
    r = subprocess.run([*wrap, "/bin/true"], timeout=T)
    if r.returncode == 77:
        raise Skip("cannot install a seccomp filter here")
    bad("--backend", "uring", wrap=wrap)
    bad("--backend", "uring", "--edge", wrap=wrap)
    # auto falls back silently (to epoll), edge-triggered too
    for extra in ([], ["--edge"]):
        p = subprocess.Popen([*wrap, harness.EXE, "echo", "-l", "127.0.0.1:0", *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = p.stdout.readline().decode()
            check(line.startswith("listening "), f"auto without io_uring: {line!r}")
            echo(line.split()[1], b"fallback" * 1000, "auto without io_uring")
            p.terminate()
            out, err = p.communicate(timeout=T)
            check(p.returncode == 0 and err == b"", f"auto without io_uring: {p.returncode} {err}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(T)


# ---- the runner ----------------------------------------------------------------------


def cases():
    out = []
    for b in BACKENDS:
        for m in MODELS:
            out.append((f"combo {b}/{m}", lambda b=b, m=m: combo(b, m)))
    for name, fn in sorted(globals().items()):
        if name.startswith("t_"):
            out.append((name[2:], fn))
    for m in MODELS:
        out.append((f"graceful {m}", lambda m=m: graceful(m)))
        out.append((f"second signal {m}", lambda m=m: second_signal(m)))
    out.append(("graceful uring/event", lambda: graceful("event", backend="uring")))
    for b in BACKENDS:
        for m in MODELS:
            out.append((f"stop mid-stream {b}/{m}", lambda b=b, m=m: stop_mid_stream(b, m)))
    out.append(("stop mid-stream unix epoll/event",
                lambda: stop_mid_stream("epoll", "event", f"unix:{tmp_path('mid.sock')}")))
    for m in ("event", "thread", "fork", "coro"):
        out.append((f"max-conns {m}", lambda m=m: max_conns(m)))
    out.append(("max-conns uring/event", lambda: max_conns("event", "uring")))
    out.append(("max-conns select/event", lambda: max_conns("event", "select")))
    for m in ("event", "thread", "iterative", "fork", "coro"):
        out.append((f"idle-timeout {m}", lambda m=m: idle_timeout(m)))
    out.append(("idle-timeout uring-edge/event", lambda: idle_timeout("event", "uring-edge")))
    for extra in ((), ("--workers", "2"), ("--processes", "2"), ("--model", "thread")):
        out.append((f"all interfaces {' '.join(extra)}".rstrip(), lambda e=extra: all_interfaces(*e)))
    out.append(("processes", lambda: processes()))
    out.append(("processes workers", lambda: processes("--workers", "2")))
    out.append(("processes thread", lambda: processes("--model", "thread")))
    out.append(("processes coro workers", lambda: processes("--model", "coro", "--workers", "2")))
    for args in BAD:
        out.append((f"bad {args}", lambda args=args: bad(*args)))
    return out


def probe():
    global URING, IPV6
    r = subprocess.Popen([harness.EXE, "echo", "--backend", "uring", "-l", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = r.stdout.readline()
        URING = line.startswith("listening ")
    finally:
        if r.poll() is None:
            r.terminate()
        r.communicate(timeout=T)
    IPV6 = has_ipv6()


def main():
    a = harness.parse_args(jobs=4)
    probe()
    with harness.tmp_dir("ioplex-echo-"):
        return harness.run_cases(cases(), a, uring=URING)


if __name__ == "__main__":
    sys.exit(main())
