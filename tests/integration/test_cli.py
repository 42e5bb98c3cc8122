"""The shmring command end to end: serve, publish, tail, stat, ls, gc, demo, as real subprocesses.

Every process is started here with ``python -m shmring`` and waited for by
handshake with a deadline: serve is ready when it prints "serving ring"; a
reader is attached when its output or the registry says so. Nothing sleeps
to synchronise. FORBIDDEN outcomes: an acknowledged event missing or
duplicated (in the ring, in tail's output or in the log files), a hostile
producer ending the server or blocking another producer, a traceback, a
failure that is not one line, anything left in /dev/shm or on disk.
"""

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import psutil
import pytest

from shmring import Producer, PublishRejected, Reader, ShmringError
from shmring.errors import ConfigError
from shmring.ingest import MAX_LINE_BYTES
from shmring.stats import ring_stats
from tests.integration.commands import (
    DEADLINE_S,
    SHMRING,
    SMALL,
    assert_one_line_error,
    assert_one_stderr_line,
    connect,
    envelopes,
    ev,
    flusher_of,
    jl,
    replies_until_end,
    run,
    shm_entries,
    wait_for_reader,
)
from tests.procs import TIMEOUT_S, writer

# -- helpers -----------------------------------------------------------------------------------


def read_logs(directory) -> dict[str, list[dict]]:
    out = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".jsonl") and not entry.startswith("_"):
            with open(os.path.join(directory, entry), "rb") as f:
                out[entry[: -len(".jsonl")]] = envelopes(f.read())
    return out


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def read_replies(sock: socket.socket, count: int, buffer: bytearray | None = None) -> list[dict]:
    """Exactly `count` reply lines (the socket has a timeout, so this is bounded)."""
    buffer = bytearray() if buffer is None else buffer
    replies = []
    while len(replies) < count:
        newline = buffer.find(b"\n")
        if newline == -1:
            chunk = sock.recv(1 << 16)
            assert chunk, f"server closed the connection after {len(replies)} of {count} replies"
            buffer += chunk
            continue
        replies.append(json.loads(bytes(buffer[:newline])))
        del buffer[: newline + 1]
    return replies


# -- serve + publish + tail --------------------------------------------------------------------------


