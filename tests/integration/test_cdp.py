"""The CDP producer against a real headless Chromium: ring, flusher files, detail levels, targets, restarts.

Every test runs the writer in-process (``shmring.serve.serve`` in a thread,
with its ingest socket and a flusher into a temporary directory), a page
server on loopback, and Chromium ($SHMRING_CHROMIUM, else /usr/bin/chromium)
with a fresh profile on a free port. Browsers and servers are stopped by pid
at teardown, and each launch leaves no directory behind (checked here in a
private TMPDIR). Without Chromium the browser tests are skipped, with the
reason; the ones with a fake CDP endpoint or a fake browser binary still run.
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

import pytest

from shmring import Reader, ShmringError
from shmring.cdp.browser import BrowserControl, Chromium, PageServer, find_free_port, resolve_chromium
from shmring.cdp.capture import CdpCapture
from shmring.serve import serve
from tests.integration.chromium import Browser, needs_chromium

TIMEOUT_S = 20
BIG = 1_200_000  # a console argument over the 1,000,000-byte rule

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>shmring test page</title></head><body>
<button id="buy" style="position:absolute;left:40px;top:60px;width:120px;height:40px">Buy</button>
<iframe id="frame" src="/frame.html" style="position:absolute;top:200px"></iframe>
<script>
console.log("hello from the test page", 42, {answer: 42});
console.info("info line");
console.warn("warn line");
console.error("error line");
console.debug("debug line");
console.log("big", "x".repeat(%(big)d));
document.getElementById("buy").addEventListener("click", () => {
  console.log("clicked buy");
  window.open("/second.html");
});
(async () => {
  const r = await fetch("/api/data.json");
  const d = await r.json();
  console.log("fetched items", d.items.length);
  const m = await fetch("/api/missing");
  await m.text();
  console.log("missing status", m.status);
  try { await fetch("http://127.0.0.1:%(closed)d/nothing"); } catch (e) { console.log("fetch refused"); }
  setTimeout(() => { throw new Error("boom from the test page"); }, 0);
  setTimeout(() => console.log("page done"), 50);
})();
</script></body></html>
"""

PAGES = {
    "/frame.html": (200, "text/html", b'<script>console.log("hello from the frame")</script>'),
    "/second.html": (200, "text/html", (b'<script>console.log("hello from the second tab");'
                                        b'fetch("/api/data.json?tab=2").then(r => r.text())</script>')),
    "/api/data.json": (200, "application/json", b'{"items":[1,2,3]}'),
    "/detail.html": (200, "text/html", (b'<script>console.log("detail line");'
                                       b'fetch("/api/data.json?detail=1").then(r => r.text())'
                                       b'.then(() => console.log("detail done"))</script>')),
    "/blank.html": (200, "text/html", b"<p>blank</p>"),
    # Hooked console: an accessor is shown, never called; the last line before the page stops arrives.
    "/hooked.html": (200, "text/html", (b'<script>window.hits = [];'
                                        b'console.log("preview", {get a() { hits.push("a"); return 1; }, b: 2});'
                                        b'window.queueMicrotask = () => {};'  # as fake timers do
                                        b'setTimeout(() => { console.log("last words", "getter runs: " + hits.length);'
                                        b'const t = Date.now(); while (Date.now() - t < 10000) {} }, 100);'
                                        b'</script>')),
}


# -- fixtures and helpers --------------------------------------------------------


