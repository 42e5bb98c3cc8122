"""The flusher across real processes: gating, crashes, restarts, gaps, rotation, errors.

The writer runs in the test process; flushers run as separate processes
(``python -m shmring flush NAME DIR``, as serve runs them, or a spawned child
with injected faults) and are killed by pid. Nothing sleeps to synchronise: the tests wait
for a flusher to attach or to reach a seq by polling the ring's registry with
a deadline. FORBIDDEN outcomes: a published event missing from the files
without a gap record covering it, a seq twice, a line that is not valid JSON,
a gap recorded twice or with the wrong range, a file outside the directory.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from shmring import CaptureSession, Event, Flusher, FlushError, InvalidEvent, Reader, Source
from shmring.flusher import CHECKPOINT_FILE, GAPS_FILE
from shmring.layout import DETAIL_CODES, KIND_CODES
from shmring.schema import Envelope, EventPreparer, encode_envelope
from tests.integration.flusher_procs import (
    CATEGORIES,
    FLUSH,
    finish,
    poll_until,
    publish,
    stderr_of,
    wait_attached,
    wait_written,
)
from tests.procs import TIMEOUT_S, faulty_flusher, make_event

# -- helpers ---------------------------------------------------------------------------


OLD_ENTRY = [sys.executable, "-m", "shmring.flusher"]


def kill(proc) -> None:
    """SIGKILL one flusher we started, by pid, and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(TIMEOUT_S)


