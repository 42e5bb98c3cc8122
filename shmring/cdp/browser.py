"""A real browser for the demo, the tests and the tools: launching Chromium, driving it, serving pages.

Rules:
- Not the capture path: ``BrowserControl`` is a short synchronous CDP
  connection for driving a browser (opening tabs, clicks), never for capture.
- The binary is the caller's (``demo --chromium PATH``), else
  ``$SHMRING_CHROMIUM``, else /usr/bin/chromium; a missing one is a
  ``ConfigError`` saying what to pass.
- Chromium runs headless, on 127.0.0.1 only, in its own process group, and is
  stopped by pid (the group it leads), never by name.
- Everything a launch writes in temporary space stays in one directory: the
  profile, and Chromium's own temporary files (the directory is its TMPDIR,
  where it makes its ``org.chromium.Chromium.*`` directories).
  ``Chromium.stop()`` removes it, also when the start failed.
- ``PageServer`` serves fixed pages on loopback from a thread.
"""

import collections
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from ..errors import BrowserError, CdpError, ConfigError
from .connection import resolve_browser_ws

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ENV = "SHMRING_CHROMIUM"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def resolve_chromium(binary: str | None = None) -> str:
    """The Chromium to run: `binary` if given, else ``$SHMRING_CHROMIUM``, else /usr/bin/chromium.

    Raises ConfigError, one line saying what to pass, if that is not an executable file.
    """
    if binary:
        origin = "--chromium"
    elif os.environ.get(CHROMIUM_ENV):
        binary, origin = os.environ[CHROMIUM_ENV], CHROMIUM_ENV
    else:
        binary, origin = CHROMIUM, "the default"
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        why = "is not an executable file" if os.path.exists(binary) else "does not exist"
        raise ConfigError(f"Chromium not found: {binary} ({origin}) {why}; pass --chromium PATH or set "
                          f"{CHROMIUM_ENV} to a Chromium binary (Debian: apt-get install -y chromium)")
    return binary


def chromium_available(binary: str | None = None) -> bool:
    """True if ``resolve_chromium(binary)`` finds an executable."""
    try:
        resolve_chromium(binary)
    except ConfigError:
        return False
    return True


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Chromium makes a Unix socket at $TMPDIR/org.chromium.Chromium.XXXXXX/SingletonSocket, and aborts if that
# path is longer than a socket path may be (107 bytes).
_SOCKET_PATH_MAX = 107
_SINGLETON_SOCKET = len("/org.chromium.Chromium.XXXXXX/SingletonSocket")


def launch_chromium(port: int, user_data_dir: str, *, binary: str | None = None, url: str = "about:blank",
                    extra_args: tuple = (), tmp_dir: str | None = None) -> subprocess.Popen:
    """Start headless Chromium with a debugging port on 127.0.0.1, in its own process group.

    Chromium's own temporary files go to `tmp_dir` (its TMPDIR), by default a
    ``tmp`` folder inside `user_data_dir`, so removing the profile removes
    them too. Stop it with ``stop_process(proc)``; ``Chromium`` does all of
    this and the clean-up. Raises ConfigError if the binary is missing or
    `tmp_dir` too long for Chromium's socket path.
    """
    binary = resolve_chromium(binary)
    tmp_dir = tmp_dir or os.path.join(user_data_dir, "tmp")
    if len(os.fsencode(tmp_dir)) + _SINGLETON_SOCKET > _SOCKET_PATH_MAX:
        raise ConfigError(f"Chromium's temporary directory {tmp_dir} is too long for its socket path (at most "
                          f"{_SOCKET_PATH_MAX - _SINGLETON_SOCKET} bytes): give a shorter user data dir or tmp_dir, "
                          f"or use Chromium(), which chooses one")
    os.makedirs(tmp_dir, exist_ok=True)
    args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1", *extra_args, url]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ, TMPDIR=tmp_dir))