def wait_until(predicate, timeout=TIMEOUT_S, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def site():
    closed_port = find_free_port()  # nothing listens there: a refused fetch
    pages = dict(PAGES)
    pages["/"] = (200, "text/html; charset=utf-8", (INDEX % {"big": BIG, "closed": closed_port}).encode())
    server = PageServer(pages)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_tmp(monkeypatch):
    """A TMPDIR of this test's own, so what a launch leaves behind can be listed; removed at teardown.

    In /tmp, whatever TMPDIR the suite runs with: short, so Chromium's socket path under it fits in 107 bytes.
    """
    path = tempfile.mkdtemp(prefix="shmring-t-", dir="/tmp")
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_writer(name):
    """serve() in a thread: ring, ingest socket, flusher process. Yields (socket, log_dir, summary)."""
    tmp = tempfile.mkdtemp(prefix="shmring-cdp-")
    sock, log_dir = os.path.join(tmp, "ingest.sock"), os.path.join(tmp, "logs")
    stop, ready, summary = threading.Event(), threading.Event(), {}

    def run():
        try:
            summary.update(serve(name, stop=stop, socket_path=sock, log_dir=log_dir,
                                 on_ready=lambda session: ready.set()))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            summary["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30) and "error" not in summary, summary
    try:
        yield types.SimpleNamespace(socket=sock, log_dir=log_dir, summary=summary, stop=stop, thread=thread)
    finally:
        stop.set()
        thread.join(60)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def running_capture(cdp_url, sock, detail="standard", console_hook=None):
    """A CdpCapture in a thread, connected and following the tabs already open."""
    logs, stop, result = [], threading.Event(), {}
    cap = CdpCapture(cdp_url, sock, detail_level=detail, log=logs.append, console_hook=console_hook)
    thread = threading.Thread(target=lambda: result.update(cap.run(stop)), daemon=True)
    thread.start()
    try:
        assert cap.connected.wait(TIMEOUT_S), logs
        wait_until(lambda: cap.stats()["following"] >= 1 and cap.stats()["setup_tasks"] == 0, what="set-up")
        yield types.SimpleNamespace(cap=cap, logs=logs, result=result, stop=stop, thread=thread)
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the capture did not stop"


def open_followed_tab(control, cap, url):
    """A new tab, navigated to `url` once the capture follows it."""
    target_id = control.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    wait_until(lambda: cap.is_following(target_id), what=f"the capture to follow {target_id}")
    control.navigate(target_id, url)
    return target_id


class Collector:
    """Reads the ring from its start and keeps every envelope."""

    def __init__(self, name):
        self.reader = Reader.attach(name, after_seq=0)
        self.envelopes = []

    def drain(self, quiet_s=0.2):
        while (res := self.reader.read(timeout=quiet_s)) is not None:
            assert not res.dropped, f"the ring dropped {res.dropped} events"
            self.envelopes.append(res.envelope)

    def until(self, predicate, timeout=TIMEOUT_S, what="events"):
        deadline = time.monotonic() + timeout
        while not predicate(self.events()):
            if time.monotonic() > deadline:
                seen = sorted({(e.type, e.source.event) for e in self.events()})
                lines = sorted(str(x)[:80] for x in console_lines(self.events()))[:40]
                raise AssertionError(f"timed out waiting for {what}; saw {seen}; console lines {lines}")
            res = self.reader.read(timeout=0.1)
            if res is not None:
                self.envelopes.append(res.envelope)
        return self.events()

    def events(self):
        return [e.event for e in self.envelopes]

    def close(self):
        self.reader.close()


def data(event):
    return json.loads(bytes(event.data)) if bytes(event.data) else None


def request_id(event):
    d = data(event)
    return d.get("request_id", d.get("requestId"))


def console_lines(events):
    return {(data(e) or {}).get("args", [None])[0] for e in events if e.category == "console" and data(e)}


def file_envelopes(log_dir, session_id):
    out = {}
    for entry in sorted(os.listdir(log_dir)):
        if entry.endswith(".jsonl") and not entry.startswith("_"):
            with open(os.path.join(log_dir, entry)) as f:
                for line in f:
                    env = json.loads(line)
                    if env["capture_session_id"] == session_id:
                        out[env["seq"]] = (entry, env)
    return out


CDP_METHOD = {  # console calls come through the in-page hook's binding (the default below detail level raw)
    "console.log": "Runtime.bindingCalled", "console.info": "Runtime.bindingCalled",
    "console.warn": "Runtime.bindingCalled", "console.error": "Runtime.bindingCalled",
    "console.debug": "Runtime.bindingCalled", "console.exception": "Runtime.exceptionThrown",
    "network.request": "Network.requestWillBeSent", "network.response": "Network.responseReceived",
    "network.failed": "Network.loadingFailed", "network.finished": "Network.loadingFinished",
    "page.navigation": "Page.frameNavigated", "page.dom_content_loaded": "Page.domContentEventFired",
    "page.load": "Page.loadEventFired", "page.target_created": "Target.targetCreated",
    "page.target_closed": "Target.targetDestroyed", "interaction.click": "Runtime.bindingCalled",
}


# -- the tests -----------------------------------------------------------------------


@needs_chromium
def test_a_live_page_lands_in_the_ring_and_the_files(ring_name, browser, site):
    started_us = time.time_ns() // 1000
    with running_writer(ring_name) as writer:
        collector = Collector(ring_name)
        try:
            with running_capture(browser.cdp_url, writer.socket) as run, BrowserControl(browser.cdp_url) as control:
                tab = open_followed_tab(control, run.cap, site.base_url + "/")
                collector.until(lambda ev: {"page done", "hello from the frame"} <= console_lines(ev)
                                and any(e.type == "console.exception" for e in ev), what="the page's console lines")
                session = control.attach(tab)
                rect = control.evaluate(session, "(() => { const r = document.getElementById('buy')"
                                                 ".getBoundingClientRect(); return [r.x + r.width / 2, "
                                                 "r.y + r.height / 2]; })()")
                control.click(session, *rect)
                collector.until(lambda ev: "hello from the second tab" in console_lines(ev)
                                and any(e.type == "network.finished" and "tab=2" in data(e)["url"] for e in ev),
                                what="the click and the second tab")
                control.call("Target.detachFromTarget", {"sessionId": session})
                assert run.cap.stats()["malformed"] == 0 and run.cap.stats()["setup_failures"] == 0, run.logs
            collector.drain()
            ring_envelopes = list(collector.envelopes)
        finally:
            collector.close()
        session_id = ring_envelopes[0].capture_session_id
        writer.stop.set()
        writer.thread.join(60)
        assert writer.summary["flusher_status"] == 0, writer.summary
        files = file_envelopes(writer.log_dir, session_id)
    ended_us = time.time_ns() // 1000
    events = [e.event for e in ring_envelopes]
    page = site.base_url + "/"

    # Every event: semantic type with its category, CDP provenance, the detail level, a browser-clock ts.
    for e in events:
        assert e.type.split(".")[0] == e.category
        assert e.source.kind == "cdp"
        assert e.detail_level == "standard"
        assert started_us - 5_000_000 <= e.ts <= ended_us + 5_000_000, (e.type, e.ts)
        if e.type in CDP_METHOD:
            expected = CDP_METHOD[e.type]
            if e.type in ("page.dom_content_loaded", "page.load") and e.source.metadata["frame_id"] != \
                    e.source.metadata["target_id"]:
                expected = "Page.lifecycleEvent"  # a subframe's
            assert e.source.event == expected, (e.type, e.source.event)
    mine = [e for e in events if e.source.metadata.get("target_id") == tab]
    for e in mine:
        if e.type.startswith("page.target_"):
            assert "cdp_session_id" not in e.source.metadata  # a browser-level event has no session
        else:
            assert e.source.metadata["cdp_session_id"]
    assert events[0].type == "system.cdp_connected"
    assert events[-1].type == "system.cdp_disconnected"

    # Console: levels, args as text previews, the frame of the execution context, the page url.
    by_first_arg = {data(e)["args"][0]: e for e in mine if e.category == "console" and data(e)}
    hello = by_first_arg["hello from the test page"]
    assert hello.type == "console.log" and data(hello) == {"level": "log", "args": [
        "hello from the test page", "42", "{answer: 42}"]}
    assert hello.url == page and hello.source.metadata["frame_id"] == tab
    for text, type_ in [("info line", "console.info"), ("warn line", "console.warn"), ("error line", "console.error"),
                        ("debug line", "console.debug")]:
        assert by_first_arg[text].type == type_
    frame_line = by_first_arg["hello from the frame"]
    assert frame_line.url == site.base_url + "/frame.html"
    assert frame_line.source.metadata["frame_id"] != tab
    exception = next(e for e in mine if e.type == "console.exception")
    assert data(exception)["args"] == ["Error: boom from the test page"]
    assert data(exception)["level"] == "error" and data(exception)["stack"]
    # The huge argument went through the size rule: kept, flagged, data null.
    big = [e for e in mine if e.category == "console" and e.truncated]
    assert len(big) == 1 and bytes(big[0].data) == b"null" and big[0].type == "console.log"

    # Network: request/response pairs by request id, with status, MIME type, sizes and timing.
    requests = {data(e)["request_id"]: e for e in mine if e.type == "network.request"}
    responses = {data(e)["request_id"]: e for e in mine if e.type == "network.response"}
    finished = {data(e)["request_id"]: e for e in mine if e.type == "network.finished"}
    failed = {data(e)["request_id"]: e for e in mine if e.type == "network.failed"}

    def request_for(url):
        return next(rid for rid, e in requests.items() if data(e)["url"] == url)

    for url, status, mime in [(page, 200, "text/html"), (site.base_url + "/api/data.json", 200, "application/json"),
                              (site.base_url + "/api/missing", 404, "text/plain")]:
        rid = request_for(url)
        assert data(requests[rid])["method"] == "GET" and requests[rid].url == page
        response = data(responses[rid])
        assert (response["status"], response["mime_type"], response["url"]) == (status, mime, url)
        assert response["timing"]["request_ts"] > 0 and "receive_headers_end" in response["timing"]
        assert data(finished[rid])["encoded_data_length"] > 0
        # (Chromium may stamp loadingFinished, from the network service, before responseReceived.)
        assert requests[rid].ts <= responses[rid].ts and requests[rid].ts <= finished[rid].ts
    refused = [rid for rid, e in requests.items() if data(e)["url"].endswith("/nothing")]
    assert len(refused) == 1 and refused[0] in failed and refused[0] not in responses
    assert data(failed[refused[0]])["error_text"].startswith("net::ERR_")

    # Page: target created, navigation, DOM-ready and load of the main frame.
    types_ = [e.type for e in mine]
    assert "page.target_created" in types_
    navigation = next(e for e in mine if e.type == "page.navigation" and e.url == page)
    assert data(navigation)["main_frame"] is True and navigation.source.metadata["frame_id"] == tab
    assert types_.index("page.navigation") < types_.index("page.dom_content_loaded") < types_.index("page.load")

    # Interaction: the click dispatched through CDP, reported by the injected script.
    click = next(e for e in mine if e.type == "interaction.click")
    assert data(click)["target"] == "button#buy" and data(click)["trusted"] is True
    assert click.url == page and click.source.metadata["frame_id"] == tab

    # The popup the click opened is followed from its first request.
    second = [e for e in events if e.url == site.base_url + "/second.html"]
    second_tab = second[0].source.metadata["target_id"]
    assert second_tab != tab
    assert {"console.log", "network.request", "network.response", "page.navigation", "page.load"} <= {
        e.type for e in second}
    assert any(e.type == "network.request" and data(e)["url"] == site.base_url + "/second.html" for e in second)

    # The flusher's files hold exactly what the ring held, each in its category's file.
    assert sorted(files) == [env.seq for env in ring_envelopes]
    for env in ring_envelopes:
        entry, line = files[env.seq]
        assert entry == f"{env.event.category}.jsonl"
        assert (line["event"]["type"], line["event"]["source"].get("event", ""), line["event"]["detail_level"]) == (
            env.event.type, env.event.source.event, env.event.detail_level)


@needs_chromium
@pytest.mark.parametrize("detail", ["minimal", "verbose", "raw"])
def test_detail_level_controls_what_goes_into_data(ring_name, browser, site, detail):
    with running_writer(ring_name) as writer:
        collector = Collector(ring_name)
        try:
            with running_capture(browser.cdp_url, writer.socket, detail) as run, \
                    BrowserControl(browser.cdp_url) as control:
                tab = open_followed_tab(control, run.cap, site.base_url + "/detail.html")

                def done(events):
                    mine = [e for e in events if e.source.metadata.get("target_id") == tab]
                    ids = {request_id(e) for e in mine
                           if e.type == "network.request" and "detail=1" in json.dumps(data(e))}
                    return any(e.type == "network.finished" and request_id(e) in ids for e in mine) and any(
                        e.type == "page.load" for e in mine)

                events = collector.until(done, what=f"the detail page at {detail}")
                control.close_tab(tab)
        finally:
            collector.close()
    mine = [e for e in events if e.source.metadata.get("target_id") == tab]
    assert all(e.detail_level == detail for e in events)
    console = next(e for e in mine if e.type == "console.log")
    request = next(e for e in mine if e.type == "network.request" and "detail=1" in json.dumps(data(e)))
    response = next(e for e in mine if e.type == "network.response" and "detail=1" in json.dumps(data(e)))
    if detail == "minimal":
        assert data(console) == {"level": "log", "args": ["detail line"]}
        assert set(data(request)) == {"request_id", "method", "url"}
        assert set(data(response)) == {"request_id", "url", "status", "mime_type"}
    elif detail == "verbose":
        assert data(console)["stack"] and data(console)["args"] == ["detail line"]
        assert data(request)["headers"] and data(response)["headers"]["Content-Type"] == "application/json"
        assert data(response)["request_id"] == data(request)["request_id"]
    else:  # raw: the untouched CDP params
        assert data(console)["args"][0] == {"type": "string", "value": "detail line"}
        assert data(request)["request"]["url"].endswith("/api/data.json?detail=1")
        assert data(response)["response"]["status"] == 200
        assert data(response)["requestId"] == data(request)["requestId"]


@needs_chromium
@pytest.mark.parametrize("console_hook, method", [(True, "Runtime.bindingCalled"),
                                                  (False, "Runtime.consoleAPICalled")])
def test_console_calls_come_through_the_hook_or_the_inspector(ring_name, browser, site, console_hook, method):
    with running_writer(ring_name) as writer:
        collector = Collector(ring_name)
        try:
            with running_capture(browser.cdp_url, writer.socket, console_hook=console_hook) as run, \
                    BrowserControl(browser.cdp_url) as control:
                tab = open_followed_tab(control, run.cap, site.base_url + "/detail.html")

                def done(events):
                    lines = {(data(e) or {}).get("args", [None])[0] for e in events
                             if e.category == "console" and e.source.metadata.get("target_id") == tab}
                    return {"detail line", "detail done"} <= lines and any(
                        e.type == "page.load" and e.source.metadata.get("target_id") == tab for e in events)

                events = collector.until(done, what="the hooked console lines")
                control.close_tab(tab)
        finally:
            collector.close()
    mine = [e for e in events if e.category == "console" and e.source.metadata.get("target_id") == tab]
    assert mine and all(e.type == "console.log" for e in mine)
    navigation = next(e for e in events if e.type == "page.navigation" and e.source.metadata.get("target_id") == tab)
    for event in mine:
        assert event.source.event == method
        assert event.source.metadata["frame_id"] == navigation.source.metadata["frame_id"]
        assert event.url == site.base_url + "/detail.html"
        assert data(event)["level"] == "log" and event.detail_level == "standard"
    assert [data(e)["args"] for e in mine] == [["detail line"], ["detail done"]]


@needs_chromium
def test_the_console_hook_has_no_side_effects_and_keeps_a_stalled_pages_last_words(ring_name, browser, site):
    with running_writer(ring_name) as writer:
        collector = Collector(ring_name)
        try:
            with running_capture(browser.cdp_url, writer.socket) as run, \
                    BrowserControl(browser.cdp_url) as control:
                tab = open_followed_tab(control, run.cap, site.base_url + "/hooked.html")
                # The page spins for 10 s right after its last line: that line must not wait for it.
                events = collector.until(lambda ev: "last words" in console_lines(ev), timeout=7,
                                         what="the line logged just before the page stalls")
                control.close_tab(tab)
        finally:
            collector.close()
    mine = [e for e in events if e.category == "console" and e.source.metadata.get("target_id") == tab]
    preview = next(e for e in mine if data(e)["args"][0] == "preview")
    assert data(preview)["args"] == ["preview", "{a: accessor, b: 2}"]  # as DevTools shows it
    last = next(e for e in mine if data(e)["args"][0] == "last words")
    assert data(last)["args"] == ["last words", "getter runs: 0"]  # previewing ran no page code


@needs_chromium
def test_targets_that_come_and_go_neither_leak_nor_crash(ring_name, browser, site):
    oopif = site.base_url.replace("127.0.0.1", "localhost") + "/frame.html"  # another site: its own process
    site.pages["/oopif.html"] = (200, "text/html", f'<iframe src="{oopif}"></iframe>'.encode())
    with running_writer(ring_name) as writer:
        collector = Collector(ring_name)
        try:
            with running_capture(browser.cdp_url, writer.socket) as run, BrowserControl(browser.cdp_url) as control:
                baseline = run.cap.stats()
                # Tabs opened and closed at once, before or during their set-up.
                churned = []
                for i in range(12):
                    churned.append(control.call("Target.createTarget",
                                                {"url": site.base_url + f"/blank.html?i={i}"})["targetId"])
                    control.close_tab(churned[-1])
                # A page with an out-of-process iframe: followed as its own target.
                tab = open_followed_tab(control, run.cap, site.base_url + "/oopif.html")
                events = collector.until(lambda ev: "hello from the frame" in console_lines(ev), what="the iframe")
                frame_line = next(e for e in events if e.category == "console"
                                  and (data(e) or {}).get("args") == ["hello from the frame"])
                assert frame_line.url == oopif and frame_line.source.metadata["target_id"] != tab
                control.close_tab(tab)
                churned.append(tab)
                collector.until(lambda ev: set(churned) <= {e.source.metadata["target_id"] for e in ev
                                                            if e.type == "page.target_closed"}, what="closed tabs")
                wait_until(lambda: run.cap.stats()["sessions"] == baseline["sessions"]
                           and run.cap.stats()["pages"] == baseline["pages"]
                           and run.cap.stats()["setup_tasks"] == 0
                           and run.cap.stats()["following"] == baseline["following"],
                           what=f"target state back to {baseline} (now {run.cap.stats()})")
                stats = run.cap.stats()
                assert stats["connections"] == 1 and stats["malformed"] == 0 and stats["rejected"] == 0
                # Still capturing.
                tab = open_followed_tab(control, run.cap, site.base_url + "/detail.html")
                collector.until(lambda ev: any(e.category == "console" and e.source.metadata.get("target_id") == tab
                                               for e in ev), what="a tab after the churn")
                control.close_tab(tab)
        finally:
            collector.close()
    created = {e.source.metadata["target_id"] for e in collector.events() if e.type == "page.target_created"}
    assert set(churned) <= created


CAPTURE_SCRIPT = """
import signal, sys, threading
from shmring.cdp import capture
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
capture(sys.argv[1], sys.argv[2], stop=stop, log=lambda m: print(m, file=sys.stderr, flush=True))
print("capture stopped", file=sys.stderr, flush=True)
"""


@needs_chromium
def test_the_producer_survives_a_browser_crash_and_follows_the_restarted_one(ring_name, site):
    first = Browser()
    second = None
    proc = None
    try:
        with running_writer(ring_name) as writer:
            collector = Collector(ring_name)
            try:
                proc = subprocess.Popen([sys.executable, "-c", CAPTURE_SCRIPT, first.cdp_url, writer.socket],
                                        stderr=subprocess.PIPE, text=True)
                collector.until(lambda ev: sum(e.type == "system.cdp_connected" for e in ev) == 1
                                and any(e.type == "page.target_created" for e in ev), what="the first connection")
                first.stop(kill=True)
                collector.until(lambda ev: any(e.type == "system.cdp_disconnected" for e in ev), what="the loss")
                time.sleep(3)  # several reconnection attempts fail meanwhile
                assert proc.poll() is None, "the producer died with the browser"
                second = Browser(port=first.port)
                collector.until(lambda ev: sum(e.type == "system.cdp_connected" for e in ev) == 2,
                                what="the reconnection")
                with BrowserControl(second.cdp_url) as control:
                    tab = control.open_tab(site.base_url + "/detail.html", settle_s=1.0)
                    collector.until(lambda ev: any(e.type == "console.log" and e.source.metadata["target_id"] == tab
                                                   for e in ev), what="events from the new browser")
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
                stderr = proc.stderr.read()
                proc.stderr.close()
            finally:
                collector.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            proc.stderr.close()
        first.stop()
        if second is not None:
            second.stop()
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("capture-cdp: lost the browser") for line in lines) == 1, lines
    assert sum(line.startswith("capture-cdp: following ") for line in lines) == 2, lines
    assert not any("no browser" in line for line in lines), lines  # no line per retry
    assert lines[-1] == "capture stopped"
    disconnected = next(e for e in collector.events() if e.type == "system.cdp_disconnected")
    assert disconnected.category == "system" and data(disconnected)["reason"]


# -- a fake browser: malformed and unexpected CDP messages ----------------------------


def fake_browser(script):
    """A websocket endpoint speaking just enough CDP; after Target.setAutoAttach it sends `script`."""
    import asyncio

    from websockets.asyncio.server import serve as ws_serve

    ready, stopped = threading.Event(), threading.Event()
    box = {}

    async def handler(ws):
        async for raw in ws:
            msg = json.loads(raw)
            result = {"product": "FakeChrome/1", "protocolVersion": "1.3"} if msg["method"] == "Browser.getVersion" \
                else {}
            await ws.send(json.dumps({"id": msg["id"], "result": result, **(
                {"sessionId": msg["sessionId"]} if "sessionId" in msg else {})}))
            if msg["method"] == "Target.setAutoAttach" and "sessionId" not in msg:
                for item in script:
                    await ws.send(item if isinstance(item, str) else json.dumps(item))

    async def main():
        async with ws_serve(handler, "127.0.0.1", 0) as server:
            box["port"] = server.sockets[0].getsockname()[1]
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()
        stopped.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop():
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)

    return f"ws://127.0.0.1:{box['port']}/devtools/browser/fake", stop


