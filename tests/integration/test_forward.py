"""shmring forward into real Redis and NATS JetStream servers: exactly once per seq, across kills and outages.

Each test starts its own sink servers (free loopback ports, temporary directories, JetStream on, Redis with AOF
appendfsync always) and `shmring forward` as a real subprocess. Readiness is a handshake: the forwarder is
running once the ring's registry shows it (role forwarder); the sink is caught up once it holds the last seq.
FORBIDDEN outcomes: a seq missing or twice in the sink, other bytes than the ring's, IDs that go down, a gap
marker whose range is not exact, a failure that is not one line.
"""

import contextlib
import inspect
import random
import signal
import threading
import time

import pytest

from shmring import CaptureSession, Event, Reader, Source
from shmring import RawRecord
from shmring.stats import ring_stats
from tests.integration.commands import assert_one_line_error, run
from tests.integration.sinks import DEADLINE_S, free_port, held

CATEGORIES = ("console", "network", "page", "system")
SINKS = ("redis", "nats")


def event(i: int) -> Event:
    category = CATEGORIES[i % 4]
    return Event(type=f"{category}.test", category=category, source=Source(kind="cdp"),
                 data={"i": i, "pad": "x" * 150})


def ring_bytes(name: str, upto: int) -> dict[int, bytes]:
    """The envelope bytes the ring holds, by seq (the ring is big enough to hold them all)."""
    out = {}
    with Reader.attach(name, after_seq=0) as reader:
        while reader.cursor < upto:
            for record in reader.read_raw_many(4096, timeout=DEADLINE_S):
                assert not record.dropped
                out[record.seq] = record.payload
    return out


def forwarder_pid(name: str, not_pid: int | None = None) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        for entry in ring_stats(name)["readers"]:
            if entry["role"] == "forwarder" and entry["alive"] and entry["pid"] != not_pid:
                return entry
        time.sleep(0.02)
    pytest.fail(f"no forwarder attached to {name} within {DEADLINE_S} s")


def wait_held(server, name: str, last_seq: int, timeout: float = DEADLINE_S) -> list[tuple]:
    """Until the sink holds `last_seq` (its top entry is at or past it); then everything it holds."""
    deadline = time.monotonic() + timeout
    while True:
        entries = held(server, name)
        if entries and entries[-1][0] >= last_seq:
            return entries
        if time.monotonic() > deadline:
            pytest.fail(f"the sink holds up to seq {entries[-1][0] if entries else 0}, not {last_seq}, "
                        f"after {timeout} s")
        time.sleep(0.1)


def assert_exactly_once(entries, expected: dict[int, bytes], session: str) -> None:
    seqs = [e[0] for e in entries]
    assert seqs == sorted(expected), "each seq once, in order"
    assert all(e[1] == session for e in entries)
    assert all(e[2] == expected[e[0]] for e in entries), "the exact envelope bytes"


def start_forwarder(procs, name, server, *extra):
    proc = procs("forward", name, "--to", server.url, *extra)
    entry = forwarder_pid(name, None)
    return proc, entry


# -- exactly once -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SINKS)
def test_exactly_once_over_four_categories(kind, ring_name, procs, sink_server):
    server = sink_server(kind)
    count = 50_000
    with CaptureSession.create(ring_name, capacity=65536) as session:
        proc, _ = start_forwarder(procs, ring_name, server)
        for i in range(count):
            session.publish(event(i))
        entries = wait_held(server, ring_name, count)
        assert_exactly_once(entries, ring_bytes(ring_name, count), session.capture_session_id)
        stat = run("stat", ring_name, "--json")
        assert b'"role": "forwarder"' in stat.stdout or b'"role":"forwarder"' in stat.stdout
        assert server.url.split("//")[1].split("/")[0] in stat.stdout.decode()  # its sink
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
        assert not [line for line in proc.err if "Traceback" in line]


# -- forwarder killed ----------------------------------------------------------------------------