def read_lines(path: Path) -> list[dict]:
    """Every line of a JSONL file: whole (newline-terminated) and valid JSON."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path.name} ends with a partial line"
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def category_files(directory: Path) -> dict[str, list[Path]]:
    """category -> its files in order: <c>.1.jsonl, <c>.2.jsonl, ..., then <c>.jsonl."""
    out: dict[str, list[tuple[int, Path]]] = {}
    for path in directory.iterdir():
        if path.name.startswith("_") or not path.name.endswith(".jsonl"):
            continue
        parts = path.name.split(".")
        number = int(parts[1]) if len(parts) == 3 else 1 << 60
        out.setdefault(parts[0], []).append((number, path))
    for numbered in out.values():
        rotated = sorted(n for n, _ in numbered if n != 1 << 60)
        assert rotated == list(range(1, len(rotated) + 1)), f"rotated files are not numbered 1..n: {rotated}"
    return {c: [p for _, p in sorted(numbered)] for c, numbered in out.items()}


def gaps(directory: Path, session_id: str) -> list[tuple[int, int]]:
    path = directory / GAPS_FILE
    if not path.exists():
        return []
    out = []
    for gap in read_lines(path):
        assert set(gap) == {"capture_session_id", "from_seq", "to_seq", "dropped", "ts"}
        assert gap["dropped"] == gap["to_seq"] - gap["from_seq"] + 1 > 0
        if gap["capture_session_id"] == session_id:
            out.append((gap["from_seq"], gap["to_seq"]))
    return out


def check_files(directory: Path, session_id: str, expected: dict[int, str], gap_ranges=()) -> None:
    """The files hold exactly `expected` (seq -> category) of this session, once each, in order,
    and _gaps.jsonl records exactly `gap_ranges` for it."""
    found: dict[int, str] = {}
    for category, paths in category_files(directory).items():
        last = 0
        for path in paths:
            for env in read_lines(path):
                if env["capture_session_id"] != session_id:
                    continue
                seq = env["seq"]
                assert seq > last, f"{path.name}: seq {seq} after {last}"
                last = seq
                assert env["event"]["category"] == category
                assert env["event"]["data"]["i"] == seq
                assert seq not in found, f"seq {seq} written twice"
                found[seq] = category
    missing = sorted(set(expected) - set(found))
    assert not missing, f"{len(missing)} events missing, first {missing[:5]}"
    assert found == expected
    assert gaps(directory, session_id) == list(gap_ranges)


# -- kill at random points --------------------------------------------------------------


@pytest.mark.slow
def test_flusher_killed_at_random_points_loses_and_duplicates_nothing(ring_name, flushers, tmp_path):
    rng = random.Random(20240611)
    total = 100_000
    out = tmp_path / "logs"
    # One kill right after a restart (the new flusher may still be recovering).
    kill_points = sorted(rng.sample(range(2_000, total - 2_000), 5))
    kill_points.append(kill_points[2] + rng.randint(0, 50))
    kill_points.sort()
    session = CaptureSession.create(ring_name, capacity=4096, data_bytes=4 << 20, flusher_grace_s=30,
                                    capture_session_id='kill-"test"\\1')
    expected = {}
    procs = [flushers(ring_name, out)]
    wait_attached(session, procs[0])
    done = 0
    for point in kill_points + [total]:
        expected.update(publish(session, done + 1, point, rng=rng))
        done = point
        if point == total:
            break
        kill(procs[-1])
        procs.append(flushers(ring_name, out))
    session.close()  # waits for the live flusher to write everything
    finish(procs[-1])
    for proc in procs[:-1]:
        assert proc.returncode == -signal.SIGKILL
        assert "Traceback" not in stderr_of(proc)
    check_files(out, session.capture_session_id, expected)
    assert set(expected.values()) == set(CATEGORIES)
    assert json.loads((out / CHECKPOINT_FILE).read_bytes())["seq"] == total


# -- gating ---------------------------------------------------------------------------------


@pytest.mark.parametrize("capacity, data_bytes, pad", [(256, 1 << 20, 0), (1024, 1 << 20, 2000)],
                         ids=["slots-full", "data-area-full"])
def test_burst_of_ten_times_capacity_is_complete_and_plain_readers_still_drop(ring_name, flushers, tmp_path,
                                                                             capacity, data_bytes, pad):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=capacity, data_bytes=data_bytes, flusher_grace_s=30)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    plain = Reader.attach(ring_name, after_seq=0)
    count = 10 * capacity
    expected = {}
    for i in range(1, count + 1):
        category = CATEGORIES[i % 3]
        assert session.publish(make_event(i, category, pad=pad)).seq == i
        expected[i] = category
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected)
    for _ in plain:  # the plain reader never held the writer back: it was lapped
        pass
    plain.close()
    assert plain.dropped > 0
    assert plain.delivered + plain.dropped == count


# -- dead flusher and gap records ------------------------------------------------------------


def test_dead_flusher_writer_resumes_after_grace_and_gap_is_recorded_exactly(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    capacity, grace = 64, 0.5
    session = CaptureSession.create(ring_name, capacity=capacity, data_bytes=1 << 20, flusher_grace_s=grace)
    first = flushers(ring_name, out)
    wait_attached(session, first)
    expected = publish(session, 1, 40)
    wait_written(session, first.pid, 40)
    kill(first)
    killed = time.monotonic()
    publish(session, 41, 440)  # blocks at 105 (40 + capacity + 1) for the grace period, then overwrites
    blocked_for = time.monotonic() - killed
    assert grace <= blocked_for < grace + 10, blocked_for
    before_us = time.time_ns() // 1000
    second = flushers(ring_name, out)
    wait_attached(session, second)
    wait_written(session, second.pid, 440)
    after_us = time.time_ns() // 1000
    expected.update({i: CATEGORIES[i % len(CATEGORIES)] for i in range(440 - capacity + 1, 441)})
    session.close()
    finish(second)
    check_files(out, session.capture_session_id, expected, gap_ranges=[(41, 440 - capacity)])
    (gap,) = read_lines(out / GAPS_FILE)
    assert gap == dict(capture_session_id=session.capture_session_id, from_seq=41, to_seq=376, dropped=336,
                       ts=gap["ts"])
    assert before_us <= gap["ts"] <= after_us


def test_a_plain_reader_attaching_does_not_cut_a_dead_flushers_grace_short(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    grace = 1.0
    session = CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20, flusher_grace_s=grace)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    publish(session, 1, 10)
    wait_written(session, proc.pid, 10)
    kill(proc)
    killed = time.monotonic()
    with Reader.attach(ring_name):  # a plain reader may reuse a free entry, never the dead flusher's
        publish(session, 11, 200)
    blocked_for = time.monotonic() - killed
    assert grace <= blocked_for < grace + 10, f"the writer overwrote unflushed events after {blocked_for:.2f} s"
    session.close()


def test_dead_flusher_is_waited_for_when_only_the_data_area_is_full(ring_name, flushers, tmp_path):
    # 2 KB events: 1 MiB of data holds ~500 of them, the 1024 slots twice as
    # many. The flusher has written seq 1 and dies; seq 2 is then overwritten
    # by the data area wrapping, long before the slots wrap.
    out = tmp_path / "logs"
    grace = 1.0
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20, flusher_grace_s=grace)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    session.publish(make_event(1, pad=2000))
    wait_written(session, proc.pid, 1)
    kill(proc)
    killed = time.monotonic()
    for i in range(2, 1001):
        session.publish(make_event(i, pad=2000))
    blocked_for = time.monotonic() - killed
    assert grace <= blocked_for < grace + 10, f"the writer overwrote unflushed events after {blocked_for:.2f} s"
    session.close()


def test_the_first_event_published_after_a_late_flusher_attaches_is_gated(ring_name, tmp_path):
    # The ring has lapped (1..1024 are gone) when the flusher attaches. From
    # then on nothing it has not written may be overwritten: publishing 2049
    # must wait for the flusher to take 1025, whose slot it reuses.
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20, flusher_grace_s=30)
    expected = {s: c for s, c in publish(session, 1, 2048).items() if s > 1024}
    core = session._res.core
    real_gate, gated, published = core.gate, threading.Event(), threading.Event()

    def gate(seq, needed_low):  # observe the writer consulting its gates
        gated.set()
        real_gate(seq, needed_low)

    core.gate = gate

    def writer():
        expected.update(publish(session, 2049, 2049))
        published.set()
        session.close()

    with Flusher(ring_name, out) as flusher:  # attached; it reads only in run()
        closer = threading.Thread(target=writer)
        closer.start()
        poll_until(lambda: gated.is_set() or published.is_set(), "the writer to gate or to publish")
        stats = flusher.run()
        closer.join(TIMEOUT_S)
        assert not closer.is_alive()
    assert stats["ending"] == "closed"
    check_files(out, session.capture_session_id, expected, gap_ranges=[(1, 1024)])


def test_new_session_in_old_directory_appends_from_its_oldest_retained_event(ring_name, more_ring_names, flushers,
                                                                            tmp_path):
    out = tmp_path / "logs"
    with CaptureSession.create(ring_name, capture_session_id="old-session") as old:
        proc = flushers(ring_name, out)
        wait_attached(old, proc)
        old_expected = publish(old, 1, 100)
    finish(proc)
    # The new session laps its ring before any flusher is attached: seqs 1..136 are gone.
    new = CaptureSession.create(more_ring_names(), capture_session_id="new-session", capacity=64,
                                data_bytes=1 << 20)
    new_expected = publish(new, 1, 200)
    proc = flushers(new.name, out)
    wait_attached(new, proc)
    wait_written(new, proc.pid, 200)
    new.close()
    finish(proc)
    check_files(out, "old-session", old_expected)
    check_files(out, "new-session", {s: c for s, c in new_expected.items() if s > 136}, gap_ranges=[(1, 136)])
    for paths in category_files(out).values():  # appended after the old session's lines, never in between
        sessions = [env["capture_session_id"] for p in paths for env in read_lines(p)]
        assert sessions == sorted(sessions, key=lambda s: s == "new-session")


# -- close -------------------------------------------------------------------------------------


def test_close_right_after_publishing_waits_for_the_flusher(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20, flusher_grace_s=30)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    envelopes = [session.publish(make_event(i, ("console", "page")[i % 2])) for i in range(1, 5001)]
    session.close()
    # Complete the moment close() returns: each line is the envelope's exact encoding.
    for category in ("console", "page"):
        lines = (out / f"{category}.jsonl").read_bytes().split(b"\n")
        assert lines == [encode_envelope(e) for e in envelopes if e.event.category == category] + [b""]
    assert [e for e in os.listdir("/dev/shm") if ring_name in e] == []
    finish(proc)
    # Once it has exited (until then it may be writing its checkpoint's temporary file): files open lazily.
    assert sorted(os.listdir(out)) == [CHECKPOINT_FILE, "console.jsonl", "page.jsonl"]


def test_close_waits_for_a_flusher_restarted_within_the_grace_period(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20, flusher_grace_s=20)
    first = flushers(ring_name, out)
    wait_attached(session, first)
    expected = publish(session, 1, 1000)
    kill(first)
    closer = threading.Thread(target=session.close)
    closer.start()
    second = flushers(ring_name, out)
    closer.join(15)  # well inside the grace period: close() returned because the new flusher caught up
    assert not closer.is_alive()
    check_files(out, session.capture_session_id, expected)
    finish(second)


def test_close_with_a_dead_flusher_is_bounded_by_the_grace_period(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20, flusher_grace_s=0.5)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    publish(session, 1, 100)
    kill(proc)
    started = time.monotonic()
    session.close()
    assert 0.5 <= time.monotonic() - started < 5
    assert [e for e in os.listdir("/dev/shm") if ring_name in e] == []


# -- restart ------------------------------------------------------------------------------------


def test_sigterm_flushes_and_exits_zero_then_a_new_flusher_resumes(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=256, data_bytes=1 << 20, flusher_grace_s=30)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected = publish(session, 1, 100)
    wait_written(session, proc.pid, 100)
    os.kill(proc.pid, signal.SIGTERM)
    finish(proc)
    assert json.loads((out / CHECKPOINT_FILE).read_bytes())["seq"] == 100
    check_files(out, session.capture_session_id, expected)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected.update(publish(session, 101, 150))
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected)


def test_restart_without_checkpoint_counts_lines_of_a_non_ascii_session_id(ring_name, flushers, tmp_path):
    # A crash before the first checkpoint leaves lines but no _checkpoint.json:
    # the restart must recognise the session's lines, whatever its id.
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=256, data_bytes=1 << 20, flusher_grace_s=30,
                                    capture_session_id="séance-ü-1")
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected = publish(session, 1, 100)
    wait_written(session, proc.pid, 100)
    kill(proc)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected.update(publish(session, 101, 120))
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected)


def test_partial_last_line_from_a_crash_mid_write_is_repaired(ring_name, spawn, flushers, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=256, data_bytes=1 << 20, flusher_grace_s=30)
    results, ready = spawn.Queue(), spawn.Event()
    crashing = spawn.Process(target=faulty_flusher, args=(ring_name, str(out), results, ready, "crash", "category", 2))
    crashing.start()
    assert ready.wait(TIMEOUT_S)
    expected = publish(session, 1, 50, categories=("console",))
    first_file = out / "console.jsonl"
    poll_until(lambda: (first_file.exists() and first_file.stat().st_size) or not crashing.is_alive(),
               "the first write")
    expected.update(publish(session, 51, 200, categories=("console",)))  # the second write crashes
    crashing.join(TIMEOUT_S)
    assert crashing.exitcode == -signal.SIGKILL
    assert not (out / "console.jsonl").read_bytes().endswith(b"\n")  # the crash left half a line
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected.update(publish(session, 201, 220, categories=("console",)))
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected)


# -- rotation -----------------------------------------------------------------------------------


def test_rotation_keeps_resume_and_gap_records_working(ring_name, flushers, tmp_path):
    out = tmp_path / "logs"
    capacity, limit = 64, 3000
    session = CaptureSession.create(ring_name, capacity=capacity, data_bytes=1 << 20, flusher_grace_s=0.5)
    cats = ("console", "network")
    args = ("--max-file-bytes", str(limit))
    first = flushers(ring_name, out, *args)
    wait_attached(session, first)
    expected = publish(session, 1, 300, categories=cats)
    wait_written(session, first.pid, 300)
    kill(first)
    publish(session, 301, 500, categories=cats)  # the dead flusher is waited for 0.5 s, then overtaken
    second = flushers(ring_name, out, *args)
    wait_attached(session, second)
    wait_written(session, second.pid, 500)
    expected.update({i: cats[i % 2] for i in range(500 - capacity + 1, 501)})
    kill(second)
    third = flushers(ring_name, out, *args)
    wait_attached(session, third)
    expected.update(publish(session, 501, 700, categories=cats))
    session.close()
    finish(third)
    check_files(out, session.capture_session_id, expected, gap_ranges=[(301, 500 - capacity)])
    for paths in category_files(out).values():
        assert len(paths) >= 5, paths
        for older, newer in zip(paths, paths[1:]):  # rotated just before the next line would cross the limit
            first_line = newer.read_bytes().split(b"\n", 1)[0] + b"\n"
            assert older.stat().st_size <= limit < older.stat().st_size + len(first_line)
        assert paths[-1].stat().st_size <= limit


# -- fsync policies, lifecycle, errors --------------------------------------------------------


def run_in_process(session, flusher, first, last):
    """Publish first..last, then close the session while `flusher` runs here; return run()'s stats."""
    expected = publish(session, first, last)
    closer = threading.Thread(target=session.close)
    closer.start()
    stats = flusher.run()
    closer.join(TIMEOUT_S)
    assert not closer.is_alive()
    return expected, stats


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_fsync_policies(ring_name, tmp_path, monkeypatch, policy):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
            synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with Flusher(ring_name, out, fsync=policy, fsync_every_lines=50, fsync_every_s=60) as flusher:
        expected, stats = run_in_process(session, flusher, 1, 200)
    assert stats["ending"] == "closed" and stats["lines"] == 200 and stats["last_seq"] == 200
    check_files(out, session.capture_session_id, expected)
    checkpoints = synced.count(CHECKPOINT_FILE + ".tmp")  # one per sync round, after the data files
    data_syncs = len(synced) - checkpoints
    if policy == "always":  # every line, each before the checkpoint that counts it
        assert data_syncs == 200 and checkpoints >= 200
        assert all(name.endswith(".jsonl") for name in synced[0:400:2])
        assert all(name == CHECKPOINT_FILE + ".tmp" for name in synced[1:400:2])
    elif policy == "batch":  # every 50 lines (the 60 s timer never fires), and at the end
        assert 4 <= checkpoints <= 6 and 4 <= data_syncs <= 4 * len(CATEGORIES), synced
    else:
        assert synced == []
    assert json.loads((out / CHECKPOINT_FILE).read_bytes())["seq"] == 200