def test_malformed_and_unexpected_cdp_messages_are_logged_and_skipped(ring_name):
    attach = {"method": "Target.attachedToTarget", "params": {
        "sessionId": "S1", "waitingForDebugger": True,
        "targetInfo": {"targetId": "T1", "type": "page", "url": "http://127.0.0.1:1/"}}}

    def log_line(text, **params):
        return {"method": "Runtime.consoleAPICalled", "sessionId": "S1", "params": {
            "type": "log", "args": [{"type": "string", "value": text}], "executionContextId": 1,
            "timestamp": 1_700_000_000_000.0, **params}}

    script = [
        "this is not JSON", "[1, 2, 3]", {"method": 42}, {"method": "Runtime.consoleAPICalled", "params": "x"},
        attach,
        log_line("before the garbage"),
        {"method": "Runtime.consoleAPICalled", "sessionId": "S1", "params": {"args": []}},  # no type
        {"method": "Network.responseReceived", "sessionId": "S1", "params": {"requestId": "R", "response": 7}},
        {"method": "Runtime.bindingCalled", "sessionId": "S1", "params": {"name": "__shmringInteraction",
                                                                           "payload": "{broken"}},
        {"method": "Totally.unknownEvent", "sessionId": "S1", "params": {}},
        {"id": 123456, "result": {}},  # a reply to nothing
        log_line("big", args=[{"type": "string", "value": "y" * 1_500_000}]),
        log_line("after the garbage"),
    ]
    url, stop_browser = fake_browser(script)
    try:
        with running_writer(ring_name) as writer:
            collector = Collector(ring_name)
            try:
                with running_capture(url, writer.socket, "standard") as run:
                    events = collector.until(lambda ev: "after the garbage" in console_lines(ev), what="the last line")
                    stats = run.cap.stats()
                    logs = list(run.logs)
            finally:
                collector.close()
    finally:
        stop_browser()
    console = [e for e in events if e.category == "console"]
    assert [(data(e) or {}).get("args", [None])[0] for e in console] == ["before the garbage", None,
                                                                        "after the garbage"]
    assert console[1].truncated and bytes(console[1].data) == b"null"  # the huge one: kept, flagged
    assert stats["malformed"] == 7 and stats["connected"] and stats["rejected"] == 0
    assert stats["truncated"] == 1
    skipped = [line for line in logs if "skipped a malformed CDP message" in line]
    assert len(skipped) == 5  # rate limited: the first five, then one line per thousand


