"""The viewer page in a real headless Chromium: events published over HTTP appear in its DOM, and its
EventSource reconnects by itself (with Last-Event-ID) when the edge process is restarted.

SHMRING_VIEWER_SCREENSHOT=PATH keeps the test's screenshot there (docs/viewer.png was made so).
"""

import base64
import os
import time

import psutil
import pytest

from shmring.cdp.browser import BrowserControl, Chromium, chromium_available
from tests.integration.commands import DEADLINE_S, ev
from tests.integration.http_clients import publish

pytestmark = pytest.mark.skipif(not chromium_available(), reason="needs Chromium (apt-get install -y chromium)")

SEQS = "[...document.querySelectorAll('#rows tr[data-seq]')].map(tr => +tr.dataset.seq)"


def wait_js(control, session, expression, predicate, what, timeout=DEADLINE_S):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = control.evaluate(session, expression)
        if predicate(value):
            return value
        time.sleep(0.05)
    pytest.fail(f"{what}: not seen in the page within {timeout} s (last: {str(value)[:300]})")


def test_the_viewer_shows_published_events_and_reconnects_across_an_edge_restart(ring_name, edge, tmp_path):
    srv = edge(ring_name)
    mixed = [ev(i, "network" if i % 3 == 0 else "console") for i in range(1, 13)]
    for e in mixed:
        if e["category"] == "network":
            e["data"]["url"] = f"http://127.0.0.1:8000/api/{e['data']['i']}"
    publish(srv.base, *mixed)
    with Chromium() as browser, BrowserControl(browser.cdp_url) as control:
        target = control.open_tab(f"{srv.base}/")
        session = control.attach(target)
        wait_js(control, session, SEQS, lambda v: v == list(range(1, 13)), "seqs 1-12")
        state = wait_js(control, session, "document.getElementById('state').textContent",
                        lambda v: v == "connected", "connected")
        assert state == "connected"
        assert control.evaluate(session, "document.getElementById('session').textContent") == srv.session_id
        cells = control.evaluate(session, "[...document.querySelector('#rows tr[data-seq=\"3\"]').cells]"
                                          ".map(td => td.textContent)")
        assert cells[0] == "3" and cells[2] == "network" and cells[3] == "network.test"
        assert cells[4] == "http://127.0.0.1:8000/api/3" and cells[5].startswith('{"i":3')
        # category filter: untick console, only network rows stay visible
        control.evaluate(session, "(() => { const b = document.querySelector('input[data-category=console]');"
                                  " b.click(); })()")
        visible = control.evaluate(session, "[...document.querySelectorAll('#rows tr[data-seq]')]"
                                            ".filter(tr => !tr.hidden).map(tr => +tr.dataset.seq)")
        assert visible == [3, 6, 9, 12]
        control.evaluate(session, "document.querySelector('input[data-category=console]').click()")
        # pause holds new rows back; resume shows them
        control.evaluate(session, "document.getElementById('pause').click()")
        publish(srv.base, ev(13))
        wait_js(control, session, "+document.getElementById('count').textContent", lambda v: v == 13, "count 13")
        assert control.evaluate(session, SEQS)[-1] == 12
        control.evaluate(session, "document.getElementById('pause').click()")
        wait_js(control, session, SEQS, lambda v: v[-1:] == [13], "seq 13 after resume")

        # The edge process dies; serve restarts it; the page's EventSource reconnects with Last-Event-ID.
        (edge_proc,) = [c for c in psutil.Process(srv.pid).children() if "edge" in c.cmdline()]
        edge_proc.kill()
        edge_proc.wait(DEADLINE_S)
        wait_js(control, session, "document.getElementById('state').textContent",
                lambda v: v == "reconnecting", "reconnecting")
        publish_deadline = time.monotonic() + DEADLINE_S
        while True:  # published while the edge is down or coming back: the page must still get them once
            try:
                publish(srv.base, *(ev(i) for i in range(14, 21)))
                break
            except Exception:
                if time.monotonic() > publish_deadline:
                    raise
                time.sleep(0.1)
        seqs = wait_js(control, session, SEQS, lambda v: v[-1:] == [20], "seq 20 after the reconnect")
        assert seqs == list(range(1, 21))  # contiguous: nothing missed, nothing twice
        assert control.evaluate(session, "document.getElementById('state').textContent") == "connected"
        shot = base64.b64decode(control.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 5000
        (tmp_path / "viewer.png").write_bytes(shot)
        if os.environ.get("SHMRING_VIEWER_SCREENSHOT"):
            with open(os.environ["SHMRING_VIEWER_SCREENSHOT"], "wb") as f:
                f.write(shot)


def test_the_viewer_keeps_contiguous_seqs_across_a_serve_resume_restart(ring_name, serve):
    from shmring.cdp.browser import find_free_port

    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    first = serve(ring_name, "--capacity", "1024", "--http", f"127.0.0.1:{port}", log_dir=True)
    publish(base, *(ev(i) for i in range(1, 11)))
    with Chromium() as browser, BrowserControl(browser.cdp_url) as control:
        session = control.attach(control.open_tab(f"{base}/"))
        wait_js(control, session, SEQS, lambda v: v == list(range(1, 11)), "seqs 1-10")
        first.signal(__import__("signal").SIGTERM)
        assert first.wait() == 0, first.err  # the page got its end frame; its EventSource now retries by itself
        wait_js(control, session, "document.getElementById('state').textContent",
                lambda v: v == "reconnecting", "reconnecting")
        again = serve(ring_name, "--capacity", "1024", "--http", f"127.0.0.1:{port}", "--resume", log_dir=True)
        assert again.session_id == first.session_id
        assert publish(base, *(ev(i) for i in range(11, 21))) == list(range(11, 21))
        seqs = wait_js(control, session, SEQS, lambda v: v[-1:] == [20], "seq 20 after the restart")
        assert seqs == list(range(1, 21))  # contiguous across the restart: the reconnect sent Last-Event-ID 10
        assert control.evaluate(session, "document.getElementById('session').textContent") == first.session_id
        assert control.evaluate(session, "document.getElementById('state').textContent") == "connected"
        shot = base64.b64decode(control.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
