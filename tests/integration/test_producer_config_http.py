"""The producer config over the HTTP edge: `GET`/`PUT`/`PATCH /producers/cdp` with httpx, real serve, real Chromium.

The Chromium tests run ``shmring serve NAME --cdp URL --http 127.0.0.1:PORT`` as a subprocess (it
spawns ``capture-cdp`` and the edge), a page server whose page logs and fetches every 100 ms, and read
the ring in this process. Readiness is a handshake (serve's "serving ring" line, which it prints once the
edge listens; the producer's own ``targets``); every wait has a deadline. The control-channel faults run the
edge in this process against a fake control socket that answers garbage or nothing, with a 1 s timeout.
FORBIDDEN outcomes: a network event after the ``system.producer_config`` event that turned network off; a
refused request (400, 401, 503) or a stream's filter changing the producer's config; a control call that
holds the edge's event loop; an error reply that is not one JSON line.
"""

import asyncio
import contextlib
import json
import os
import socket
import threading
import time

import httpx
import pytest

from shmring import CaptureSession
from shmring.cdp.browser import BrowserControl, find_free_port
from shmring.control import ControlServer, producer_stats
from shmring.edge import EdgeConfig
from shmring.errors import ControlTimeout
from shmring.httpd import run_edge
from shmring.segment import control_socket_path
from tests.integration.chromium import needs_chromium
from tests.integration.commands import DEADLINE_S
from tests.integration.http_clients import Frames, connected
from tests.integration.producers import (
    Events,
    config_events,
    data,
    flowing,
    open_loop_tab,
    stats_when_ready,
    wait_until,
)

DEFAULT = {"enabled": True, "categories": ["console", "network", "page", "interaction"], "detail_level": "standard"}
P = "/producers/cdp"
CONSOLE = {"enabled": True, "categories": ["console"], "detail_level": "standard"}


@pytest.fixture
def edge(serve):
    """serve with --http on a free loopback port; returns the serve Proc with .base (the edge's URL)."""

    def start(name, *extra):
        port = find_free_port()
        srv = serve(name, "--http", f"127.0.0.1:{port}", *extra)
        srv.base = f"http://127.0.0.1:{port}"
        return srv

    return start