# -- launching Chromium: nothing left behind ----------------------------------------------


@needs_chromium
@pytest.mark.parametrize("tmpdir_length", ["short", "long"])
def test_a_chromium_launch_leaves_no_directory_behind(private_tmp, monkeypatch, tmpdir_length):
    tmp = private_tmp
    if tmpdir_length == "long":  # too long for Chromium's socket path under it: the launch goes to /tmp
        tmp = os.path.join(private_tmp, "x" * 70)
        os.mkdir(tmp)
        monkeypatch.setenv("TMPDIR", tmp)
    chromium = Chromium().start()
    root = chromium.root
    try:
        assert chromium.proc.poll() is None
        # Chromium's own org.chromium.Chromium.* directory (its singleton socket) is made in ours ...
        wait_until(lambda: any(n.startswith("org.chromium.Chromium.") for n in os.listdir(root)),
                   what=f"Chromium's temporary directory in {root} (holds {os.listdir(root)})")
        # ... and nothing in TMPDIR but ours.
        assert os.listdir(tmp) == ([os.path.basename(root)] if tmpdir_length == "short" else [])
        assert os.path.dirname(root) == (tmp if tmpdir_length == "short" else "/tmp")
    finally:
        chromium.stop()
    assert not os.path.exists(root)
    assert os.listdir(tmp) == []


