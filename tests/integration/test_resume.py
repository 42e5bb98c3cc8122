"""``shmring serve --resume``: a capture session that survives a restart, a SIGKILL included.

Real serve processes with their real flusher children, small rings. The
invariant checked after every restart: each seq a producer was acknowledged
with ``{"seq": N}`` is in the log files exactly once, no seq is in them twice,
the restarted writer continues the same capture session after the last seq
any earlier writer assigned, and nothing is left in /dev/shm. Nothing sleeps
to synchronise: serve is ready when it prints "serving ring", the flusher's
lag and liveness are read from the ring's registry, and every wait is bounded.
"""

import fcntl
import json
import os
import signal
import threading
import time

import psutil
import pytest

from shmring import Archive, Producer, ResumeError
from shmring.resume import prepare_resume
from shmring.stats import ring_stats
from tests.integration.commands import (
    DEADLINE_S,
    SMALL,
    assert_one_line_error,
    connect,
    ev,
    flusher_of,
    jl,
    run,
    shm_entries,
)
from tests.procs import TIMEOUT_S, writer

# -- helpers -----------------------------------------------------------------------------------


def seqs_in_files(directory) -> dict[str, list[int]]:
    """capture_session_id -> every seq of its lines in DIR's category files (rotated ones included), as found."""
    out: dict[str, list[int]] = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".jsonl") and not entry.startswith("_"):
            with open(os.path.join(directory, entry), "rb") as f:
                for line in f.read().splitlines():
                    envelope = json.loads(line)
                    out.setdefault(envelope["capture_session_id"], []).append(envelope["seq"])
    return out