def test_batch_policy_checkpoints_after_its_interval_without_more_lines(ring_name, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20)
    flusher = Flusher(ring_name, out, fsync="batch", fsync_every_lines=10**6, fsync_every_s=0.05)
    stop = threading.Event()
    stats = {}
    runner = threading.Thread(target=lambda: stats.update(flusher.run(stop)))
    runner.start()
    try:
        publish(session, 1, 10)

        def checkpointed():
            path = out / CHECKPOINT_FILE
            return path.exists() and json.loads(path.read_bytes())["seq"] == 10

        poll_until(checkpointed, "the timed checkpoint", timeout=10)
    finally:
        stop.set()
        runner.join(TIMEOUT_S)
        flusher.close()
        session.close()
    assert stats["ending"] == "stopped"


def open_paths(*needles: str) -> list[str]:
    """Paths of this process's open fds that contain any of `needles`."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if any(needle in path for needle in needles):
            out.append(path)
    return sorted(out)


def test_run_after_close_is_a_clear_error_and_no_handle_leaks(ring_name, tmp_path):
    out = tmp_path / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20)
    flusher = Flusher(ring_name, out)
    expected, stats = run_in_process(session, flusher, 1, 50)
    assert stats["ending"] == "closed"
    assert open_paths(str(out))  # the files are still open until close()
    flusher.close()
    flusher.close()
    assert open_paths(str(out), ring_name) == []  # no file, ring or registry handle left
    with pytest.raises(FlushError, match="closed"):
        flusher.run()
    check_files(out, session.capture_session_id, expected)


@pytest.mark.parametrize("target, limit", [("category", 3000), ("checkpoint", 10), ("gaps", 20)])
def test_full_disk_stops_with_flush_error_and_a_restart_resumes_without_loss(ring_name, spawn, flushers, tmp_path,
                                                                             target, limit):
    out = tmp_path / "logs"
    capacity = 1024
    session = CaptureSession.create(ring_name, capacity=capacity, data_bytes=1 << 20, flusher_grace_s=30)
    expected, gap_ranges = {}, []
    if target == "gaps":  # the flusher starts with a gap to record: seqs 1..1024 were overwritten
        expected = {s: c for s, c in publish(session, 1, 2 * capacity).items() if s > capacity}
        gap_ranges = [(1, capacity)]
    results, ready = spawn.Queue(), spawn.Event()
    failing = spawn.Process(target=faulty_flusher, args=(ring_name, str(out), results, ready, "enospc", target, limit))
    failing.start()
    assert ready.wait(TIMEOUT_S)
    if target != "gaps":  # fewer than the capacity: nothing is overwritten once the failed flusher is gone
        expected.update(publish(session, 1, 900))
    outcome = results.get(timeout=TIMEOUT_S)
    failing.join(TIMEOUT_S)
    assert failing.exitcode == 0
    assert outcome["error"] is not None, outcome
    assert "No space left on device" in outcome["error"] and str(out) in outcome["error"], outcome["error"]
    assert outcome["run_again"] != "ran" and "new" in outcome["run_again"], outcome
    assert outcome["open_fds"] == []
    # The full disk cut a line short, which the restart must repair.
    if target == "category":
        assert any(not p.read_bytes().endswith(b"\n") for ps in category_files(out).values() for p in ps)
    elif target == "gaps":
        assert not (out / GAPS_FILE).read_bytes().endswith(b"\n")
    else:
        assert len((out / (CHECKPOINT_FILE + ".tmp")).read_bytes()) == limit
    checkpoint = out / CHECKPOINT_FILE
    if checkpoint.exists():
        assert json.loads(checkpoint.read_bytes())["seq"] <= session.last_seq  # consistent: whole and valid
    proc = flushers(ring_name, out)  # space is back
    wait_attached(session, proc)
    last = session.last_seq
    expected.update(publish(session, last + 1, last + 100))
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected, gap_ranges)


def test_a_flusher_that_failed_keeps_the_writer_waiting_for_its_successor(ring_name, spawn, flushers, tmp_path):
    out = tmp_path / "logs"
    capacity = 256
    session = CaptureSession.create(ring_name, capacity=capacity, data_bytes=1 << 20, flusher_grace_s=30)
    results, ready = spawn.Queue(), spawn.Event()
    failing = spawn.Process(target=faulty_flusher,
                            args=(ring_name, str(out), results, ready, "enospc", "category", 3000))
    failing.start()
    assert ready.wait(TIMEOUT_S)
    expected = dict(publish(session, 1, 100))
    outcome = results.get(timeout=TIMEOUT_S)
    failing.join(TIMEOUT_S)
    assert outcome["error"] is not None and "No space left on device" in outcome["error"], outcome
    # Three rings' worth follows while no flusher runs: the writer must hold it for the successor.
    more, done = {}, threading.Event()

    def publish_more():
        more.update(publish(session, 101, 100 + 3 * capacity))
        done.set()

    publisher = threading.Thread(target=publish_more)
    publisher.start()
    assert not done.wait(1.0)  # held: the ring is full of events the failed flusher never wrote
    proc = flushers(ring_name, out)  # space is back
    publisher.join(TIMEOUT_S)
    assert done.is_set()
    expected.update(more)
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected)  # every seq once, no gap


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only); yields (mount point, remount(size))."""
    point = tmp_path / "small"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def remount(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True, timeout=TIMEOUT_S)

    try:
        yield point, remount
    finally:
        subprocess.run(["umount", "-l", str(point)], check=True, timeout=TIMEOUT_S)


