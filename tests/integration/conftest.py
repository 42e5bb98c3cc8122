"""The integration tests' shared fixtures; each ends what it started at teardown (processes by pid).

- ``procs``, ``serve``, ``edge``: shmring subprocesses (commands.py's ``Proc``); serve is ready at its "serving
  ring" line; edge is serve with the small ring and ``--http`` on a free loopback port.
- ``flushers``: ``python -m shmring flush`` children (flusher_procs.py has their waits).
- ``shared_browser``, ``browser``: one Chromium per module (chromium.py), reset to one blank tab for each test.
- ``site``: the loop page a CDP producer captures (producers.py watches it).
- ``sink_server``: redis-server and nats-server (sinks.py reads what they hold).

Fixtures live here and plain helpers in those modules, so that no test module imports another. A module's own
fixture of the same name overrides one here, in that module: test_cdp.py's ``site`` is its own test page, and
test_producer_config_http.py's ``edge`` runs serve without the small ring.
"""

import os
import re
import subprocess

import pytest

from shmring.cdp.browser import PageServer, find_free_port
from tests.integration.chromium import Browser
from tests.integration.commands import SHMRING, SMALL, Proc
from tests.integration.flusher_procs import FLUSH, REPO
from tests.integration.producers import LOOP
from tests.integration.sinks import NATS_SERVER, REDIS_SERVER, Server
from tests.procs import TIMEOUT_S


@pytest.fixture
def procs():
    """Start shmring subprocesses; every one still running at teardown is ended by pid."""
    started = []

    def start(*args, **kwargs) -> Proc:
        proc = Proc([*SHMRING, *args], **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.reap()


@pytest.fixture
def serve(ring_name, procs, tmp_path):
    """Start ``shmring serve`` and wait for its "serving ring" line."""

    def start(name: str, *extra: str, socket_path: bool = True, log_dir: bool = False, new_session=False) -> Proc:
        args = ["serve", name, *extra]
        sock = str(tmp_path / f"{name[-4:]}.sock") if socket_path else None
        logs = str(tmp_path / f"logs-{name[-4:]}") if log_dir else None
        if sock:
            args += ["--socket", sock]
        if logs:
            args += ["--log-dir", logs]
        proc = procs(*args, new_session=new_session)
        ready = proc.wait_for_err("serving ring")
        proc.name, proc.socket, proc.log_dir = name, sock, logs
        proc.session_id = re.search(r"capture session ([^,]+),", ready)[1]
        return proc

    return start


@pytest.fixture
def edge(serve):
    """Start serve with --http on a free loopback port; returns the serve Proc with .base (the URL)."""

    def start(name, *extra, log_dir=False):
        port = find_free_port()
        srv = serve(name, *SMALL, "--http", f"127.0.0.1:{port}", *extra, log_dir=log_dir)
        srv.base = f"http://127.0.0.1:{port}"
        srv.port = port
        return srv

    return start


@pytest.fixture
def flushers(tmp_path):
    """Start ``python -m shmring flush`` children; any still alive at teardown is killed by pid."""
    started = []

    def start(name, directory, *args, entry=FLUSH):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        err = open(tmp_path / f"flusher-{len(started)}.err", "wb")
        proc = subprocess.Popen([*entry, name, str(directory), *args],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        proc.err_path = err.name
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT_S)


@pytest.fixture(scope="module")
def shared_browser():
    """One Chromium for the module, stopped at its end."""
    b = Browser()
    yield b
    b.stop()


@pytest.fixture
def browser(shared_browser):
    """The module's Chromium, left with one blank tab for this test."""
    shared_browser.reset()
    return shared_browser


@pytest.fixture(scope="module")
def site():
    """The loop page (and its /api/tick) on a loopback page server, for the module."""
    server = PageServer({"/loop.html": (200, "text/html", LOOP),
                         "/api/tick": (200, "application/json", b'{"ok":true}')})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sink_server(tmp_path):
    """Factory: start a sink server of a kind ("redis" or "nats"); every one is stopped at teardown."""
    started = []
    if not REDIS_SERVER or not NATS_SERVER:
        pytest.skip("needs Debian's redis-server and nats-server (.ci/run installs them)")

    def start(kind: str, password: str | None = None) -> Server:
        server = Server(kind, str(tmp_path / f"{kind}-{len(started)}"), password).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