def test_a_chromium_that_fails_to_start_leaves_no_directory_behind(tmp_path, private_tmp):
    fake = tmp_path / "chromium"  # makes its temporary directory as Chromium does, then fails
    fake.write_text('#!/bin/sh\nmkdir "$TMPDIR/org.chromium.Chromium.fake" || exit 9\nexit 3\n')
    fake.chmod(0o755)
    with pytest.raises(ShmringError, match="Chromium exited with status 3 while starting"):
        Chromium(str(fake)).start()
    assert os.listdir(private_tmp) == []


# -- the demo --------------------------------------------------------------------------------


@needs_chromium
def test_demo_with_a_real_browser_runs_end_to_end(tmp_path):
    """`shmring demo --browser --chromium PATH`: real page events reach the filtered readers and the files.

    The browser is the one passed, and it leaves nothing in TMPDIR.
    """
    used = tmp_path / "used"
    wrapper = tmp_path / "chromium"
    wrapper.write_text(f'#!/bin/sh\necho "$@" > {shlex.quote(str(used))}\n'
                       f'exec {shlex.quote(resolve_chromium())} "$@"\n')
    wrapper.chmod(0o755)
    private = tempfile.mkdtemp(prefix="shmring-t-", dir="/tmp")
    try:
        env = {k: v for k, v in os.environ.items() if k != "SHMRING_CHROMIUM"}
        done = subprocess.run([sys.executable, "-m", "shmring", "demo", "--browser", "--chromium", str(wrapper),
                               "--seconds", "3"], cwd=tmp_path, env=dict(env, TMPDIR=private),
                              capture_output=True, text=True, timeout=120)
        left = os.listdir(private)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "--remote-debugging-port=" in used.read_text()
    assert left == []
    assert "reader [console]: delivered" in done.stdout
    files = {p.name: p.read_text().splitlines() for p in (tmp_path / "shmring-demo").glob("*.jsonl")}
    assert files.get("console.jsonl") and files.get("network.jsonl") and files.get("page.jsonl")
    types = {json.loads(line)["event"]["type"] for lines in files.values() for line in lines}
    assert {"console.log", "network.request", "network.response", "page.load", "system.cdp_connected"} <= types


@pytest.mark.parametrize("how", ["--chromium", "SHMRING_CHROMIUM"])
def test_demo_with_a_missing_chromium_is_one_line_that_says_what_to_pass(tmp_path, how):
    missing = str(tmp_path / "no-chromium")
    env = {k: v for k, v in os.environ.items() if k != "SHMRING_CHROMIUM"}
    args = [sys.executable, "-m", "shmring", "demo", "--browser", "--seconds", "1"]
    if how == "--chromium":
        args += ["--chromium", missing]
    else:
        env["SHMRING_CHROMIUM"] = missing
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")  # nothing started
    assert done.stderr == (f"shmring: Chromium not found: {missing} ({how}) does not exist; pass --chromium PATH or "
                           f"set SHMRING_CHROMIUM to a Chromium binary (Debian: apt-get install -y chromium)\n")
    assert not (tmp_path / "shmring-demo").exists()


def test_demo_chromium_without_browser_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "shmring", "demo", "--chromium", "/usr/bin/chromium"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "shmring: --chromium PATH chooses the browser of --browser: add --browser\n"