def error_of(response, status, *needles) -> str:
    """The reply is `status` with one JSON line {"error": "…"} holding every needle."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    for needle in needles:
        assert needle.lower() in body["error"].lower(), (needle, body["error"])
    return body["error"]


# -- with a real producer ------------------------------------------------------------------------


@needs_chromium
def test_get_put_patch_change_the_producer_and_the_ring_shows_it(ring_name, edge, browser, site):
    srv = edge(ring_name, "--cdp", browser.cdp_url)
    stats_when_ready(ring_name)
    events = Events(ring_name)
    http = httpx.Client(base_url=srv.base, timeout=DEADLINE_S)
    try:
        r = http.get(P)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json" and r.json() == DEFAULT
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        events.until(flowing(tab, "console", "network"), "console and network events from the loop page")

        # Refused, and nothing changes: a bad category, a bad level, bodies that are not a config.
        for method, body, needle in [
                ("PATCH", {"categories": ["console", "dom"]}, "unknown category 'dom'"),
                ("PATCH", {"detail_level": "loud"}, "unknown detail level 'loud'"),
                ("PUT", {**DEFAULT, "detail_level": "headers"}, "unknown detail level 'headers'"),
                ("PATCH", {"enabled": "yes"}, "enabled must be true or false"),
                ("PATCH", {"colour": "red"}, "unknown producer config field 'colour'"),
                ("PUT", {"categories": ["console"]}, "needs enabled, detail_level"),
                ("PATCH", ["console"], "json object"),
                ("PATCH", b"categories=console", "not json"),
                ("PUT", b"", "not json"),
                ("PUT", b'{"enabled": true', "not json")]:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            error_of(http.request(method, P, content=content, headers={"Content-Type": "application/json"}), 400,
                     needle)
        assert http.get(P).json() == DEFAULT
        assert not config_events(events.envelopes)

        # PATCH network off: the reply is the new config; the browser stops sending Network.*; the ring says so.
        r = http.patch(P, json={"categories": ["console"]})
        assert r.status_code == 200 and r.json() == CONSOLE
        network_after_off = producer_stats(ring_name)["received"]["Network"]
        hits = site.hits["/api/tick"]
        assert http.get(P).json() == CONSOLE
        events.read_for(1.5)
        assert site.hits["/api/tick"] >= hits + 5  # the page went on fetching
        assert producer_stats(ring_name)["received"]["Network"] == network_after_off
        [off] = config_events(events.envelopes)
        assert data(off) == {"producer": "cdp", "old": DEFAULT, "new": CONSOLE}
        later = events.after(off.seq, tab)
        assert not [e for e in later if e.event.category == "network"]
        assert len([e for e in later if e.event.type == "console.log"]) >= 5

        # PUT the whole config: network back, at verbose (with headers); categories come back in canonical order.
        r = http.put(P, json={"detail_level": "verbose", "categories": ["network", "console"], "enabled": True})
        verbose = {"enabled": True, "categories": ["console", "network"], "detail_level": "verbose"}
        assert r.status_code == 200 and r.json() == verbose
        events.until(lambda envs: len(config_events(envs)) == 2 and any(
            e.event.type == "network.response" for e in events.after(config_events(envs)[1].seq, tab)),
            "network responses after the PUT")
        on = config_events(events.envelopes)[1]
        assert data(on) == {"producer": "cdp", "old": CONSOLE, "new": verbose}
        returned = [e for e in events.after(on.seq, tab) if e.event.category == "network"]
        assert all(e.event.detail_level == "verbose" for e in returned)
        assert any(data(e).get("headers") for e in returned if e.event.type == "network.response")

        # A request that changes nothing (the same whole config, an empty patch) is 200 and no event.
        assert http.put(P, json=verbose).json() == verbose
        assert http.patch(P, json={}).json() == verbose
        assert http.request("HEAD", P).status_code == 200

        # A target that cannot take a change (a crashed tab) is named in the reply; the others change; still 200.
        assert http.patch(P, json={"categories": ["console", "network", "page"]}).json()["categories"] == [
            "console", "network", "page"]  # page on: the crash is reported
        doomed = open_loop_tab(browser.cdp_url, ring_name, site, host="localhost")  # another site: its own renderer
        events.until(flowing(doomed, "console"), "the second tab's console lines")
        with BrowserControl(browser.cdp_url) as control:
            session = control.attach(doomed)
            control._ws.send(json.dumps({"id": 999, "method": "Page.crash", "sessionId": session}))  # no answer
            events.until(lambda envs: any(e.event.type == "page.target_crashed" for e in envs), "the crash")
        r = http.patch(P, json={"categories": ["console"]})
        assert r.status_code == 200, r.text
        reply = r.json()
        assert {k: reply[k] for k in CONSOLE} == {**CONSOLE, "detail_level": "verbose"}
        [failed] = reply["failed"]
        assert failed["target_id"] == doomed and "crashed" in failed["error"] and tab not in json.dumps(reply)
        events.read_for(1.0)
        assert len(config_events(events.envelopes)) == 4  # page on, then console only: the no-ops published nothing
        last = config_events(events.envelopes)[-1]
        assert data(last)["new"] == {**CONSOLE, "detail_level": "verbose"}
        assert not [e for e in events.after(last.seq, tab) if e.event.category in ("network", "page")]
        assert [e for e in events.after(last.seq, tab) if e.event.type == "console.log"]
        assert http.get(P).json() == {**CONSOLE, "detail_level": "verbose"}
    finally:
        http.close()
        events.close()


@needs_chromium
def test_a_filtered_sse_client_and_tail_leave_the_producer_config_alone(ring_name, edge, procs, browser, site):
    srv = edge(ring_name, "--cdp", browser.cdp_url)
    stats_when_ready(ring_name)
    before = httpx.get(f"{srv.base}/producers/cdp", timeout=DEADLINE_S)
    assert before.status_code == 200 and before.json() == DEFAULT
    console = Frames(f"{srv.base}/events/stream", params={"category": "console", "from": "start"})
    minimal = Frames(f"{srv.base}/events/stream", params=[("category", "network"), ("detail_level", "minimal")])
    tail = procs("tail", ring_name, "--category", "console", "--type", "console.log", "--from-start")
    events = Events(ring_name)
    try:
        for stream in (console, minimal):
            stream.wait(connected, "the session frame")
        tab = open_loop_tab(browser.cdp_url, ring_name, site)
        console.wait(lambda frames: sum('"tick"' in f.get("data", "") for f in frames) >= 5, "console ticks")
        assert {json.loads(f["data"])["event"]["category"] for f in console.events()} == {"console"}
        tail.wait_until(lambda: sum('"tick"' in line for line in tail.out) >= 5, "tail's console lines")
        # Every category is still captured: what the clients asked for never went upstream.
        events.until(flowing(tab, "console", "network", "page"), "every category, whatever the subscriptions")
        assert not minimal.events()  # nothing here is minimal: the filter skips, it asks the producer nothing
        after = httpx.get(f"{srv.base}/producers/cdp", timeout=DEADLINE_S)
        assert after.status_code == 200 and after.json() == before.json()
        assert producer_stats(ring_name)["config"] == DEFAULT
        assert not config_events(events.envelopes)
    finally:
        console.close()
        minimal.close()
        events.close()


# -- without a producer --------------------------------------------------------------------------


def test_no_producer_is_503_and_a_bad_config_is_400_before_anything_is_asked(ring_name, edge):
    srv = edge(ring_name)  # no --cdp: no producer, no control socket
    url = f"{srv.base}/producers/cdp"
    for method, body in (("GET", None), ("PUT", DEFAULT), ("PATCH", {"categories": ["console"]})):
        r = httpx.request(method, url, json=body, timeout=DEADLINE_S)
        error_of(r, 503, "no CDP producer is running", ring_name)
    error_of(httpx.patch(url, json={"categories": ["sound"]}), 400, "unknown category 'sound'")
    error_of(httpx.put(url, content=b"<config/>"), 400, "not json")
    error_of(httpx.patch(url, content=b" " * (64 * 1024 + 1)), 413, "at most")
    error_of(httpx.get(f"{srv.base}/producers/ffmpeg"), 404, "unknown producer 'ffmpeg'", "cdp")
    assert httpx.post(url, json=DEFAULT).status_code == 405
    assert httpx.get(f"{srv.base}/healthz").status_code == 200  # the edge serves on


def test_token_rules_and_cors_apply(ring_name, edge, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("pr0ducer-token\n")
    srv = edge(ring_name, "--http-token-file", str(token_file), "--http-cors-origin", "https://dash.example")
    url = f"{srv.base}/producers/cdp"
    auth = {"Authorization": "Bearer pr0ducer-token"}
    for method, body in (("GET", None), ("PUT", DEFAULT), ("PATCH", {"categories": ["console"]})):
        for headers, params in (({}, {}), ({"Authorization": "Bearer wrong"}, {}), ({}, {"token": "pr0ducer-token"})):
            r = httpx.request(method, url, json=body, headers=headers, params=params)
            error_of(r, 401, "token")
            assert r.headers["www-authenticate"] == "Bearer"
        # Past the token: the producer's own answer (none runs here).
        error_of(httpx.request(method, url, json=body, headers=auth, timeout=DEADLINE_S), 503, "no CDP producer")
    error_of(httpx.patch(url, json={"detail_level": "loud"}), 401, "token")  # the token before the body
    r = httpx.get(url, headers={**auth, "Origin": "https://dash.example"}, timeout=DEADLINE_S)
    assert r.headers["access-control-allow-origin"] == "https://dash.example"
    for method in ("PUT", "PATCH"):
        pre = httpx.options(url, headers={"Origin": "https://dash.example", "Access-Control-Request-Method": method,
                                          "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://dash.example"
        assert method in pre.headers["access-control-allow-methods"]
    other = httpx.get(url, headers={**auth, "Origin": "https://evil.example"}, timeout=DEADLINE_S)
    assert "access-control-allow-origin" not in other.headers


# -- a control channel that fails ----------------------------------------------------------------


class FakeControl:
    """A control socket at ring `name`'s path that answers each connection's request as `script` says, in turn:
    bytes (a reply line), or None (read the request, answer nothing until closed)."""

    def __init__(self, name, script):
        self.path = control_socket_path(name)
        self.script = list(script)
        self.requests = []
        self._held = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.requests.append(json.loads(conn.makefile("rb").readline()))
            reply = self.script.pop(0)
            if reply is None:
                self._held.append(conn)
            else:
                conn.sendall(reply)
                conn.close()

    def close(self):
        if self._sock.fileno() == -1:
            return
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(DEADLINE_S)
        for conn in self._held:
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def test_a_control_channel_that_fails_is_502_or_504_and_the_loop_serves_on(ring_name, tmp_path):
    fake = FakeControl(ring_name, [b"this is not the protocol\n", b"", None])
    port = find_free_port()
    with CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20) as ring:
        config = EdgeConfig(name=ring_name, host="127.0.0.1", port=port, socket_path=str(tmp_path / "unused.sock"),
                            control_timeout_s=1.0)
        edge = threading.Thread(target=run_edge, args=(config,), daemon=True)
        edge.start()
        base = f"http://127.0.0.1:{port}"
        try:
            def listening():
                with contextlib.suppress(httpx.TransportError):
                    return httpx.get(f"{base}/healthz").status_code == 200
            wait_until(listening, "the edge to listen")
            url = f"{base}/producers/cdp"
            error_of(httpx.get(url, timeout=DEADLINE_S), 502, "not the protocol")
            error_of(httpx.put(url, json=DEFAULT, timeout=DEADLINE_S), 502, "not the protocol")  # closed, no reply

            # No answer at all: 504 after the edge's own timeout, and meanwhile the edge answers everything else.
            hung = {}
            started = time.monotonic()
            patching = threading.Thread(target=lambda: hung.setdefault(
                "r", httpx.patch(url, json={"categories": ["console"]}, timeout=DEADLINE_S)))
            patching.start()
            wait_until(lambda: len(fake.requests) == 3, "the third request to reach the control socket")
            answered = 0
            while patching.is_alive() and time.monotonic() - started < 0.8:
                t0 = time.monotonic()
                assert httpx.get(f"{base}/healthz", timeout=DEADLINE_S).status_code == 200
                assert time.monotonic() - t0 < 0.5, "the control call held the edge's event loop"
                answered += 1
            assert answered and patching.is_alive()
            patching.join(DEADLINE_S)
            error_of(hung["r"], 504, "did not answer within 1 s")
            assert 0.9 <= time.monotonic() - started < DEADLINE_S
            assert [(r["op"], r.get("replace")) for r in fake.requests] == [
                ("get", None), ("set", True), ("set", False)]
            assert fake.requests[2]["config"] == {"categories": ["console"]}
            fake.close()

            # serve's own control server, when the producer behind it times out: a timeout reply, so 504 too.
            async def handle(request):
                raise ControlTimeout(f"the CDP producer of ring {ring_name!r} did not answer within 8 s")

            with control_server(ring_name, handle):
                error_of(httpx.patch(url, json={"enabled": False}, timeout=DEADLINE_S), 504,
                         "did not answer within 8 s")
        finally:
            ring.close()  # the edge ends with the ring
            edge.join(DEADLINE_S)
            fake.close()
        assert not edge.is_alive()


@contextlib.contextmanager
def control_server(name, handle):
    """A real ControlServer for ring `name` on an event loop in a thread of this process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = ControlServer(name, handle)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(DEADLINE_S)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(DEADLINE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE_S)
        loop.close()
