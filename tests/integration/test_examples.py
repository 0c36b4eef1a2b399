#!/usr/bin/env python3
"""The programs in examples/ are built next to the ioplex binary
(build/examples/); each must serve what its comment promises and stop
cleanly (exit 0) on SIGTERM.  upper_lines runs one handler under every
blocking model."""
import argparse
import os
import signal
import socket
import subprocess
import sys

FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("FAIL", what)


def start(exe, *args):
    p = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stdout.readline().decode()
    if not line.startswith("listening "):
        p.kill()
        raise RuntimeError(f"{exe}: no listening line: {line!r} {p.stderr.read()!r}")
    return p, line.split()[1]


def stop(p, name):
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = "hung"
    check(rc == 0, f"{name}: exit {rc}")


def tcp(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def recv_n(s, n):
    got = b""
    while len(got) < n:
        b = s.recv(n - len(got))
        if not b:
            break
        got += b
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ioplex", required=True)
    ex = os.path.join(os.path.dirname(os.path.abspath(ap.parse_args().ioplex)), "examples")

    p, addr = start(os.path.join(ex, "upper_tcp"))
    s = tcp(addr)
    data = bytes(range(32, 127)) * 1000
    s.sendall(data)
    check(recv_n(s, len(data)) == data.upper(), "upper_tcp: reply")
    s.close()
    stop(p, "upper_tcp")

    for model in ("thread", "iterative", "fork"):
        p, addr = start(os.path.join(ex, "upper_lines"), model)
        s = tcp(addr)
        s.sendall(b"hello ")
        s.sendall(b"world\nsecond line\n")
        want = b"HELLO WORLD\nSECOND LINE\n"
        check(recv_n(s, len(want)) == want, f"upper_lines {model}")
        s.close()
        stop(p, f"upper_lines {model}")

    p, addr = start(os.path.join(ex, "upper_udp"))
    host, port = addr[len("udp:"):].rsplit(":", 1)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.sendto(b"a datagram", (host, int(port)))
    check(u.recv(100) == b"A DATAGRAM", "upper_udp")
    u.close()
    stop(p, "upper_udp")

    p, addr = start(os.path.join(ex, "loop_echo"), "127.0.0.1:0")
    s = tcp(addr)
    s.sendall(data)
    check(recv_n(s, len(data)) == data, "loop_echo")
    s.close()
    stop(p, "loop_echo")

    print("ok" if not FAILS else f"{len(FAILS)} failures")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
