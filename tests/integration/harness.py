"""What the case-based integration tests (test_echo.py, test_http.py,
test_bench.py) share: the outcome of a case, the `ioplex` server process, a
few socket helpers and the case runner.

- Fail / Skip, raised by a case; check(cond, what) raises Fail(what).
- EXE: the program under test (--ioplex, made absolute by parse_args());
  TMP: the scratch directory while tmp_dir() is open; tmp_path(name) in it.
- Server(command, *args, ...): `ioplex COMMAND -l ADDR... --grace G ARGS` on
  port 0, its `listening ADDR` lines in .addrs; a script subclasses it to fix
  COMMAND (["echo"], ["http", ROOT]).
- BACKENDS, MODELS: the --backend / --model matrix the servers run in.
- sockaddr(), send_bg(), children(), has_ipv6(): an ADDR as the socket
  module takes it, sendall on a thread, the child processes of a server,
  whether ::1 can be bound.
- as_user(name): a copy of EXE that another user can run (the checkout may
  sit under a folder only its owner can enter), for Server(..., exe=, user=).
- parse_args(), run_cases(): the command line every such script takes
  (--ioplex, -k, -j) and the parallel run with its `STATUS NAME  NOTE` lines
  and `N cases, F failed, S s` summary; run_cases returns the exit status
  (0, or 1 when a case failed).

A script is run as `python3 tests/integration/test_x.py --ioplex PROGRAM`;
its own directory is then on sys.path, so it does `import harness` and
`from harness import Fail, Skip, check, ...`, and its main() is

    a = harness.parse_args(jobs=4)
    probe()  # whatever the script needs to know about the machine
    with harness.tmp_dir("ioplex-x-"):
        return harness.run_cases(cases(), a)

Every wait here is bounded by T seconds, so a hang fails its case instead of
the suite."""
import argparse
import concurrent.futures
import contextlib
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback

EXE = None  # the ioplex program (parse_args)
TMP = None  # the scratch directory (tmp_dir)
T = 10  # seconds: the bound on every single wait

# --backend choices by name, and the --model choices: the matrix the servers run in
BACKENDS = {
    "select": ["--backend", "select"],
    "poll": ["--backend", "poll"],
    "epoll": ["--backend", "epoll"],
    "epoll-edge": ["--backend", "epoll", "--edge"],
    "uring": ["--backend", "uring"],
    "uring-edge": ["--backend", "uring", "--edge"],
}
MODELS = ["event", "iterative", "thread", "fork", "coro"]


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


def tmp_path(name):
    return os.path.join(TMP, name)


# ---- the server process ------------------------------------------------------


def _pump(f, q):
    for line in iter(f.readline, b""):
        q.put(line.decode(errors="replace"))
    q.put(None)


_case = threading.local()  # .servers: the servers the running case started