@contextlib.contextmanager
def publishing(session, total: int, per_tick: int):
    """While the block runs: a thread publishing up to `total` events, `per_tick` of them every 10 ms."""
    stop = threading.Event()

    def publish():
        i = 0
        while not stop.is_set() and i < total:
            for _ in range(per_tick):
                session.publish(event(i))
                i += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        yield
    finally:
        stop.set()
        publisher.join()


@pytest.mark.parametrize("kind", SINKS)
def test_forwarder_sigkill_ten_times(kind, ring_name, procs, sink_server):
    server = sink_server(kind)
    rng = random.Random(16)
    with CaptureSession.create(ring_name, capacity=65536) as session:
        with publishing(session, 60_000, 200):
            pid = None
            for _ in range(10):
                proc = procs("forward", ring_name, "--to", server.url)
                pid = forwarder_pid(ring_name, pid)["pid"]
                time.sleep(rng.uniform(0.05, 0.25))  # a random point of its work, not a synchronisation
                proc.popen.kill()
                proc.wait()
        last = session.last_seq
        proc = procs("forward", ring_name, "--to", server.url)
        entries = wait_held(server, ring_name, last)
        assert_exactly_once(entries, ring_bytes(ring_name, last), session.capture_session_id)


# -- sink killed -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SINKS)
def test_sink_sigkill_and_restart_under_load(kind, ring_name, procs, sink_server):
    server = sink_server(kind)
    with CaptureSession.create(ring_name, capacity=65536) as session:
        proc, _ = start_forwarder(procs, ring_name, server)
        with publishing(session, 40_000, 100):
            wait_held(server, ring_name, 2000)
            server.kill()
            proc.wait_for_err("went away")
            server.start()
            wait_held(server, ring_name, session.last_seq + 2000)  # it forwards again, on its own
        last = session.last_seq
        entries = wait_held(server, ring_name, last)
        assert_exactly_once(entries, ring_bytes(ring_name, last), session.capture_session_id)
        assert len([line for line in proc.err if "went away" in line]) == 1, proc.err


# -- long outages ------------------------------------------------------------------------------------


def test_long_outage_without_archive_is_one_exact_gap(ring_name, procs, sink_server):
    server = sink_server("redis")
    with CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20) as session:
        proc, _ = start_forwarder(procs, ring_name, server)
        for i in range(500):
            session.publish(event(i))
        wait_held(server, ring_name, 500)
        server.signal(signal.SIGSTOP)
        try:
            stall(session, proc)
            for i in range(600, 6000):  # over five rings' worth while the sink is stopped
                session.publish(event(i))
        finally:
            server.signal(signal.SIGCONT)
        for i in range(6000, 6100):
            session.publish(event(i))
        entries = wait_held(server, ring_name, 6100)
    gaps = [e[2] for e in entries if e[2][0] == "gap"]
    assert len(gaps) == 1, gaps
    _, first, last, dropped = gaps[0]
    assert dropped == last - first + 1 > 0
    events = [e[0] for e in entries if e[2][0] != "gap"]
    assert events == [s for s in range(1, 6101) if not first <= s <= last], "everything else exactly once"
    assert [e[0] for e in entries] == sorted(e[0] for e in entries)


def stall(session, proc) -> None:
    """With the sink stopped: publish until the forwarder holds a batch it cannot write, and says so."""
    for i in range(500, 600):
        session.publish(event(i))
    proc.wait_for_err("went away")  # its socket timed out: it is stuck until the sink returns


HAS_REPLAY_MERGE = "archive" in inspect.signature(Reader.attach).parameters