def test_real_full_tmpfs_stops_the_flusher_and_a_restart_after_space_is_back_loses_nothing(ring_name, flushers,
                                                                                         small_tmpfs):
    point, remount = small_tmpfs
    out = point / "logs"
    session = CaptureSession.create(ring_name, capacity=1024, data_bytes=1 << 20, flusher_grace_s=30)
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected = {}
    for i in range(1, 901):  # ~350 KB into 64 KiB; fewer than the capacity, so nothing is overwritten
        assert session.publish(make_event(i, CATEGORIES[i % 4], pad=200)).seq == i
        expected[i] = CATEGORIES[i % 4]
    err = finish(proc, expect_rc=1)
    assert "No space left on device" in err and str(out) in err, err
    checkpoint = out / CHECKPOINT_FILE
    if checkpoint.exists():
        assert json.loads(checkpoint.read_bytes())["seq"] < 900
    remount("4m")  # space is back
    proc = flushers(ring_name, out)
    wait_attached(session, proc)
    expected.update(publish(session, 901, 1000))
    session.close()
    finish(proc)
    check_files(out, session.capture_session_id, expected)


# -- hostile categories ---------------------------------------------------------------------------


def test_invalid_categories_are_rejected_at_publish(ring_name):
    with CaptureSession.create(ring_name) as session:
        for category in ("../x", "/etc/passwd", "Console", "_gaps", "a.1", "a" * 33, "", "a\0b", "é"):
            with pytest.raises(InvalidEvent):
                session.publish(make_event(1, category))
        assert session.last_seq == 0