def wait_for_devtools(port: int, *, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> str:
    """Until the browser on `port` answers; return its websocket URL."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrowserError(f"Chromium exited with status {proc.returncode} while starting", port=port,
                               status=proc.returncode)
        try:
            return resolve_browser_ws(f"http://127.0.0.1:{port}", timeout_s=1.0)
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise BrowserError(f"Chromium did not open its debugging port {port} within {timeout_s:.0f} s ({last})",
                       port=port)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the process group `proc` leads (by pid), then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children that outlived the leader (renderers) are in the same group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def _make_root() -> str:
    root = tempfile.mkdtemp(prefix="shmring-chromium-")
    if len(os.fsencode(root)) + _SINGLETON_SOCKET <= _SOCKET_PATH_MAX:
        return root
    os.rmdir(root)  # under a long $TMPDIR: in /tmp
    return tempfile.mkdtemp(prefix="shmring-chromium-", dir="/tmp")


def _remove_tree(path: str, timeout_s: float = 5.0) -> None:
    # A child killed a moment ago may still finish a file operation in it: retry until it is gone.
    deadline = time.monotonic() + timeout_s
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path) or time.monotonic() > deadline:
            return
        time.sleep(0.05)


class Chromium:
    """One headless Chromium on 127.0.0.1, with everything it writes in one temporary directory.

    ``start()`` makes the directory (``root``, in $TMPDIR unless that is too
    long for Chromium's socket path, then in /tmp), which is Chromium's TMPDIR
    and holds its profile (``root/profile``); it launches the browser on
    `port` (a free one by default) and waits for its debugging port:
    ``cdp_url`` is then ready. ``stop()`` stops the process group by pid and
    removes the directory; a failed ``start()`` does the same before it raises.
    """

    def __init__(self, binary: str | None = None, *, port: int | None = None, url: str = "about:blank",
                 extra_args: tuple = ()):
        self.binary = resolve_chromium(binary)
        self.port = port
        self.url = url
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.root: str | None = None

    @property
    def cdp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Chromium":
        self.root = _make_root()
        try:
            self.port = self.port or find_free_port()
            self.proc = launch_chromium(self.port, os.path.join(self.root, "profile"), binary=self.binary,
                                        url=self.url, extra_args=self.extra_args, tmp_dir=self.root)
            wait_for_devtools(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.root is not None:
            _remove_tree(self.root)
            self.root = None

    def __enter__(self) -> "Chromium":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class BrowserControl:
    """A short synchronous CDP connection for driving a browser (tests, the demo); not the capture path.

    A tab that another client creates with a URL (``Target.createTarget``,
    ``/json/new``) loads its first document before an auto-attached debugger
    can hold it (Chromium 156), so its first request and navigation would be
    missed. ``open_tab`` therefore opens ``about:blank``, gives the capture
    ``settle_s`` to follow it, and then navigates. Popups (``window.open``) are
    held by Chromium and need none of this.
    """

    def __init__(self, cdp_url: str, timeout_s: float = 10.0):
        from websockets.sync.client import connect

        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()  # websockets >= 17.1 wants connect() used as a context manager
        self._ws = self._stack.enter_context(connect(resolve_browser_ws(cdp_url), max_size=None, proxy=None,
                                                     compression=None, open_timeout=timeout_s, ping_interval=None,
                                                     close_timeout=1))
        self._next_id = 0

    def call(self, method: str, params: dict | None = None, session_id: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})

    def open_tab(self, url: str, settle_s: float = 0.5) -> str:
        target_id = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        if url != "about:blank":
            time.sleep(settle_s)
            self.navigate(target_id, url)
        return target_id

    def navigate(self, target_id: str, url: str) -> None:
        session_id = self.attach(target_id)
        try:
            self.call("Page.navigate", {"url": url}, session_id)
        finally:
            self.call("Target.detachFromTarget", {"sessionId": session_id})

    def close_tab(self, target_id: str) -> None:
        self.call("Target.closeTarget", {"targetId": target_id})

    def attach(self, target_id: str) -> str:
        return self.call("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]

    def evaluate(self, session_id: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session_id)
        if "exceptionDetails" in result:
            raise CdpError(f"evaluating {expression!r} failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def click(self, session_id: str, x: float, y: float) -> None:
        """A real (trusted) left click at (x, y), as a user's mouse would make."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none",
                      "clickCount": 1 if kind != "mouseMoved" else 0}
            self.call("Input.dispatchMouseEvent", params, session_id)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "BrowserControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tab(cdp_url: str, url: str, settle_s: float = 0.5) -> str:
    """Open a new tab on `url` (see ``BrowserControl.open_tab``); return its target id."""
    with BrowserControl(cdp_url) as control:
        return control.open_tab(url, settle_s)


def close_tab(cdp_url: str, target_id: str) -> None:
    with BrowserControl(cdp_url) as control:
        control.close_tab(target_id)


class _QuietHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a browser that goes away mid-connection is not worth a traceback on stderr


class PageServer:
    """A loopback HTTP server in a thread, serving fixed pages.

    `pages` maps a path to ``(status, content_type, body)``; other paths get
    404. ``hits`` counts requests per path; ``posts`` keeps POST bodies per path.
    """

    def __init__(self, pages: dict[str, tuple[int, str, bytes]] | None = None):
        self.pages = dict(DEMO_PAGES if pages is None else pages)
        self.hits: collections.Counter = collections.Counter()
        self.posts: dict[str, list[bytes]] = collections.defaultdict(list)
        self._httpd = None
        self._thread = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, body_allowed=True):
                path = self.path.split("?", 1)[0]
                owner.hits[path] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST":
                    owner.posts[path].append(body)
                status, ctype, body = owner.pages.get(path, (404, "text/plain", b"not found\n"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body_allowed:
                    self.wfile.write(body)

            def do_GET(self):
                self._serve()

            def do_POST(self):
                self._serve()

            def do_HEAD(self):
                self._serve(body_allowed=False)

            def log_message(self, *args):
                pass

        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="page-server", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> "PageServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


DEMO_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>shmring demo shop</title></head>
<body style="height: 3000px">
<h1>shmring demo shop</h1>
<button id="buy">Buy</button> <input id="search" placeholder="search">
<ul id="items"></ul>
<script>
let round = 0;
console.log("demo page loaded", {version: 1});
async function tick() {
  round += 1;
  const started = performance.now();
  try {
    const res = await fetch("/api/items.json?round=" + round);
    const items = await res.json();
    console.info("fetched", items.length, "items in", Math.round(performance.now() - started), "ms");
  } catch (err) {
    console.error("fetch failed", String(err));
  }
  if (round % 3 === 0) fetch("/api/missing").then(r => console.warn("missing endpoint answered", r.status));
  document.getElementById("buy").click();
  document.getElementById("search").dispatchEvent(new KeyboardEvent("keydown", {key: "a", bubbles: true}));
  window.scrollTo(0, (round * 150) % 2000);
}
document.getElementById("buy").addEventListener("click", () => console.log("buy clicked, round", round));
setInterval(tick, 500);
</script>
</body></html>
"""

DEMO_PAGES = {
    "/": (200, "text/html; charset=utf-8", DEMO_PAGE),
    "/api/items.json": (200, "application/json", b'[{"id":1,"name":"tea"},{"id":2,"name":"mug"}]'),
}


class BrowserDemo:
    """For ``shmring demo --browser``: the demo page server plus a headless ``Chromium``.

    ``start()`` serves the page and launches Chromium on a free port with a
    fresh profile (``cdp_url`` is ready for ``capture``); ``open_page()``
    opens the page in a new tab: call it once the producer is connected, so
    the tab is followed from its first request. ``stop()`` stops Chromium
    (by pid) and the server, and removes everything Chromium wrote.
    `binary`: as for ``resolve_chromium``; a missing one raises ConfigError here.
    """

    def __init__(self, binary: str | None = None):
        self.browser = Chromium(binary)
        self.binary = self.browser.binary
        self.server = PageServer()

    @property
    def port(self) -> int | None:
        return self.browser.port

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.browser.proc

    @property
    def cdp_url(self) -> str:
        return self.browser.cdp_url

    @property
    def page_url(self) -> str:
        return self.server.base_url + "/"

    def start(self) -> "BrowserDemo":
        self.server.start()
        try:
            self.browser.start()
        except BaseException:
            self.server.stop()
            raise
        return self

    def open_page(self) -> str:
        """Open the demo page in a new tab; return its target id."""
        return open_tab(self.cdp_url, self.page_url)

    def stop(self) -> None:
        self.browser.stop()
        self.server.stop()

    def __enter__(self) -> "BrowserDemo":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