@pytest.mark.skipif(not HAS_REPLAY_MERGE, reason="needs Reader.attach(archive=) (issue 13's replay-merge)")
@pytest.mark.parametrize("kind", SINKS)
def test_long_outage_with_archive_loses_nothing(kind, ring_name, procs, sink_server, tmp_path):
    from shmring import Flusher

    server = sink_server(kind)
    logs = str(tmp_path / "logs")
    with CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20) as session:
        flusher = Flusher(ring_name, logs, fsync="never")
        flushing = threading.Thread(target=flusher.run)
        flushing.start()
        proc, _ = start_forwarder(procs, ring_name, server, "--archive", logs)
        for i in range(500):
            session.publish(event(i))
        wait_held(server, ring_name, 500)
        server.signal(signal.SIGSTOP)
        try:
            stall(session, proc)
            for i in range(600, 6000):
                session.publish(event(i))
        finally:
            server.signal(signal.SIGCONT)
        entries = wait_held(server, ring_name, 6000, timeout=60)
        assert [e[0] for e in entries] == list(range(1, 6001))
        assert not [e for e in entries if e[2][0] == "gap"]
    flushing.join(DEADLINE_S)
    flusher.close()


# -- sessions ------------------------------------------------------------------------------------------


def test_two_sessions_into_one_redis_key_keep_ids_increasing(ring_name, procs, sink_server):
    server = sink_server("redis")
    sessions = []
    # a; a resumed; a fresh one; a once more, after the fresh one (its last entry is found below it)
    for first_seq, session_id in ((1, "session-a"), (101, "session-a"), (1, None), (201, "session-a")):
        with CaptureSession.create(ring_name, capture_session_id=session_id, first_seq=first_seq) as session:
            sessions.append(session.capture_session_id)
            proc, _ = start_forwarder(procs, ring_name, server)
            for i in range(100):
                session.publish(event(i))
            wait_until_top(server, ring_name, session.capture_session_id, session.last_seq)
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0
    entries = server.redis_entries(f"shmring:{ring_name}")
    ids = [tuple(map(int, entry_id.decode().split("-"))) for entry_id, _ in entries]
    assert ids == sorted(set(ids)), "strictly increasing IDs"
    found = [(e[1], e[0]) for e in held(server, ring_name) if e[2][0] != "gap"]
    assert found == ([("session-a", s) for s in range(1, 201)] + [(sessions[2], s) for s in range(1, 101)]
                     + [("session-a", s) for s in range(201, 301)])
    epochs = [ms for ms, _ in ids]
    assert epochs[0] == epochs[199] < epochs[200] == epochs[299] < epochs[300] == epochs[399], \
        "a resumed session on top continues its epoch; any other run gets a higher one"


def wait_until_top(server, name, session_id, seq):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        entries = held(server, name)
        if entries and entries[-1][:2] == (seq, session_id):
            return
        time.sleep(0.05)
    pytest.fail(f"seq {seq} of {session_id} not on top of the stream")


# -- serve --forward ---------------------------------------------------------------------------------------


def test_serve_supervises_a_forwarder_per_url(ring_name, procs, sink_server, tmp_path):
    from shmring import Producer

    redis_server, nats_server = sink_server("redis"), sink_server("nats")
    sock = str(tmp_path / "s.sock")
    serve = procs("serve", ring_name, "--socket", sock, "--forward", redis_server.url, "--forward", nats_server.url)
    serve.wait_for_err("serving ring")
    first = forwarder_pid(ring_name)
    with Producer.connect(sock) as producer:
        seqs = producer.publish_many([{"type": "console.log", "category": "console", "source": {"kind": "cdp"},
                                       "data": {"i": i}} for i in range(300)])
    for server in (redis_server, nats_server):
        assert [e[0] for e in wait_held(server, ring_name, seqs[-1])] == seqs
    import psutil

    psutil.Process(first["pid"]).kill()  # supervised: a new one takes over
    forwarder_pid(ring_name, first["pid"])
    serve.signal(signal.SIGTERM)
    assert serve.wait() == 0


# -- hostile settings --------------------------------------------------------------------------------------