def inject_raw(session, category_field: bytes) -> int:
    """Publish an event whose slot carries `category_field` as is, bypassing validation (a corrupted ring)."""
    event = EventPreparer().prepare(Event(type="console.log", category="console", source=Source(kind="cdp")))
    with session._lock:
        seq = session.last_seq + 1
        payload = encode_envelope(Envelope(session.capture_session_id, seq, event))
        session._res.core.write(seq, payload, KIND_CODES["cdp"], DETAIL_CODES["standard"], 0, event.ts,
                                category_field.ljust(32, b"\0")[:32])
        session._res.core.last_seq = seq
    return seq


@pytest.mark.parametrize("field", [b"../escape", b"/tmp/shmring-escape-test", b"Console", b"_gaps", b"_checkpoint",
                                   b"page.1", b"a/b", b"x\0y", b"\xff\xfe", b"con sole", b"a-b", b"9lives"])
def test_a_category_that_is_not_a_valid_file_name_never_reaches_the_file_system(ring_name, tmp_path, field):
    out = tmp_path / "nested" / "logs"
    # A short grace: close() waits that long for a successor of the flusher that stopped.
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20, flusher_grace_s=0.2) as session:
        publish(session, 1, 3, categories=("console",))
        bad = inject_raw(session, field)
        with Flusher(ring_name, out) as flusher:
            stop = threading.Event()
            timer = threading.Timer(TIMEOUT_S, stop.set)  # a bound, should the flusher not stop by itself
            timer.start()
            try:
                with pytest.raises(FlushError, match="invalid category"):
                    flusher.run(stop)
            finally:
                timer.cancel()
        assert bad == 4
    allowed = {out.parent, out, out / "console.jsonl", out / CHECKPOINT_FILE}
    assert set(tmp_path.rglob("*")) <= allowed, sorted(tmp_path.rglob("*"))
    assert not os.path.exists("/tmp/shmring-escape-test.jsonl")


