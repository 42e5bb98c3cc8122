"""The HTTP edge end to end: `shmring serve --http` with real clients (curl -N, httpx), as real processes.

serve is ready when it prints "serving ring" (it prints it once the edge listens); a stream is connected
once its session frame arrived. Every read has a deadline. FORBIDDEN: an event missing, duplicated or
out of order in a stream, a drop frame with an id, the edge or the ring lost to a hostile client.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from shmring import CaptureSession, Event, Reader, Source
from shmring.aio import archive_supported
from shmring.cdp.browser import find_free_port
from shmring.stats import ring_stats
from tests.integration.commands import DEADLINE_S, assert_one_line_error, ev, run
from tests.integration.http_clients import Frames, connected, publish

MIB = 1024 * 1024


def test_curl_stream_headers_session_events_and_the_end_frame(ring_name, edge):
    srv = edge(ring_name)
    seqs = publish(srv.base, ev(1), ev(2, "network"))
    curl = subprocess.Popen(["curl", "-sS", "-N", "-i", "--max-time", str(DEADLINE_S), f"{srv.base}/events/stream?from=start"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = b""
        # The stream: headers, retry, session, the two events. Then serve stops and the stream ends itself.
        while out.count(b"\nid: ") < 2:
            chunk = curl.stdout.read1(65536)
            assert chunk, out
            out += chunk
        srv.signal(signal.SIGTERM)
        rest, err = curl.communicate(timeout=DEADLINE_S)
        out += rest
    finally:
        if curl.poll() is None:
            curl.kill()
    assert srv.wait() == 0
    head, _, body = out.decode().partition("\r\n\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()[1:])}
    assert head.startswith("HTTP/1.1 200")
    assert headers["content-type"].split(";")[0] == "text/event-stream"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert "access-control-allow-origin" not in headers  # no CORS unless asked
    frames = body.split("\n\n")
    assert frames[0].startswith("retry: ") and frames[0][7:].isdigit()
    session = frames[1].splitlines()
    assert session[0] == "event: session" and not any(line.startswith("id:") for line in session)
    assert json.loads(session[1][6:]) == {"capture_session_id": srv.session_id, "latest_seq": 2}
    events = [f.splitlines() for f in frames[2:4]]
    assert [e[0] for e in events] == [f"id: {seqs[0]}", f"id: {seqs[1]}"]  # no event: line: onmessage gets them
    envelopes = [json.loads(e[1][6:]) for e in events]
    assert [e["event"]["data"]["i"] for e in envelopes] == [1, 2]
    assert all(e["capture_session_id"] == srv.session_id for e in envelopes)
    end = frames[4].splitlines()
    assert end[0] == "event: end" and json.loads(end[1][6:]) == {"last_seq": 2, "reason": "closed"}


def test_event_data_is_the_envelope_json_exactly_as_in_the_ring(ring_name, edge):
    srv = edge(ring_name)
    with Reader.attach(ring_name) as reader:
        stream = Frames(f"{srv.base}/events/stream")
        stream.wait(connected, "the session frame")
        publish(srv.base, *(ev(i, "console") for i in range(5)))
        got = stream.wait_events(5)
        raw = reader.read_raw_many(5, timeout=DEADLINE_S)
        assert [f["data"].encode() for f in got] == [r.payload for r in raw]
        assert [int(f["id"]) for f in got] == [r.seq for r in raw]
        stream.close()


def test_filters_and_keepalive(ring_name, edge):
    srv = edge(ring_name, "--sse-keepalive-s", "0.3")
    network = Frames(f"{srv.base}/events/stream", params=[("category", "network"), ("category", "page")])
    verbose = Frames(f"{srv.base}/events/stream", params={"detail_level": "verbose", "source_kind": "kernel_api"})
    for s in (network, verbose):
        s.wait(connected, "session")
    # Nothing sent for 0.3 s: a ':' comment line each time.
    network.wait(lambda f: any(x.get("comment") == ":" for x in f), "a keepalive comment", timeout=10)
    assert ":" in network.lines
    publish(srv.base, ev(1, "console"), ev(2, "network"), ev(3, "page"), ev(4, "network", detail="verbose"),
            ev(5, "console", kind="kernel_api", detail="verbose"), ev(6, "network"))
    got = network.wait_events(4)
    assert [json.loads(f["data"])["event"]["data"]["i"] for f in got] == [2, 3, 4, 6]
    got = verbose.wait_events(1)
    time.sleep(0)  # (nothing more to wait for: the next assertion is on what has arrived)
    assert [json.loads(f["data"])["event"]["data"]["i"] for f in got] == [5]
    network.close()
    verbose.close()


def test_where_a_stream_starts(ring_name, edge):
    srv = edge(ring_name)
    publish(srv.base, *(ev(i) for i in range(1, 11)))
    cases = [
        ({"Last-Event-ID": "4"}, {"after_seq": "8"}, 5),     # Last-Event-ID wins over after_seq
        ({}, {"after_seq": "8", "from": "start"}, 9),        # after_seq over from=start
        ({}, {"from": "start"}, 1),
        ({"Last-Event-ID": "999999"}, {}, 1),               # another session's id: from this one's start
    ]
    for headers, params, first in cases:
        s = Frames(f"{srv.base}/events/stream", headers=headers, params=params)
        got = s.wait_events(10 - first + 1)
        assert [int(f["id"]) for f in got] == list(range(first, 11)), (headers, params)
        s.close()
    live = Frames(f"{srv.base}/events/stream")  # neither: only new events
    live.wait(connected, "session")
    assert json.loads(live.frames[1]["data"])["latest_seq"] == 10
    publish(srv.base, ev(11))
    assert [int(f["id"]) for f in live.wait_events(1)] == [11]
    live.close()


def test_resume_with_last_event_id_gets_the_rest_exactly_once(ring_name, edge):
    srv = edge(ring_name)
    publish(srv.base, *(ev(i) for i in range(1, 201)))
    first = Frames(f"{srv.base}/events/stream", params={"from": "start"})
    got = first.wait_events(120)
    first.close()
    last = int(got[-1]["id"])  # wherever this client was cut off
    publish(srv.base, *(ev(i) for i in range(201, 301)))
    again = Frames(f"{srv.base}/events/stream", headers={"Last-Event-ID": str(last)})
    rest = again.wait_events(300 - last)
    assert [int(f["id"]) for f in got] + [int(f["id"]) for f in rest] == list(range(1, 301))
    again.close()


@pytest.mark.skipif(not archive_supported(), reason="needs replay-merge (Reader.attach(archive=), issue 13)")
def test_resume_from_the_files_after_the_ring_has_lapped_exactly_once(ring_name, edge):
    srv = edge(ring_name, log_dir=True)  # a ring of 1024 with a flusher
    publish(srv.base, *(ev(i) for i in range(1, 501)))
    first = Frames(f"{srv.base}/events/stream", params={"from": "start"})
    got = first.wait_events(300)
    first.close()
    last = int(got[-1]["id"])
    for start in range(500, 5000, 500):  # the ring laps several times while the client is away
        publish(srv.base, *(ev(i) for i in range(start + 1, start + 501)))
    assert ring_stats(ring_name)["oldest_seq"] > last + 1
    again = Frames(f"{srv.base}/events/stream", headers={"Last-Event-ID": str(last)})
    again.wait(lambda f: any(x.get("id") == "5000" for x in f), "seq 5000")
    assert not any(f.get("event") == "dropped" for f in again.frames)
    assert [int(f["id"]) for f in got] + [int(f["id"]) for f in again.events()] == list(range(1, 5001))
    again.close()


def test_a_client_behind_the_ring_gets_an_exact_drop_frame_without_id(ring_name, edge):
    srv = edge(ring_name)  # a ring of 1024, no log directory: what left the ring is gone
    for start in range(0, 3000, 500):
        publish(srv.base, *(ev(i) for i in range(start + 1, start + 501)))
    s = Frames(f"{srv.base}/events/stream", params={"from": "start"})
    s.wait(lambda f: [x for x in f if "id" in x and x["id"] == "3000"], "seq 3000")
    drop = next(f for f in s.frames if f.get("event") == "dropped")
    assert "id" not in drop
    d = json.loads(drop["data"])
    first_id = int(s.events()[0]["id"])
    assert d == {"dropped": first_id - 1, "from_seq": 1, "to_seq": first_id - 1}
    assert [int(f["id"]) for f in s.events()] == list(range(first_id, 3001))
    s.close()


def test_bad_requests_get_400_with_a_json_error(ring_name, edge):
    srv = edge(ring_name)
    publish(srv.base, ev(1))
    bad = [({"Last-Event-ID": "abc"}, {}), ({"Last-Event-ID": "-1"}, {}), ({"Last-Event-ID": "1e3"}, {}),
           ({}, {"after_seq": "x"}), ({}, {"after_seq": "99"}), ({}, {"from": "yesterday"}),
           ({}, {"category": "Not A Category"}), ({}, {"detail_level": "loud"}), ({}, {"source_kind": "magic"}),
           ({"Last-Event-ID": "9" * 40}, {})]
    for headers, params in bad:
        r = httpx.get(f"{srv.base}/events/stream", headers=headers, params=params, timeout=DEADLINE_S)
        assert r.status_code == 400, (headers, params, r.text)
        assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    # publish: not JSON, not an object, not a valid event
    for body in (b"{nope", b"[1,2]", json.dumps({"type": "", "category": "console", "source": {"kind": "cdp"}})):
        r = httpx.post(f"{srv.base}/events/publish", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    assert ring_stats(ring_name)["latest_seq"] == 1


def test_publish_json_and_ndjson(ring_name, edge):
    srv = edge(ring_name)
    r = httpx.post(f"{srv.base}/events/publish", json=ev(7, "page"), timeout=DEADLINE_S)
    assert r.status_code == 200
    envelope = r.json()
    assert envelope["seq"] == 1 and envelope["capture_session_id"] == srv.session_id
    assert envelope["event"]["data"] == {"i": 7} and envelope["event"]["detail_level"] == "standard"
    assert isinstance(envelope["event"]["ts"], int)
    pretty = json.dumps(ev(8), indent=2).encode()  # newlines inside a JSON body are fine
    assert httpx.post(f"{srv.base}/events/publish", content=pretty).json()["seq"] == 2
    body = b"\n".join([json.dumps(ev(9)).encode(), b"", b"{bad json", json.dumps(ev(10)).encode(), b""])
    r = httpx.post(f"{srv.base}/events/publish", content=body, headers={"Content-Type": "application/x-ndjson"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0] == {"seq": 3} and "error" in lines[1] and lines[2] == {"seq": 4} and len(lines) == 3


def test_413_over_4_mib_and_a_10_mb_post_leaves_the_edge_serving(ring_name, edge):
    srv = edge(ring_name)
    line = json.dumps(ev(0)).encode() + b"\n"
    big = line * (4 * MIB // len(line) + 1)
    r = httpx.post(f"{srv.base}/events/publish", content=big, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 413 and "4 MiB" in r.json()["error"]

    def chunks():  # 10 MB without a Content-Length: the edge counts as it reads
        for _ in range(10):
            yield b"x" * MIB

    with httpx.Client() as client:
        try:
            r = client.post(f"{srv.base}/events/publish", content=chunks())
            assert r.status_code == 413
        except httpx.HTTPError:
            pass  # the edge may close the connection before the client is done sending: also a refusal
    assert ring_stats(ring_name)["latest_seq"] == 0  # nothing of either was published
    assert publish(srv.base, ev(1)) == [1]


def test_token_401_and_query_token_and_cors(ring_name, edge, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = edge(ring_name, "--http-token-file", str(token_file), "--http-cors-origin", "https://dash.example")
    auth = {"Authorization": "Bearer s3cret-token"}
    for path in ("/", "/events/stream", "/events/capture_session", "/metrics"):
        assert httpx.get(f"{srv.base}{path}").status_code == 401
        assert httpx.get(f"{srv.base}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(f"{srv.base}/events/publish", json=ev(1)).status_code == 401
    assert httpx.post(f"{srv.base}/events/publish", json=ev(1), params={"token": "s3cret-token"}).status_code == 401
    assert httpx.get(f"{srv.base}/healthz").status_code == 200  # open: for load balancers
    assert httpx.post(f"{srv.base}/events/publish", json=ev(1), headers=auth).status_code == 200
    assert httpx.get(f"{srv.base}/", params={"token": "s3cret-token"}).status_code == 200
    s = Frames(f"{srv.base}/events/stream", params={"token": "s3cret-token", "from": "start"},
               headers={"Origin": "https://dash.example"})
    assert [f["id"] for f in s.wait_events(1)] == ["1"]
    assert s.response.headers["access-control-allow-origin"] == "https://dash.example"
    s.close()
    pre = httpx.options(f"{srv.base}/events/publish", headers={
        "Origin": "https://dash.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.headers["access-control-allow-origin"] == "https://dash.example"
    other = httpx.get(f"{srv.base}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_non_loopback_needs_a_token_file(ring_name, tmp_path):
    port = find_free_port()
    result = run("serve", ring_name, "--http", f"0.0.0.0:{port}")
    assert_one_line_error(result, "not a loopback address", "--http-token-file")
    assert ring_name not in " ".join(os.listdir("/dev/shm"))
    assert_one_line_error(run("serve", ring_name, "--http", "127.0.0.1:99999"), "--http")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert_one_line_error(run("serve", ring_name, "--http", f"127.0.0.1:{busy}"), "cannot listen", str(busy))
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    assert_one_line_error(run("serve", ring_name, "--http", "192.0.2.1:8080", "--http-token-file", str(token)),
                          "cannot listen")  # an address this machine does not have
    assert_one_line_error(run("serve", ring_name, "--http", f"127.0.0.1:{port}", "--http-token-file", "/nonexistent"),
                          "/nonexistent")


def test_max_clients_503_then_a_slot_frees(ring_name, edge):
    srv = edge(ring_name, "--http-max-clients", "2")
    a, b = Frames(f"{srv.base}/events/stream"), Frames(f"{srv.base}/events/stream")
    for s in (a, b):
        s.wait(connected, "session")
    r = httpx.get(f"{srv.base}/events/stream", timeout=DEADLINE_S)
    assert r.status_code == 503 and "at most 2" in r.json()["error"]
    a.close()
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:  # the edge notices the closed connection
        c = httpx.get(f"{srv.base}/metrics").text
        if "shmring_sse_clients 1.0" in c:
            break
        time.sleep(0.05)
    c = Frames(f"{srv.base}/events/stream")
    c.wait(connected, "a stream in the freed slot")
    b.close()
    c.close()


def test_capture_session_metrics_and_healthz(ring_name, edge):
    srv = edge(ring_name, log_dir=True)
    publish(srv.base, ev(1), ev(2))
    s = httpx.get(f"{srv.base}/events/capture_session").json()
    assert s["capture_session_id"] == srv.session_id and s["latest_seq"] == 2 and s["first_seq"] == 1
    assert s["oldest_seq"] == 1 and s["capacity"] == 1024 and s["writer"]["alive"] is True
    assert {r["role"] for r in s["readers"]} >= {"flusher"}
    assert "flusher_checkpoint" in s
    stream = Frames(f"{srv.base}/events/stream", params={"from": "start"})
    stream.wait_events(2)
    m = httpx.get(f"{srv.base}/metrics")
    assert m.headers["content-type"].startswith("text/plain")
    text = m.text
    for metric in ("shmring_published_events_total 2.0", "shmring_latest_seq 2.0", "shmring_sse_clients 1.0",
                   'shmring_http_publishes_total{result="accepted"} 2.0', "shmring_gap_events_total 0.0",
                   'shmring_reader_lag{pid="', 'role="flusher"', 'shmring_reader_dropped_total{pid="'):
        assert metric in text, metric
    assert "shmring_flusher_checkpoint_seq" in text
    assert httpx.get(f"{srv.base}/healthz").status_code == 200
    srv.signal(signal.SIGTERM)  # the stream gets its end frame; the flusher ends first, cleanly
    stream.wait(lambda f: any(x.get("event") == "end" for x in f), "the end frame")
    assert srv.wait() == 0, srv.err
    assert not any("restarting" in line for line in srv.err), srv.err
    stream.close()


def test_healthz_503_once_the_writer_is_gone(ring_name, edge):
    srv = edge(ring_name)
    assert httpx.get(f"{srv.base}/healthz").status_code == 200
    import psutil
    edge_proc = [c for c in psutil.Process(srv.pid).children() if "edge" in c.cmdline()]
    assert len(edge_proc) == 1
    srv.popen.kill()  # the writer dies; its edge (own session) lives on a moment
    srv.popen.wait(DEADLINE_S)
    try:
        deadline = time.monotonic() + DEADLINE_S
        status = None
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{srv.base}/healthz").status_code
            except httpx.HTTPError:
                break  # the edge saw its ring end and exited: also not healthy
            if status == 503:
                break
            time.sleep(0.05)
        assert status in (503, None)
    finally:
        edge_proc[0].kill()
        edge_proc[0].wait(DEADLINE_S)


def test_hostile_clients_do_not_hurt_others_or_the_ring(ring_name, edge):
    srv = edge(ring_name, "--http-max-clients", "4096", "--data-bytes", str(64 * MIB))
    watcher = Frames(f"{srv.base}/events/stream")
    watcher.wait(connected, "session")
    # A client that never reads, on a stream of big events: its socket fills, the edge holds one batch for it.
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    # 2,000 connections opened and dropped: half mid-request, half right after asking for a stream.
    for i in range(2000):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"GET /events/stream HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 else b"GET /events/str")
        s.close()
    big = {**ev(0), "data": {"pad": "x" * 20000}}
    seqs = []
    for _ in range(10):
        seqs += publish(srv.base, *([big] * 100))
    got = watcher.wait_events(1000)
    assert [int(f["id"]) for f in got] == seqs  # every event, in order, while the other client sits there
    assert all("dropped" != f.get("event") for f in watcher.frames)
    assert ring_stats(ring_name)["writer"]["alive"]
    assert httpx.get(f"{srv.base}/healthz").status_code == 200
    stalled.close()
    watcher.close()


def test_a_publish_waiting_for_its_reply_leaves_the_edge_serving_others(ring_name, tmp_path):
    """The edge polls the ingest socket for a publish's reply only briefly (edge_publish.REPLY_SPIN_S): while the writer
    withholds the reply, the edge answers other requests, and the publish gets its envelope once it comes. The
    writer's ingest side is played by the test, so that the reply can be held until the edge is seen serving."""
    path = str(tmp_path / "ingest.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    listener.settimeout(DEADLINE_S)
    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    with listener, CaptureSession.create(ring_name, capacity=64) as session:
        envelope = session.publish(Event(type="console.test", category="console", source=Source(kind="cdp"),
                                         data={"i": 1}))
        edge = subprocess.Popen([sys.executable, "-m", "shmring", "edge", ring_name, "--socket", path,
                                 "--http", f"127.0.0.1:{port}"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while True:
                try:
                    assert httpx.get(f"{base}/healthz").status_code == 200
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline and edge.poll() is None, edge.stderr.read1(4096)
                    time.sleep(0.02)
            replies = []
            poster = threading.Thread(target=lambda: replies.append(
                httpx.post(f"{base}/events/publish", json=ev(1), timeout=DEADLINE_S)))
            poster.start()
            conn, _ = listener.accept()  # the edge connects at its first publish
            with conn:
                conn.settimeout(DEADLINE_S)
                line = b""
                while not line.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    assert chunk, "the edge closed its ingest connection"
                    line += chunk
                assert json.loads(line)["data"] == {"i": 1}
                # The edge now waits for the reply: it still serves others, at once.
                t0 = time.monotonic()
                assert httpx.get(f"{base}/healthz", timeout=DEADLINE_S).status_code == 200
                assert time.monotonic() - t0 < 5.0
                assert poster.is_alive() and not replies
                conn.sendall(b'{"seq":%d}\n' % envelope.seq)
                poster.join(DEADLINE_S)
            assert replies and replies[0].status_code == 200
            assert replies[0].json()["seq"] == envelope.seq and replies[0].json()["event"]["data"] == {"i": 1}
        finally:
            edge.kill()
            edge.wait(DEADLINE_S)
            edge.stderr.close()