def test_serve_publish_tail_end_to_end(ring_name, serve, procs):
    srv = serve(ring_name, log_dir=True)
    assert stat.S_ISSOCK(os.stat(srv.socket).st_mode) and stat.S_IMODE(os.stat(srv.socket).st_mode) == 0o600
    follower = procs("tail", ring_name, "--from-start")
    categories = ("console", "network", "page")
    lines, valid, bad = [], [], {}
    for i in range(600):
        if i == 2:
            lines.append(b"not json at all\n")
            bad[len(lines)] = "not a valid Event"
        elif i == 5:
            lines.append(b"   \n")  # blank: ignored, no reply, not an error
        elif i == 7:
            lines.append(jl({**ev(i), "category": "Console!"}))
            bad[len(lines)] = "invalid category"
        elif i == 9:
            lines.append(jl({**ev(i), "source": {"kind": "telepathy"}}))
            bad[len(lines)] = "source.kind"
        else:
            event = ev(i, categories[i % 3])
            lines.append(jl(event))
            valid.append(event)
    published = run("publish", "--socket", srv.socket, input=b"".join(lines) + b"\n")
    assert published.returncode == 1
    errors = published.stderr.decode().splitlines()
    assert [e.split(":")[0] for e in errors] == [f"line {n}" for n in sorted(bad)]
    for error, (number, reason) in zip(errors, sorted(bad.items())):
        assert reason in error, error
    assert "Traceback" not in published.stderr.decode()

    tail = run("tail", ring_name, "--from-start", "--no-follow")
    assert tail.returncode == 0 and tail.stderr == b""
    got = envelopes(tail.stdout)
    assert [e["seq"] for e in got] == list(range(1, len(valid) + 1))
    assert {e["capture_session_id"] for e in got} == {srv.session_id}
    assert [e["event"]["data"]["i"] for e in got] == [v["data"]["i"] for v in valid]
    assert [e["event"]["category"] for e in got] == [v["category"] for v in valid]

    resumed = run("tail", ring_name, "--after", "500", "--no-follow", "--category", "network")
    assert resumed.returncode == 0
    assert [e["seq"] for e in envelopes(resumed.stdout)] == [
        e["seq"] for e in got if e["seq"] > 500 and e["event"]["category"] == "network"]

    # `tail | head`: head leaves after 3 lines; tail notices and ends quietly.
    tail_proc = subprocess.Popen([*SHMRING, "tail", ring_name, "--from-start"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        head = subprocess.run(["head", "-n", "3"], stdin=tail_proc.stdout, capture_output=True, timeout=DEADLINE_S)
        tail_proc.stdout.close()
        assert len(head.stdout.splitlines()) == 3
        _, tail_err = tail_proc.communicate(timeout=DEADLINE_S)
        assert tail_proc.returncode == 0 and tail_err == b"", tail_err
    finally:
        if tail_proc.poll() is None:
            tail_proc.kill()
            tail_proc.wait(10)

    more = [ev(1000 + i, "page") for i in range(50)]
    clean = run("publish", "--socket", srv.socket, input=b"".join(jl(e) for e in more))
    assert clean.returncode == 0 and clean.stderr == b""
    total = len(valid) + len(more)
    follower.wait_until(lambda: len(follower.out) == total, f"follow tail printing {total} lines")

    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    assert follower.wait() == 0, follower.err  # the ring closed: tail ends with status 0
    assert [e["seq"] for e in envelopes(follower.out)] == list(range(1, total + 1))
    logs = read_logs(srv.log_dir)
    assert sorted(logs) == ["console", "network", "page"]
    assert sorted(e["seq"] for file in logs.values() for e in file) == list(range(1, total + 1))
    for category, file in logs.items():
        assert {e["event"]["category"] for e in file} == {category}
    assert not os.path.exists(srv.socket)
    assert shm_entries(ring_name) == []


def test_python_producer_publish_and_publish_many(ring_name, serve):
    srv = serve(ring_name)
    with Producer.connect(srv.socket) as producer:
        assert producer.publish(ev(0)) == 1
        with pytest.raises(ShmringError, match="invalid category"):
            producer.publish({**ev(1), "category": "NOPE"})
        assert producer.publish(jl(ev(2))) == 2  # bytes (a JSON line) work too; the connection carries on

        batch = [ev(3), {**ev(4), "category": "Bad"}, ev(5), ev(6), b"{not json", ev(8)]
        with pytest.raises(PublishRejected) as caught:
            producer.publish_many(batch)
        assert [index for index, _ in caught.value.rejected] == [1, 4]
        assert "invalid category" in caught.value.rejected[0][1]
        assert "not a valid Event" in caught.value.rejected[1][1]
        assert caught.value.seqs == [3, None, 4, 5, None, 6]  # the accepted ones stay published

        seqs = producer.publish_many([ev(100 + i) for i in range(5000)])
        assert seqs == list(range(7, 5007))
        assert producer.publish_many([]) == []
        assert producer.publish({**ev(9), "seq": 1, "capture_session_id": "forged"}) == 5007  # the writer stamps

    with Reader.attach(ring_name, after_seq=0) as reader:
        got = [reader.read(timeout=5).envelope for _ in range(5007)]
        assert reader.try_read() is None
    assert [e.seq for e in got] == list(range(1, 5008))
    assert {e.capture_session_id for e in got} == {srv.session_id}
    data = [json.loads(bytes(e.event.data))["i"] for e in got]
    assert data[:6] == [0, 2, 3, 5, 6, 8] and data[6:] == [*range(100, 5100), 9]

    with pytest.raises(ShmringError, match="cannot connect"):
        Producer.connect(srv.socket + ".missing")


# -- the ingest protocol under malformed and hostile input --------------------------------------------


def test_protocol_replies_one_line_per_line_in_order(ring_name, serve):
    srv = serve(ring_name)
    with connect(srv.socket) as sock:
        sock.sendall(
            jl(ev(1))
            + b"\n\r\n  \t \n"  # blank lines: no replies
            + b"\x00\xff\xfe garbage \x80{{{\n"
            + jl({**ev(2), "category": "Nope"})
            + jl({**ev(3), "source": {"kind": "cdp", "metadata": {"n": 1}}})
            + jl(ev(4))
            + b"[]\n"
            + b'{"type":"console.log","category":"console","source":{"kind":"cdp"},"data":'
            + b"[" * 5000 + b"]" * 5000 + b"}\n"  # nested deeper than the decoder goes
        )
        for byte in jl(ev(5)):  # a line arriving a byte at a time is still one line
            sock.send(bytes([byte]))
        replies = read_replies(sock, 8)
    assert [r.get("seq") for r in replies] == [1, None, None, None, 2, None, None, 3]
    assert "malformed" in replies[1]["error"]
    assert "invalid category" in replies[2]["error"]
    assert "metadata" in replies[3]["error"]
    assert "object" in replies[5]["error"]
    assert "error" in replies[6]

    # Half a line and a disconnect: not a line, never answered, never published.
    with connect(srv.socket) as sock:
        sock.sendall(jl(ev(6)) + jl(ev(7))[:-1])
        sock.shutdown(socket.SHUT_WR)
        buffer = bytearray()
        assert [r["seq"] for r in read_replies(sock, 1, buffer)] == [4]
        while chunk := sock.recv(4096):
            buffer += chunk
        assert buffer == b""  # the fragment got no reply; the server closed its side
    with Producer.connect(srv.socket) as producer:
        assert producer.publish(ev(8)) == 5
    tail = run("tail", ring_name, "--from-start", "--no-follow")
    assert [e["event"]["data"]["i"] for e in envelopes(tail.stdout)] == [1, 4, 5, 6, 8]


def test_line_size_cap_is_enforced_without_holding_the_line(ring_name, serve):
    srv = serve(ring_name)
    with connect(srv.socket) as sock:
        rss_before = vm_kib(srv.pid, "VmRSS")
        huge = b"[" + b"7," * (32 << 20) + b"7]\n"  # 64 MiB, one line
        sender = threading.Thread(target=sock.sendall, args=(huge + jl(ev(1)),), daemon=True)
        sender.start()
        first = read_replies(sock, 2)
        sender.join(DEADLINE_S)
        assert f"longer than {MAX_LINE_BYTES} bytes" in first[0]["error"]
        assert first[1] == {"seq": 1}
        peak_growth_mib = (vm_kib(srv.pid, "VmHWM") - rss_before) / 1024
        assert peak_growth_mib < 32, f"serve's peak memory grew {peak_growth_mib:.0f} MiB for a 64 MiB line"

        base = jl({**ev(2), "data": {"pad": ""}})[:-1]
        at_cap = base.replace(b'"pad":""', b'"pad":"' + b"x" * (MAX_LINE_BYTES - len(base)) + b'"') + b"\n"
        assert len(at_cap) == MAX_LINE_BYTES + 1  # the cap counts the line without its newline
        over_cap = at_cap.replace(b'"x', b'"xx', 1)
        ten_mb = b'{"type":"' + b"y" * (10 << 20) + b'"}\n'
        payload = at_cap + over_cap + ten_mb + jl(ev(3))
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        rest = read_replies(sock, 4)
        sender.join(DEADLINE_S)
    assert rest[0] == {"seq": 2}  # exactly at the cap: a line (its data truncated by the size rule)
    assert "longer than" in rest[1]["error"] and "longer than" in rest[2]["error"]
    assert rest[3] == {"seq": 3}
    assert srv.popen.poll() is None
    got = envelopes(run("tail", ring_name, "--from-start", "--no-follow").stdout)
    assert [e["seq"] for e in got] == [1, 2, 3]
    assert got[1]["event"].get("truncated") is True


def test_hostile_connections_do_not_hurt_the_server(ring_name, serve):
    # The 2000 short connections below may all be open on the server's side at once (it need not have seen
    # one end before the next arrives): the cap is set above them, and tested on its own further down.
    srv = serve(ring_name, "--max-connections", "4096")
    fds_before = len(os.listdir(f"/proc/{srv.pid}/fd"))
    rng = random.Random(1234)
    expected = set()  # the `i` of every valid event sent

    good_errors, good_done = [], threading.Event()

    def good_producer():
        try:
            with Producer.connect(srv.socket) as producer:
                for batch in range(40):
                    events = [ev(100_000 + batch * 100 + k) for k in range(100)]
                    assert len(producer.publish_many(events)) == 100
        except BaseException as exc:  # reported by the main thread
            good_errors.append(exc)
        finally:
            good_done.set()

    good = threading.Thread(target=good_producer, daemon=True)
    good.start()
    expected.update(100_000 + n for n in range(4000))

    with connect(srv.socket) as sock:  # garbage: every non-empty line gets an error, nothing is published
        garbage = rng.randbytes(1 << 20)
        sock.sendall(garbage + b"\n")
        lines = [line for line in garbage.split(b"\n") if line.strip()]
        replies = read_replies(sock, len(lines))
        assert all("error" in r for r in replies)

    for n in range(2000):
        sock = connect(srv.socket)
        kind = n % 4
        if kind == 1:
            sock.sendall(rng.randbytes(200))  # garbage, replies never read
        elif kind == 2:
            sock.sendall(jl(ev(n))[: rng.randrange(1, 40)])  # half a line, then gone
        elif kind == 3 and n % 40 == 3:
            sock.sendall(jl(ev(n)))  # a whole valid line, reply never read: still published
            expected.add(n)
        sock.close()

    assert good_done.wait(DEADLINE_S) and not good_errors, good_errors
    assert srv.popen.poll() is None
    with Producer.connect(srv.socket) as producer:
        producer.publish(ev(-1))
    expected.add(-1)

    got = envelopes(run("tail", ring_name, "--from-start", "--no-follow").stdout)
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))
    delivered = [e["event"]["data"]["i"] for e in got]
    assert len(delivered) == len(set(delivered)) and set(delivered) == expected

    deadline = time.monotonic() + DEADLINE_S  # every closed connection's socket is released
    while len(os.listdir(f"/proc/{srv.pid}/fd")) > fds_before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir(f"/proc/{srv.pid}/fd")) <= fds_before + 2