def gaps_in(directory) -> list[dict]:
    path = os.path.join(directory, "_gaps.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def assert_once_each(directory, session_id: str, acked: list[int]) -> list[int]:
    """Every acked seq is in the files exactly once, and no seq twice; only `session_id` is there. The sorted seqs."""
    found = seqs_in_files(directory)
    assert set(found) == {session_id}, found.keys()
    seqs = found[session_id]
    assert len(seqs) == len(set(seqs)), "a seq is in the files twice"
    missing = set(acked) - set(seqs)
    assert not missing, f"{len(missing)} acknowledged seqs are missing from the files, e.g. {sorted(missing)[:5]}"
    return sorted(seqs)


class StreamingPublisher:
    """A producer streaming through serve's socket until it goes away, recording every seq it is acknowledged."""

    BATCH = 64

    def __init__(self, path: str):
        self.sock = connect(path)
        self.acked: list[int] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = bytearray()
        i = 0
        try:
            while True:
                self.sock.sendall(b"".join(jl(ev(i + k, ("console", "network")[k % 2])) for k in range(self.BATCH)))
                i += self.BATCH
                replies = 0
                while replies < self.BATCH:
                    newline = buffer.find(b"\n")
                    if newline == -1:
                        chunk = self.sock.recv(1 << 16)
                        if not chunk:
                            return
                        buffer += chunk
                        continue
                    reply = json.loads(bytes(buffer[:newline]))
                    del buffer[: newline + 1]
                    replies += 1
                    if "seq" not in reply:
                        self.errors.append(reply.get("error", str(reply)))
                        continue
                    with self._lock:
                        self.acked.append(reply["seq"])
        except OSError:
            return  # the server was killed: what was acknowledged is recorded

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while self.count() < count:
            assert self._thread.is_alive(), f"the publisher stopped after {self.count()} acks: {self.errors}"
            assert time.monotonic() < deadline, f"only {self.count()} of {count} acks within {DEADLINE_S} s"
            time.sleep(0.01)

    def finish(self) -> list[int]:
        self._thread.join(DEADLINE_S)
        assert not self._thread.is_alive()
        self.sock.close()
        assert not self.errors, self.errors
        return self.acked


def kill(pid: int) -> None:
    """SIGKILL a process this test started (serve, or serve's own flusher child), and wait until it is gone."""
    proc = psutil.Process(pid)
    proc.kill()
    try:
        proc.wait(DEADLINE_S)
    except psutil.TimeoutExpired:
        pytest.fail(f"pid {pid} still there {DEADLINE_S} s after SIGKILL")


def flusher_child(srv) -> psutil.Process:
    """The live flusher attached to srv's ring, checked to be srv's own child."""
    flusher = psutil.Process(flusher_of(srv.name)["pid"])
    assert flusher.ppid() == srv.pid
    return flusher


def wait_until(predicate, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


@pytest.fixture
def suspended():
    """suspend(proc): SIGSTOP a flusher this test's serve started; at teardown, one still there is killed by pid."""
    stopped: list[psutil.Process] = []

    def suspend(proc: psutil.Process) -> None:
        stopped.append(proc)
        proc.suspend()

    yield suspend
    for proc in stopped:
        try:
            proc.kill()  # a process started by this test (psutil refuses a reused pid)
        except psutil.NoSuchProcess:
            pass


def stop(srv) -> None:
    srv.signal(signal.SIGTERM)
    assert srv.wait() == 0, srv.err


# -- clean restart -------------------------------------------------------------------------------


def test_a_clean_restart_with_resume_continues_the_session(ring_name, serve):
    first = serve(ring_name, *SMALL, log_dir=True)
    with Producer.connect(first.socket) as producer:
        assert producer.publish_many([ev(i) for i in range(100)]) == list(range(1, 101))
    stop(first)
    assert shm_entries(ring_name) == []

    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert second.session_id == first.session_id
    assert any(f"resuming capture session {first.session_id}" in line and "at seq 101" in line for line in second.err)
    with Producer.connect(second.socket) as producer:
        assert producer.publish(ev(100)) == 101
        assert producer.publish_many([ev(i) for i in range(101, 110)]) == list(range(102, 111))
    stats = ring_stats(ring_name)
    assert (stats["capture_session_id"], stats["first_seq"], stats["latest_seq"]) == (first.session_id, 101, 110)
    # A reader from the start without the archive is told seqs 1-100 were never in this ring.
    tail = run("tail", ring_name, "--from-start", "--no-follow", "--json-drops")
    lines = [json.loads(line) for line in tail.stdout.decode().splitlines()]
    assert lines[0] == {"dropped": 100, "from_seq": 1, "to_seq": 100}
    assert [e["seq"] for e in lines[1:]] == list(range(101, 111))
    # stat shows the ring's first seq and, with --archive, the history the directory holds.
    shown = run("stat", ring_name, "--archive", second.log_dir)
    assert shown.returncode == 0 and "first seq 101" in shown.stdout.decode()
    assert f"history {first.session_id}  seqs 1-110  events 110" in shown.stdout.decode()
    as_json = json.loads(run("stat", ring_name, "--archive", second.log_dir, "--json").stdout)
    assert as_json["first_seq"] == 101
    assert [(h["capture_session_id"], h["first_seq"], h["last_seq"], h["this_ring"]) for h in as_json["archive"]] == [
        (first.session_id, 1, 110, True)]
    stop(second)
    assert any("closed after 10 events (last seq 110)" in line for line in second.err), second.err

    assert assert_once_each(second.log_dir, first.session_id, list(range(1, 111))) == list(range(1, 111))
    assert gaps_in(second.log_dir) == []
    [history] = Archive(second.log_dir).sessions()
    assert (history.capture_session_id, history.first_seq, history.last_seq, history.events) == (
        first.session_id, 1, 110, 110)

    third = serve(ring_name, *SMALL, log_dir=True)  # without --resume: a new session, from seq 1
    assert third.session_id != first.session_id
    with Producer.connect(third.socket) as producer:
        assert producer.publish(ev(0)) == 1
    stop(third)
    assert [s.capture_session_id for s in Archive(third.log_dir).sessions()] == [first.session_id, third.session_id]


# -- SIGKILL ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["serve_first", "flusher_first"])
def test_resume_after_sigkill_under_load_loses_and_repeats_nothing(ring_name, serve, order):
    first = serve(ring_name, *SMALL, log_dir=True)
    flusher = flusher_child(first)
    publisher = StreamingPublisher(first.socket)
    publisher.wait_for(5000)  # a ring of 1024: the flusher has gated the writer many times over
    victims = [first.pid, flusher.pid] if order == "serve_first" else [flusher.pid, first.pid]
    for pid in victims:
        kill(pid)
    acked = publisher.finish()
    assert acked == list(range(1, len(acked) + 1))
    assert shm_entries(ring_name), "the dead writer's ring should still be in /dev/shm"
    ring_latest = ring_stats(ring_name)["latest_seq"]
    assert ring_latest >= acked[-1]

    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    
    assert second.session_id == first.session_id
    resumed = int(next(line for line in second.err if "resuming capture session" in line).rsplit(" ", 1)[1])
    assert resumed > ring_latest >= acked[-1]  # after every seq the dead writer assigned (a half-written one too)
    after = StreamingPublisher(second.socket)
    after.wait_for(500)
    stop(second)
    new = after.finish()
    assert new[0] == resumed and new == list(range(resumed, resumed + len(new)))

    seqs = assert_once_each(second.log_dir, first.session_id, acked + new)
    assert seqs[-1] == new[-1]
    # Nothing is lost that was in the ring: a gap could only be a slot the writer was killed in the middle of.
    lost = [(g["from_seq"], g["to_seq"]) for g in gaps_in(second.log_dir)]
    assert all(acked[-1] < a <= b < resumed for a, b in lost), lost
    assert set(seqs) | {s for a, b in lost for s in range(a, b + 1)} == set(range(1, new[-1] + 1))
    assert shm_entries(ring_name) == []


def test_a_dead_writers_ring_is_drained_into_the_directory(ring_name, serve, suspended):
    """The flusher stopped (SIGSTOP) while producers were acknowledged, then serve and the flusher are killed:
    the acknowledged events are only in the dead ring, and --resume writes them into the files."""
    first = serve(ring_name, *SMALL, "--gate-stall-s", "60", log_dir=True)
    flusher = flusher_child(first)
    with Producer.connect(first.socket) as producer:
        assert producer.publish_many([ev(i) for i in range(300)]) == list(range(1, 301))
        wait_until(lambda: flusher_of(ring_name)["cursor"] == 300, "the flusher taking seq 300")
        suspended(flusher)
        assert producer.publish_many([ev(i, "network") for i in range(300, 1000)]) == list(range(301, 1001))
    kill(first.pid)
    kill(flusher.pid)
    on_disk = set(seqs_in_files(first.log_dir).get(first.session_id, []))
    assert not on_disk & set(range(301, 1001)), "these were published after the flusher stopped"

    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert any(f"drained 700 events of capture session {first.session_id}" in line for line in second.err)
    assert second.session_id == first.session_id
    with Producer.connect(second.socket) as producer:
        assert producer.publish(ev(1000)) == 1001
    stop(second)
    assert assert_once_each(second.log_dir, first.session_id, []) == list(range(1, 1002))
    assert gaps_in(second.log_dir) == []


def test_resume_waits_for_the_dead_writers_live_flusher(ring_name, serve, suspended):
    """serve is killed but its flusher child lives on: --resume lets it finish the ring, and never runs a second
    flusher into the directory beside it. One that does not finish (stopped) is a clear error."""
    first = serve(ring_name, *SMALL, log_dir=True)
    flusher = flusher_child(first)
    with Producer.connect(first.socket) as producer:
        assert producer.publish_many([ev(i) for i in range(200)]) == list(range(1, 201))
    wait_until(lambda: flusher_of(ring_name)["cursor"] == 200, "the flusher taking seq 200")
    suspended(flusher)
    kill(first.pid)
    with pytest.raises(ResumeError, match=f"flusher \\(pid {flusher.pid}\\) is still attached") as caught:
        prepare_resume(ring_name, first.log_dir, wait_s=0.5)
    assert caught.value.pid == flusher.pid
    flusher.resume()  # it sees the writer gone, finishes, exits; serve --resume waits for that
    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert not flusher.is_running() or flusher.status() == psutil.STATUS_ZOMBIE
    with Producer.connect(second.socket) as producer:
        assert producer.publish(ev(200)) == 201
    stop(second)
    assert assert_once_each(second.log_dir, first.session_id, []) == list(range(1, 202))


# -- hostile and edge cases -------------------------------------------------------------------------------


def test_resume_refuses_what_it_cannot_continue_in_one_line(ring_name, more_ring_names, serve, tmp_path):
    assert_one_line_error(run("serve", ring_name, "--resume"), "--resume needs --log-dir")
    assert_one_line_error(run("serve", ring_name, "--resume", "--log-dir", str(tmp_path / "a"), "--session-id", "x"),
                          "do not give a session id")
    # Another resume of the same directory in progress (it holds the directory's lock): refused.
    busy_dir = tmp_path / "busy"
    busy_dir.mkdir(mode=0o700)
    held = os.open(busy_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert_one_line_error(run("serve", ring_name, "--log-dir", str(busy_dir), "--resume"),
                              "another `serve --resume` is resuming")
    finally:
        os.close(held)
    assert shm_entries(ring_name) == []
    # A live writer owns the ring: refused, and neither it nor its directory is touched.
    live = serve(ring_name, *SMALL, log_dir=True)
    with Producer.connect(live.socket) as producer:
        assert producer.publish_many([ev(i) for i in range(10)]) == list(range(1, 11))
    wait_until(lambda: flusher_of(ring_name)["cursor"] == 10, "the flusher taking seq 10")
    before = seqs_in_files(live.log_dir)
    refused = run("serve", ring_name, "--log-dir", live.log_dir, "--resume")
    assert_one_line_error(refused, "live writer", f"pid {live.pid}")
    assert seqs_in_files(live.log_dir) == before
    with Producer.connect(live.socket) as producer:
        assert producer.publish(ev(10)) == 11
    stop(live)


def test_an_empty_directory_starts_a_new_session_and_says_so(ring_name, serve, tmp_path):
    srv = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert any("no capture session in" in line and "starting a new one" in line for line in srv.err)
    with Producer.connect(srv.socket) as producer:
        assert producer.publish(ev(0)) == 1
    stop(srv)


def test_a_dead_ring_of_another_session_is_left_alone(ring_name, serve, spawn, tmp_path):
    first = serve(ring_name, *SMALL, log_dir=True)
    with Producer.connect(first.socket) as producer:
        producer.publish_many([ev(i) for i in range(20)])
    stop(first)
    before = seqs_in_files(first.log_dir)
    # Another writer's ring under the same name, of another session, with events, dies.
    ready, done = spawn.Event(), spawn.Event()
    other = spawn.Process(target=writer, args=(ring_name, 5, ready, None, done),
                          kwargs=dict(kwargs=dict(capture_session_id="other-session", capacity=64,
                                                  data_bytes=1 << 20), then="hold"))
    other.start()
    assert done.wait(TIMEOUT_S)
    kill(other.pid)
    refused = run("serve", ring_name, *SMALL, "--log-dir", first.log_dir, "--resume")
    line = assert_one_line_error(refused, "dead writer", "other-session", first.session_id, "shmring gc")
    assert "seqs up to 5" in line
    assert seqs_in_files(first.log_dir) == before and ring_stats(ring_name)["capture_session_id"] == "other-session"
    gc = run("gc", ring_name)  # this ring only: the other tests' dead rings are theirs
    assert gc.returncode == 0 and gc.stdout.decode().splitlines() == [f"removed {ring_name}"]
    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert second.session_id == first.session_id
    stop(second)


def test_an_empty_dead_ring_of_another_session_is_replaced(ring_name, serve, spawn):
    first = serve(ring_name, *SMALL, log_dir=True)
    with Producer.connect(first.socket) as producer:
        producer.publish_many([ev(i) for i in range(20)])
    stop(first)
    ready = spawn.Event()
    other = spawn.Process(target=writer, args=(ring_name, 0, ready),
                          kwargs=dict(kwargs=dict(capture_session_id="other-session", capacity=64,
                                                  data_bytes=1 << 20), then="hold"))
    other.start()
    assert ready.wait(TIMEOUT_S)
    kill(other.pid)
    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert any("holds no events" in line for line in second.err)
    assert second.session_id == first.session_id
    with Producer.connect(second.socket) as producer:
        assert producer.publish(ev(20)) == 21
    stop(second)


def test_a_dead_ring_is_continued_into_a_directory_that_has_none(ring_name, serve, spawn, tmp_path):
    """A writer that had no flusher dies: --resume into a new directory keeps its events and its session."""
    ready, done = spawn.Event(), spawn.Event()
    dead = spawn.Process(target=writer, args=(ring_name, 50, ready, None, done),
                         kwargs=dict(kwargs=dict(capture_session_id="kept", capacity=64, data_bytes=1 << 20),
                                     then="hold"))
    dead.start()
    assert done.wait(TIMEOUT_S)
    kill(dead.pid)
    srv = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert srv.session_id == "kept"
    with Producer.connect(srv.socket) as producer:
        assert producer.publish(ev(50)) == 51
    stop(srv)
    assert assert_once_each(srv.log_dir, "kept", []) == list(range(1, 52))


def test_resume_continues_after_every_seq_any_writer_assigned(ring_name, serve, spawn):
    """A writer of the session dies with a slot half-written (seq 31, never acknowledged): the drain records it
    as lost, and the resumed writer starts after it. A gap recorded past the files' last line counts too."""
    first = serve(ring_name, *SMALL, log_dir=True)
    with Producer.connect(first.socket) as producer:
        assert producer.publish_many([ev(i) for i in range(20)]) == list(range(1, 21))
    stop(first)
    ready, done = spawn.Event(), spawn.Event()
    dead = spawn.Process(target=writer, args=(ring_name, 10, ready, None, done),
                         kwargs=dict(kwargs=dict(capture_session_id=first.session_id, first_seq=21, capacity=64,
                                                 data_bytes=1 << 20), then="half_write"))
    dead.start()
    assert done.wait(TIMEOUT_S)
    kill(dead.pid)
    second = serve(ring_name, *SMALL, "--resume", log_dir=True)
    assert any("drained 10 events" in line and "at seq" not in line for line in second.err), second.err
    with Producer.connect(second.socket) as producer:
        assert producer.publish(ev(31)) == 32
    stop(second)
    assert assert_once_each(second.log_dir, first.session_id, []) == [*range(1, 31), 32]
    assert [(g["from_seq"], g["to_seq"]) for g in gaps_in(second.log_dir)] == [(31, 31)]

    with open(os.path.join(second.log_dir, "_gaps.jsonl"), "a") as f:  # a loss recorded past the last line
        f.write(json.dumps({"capture_session_id": first.session_id, "from_seq": 33, "to_seq": 40, "dropped": 8,
                            "ts": 0}) + "\n")
    plan = prepare_resume(ring_name, second.log_dir)
    assert (plan.capture_session_id, plan.first_seq, plan.drained, plan.dead_ring) == (first.session_id, 41, 0, False)