def test_hostile_settings_get_one_line_errors(ring_name, sink_server):
    redis_server = sink_server("redis", password="right")
    nats_server = sink_server("nats", password="right")
    redis_server.redis().set(f"shmring:{ring_name}", "a string")
    nobody = free_port()
    with CaptureSession.create(ring_name):
        cases = [
            (["--to", "http://127.0.0.1:1/"], "redis://"),
            (["--to", f"redis://127.0.0.1:{nobody}/0"], "unreachable"),
            (["--to", f"nats://127.0.0.1:{nobody}"], "unreachable"),
            (["--to", redis_server.url.replace(":right@", ":wrong@")], "credentials"),
            (["--to", redis_server.url.replace(":right@", "")], "credentials"),
            (["--to", nats_server.url.replace(":right@", ":wrong@")], "credentials"),
            (["--to", redis_server.url], "another type"),
            (["--to", nats_server.url, "--maxlen", "10"], "--maxlen"),
            (["--to", redis_server.url, "--subject", "x"], "--subject"),
            (["--to", nats_server.url, "--stream", "a.b"], "stream name"),
        ]
        for args, needle in cases:
            assert_one_line_error(run("forward", ring_name, *args), needle)


def test_event_type_is_read_from_the_envelope_bytes():
    from shmring.forward_redis import event_type
    from shmring.schema import Envelope, encode_envelope

    for kind in ("console.log", 'we"ird\\type', "ünï"):
        payload = encode_envelope(Envelope("s", 1, Event(type=kind, category="console", source=Source(kind="cdp"),
                                                         ts=5, data={"type": "not this"})))
        assert event_type(bytes(payload)).decode() == kind
    assert RawRecord  # the record type the sinks take


def test_serve_resume_and_a_fresh_session_into_one_redis_key(ring_name, procs, sink_server, tmp_path):
    from shmring import Producer

    server = sink_server("redis")
    logs, sock = str(tmp_path / "logs"), str(tmp_path / "s.sock")
    sessions = []
    for extra in ((), ("--resume",), ()):
        serve = procs("serve", ring_name, "--socket", sock, "--log-dir", logs, "--forward", server.url, *extra)
        sessions.append(serve.wait_for_err("serving ring").split("capture session ")[1].split(",")[0])
        with Producer.connect(sock) as producer:
            producer.publish_many([{"type": "console.log", "category": CATEGORIES[i % 4], "source": {"kind": "cdp"},
                                    "data": {"i": i}} for i in range(100)])
        serve.signal(signal.SIGTERM)
        assert serve.wait() == 0  # the ring's close lets its forwarder take the rest, then it ends
    assert sessions[0] == sessions[1] != sessions[2]
    entries = server.redis_entries(f"shmring:{ring_name}")
    ids = [tuple(map(int, entry_id.decode().split("-"))) for entry_id, _ in entries]
    assert ids == sorted(set(ids)), "strictly increasing IDs"
    found = [(e[1], e[0]) for e in held(server, ring_name)]
    assert found == [(sessions[0], s) for s in range(1, 201)] + [(sessions[2], s) for s in range(1, 101)]


def test_maxlen_trims_approximately(ring_name, procs, sink_server):
    server = sink_server("redis")
    with CaptureSession.create(ring_name, capacity=65536) as session:
        start_forwarder(procs, ring_name, server, "--maxlen", "1000")
        for i in range(5000):
            session.publish(event(i))
        wait_held(server, ring_name, 5000)
    assert 1000 <= server.redis().xlen(f"shmring:{ring_name}") < 5000


def test_another_writer_above_this_session_stops_the_forwarder(ring_name, procs, sink_server):
    server = sink_server("redis")
    with CaptureSession.create(ring_name, capacity=65536) as session:
        proc, _ = start_forwarder(procs, ring_name, server)
        for i in range(100):
            session.publish(event(i))
        wait_held(server, ring_name, 100)
        server.redis().xadd(f"shmring:{ring_name}", {"other": "writer"}, id=f"{(1 << 63)}-1")
        for i in range(100, 200):
            session.publish(event(i))
        assert proc.wait() == 1
    line = [line for line in proc.err if line.startswith("shmring")]
    assert len(line) == 1 and "another session or forwarder writes into it" in line[0], proc.err