def push_unread(sock: socket.socket, lines: int = 16384) -> None:
    """Send `lines` rejected lines (each reply about as long as its line) without reading a reply."""
    bad = jl({"type": "x", "category": "X" * 1000, "source": {"kind": "cdp"}})
    try:
        for _ in range(lines // 64):
            sock.sendall(bad * 64)
    except OSError:
        pass  # the server ended the connection


def test_a_producer_that_stops_reading_stalls_only_itself(ring_name, serve):
    srv = serve(ring_name)
    # Each line is rejected with a reply as long as the line: the server's
    # replies to this producer pile up far past its buffers.
    bad = jl({"type": "x", "category": "X" * 1000, "source": {"kind": "cdp"}})
    per_send, sends = 64, 256  # 16 MiB of lines, 16384 replies
    stalled = connect(srv.socket)
    sent, push_errors = [0], []

    def push():
        try:
            for _ in range(sends):
                stalled.sendall(bad * per_send)
                sent[0] += per_send
        except OSError as exc:
            push_errors.append(exc)

    pusher = threading.Thread(target=push, daemon=True)
    try:
        pusher.start()
        deadline = time.monotonic() + DEADLINE_S
        while sent[0] < 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sent[0] >= 1024, "the server did not read the first producer at all"
        with Producer.connect(srv.socket, timeout=DEADLINE_S) as other:
            assert other.publish_many([ev(i) for i in range(2000)]) == list(range(1, 2001))
            assert [other.publish(ev(i)) for i in range(20)] == list(range(2001, 2021))
        # The stalled producer could not push its 16 MiB: the server stopped reading it.
        assert pusher.is_alive() and sent[0] < per_send * sends
        replies = read_replies(stalled, per_send * sends)  # now it reads, and everything is answered
        pusher.join(DEADLINE_S)
        assert not push_errors and sent[0] == per_send * sends
        assert all("invalid category" in r["error"] for r in replies)
    finally:
        stalled.close()
    assert ring_stats(ring_name)["latest_seq"] == 2020


def test_concurrent_producers_are_all_served_interleaved(ring_name, serve):
    srv = serve(ring_name)
    n_producers, n_events = 4, 5000
    barrier = threading.Barrier(n_producers, timeout=DEADLINE_S)
    results, errors = {}, []

    def produce(p):
        try:
            with Producer.connect(srv.socket) as producer:
                events = [ev(p * 100_000 + i) for i in range(n_events)]
                barrier.wait()
                results[p] = producer.publish_many(events)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(p,), daemon=True) for p in range(n_producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S * 2)
    assert not errors and len(results) == n_producers
    assert sorted(s for seqs in results.values() for s in seqs) == list(range(1, n_producers * n_events + 1))
    for seqs in results.values():
        assert seqs == sorted(seqs)
    spans = [(seqs[0], seqs[-1]) for seqs in results.values()]
    for a in spans:  # served side by side, not one after another
        for b in spans:
            assert a[0] < b[1] and b[0] < a[1], spans