# -- the command, under both names ---------------------------------------------------------------


@pytest.mark.parametrize("entry", [FLUSH, OLD_ENTRY], ids=["shmring flush", "python -m shmring.flusher"])
def test_both_entries_flush_until_the_writer_dies_and_say_so(ring_name, flushers, spawn, tmp_path, entry):
    from shmring.stats import ring_stats
    from tests.procs import writer

    out = tmp_path / "logs"
    ready, go, done = spawn.Event(), spawn.Event(), spawn.Event()
    holder = spawn.Process(target=writer, args=(ring_name, 50, ready),
                           kwargs=dict(go=go, done=done, categories=CATEGORIES, then="hold",
                                       kwargs=dict(capacity=256, data_bytes=1 << 20, flusher_grace_s=30)))
    holder.start()
    assert ready.wait(TIMEOUT_S)
    proc = flushers(ring_name, out, "--fsync", "always", "--max-file-bytes", "1024", entry=entry)
    poll_until(lambda: any(r["pid"] == proc.pid and r["gating"] for r in ring_stats(ring_name)["readers"])
               or proc.poll() is not None, "the flusher to attach")
    go.set()
    assert done.wait(TIMEOUT_S)
    holder.kill()
    holder.join(TIMEOUT_S)
    assert proc.wait(TIMEOUT_S) == 0, stderr_of(proc)
    lines = stderr_of(proc).splitlines()
    assert lines == [f"shmring flusher: the writer of {ring_name!r} died; flushed up to seq 50"]
    session_id = json.loads((out / CHECKPOINT_FILE).read_bytes())["capture_session_id"]
    check_files(out, session_id, {i: CATEGORIES[i % len(CATEGORIES)] for i in range(1, 51)})
    assert any(len(paths) > 1 for paths in category_files(out).values())  # --max-file-bytes was taken


@pytest.mark.parametrize("entry", [FLUSH, OLD_ENTRY], ids=["shmring flush", "python -m shmring.flusher"])
def test_both_entries_refuse_a_missing_ring_in_one_line(ring_name, flushers, tmp_path, entry):
    proc = flushers(ring_name, tmp_path / "logs", entry=entry)
    assert proc.wait(TIMEOUT_S) == 1
    lines = stderr_of(proc).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shmring: no ring {ring_name!r} on this machine"), lines