class Server:
    """`ioplex COMMAND -l ADDR... --grace GRACE ARGS` (listening on port 0);
    addrs holds the `listening` ADDRs, addr the first.  user runs it as that
    user (and group), cwd in that directory, exe instead of EXE (see
    as_user); preexec is called in the child before it runs
    (resource.setrlimit, say).  As a context manager it stops
    the server with SIGTERM on the way out and requires exit status 0 and no
    sanitizer report."""

    err_tail = None  # how much of stderr a wrong exit status shows (None: all)

    def __init__(self, command, *args, listen=("127.0.0.1:0",), grace="3", cwd=None, user=None,
                 exe=None, preexec=None):
        if hasattr(_case, "servers"):
            _case.servers.append(self)
        self.stopped = False  # a stop was asked for (kill_with)
        self.cmd = [exe or EXE, *command, *[x for a in listen for x in ("-l", a)], "--grace", grace,
                    *args]
        kw = {}
        if user is not None:
            kw = dict(user=user, group=user, extra_groups=[])
        if preexec is not None:
            kw["preexec_fn"] = preexec
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=cwd, **kw)
        self.pid = self.p.pid
        self.outq, self.errq, self.err = queue.Queue(), queue.Queue(), []
        self.pumps = [threading.Thread(target=_pump, args=(f, q), daemon=True)
                      for f, q in ((self.p.stdout, self.outq), (self.p.stderr, self.errq))]
        for th in self.pumps:
            th.start()
        self.addrs = []
        try:
            for _ in listen:
                self.addrs.append(self._listening())
        except BaseException:
            self.kill()
            raise

    @property
    def addr(self):
        return self.addrs[0]

    def _listening(self):
        try:
            line = self.outq.get(timeout=T)
        except queue.Empty:
            raise Fail(f"{self.cmd}: no `listening` line within {T} s")
        if line is None:
            rc = self.p.wait(timeout=T)
            self.pumps[1].join(T)
            raise Fail(f"{self.cmd}: exit {rc} before listening: {self.stderr()!r}")
        m = re.fullmatch(r"listening (\S+)\n", line)
        check(m, f"{self.cmd}: stdout line {line!r}")
        return m.group(1)

    def stderr(self):
        while True:
            try:
                line = self.errq.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.err.append(line)
        return "".join(self.err)

    def wait_stderr(self, pattern, timeout=T):
        """The first match of the regex pattern (multiline) in stderr."""
        end = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.stderr(), re.M)
            if m:
                return m
            check(time.monotonic() < end,
                  f"{self.cmd}: no /{pattern}/ on stderr: {self.stderr()[-2000:]!r}")
            time.sleep(0.02)

    def kill_with(self, sig=signal.SIGTERM):
        self.stopped = True
        self.p.send_signal(sig)

    def wait_exit(self, timeout=T, want=0):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Fail(f"{self.cmd}: still running {timeout} s after the stop")
        for th in self.pumps:
            th.join(T)
        err = self.stderr()
        shown = err[-self.err_tail:] if self.err_tail else err
        check(rc == want, f"{self.cmd}: exit {rc}, want {want}; stderr {shown!r}")
        check("Sanitizer" not in err and "runtime error" not in err, f"{self.cmd}: {err}")
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=T):
        self.kill_with(sig)
        return self.wait_exit(timeout)

    def kill(self):
        self.stopped = True
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=T)
        for th in self.pumps:
            th.join(2)

    def report(self):
        """The server's own complaints (sanitizers, diagnostics), for a failure;
        it names the server by its arguments after EXE COMMAND DIR."""
        err = self.stderr()
        i = min([j for j in (err.find("runtime error"), err.find("==ERROR"), err.find("Sanitizer"))
                 if j >= 0] or [len(err)])
        diag = [ln for ln in err[:i].splitlines() if ln.startswith("ioplex")]
        out = "\n".join(diag[-5:]) + ("\n" + err[max(0, i - 200):i + 3000] if i < len(err) else "")
        rc = self.p.poll()
        state = "running" if rc is None else f"exit {rc}"
        return f"[server {' '.join(self.cmd[3:])}: {state}]\n{out}".rstrip()

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if typ is None and self.p.poll() is None:
            self.stop()
        self.kill()
        return False


def children(pid):
    """Child pids of pid (every thread's), [] once it is gone."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


# ---- clients -----------------------------------------------------------------


def sockaddr(addr):
    """A `listening` ADDR -> (family, type, address)."""
    if addr.startswith("unix:"):
        return socket.AF_UNIX, socket.SOCK_STREAM, addr[5:]
    kind = socket.SOCK_STREAM
    if addr.startswith("udp:"):
        kind, addr = socket.SOCK_DGRAM, addr[4:]
    host, port = addr.rsplit(":", 1)
    if host.startswith("["):
        return socket.AF_INET6, kind, (host[1:-1], int(port))
    return socket.AF_INET, kind, (host, int(port))


def has_ipv6():
    """Whether the IPv6 loopback can be bound here."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def send_bg(s, data):
    """sendall on a thread (a reply may fill the socket before we are done
    sending); join the returned thread, which re-raises nothing: errors are in
    its .error."""
    def run():
        try:
            s.sendall(data)
        except OSError as e:
            th.error = e
    th = threading.Thread(target=run, daemon=True)
    th.error = None
    th.start()
    return th


# ---- the runner ----------------------------------------------------------------------


def parse_args(jobs, no_uring=False):
    """--ioplex PROGRAM (sets EXE), -k SUBSTRING, -j JOBS (default jobs) and,
    with no_uring, --no-uring."""
    global EXE
    ap = argparse.ArgumentParser()
    ap.add_argument("--ioplex", required=True)
    ap.add_argument("-k", default="", help="run only cases whose name contains this")
    ap.add_argument("-j", type=int, default=jobs, help="cases at once")
    if no_uring:
        ap.add_argument("--no-uring", action="store_true",
                        help="skip io_uring cases (the TSan run: see tests/CMakeLists.txt)")
    a = ap.parse_args()
    EXE = os.path.abspath(a.ioplex)
    return a