def send_until_closed(sock: socket.socket, data: bytes) -> None:
    """Send `data`; the server may close the connection part way (then the rest is not taken)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_a_connection_over_the_cap_is_told_and_closed(ring_name, serve):
    srv = serve(ring_name, *SMALL, "--max-connections", "4")
    with contextlib.ExitStack() as stack:
        served = [stack.enter_context(connect(srv.socket)) for _ in range(4)]
        for n, sock in enumerate(served):  # each of the four is being served
            sock.sendall(jl(ev(n)))
            assert read_replies(sock, 1) == [{"seq": n + 1}]
        with connect(srv.socket) as fifth:
            refused = replies_until_end(fifth)
        assert len(refused) == 1 and "too many connections" in refused[0]["error"], refused
        assert "at most 4" in refused[0]["error"]
        for n, sock in enumerate(served):  # the four go on
            sock.sendall(jl(ev(10 + n)))
            assert read_replies(sock, 1) == [{"seq": 5 + n}]
        # One leaves; once the server has ended it, a new producer is served in its place.
        served[0].shutdown(socket.SHUT_WR)
        assert served[0].recv(1) == b""
        with Producer.connect(srv.socket) as producer:
            assert producer.publish(ev(20)) == 9
            with connect(srv.socket) as another:  # four again: the next one is refused
                assert "too many connections" in replies_until_end(another)[0]["error"]
    got = envelopes(run("tail", ring_name, "--from-start", "--no-follow").stdout)
    assert [e["event"]["data"]["i"] for e in got] == [0, 1, 2, 3, 10, 11, 12, 13, 20]
    assert srv.popen.poll() is None


def test_partial_lines_across_connections_are_bounded(ring_name, serve):
    limit_mib, connections, line_mib = 8, 30, 3
    srv = serve(ring_name, *SMALL, "--max-buffered-bytes", str(limit_mib << 20))
    rss_before = vm_kib(srv.pid, "VmRSS")
    whole = jl({**ev(1), "data": {"pad": "x" * (line_mib << 20)}})
    fragment, ending = whole[:-4], whole[-4:]  # the ending: `"}}` and the newline
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(srv.socket)) for _ in range(connections)]
        for sock in socks:  # 90 MiB of unfinished lines offered
            send_until_closed(sock, fragment)
        peak_growth_mib = (vm_kib(srv.pid, "VmHWM") - rss_before) / 1024
        for sock in socks:  # those still held now end: each connection has exactly one reply
            send_until_closed(sock, ending)
        outcomes = [read_replies(sock, 1)[0] for sock in socks]
        # A connection still open once its sendall returned holds nearly 3 MiB: 8 MiB are two at most.
        published = [r["seq"] for r in outcomes if "seq" in r]
        refused = [r["error"] for r in outcomes if "error" in r]
        assert 1 <= len(published) <= 2 and len(refused) == connections - len(published), outcomes
        assert all("ingest buffer limit is reached" in error for error in refused)
    # The limit, plus each connection's stream buffers (the old code grew 90 MiB here).
    assert peak_growth_mib < limit_mib + 24, f"serve's peak memory grew {peak_growth_mib:.0f} MiB"
    with Producer.connect(srv.socket) as producer:
        assert producer.publish(ev(2)) == len(published) + 1
    assert srv.popen.poll() is None


# -- stat, ls, gc ---------------------------------------------------------------------------------------


def test_stat_on_a_live_ring_only_reads(ring_name, serve, procs):
    srv = serve(ring_name, *SMALL, log_dir=True)
    with Producer.connect(srv.socket) as producer:
        producer.publish_many([ev(i) for i in range(50)])
    follower = procs("tail", ring_name, "--from-start")
    follower.wait_until(lambda: len(follower.out) == 50, "tail printing 50 lines")
    wait_for_reader(ring_name, follower.pid, cursor=50)
    flusher = flusher_of(ring_name)
    wait_for_reader(ring_name, flusher["pid"], cursor=50)

    def snapshot():
        with open(f"/dev/shm/shmring.{ring_name}", "rb") as f:
            ring = f.read()
        readers = [{k: v for k, v in r.items() if k not in ("waiting", "alive")}
                   for r in ring_stats(ring_name)["readers"]]
        return ring, sorted(readers, key=lambda r: r["pid"])

    before = snapshot()
    result = run("stat", ring_name, "--json")
    assert result.returncode == 0 and result.stderr == b""
    s = json.loads(result.stdout)
    assert s["name"] == ring_name and s["capture_session_id"] == srv.session_id
    assert s["writer"] == {"pid": srv.pid, "alive": True, "accelerator": s["writer"]["accelerator"]}
    assert s["writer"]["accelerator"] in (True, False)  # test_doctor.py checks which
    assert (s["capacity"], s["latest_seq"], s["oldest_seq"]) == (1024, 50, 1) and "publish_rate" in s
    roles = {r["pid"]: r for r in s["readers"]}
    assert set(roles) == {follower.pid, flusher["pid"]}
    assert roles[follower.pid]["role"] == "reader" and roles[flusher["pid"]]["role"] == "flusher"
    for r in s["readers"]:
        assert r["alive"] is True and r["cursor"] == 50 and r["lag"] == 0 and r["dropped"] == 0

    table = run("stat", ring_name)
    assert table.returncode == 0
    text = table.stdout.decode()
    assert f"writer pid {srv.pid} alive" in text and "latest seq 50" in text and "oldest seq 1" in text
    assert srv.session_id in text and re.search(rf"flusher\s+{flusher['pid']}\s+alive\s+50\s+0", text)
    assert re.search(rf"reader\s+{follower.pid}\s+alive\s+50\s+0", text)

    watcher = procs("stat", ring_name, "--watch", "--json")
    watcher.wait_until(lambda: len(watcher.out) >= 2, "two --watch refreshes")
    watcher.signal(signal.SIGTERM)
    assert watcher.wait() == 0
    assert all(json.loads(line)["latest_seq"] == 50 for line in watcher.out)

    assert snapshot() == before  # stat changed nothing: not a byte of the ring, not a registry entry
    follower.signal(signal.SIGINT)
    assert follower.wait() == 0


@pytest.mark.alone  # plain `shmring gc` judges every ring on the machine
def test_ls_and_gc_remove_only_dead_rings(ring_name, more_ring_names, serve, spawn):
    live = serve(ring_name, *SMALL, socket_path=False)
    dead = more_ring_names()
    ready, done = spawn.Event(), spawn.Event()
    holder = spawn.Process(target=writer, args=(dead, 5, ready),
                           kwargs=dict(done=done, kwargs=dict(capacity=16, data_bytes=1 << 20), then="hold"))
    holder.start()
    assert ready.wait(TIMEOUT_S) and done.wait(TIMEOUT_S)  # all 5 published; the writer holds the ring
    reader = Reader.attach(dead, after_seq=0)  # so the dead ring also has registry entries and a semaphore
    try:
        assert reader.read(timeout=5).envelope.seq == 1
        holder.kill()
        holder.join(TIMEOUT_S)
        assert any("sem." in e for e in shm_entries(dead)) and len(shm_entries(dead)) >= 3

        listing = run("ls")
        assert listing.returncode == 0
        rows = {line.split()[0]: line.split() for line in listing.stdout.decode().splitlines()[1:]}
        assert rows[ring_name][1:3] == [str(live.pid), "alive"]
        assert rows[dead][1:3] == [str(holder.pid), "DEAD"] and rows[dead][3] == "5"
        as_json = {row["name"]: row for row in json.loads(run("ls", "--json").stdout)}
        assert as_json[ring_name]["writer"]["alive"] is True and as_json[dead]["writer"]["alive"] is False

        orphan_tail = run("tail", dead, "--from-start")  # follows, drains what is left, then says the writer died
        assert orphan_tail.returncode == 1
        assert [e["seq"] for e in envelopes(orphan_tail.stdout)] == [1, 2, 3, 4, 5]
        assert_one_line_error(orphan_tail, "died")

        live_before = shm_entries(ring_name)
        kept = run("gc", ring_name)  # named: only that ring is judged, and a live one stays
        assert kept.returncode == 0 and kept.stdout.decode().splitlines() == [f"kept {ring_name}: its writer is alive"]
        assert shm_entries(dead) != []
        unknown = more_ring_names()
        assert_one_line_error(run("gc", unknown), "no ring", unknown)
        gc = run("gc")
        assert gc.returncode == 0 and gc.stderr == b""
        removed = gc.stdout.decode().splitlines()
        assert f"removed {dead}" in removed and not any(ring_name in line for line in removed)
        assert shm_entries(dead) == []
        assert shm_entries(ring_name) == live_before
        assert live.popen.poll() is None and ring_stats(ring_name)["writer"]["alive"] is True
        assert not any(dead in line for line in run("gc").stdout.decode().splitlines())
    finally:
        reader.close()
    live.signal(signal.SIGTERM)
    assert live.wait() == 0
    assert shm_entries(ring_name) == []


# -- shutdown and the flusher ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c-to-group"])
def test_shutdown_drains_the_flusher_and_leaves_nothing(ring_name, serve, procs, how):
    srv = serve(ring_name, log_dir=True, new_session=True)
    with Producer.connect(srv.socket) as producer:  # right after ready: nothing acknowledged may be lost
        seqs = producer.publish_many([ev(i, ("console", "network")[i % 2]) for i in range(3000)])
    assert seqs == list(range(1, 3001))
    flusher = psutil.Process(flusher_of(ring_name)["pid"])
    assert flusher.ppid() == srv.pid and os.getpgid(flusher.pid) != os.getpgid(srv.pid)
    follower = procs("tail", ring_name, "--from-start")
    follower.wait_until(lambda: len(follower.out) == 3000, "tail printing 3000 lines")
    idle = Producer.connect(srv.socket)  # a producer still connected at shutdown
    stalled = connect(srv.socket)  # and one that sends but never reads its replies
    pusher = threading.Thread(target=push_unread, args=(stalled,), daemon=True)
    try:
        assert idle.publish(ev(3000)) == 3001
        pusher.start()
        if how == "sigterm":
            srv.signal(signal.SIGTERM)
        else:  # what Ctrl-C in a terminal does: SIGINT to serve's whole process group
            os.killpg(srv.pid, signal.SIGINT)
        assert srv.wait() == 0, srv.err
        with pytest.raises(ShmringError):
            idle.publish(ev(3001))
        pusher.join(DEADLINE_S)  # the server closed the stalled connection too
        assert not pusher.is_alive()
    finally:
        idle.close()
        stalled.close()
    assert follower.wait() == 0
    assert len(follower.out) == 3001
    assert not flusher.is_running()
    assert shm_entries(ring_name) == []
    assert not os.path.exists(srv.socket)
    logs = read_logs(srv.log_dir)
    assert sorted(e["seq"] for file in logs.values() for e in file) == list(range(1, 3002))
    assert {e["capture_session_id"] for file in logs.values() for e in file} == {srv.session_id}
    assert "_gaps.jsonl" not in os.listdir(srv.log_dir)
    assert any("closed after 3001 events; flusher exit status 0" in line for line in srv.err)
    assert not [line for line in srv.err if "Warning" in line or "Traceback" in line], srv.err  # its flusher's too


def test_events_acknowledged_right_after_ready_are_flushed(ring_name, serve):
    srv = serve(ring_name, log_dir=True)
    with Producer.connect(srv.socket) as producer:  # no waiting for anything but the ready line
        assert producer.publish_many([ev(i) for i in range(100)]) == list(range(1, 101))
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    assert [e["seq"] for e in read_logs(srv.log_dir).get("console", [])] == list(range(1, 101)), srv.err
    assert shm_entries(ring_name) == []


def test_a_flusher_that_dies_is_restarted_and_loses_nothing(ring_name, serve):
    srv = serve(ring_name, log_dir=True)
    with Producer.connect(srv.socket) as producer:
        producer.publish_many([ev(i) for i in range(200)])
        first = flusher_of(ring_name)
        victim = psutil.Process(first["pid"])
        assert victim.ppid() == srv.pid  # serve's own child, started by our serve
        victim.kill()
        victim.wait(DEADLINE_S)
        second = flusher_of(ring_name, not_pid=first["pid"])
        assert psutil.Process(second["pid"]).ppid() == srv.pid
        srv.wait_for_err("restarting it")
        producer.publish_many([ev(i) for i in range(200, 400)])
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0
    logs = read_logs(srv.log_dir)
    assert sorted(e["seq"] for e in logs["console"]) == list(range(1, 401))  # each exactly once
    assert "_gaps.jsonl" not in os.listdir(srv.log_dir)


# -- tail: drops, resume, filters ------------------------------------------------------------------------


def test_tail_reports_drops_resumes_and_filters(ring_name, serve, procs):
    srv = serve(ring_name, "--capacity", "8", "--data-bytes", str(1 << 20))
    shapes = [("console", "cdp", "standard"), ("network", "extension", "verbose"), ("page", "extension", "standard")]
    events = [ev(i, *shapes[i % 3]) for i in range(1, 41)]
    with Producer.connect(srv.socket) as producer:
        assert producer.publish_many(events)[-1] == 40

    lapped = run("tail", ring_name, "--from-start", "--no-follow")
    assert lapped.returncode == 0
    assert [e["seq"] for e in envelopes(lapped.stdout)] == list(range(33, 41))
    assert_one_stderr_line(lapped, "dropped 32 events")

    resumed = run("tail", ring_name, "--after", "36", "--no-follow")
    assert resumed.stderr == b"" and [e["seq"] for e in envelopes(resumed.stdout)] == [37, 38, 39, 40]

    def seqs_of(*flags):
        result = run("tail", ring_name, "--after", "32", "--no-follow", *flags)
        assert result.returncode == 0 and result.stderr == b""
        return [e["seq"] for e in envelopes(result.stdout)]

    def expected(pred):
        return [i for i in range(33, 41) if pred(shapes[i % 3])]

    assert seqs_of("--category", "network", "--category", "page") == expected(lambda s: s[0] in ("network", "page"))
    assert seqs_of("--source-kind", "extension", "--detail-level", "standard") == expected(
        lambda s: s[1] == "extension" and s[2] == "standard")
    assert seqs_of("--detail-level", "verbose") == expected(lambda s: s[2] == "verbose")

    beyond = run("tail", ring_name, "--after", "41")
    assert_one_line_error(beyond, "beyond the latest")

    # Without --from-start/--after: only what is published after it attached.
    live = procs("tail", ring_name)
    wait_for_reader(ring_name, live.pid)
    with Producer.connect(srv.socket) as producer:
        producer.publish(ev(41))
    live.wait_until(lambda: len(live.out) == 1, "the new event")
    assert envelopes(live.out)[0]["seq"] == 41
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0 and live.wait() == 0


# -- failures are one line ----------------------------------------------------------------------------------


def test_every_failure_is_one_line_without_a_traceback(ring_name, more_ring_names, serve, tmp_path):
    srv = serve(ring_name)
    missing, unused = more_ring_names(), more_ring_names()
    regular_file = tmp_path / "not-a-socket"
    regular_file.write_text("")
    cases = [
        (("tail", missing), "no ring"),
        (("stat", missing, "--json"), "no ring"),
        (("tail", "bad/name"), "invalid ring name"),
        (("tail", ring_name, "--category", "Bad"), "invalid category"),
        (("tail", ring_name, "--after", "-1"), "must be >= 0"),
        (("tail", ring_name, "--from-start", "--after", "3"), "not allowed with"),
        (("tail", ring_name, "--detail-level", "loud"), "invalid choice"),
        (("serve",), "required"),
        (("serve", unused, "--capacity", "abc"), "not an integer"),
        (("serve", unused, "--capacity", "3"), "power of two"),
        (("bogus",), "invalid choice"),
        ((), "required"),
        (("publish", "--socket", str(tmp_path / "nobody-listens.sock")), "cannot connect"),
        (("serve", unused, "--socket", str(tmp_path / "no" / "such" / "dir.sock")), "cannot listen"),
        (("serve", unused, "--socket", str(regular_file)), "not a socket"),
        (("serve", ring_name), "live writer"),
        (("serve", unused, "--socket", srv.socket), "in use"),
        (("serve", unused, "--socket", str(tmp_path / "fresh.sock"), "--max-connections", "0"), "at least 1"),
    ]
    running = [(subprocess.Popen([*SHMRING, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE), args, needle) for args, needle in cases]
    for proc, args, needle in running:
        out, err = proc.communicate(timeout=DEADLINE_S)
        assert_one_line_error(subprocess.CompletedProcess(args, proc.returncode, out, err), needle)
        assert out == b"", args
    # Permission denied: another user looks at this user's ring (mode 0600), where that can be arranged.
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if os.geteuid() == 0 and shutil.which("setpriv") and subprocess.run(
            [*as_nobody, sys.executable, "-c", "import shmring"], cwd="/", capture_output=True,
            timeout=DEADLINE_S).returncode == 0:
        denied = subprocess.run([*as_nobody, *SHMRING, "stat", ring_name], cwd="/", capture_output=True,
                                stdin=subprocess.DEVNULL, timeout=DEADLINE_S)
        assert_one_line_error(denied, "permission")
    assert shm_entries(unused) == [] and shm_entries(missing) == []
    assert srv.popen.poll() is None
    with Producer.connect(srv.socket) as producer:  # the failed attempts took nothing from the live server
        assert producer.publish(ev(1)) == 1


@pytest.mark.parametrize("name", ["../x", "", "a\nb", "r" * 200, "a+b", "-"])
def test_every_command_refuses_a_bad_ring_name_alike(name, tmp_path):
    expected = str(pytest.raises(ConfigError, ring_stats, name).value)  # the library says it too
    assert "\n" not in expected and "invalid ring name" in expected
    commands = {
        "stat": ["--json"],
        "tail": ["--no-follow"],
        "serve": ["--socket", str(tmp_path / "x.sock")],
        "flush": [str(tmp_path / "logs")],
        "capture-cdp": ["--cdp", "http://127.0.0.1:9", "--socket", str(tmp_path / "x.sock")],
        "producer": ["cdp"],
    }
    for command, extra in commands.items():
        result = run(command, name, *extra)
        line = assert_one_line_error(result, "invalid ring name")
        assert line == f"shmring {command}: argument name: {expected}; see `shmring {command} --help`", line
        assert result.stdout == b""
    assert os.listdir(tmp_path) == []  # nothing was started


# -- the demo ------------------------------------------------------------------------------------------------


def _demo_summary(stdout: str) -> dict:
    published = int(re.search(r"^published (\d+) events", stdout, re.M)[1])
    wrote = int(re.search(r"flusher: wrote (\d+) lines this run", stdout)[1])
    files = {os.path.basename(m[1]): int(m[2]) for m in re.finditer(r"^\s+(\S+\.jsonl): (\d+) lines$", stdout, re.M)}
    session = re.search(r"capture session (\S+)$", stdout, re.M)[1]
    readers = dict(re.findall(r"reader \[([^\]]+)\]: delivered (\d+)", stdout))
    return dict(published=published, wrote=wrote, files=files, session=session, readers=readers)


def test_demo_runs_and_counts_only_this_run(procs, tmp_path):
    runs = []
    for how in ("three seconds", "ctrl-c"):  # the second run reuses ./shmring-demo/
        if how == "ctrl-c":  # a long run, ended by Ctrl-C (SIGINT to its process group) once it is under way
            proc = procs("demo", "--seconds", "60", "--rate", "500", cwd=tmp_path, new_session=True)
            proc.wait_until(lambda: any(re.match(r"\s*\d+\.\ds published", line) for line in proc.out), "progress")
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc = procs("demo", "--seconds", "3", cwd=tmp_path)
        assert proc.wait(60) == 0, proc.err
        out, err = "\n".join(proc.out), "\n".join(proc.err)
        assert "Traceback" not in err
        summary = _demo_summary(out)
        assert summary["published"] > 0 and summary["wrote"] == summary["published"]
        assert sum(summary["files"].values()) == summary["published"]
        assert f"files are in {tmp_path / 'shmring-demo'}/" in out
        assert shm_entries(f"demo-{proc.pid}") == []
        runs.append(summary)

    logs = read_logs(tmp_path / "shmring-demo")
    for summary in runs:
        mine = {cat: [e for e in lines if e["capture_session_id"] == summary["session"]] for cat, lines in logs.items()}
        assert {f"{cat}.jsonl": len(lines) for cat, lines in mine.items() if lines} == summary["files"]
        assert sorted(e["seq"] for lines in mine.values() for e in lines) == list(range(1, summary["published"] + 1))
        assert int(summary["readers"]["console"]) == len(mine["console"])
        assert int(summary["readers"]["network,page"]) == len(mine["network"]) + len(mine.get("page", []))
    assert runs[0]["session"] != runs[1]["session"]
    assert sum(len(lines) for lines in logs.values()) == runs[0]["published"] + runs[1]["published"]
