"""A headless Chromium driven over the DevTools protocol, Python stdlib only:
enough to load a page, run JavaScript in it, click, emulate a phone or a
dark scheme and take a screenshot.

    with Browser(tmpdir) as b:          # raises harness.Skip without chromium
        b.goto("http://127.0.0.1:8000/")
        b.js("document.title")
        b.screenshot("out.png")

The browser is started with --remote-debugging-port=0; the port it picked is
read from DevToolsActivePort in its fresh --user-data-dir, and the page's
websocket is opened by hand (RFC 6455: handshake, masked client frames).
Every wait is bounded."""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.parse
import urllib.request

from harness import Fail, Skip

START_S = 60  # a loaded machine starts chromium slowly
WAIT_S = 20


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    def __init__(self, url, timeout):
        u = urllib.parse.urlsplit(url)
        self.s = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise Fail(f"devtools websocket: EOF in the handshake: {head!r}")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise Fail(f"devtools websocket handshake: {head!r}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(1 << 16)
            if not chunk:
                raise Fail("devtools websocket: EOF")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text):
        data = text.encode()
        n = len(data)
        head = bytes([0x81])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self):
        """One whole text message (fragments joined; pings answered)."""
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            data = self._read(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            op = b0 & 0x0F
            if op == 8:
                raise Fail("devtools websocket closed by the browser")
            if op == 9:  # ping: pong (masked, as every client frame)
                m = os.urandom(4)
                self.s.sendall(bytes([0x8A, 0x80 | len(data)]) + m
                               + bytes(b ^ m[i % 4] for i, b in enumerate(data)))
                continue
            if op in (0, 1, 2):
                parts.append(data)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self):
        self.s.close()


class Browser:
    def __init__(self, tmpdir, width=1000, height=700):
        self.exe = chromium()
        if not self.exe:
            raise Skip("chromium is not installed (scripts/install-deps installs it)")
        self.tmpdir, self.width, self.height = tmpdir, width, height
        self.proc = self.ws = None
        self.next_id = 0

    def __enter__(self):
        prof = os.path.join(self.tmpdir, "chromium-profile")
        os.makedirs(prof, exist_ok=True)
        args = [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*",
                f"--window-size={self.width},{self.height}", f"--user-data-dir={prof}",
                "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.tmpdir, "chromium.log"), "wb"))
        try:
            self._connect(prof)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _connect(self, prof):
        port_file = os.path.join(prof, "DevToolsActivePort")
        end = time.monotonic() + START_S
        while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise Fail(f"chromium did not start (exit {self.proc.poll()}); see its log")
            time.sleep(0.1)
        port = int(open(port_file).read().split()[0])
        page = None
        while page is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=WAIT_S) as f:
                pages = [t for t in json.load(f) if t.get("type") == "page"]
            if pages:
                page = pages[0]
            elif time.monotonic() > end:
                raise Fail("chromium has no page target")
            else:
                time.sleep(0.1)
        self.ws = WebSocket(page["webSocketDebuggerUrl"], WAIT_S)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def __exit__(self, *a):
        if self.ws:
            self.ws.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return False

    def call(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise Fail(f"devtools {method}: {msg['error']}")
                return msg.get("result", {})
        raise Fail(f"devtools {method}: no answer within {WAIT_S} s")

    def js(self, expr):
        """The value of a JavaScript expression in the page."""
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise Fail(f"javascript {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr, what):
        """Until expr is truthy in a loaded page."""
        end = time.monotonic() + WAIT_S
        while time.monotonic() < end:
            try:
                if self.js(f"document.readyState === 'complete' && !!({expr})"):
                    return
            except Fail:
                pass  # the page is being replaced
            time.sleep(0.05)
        raise Fail(f"browser: {what} within {WAIT_S} s (at {self.js('location.href')})")

    def goto(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)}", f"loading {url}")

    def emulate(self, width=None, height=None, mobile=False, dark=None):
        if width:
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=mobile)
        if dark is not None:
            self.call("Emulation.setEmulatedMedia", features=[
                {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}])

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