@contextlib.contextmanager
def as_user(name, src=None):
    """(uid, dir, exe): a fresh directory (mode 0755) that user `name` can
    enter, holding exe, a copy of src (default EXE) it can run; removed on
    the way out.

    EXE itself may be out of that user's reach: a clone under a folder only
    its owner can enter (root's home is mode 0700) makes exec fail with
    EACCES.  The directory is made under the first of /tmp, /var/tmp,
    /dev/shm where the copy runs as that user (not TMPDIR, which may be
    private too; /tmp may be mounted noexec).  Skip when this process cannot
    switch users (not root), the user does not exist, or no place works."""
    if os.geteuid() != 0:
        raise Skip(f"not root: cannot start a server as {name}")
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        raise Skip(f"no user {name!r} here")
    tried = []
    for base in ("/tmp", "/var/tmp", "/dev/shm"):
        d, why = _runnable_copy(src or EXE, base, uid)
        if d:
            try:
                yield uid, d, os.path.join(d, "ioplex")
            finally:
                shutil.rmtree(d, ignore_errors=True)
            return
        tried.append(f"{base}: {why}")
    raise Skip(f"{name} cannot run a copy of {src or EXE} anywhere: {'; '.join(tried)}")


def _runnable_copy(src, base, uid):
    """(dir, None) with dir/ioplex a copy of src that uid runs, or (None, why)."""
    try:
        d = tempfile.mkdtemp(prefix="ioplex-as-user-", dir=base)
    except OSError as e:
        return None, e.strerror
    try:
        os.chmod(d, 0o755)
        exe = os.path.join(d, "ioplex")
        shutil.copy(src, exe)
        os.chmod(exe, 0o755)
        p = subprocess.run([exe, "--version"], user=uid, group=uid, extra_groups=[], cwd=d,
                           capture_output=True, timeout=T)
        if p.returncode == 0:
            return d, None
        why = f"exit {p.returncode} {p.stderr[:200]!r}"
    except OSError as e:  # exec refused (a noexec mount) raises here
        why = e.strerror
    shutil.rmtree(d, ignore_errors=True)
    return None, why


@contextlib.contextmanager
def tmp_dir(prefix):
    """TMP is a fresh directory while this is open."""
    global TMP
    with tempfile.TemporaryDirectory(prefix=prefix) as TMP:
        yield TMP


def run_case(name, fn, uring=True, reports=False):
    """(name, ok | skip | FAIL, note).  uring=False: a case with "uring" in its
    name (but not "refused") is skipped.  reports: a failure shows what the
    servers the case started said (a crash, a sanitizer report)."""
    if "uring" in name and "refused" not in name and not uring:
        return name, "skip", "io_uring refused here"
    t0 = time.monotonic()
    _case.servers = []
    try:
        fn()
        return name, "ok", f"{time.monotonic() - t0:.1f}s"
    except Skip as e:
        return name, "skip", str(e)
    except Fail as e:
        note = str(e)
    except Exception:
        note = traceback.format_exc()
    for srv in _case.servers if reports else ():
        gone = srv.p.poll() is not None and not srv.stopped
        srv.kill()
        if gone or srv.report().count("\n"):
            note += "\n    " + srv.report().replace("\n", "\n    ")
            if gone:
                note += "\n    (the server had exited before the case stopped it)"
    return name, "FAIL", note


def run_cases(cases, a, uring=True, reports=False):
    """Run the (name, fn) cases whose name contains a.k, a.j at once, printing
    a line a case in order and the summary; 1 if any failed, else 0."""
    fails = 0
    t0 = time.monotonic()
    selected = [c for c in cases if a.k in c[0]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.j) as pool:
        for name, status, note in pool.map(lambda c: run_case(*c, uring, reports), selected):
            print(f"{status:4} {name}  {note}", flush=True)
            fails += status == "FAIL"
    print(f"{len(selected)} cases, {fails} failed, {time.monotonic() - t0:.0f} s")
    return 1 if fails else 0
