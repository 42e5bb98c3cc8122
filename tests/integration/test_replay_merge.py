"""Replay-merge: a reader with ``archive=DIR`` reads what its ring no longer holds from a real flusher's files.

Every test runs the writer in this process, a real ``shmring flush`` process into DIR, and the reader in
a spawned process, on rings of 1,024 slots, so that the files, not the ring, hold the history. The
reader reports every seq it got, every drop with its range, and its accounting; FORBIDDEN outcomes: a
seq twice or out of order, a seq skipped that the files or the ring held, a drop whose range is not
exactly what neither holds, an event whose body is not its seq's, another session's event, accounting
that does not add up (delivered + dropped + filtered == cursor - start).
"""

import os
import subprocess
import time

import msgspec
import pytest

from shmring import CaptureSession, Filter, Reader
from shmring.ring import hotpath
from shmring.stats import ring_stats
from tests.integration.commands import DEADLINE_S, SHMRING
from tests.integration.prepared import flush_session
from tests.procs import TIMEOUT_S, make_event

CATEGORIES = ("console", "network", "page", "interaction")
CAPACITY = 1024


# -- the reader child ----------------------------------------------------------------------------------
def merge_reader(name, directory, results, ready, resume, after_seq, until_seq, mode="many", filter_kwargs=None,
                 pause_at=None):
    """Attach with archive=`directory`, read with `mode` until the cursor reaches `until_seq`; at `pause_at`
    report ("paused", cursor, replaying) and wait for `resume`; then report ("done", summary)."""
    from shmring.ring import hotpath

    filt = Filter(**filter_kwargs) if filter_kwargs else None
    reader = Reader.attach(name, after_seq=after_seq, filter=filt, archive=directory)
    ready.set()
    seqs, drops, bad, replayed, ending = [], [], 0, False, "reached"
    iterator = iter(reader) if mode == "iter" else None
    try:
        while reader.cursor < until_seq:
            if mode == "read":
                step = reader.read(TIMEOUT_S)
                steps = [] if step is None else [step]
            elif mode == "iter":
                steps = [next(iterator)]
            elif mode == "raw":
                steps = reader.read_raw_many(timeout=TIMEOUT_S)
            else:
                steps = reader.read_many(timeout=TIMEOUT_S)
            if not steps:
                ending = "timeout"
                break
            replayed |= reader._replaying
            for step in steps:
                if step.dropped:
                    drops.append((step.dropped_from, step.dropped_to, step.dropped))
                    continue
                if mode == "raw":
                    seq = step.seq
                    bad += b'"i":%d,' % seq not in step.payload or step.category != CATEGORIES[seq % 4]
                else:
                    seq = step.envelope.seq
                    event = step.envelope.event
                    bad += (msgspec.json.decode(event.data)["i"] != seq or event.category != CATEGORIES[seq % 4]
                            or step.envelope.capture_session_id != reader.capture_session_id)
                seqs.append(seq)
            if pause_at is not None and reader.cursor >= pause_at:
                pause_at = None
                results.put(("paused", reader.cursor, reader._replaying))
                resume.wait(TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001  (reported, so the test shows it)
        ending = f"{type(exc).__name__}: {exc}"
    results.put(("done", {"seqs": seqs, "drops": drops, "bad": bad, "replayed": replayed, "ending": ending,
                          "cursor": reader.cursor, "start": reader.start_seq, "delivered": reader.delivered,
                          "dropped": reader.dropped, "filtered": reader.filtered, "in_ring": not reader._replaying,
                          "pure": hotpath is None}))
    reader.close()


class Child:
    """A merge_reader process with its queue and events."""

    def __init__(self, spawn, name, directory, after_seq, until_seq, **kwargs):
        self.results = spawn.Queue()
        self.ready = spawn.Event()
        self.resume = spawn.Event()
        self.proc = spawn.Process(target=merge_reader, args=(name, str(directory), self.results, self.ready,
                                                             self.resume, after_seq, until_seq), kwargs=kwargs)
        self.proc.start()
        assert self.ready.wait(TIMEOUT_S), "the reader did not attach"

    def next(self, kind: str):
        got = self.results.get(timeout=TIMEOUT_S)
        assert got[0] == kind, got
        return got[1:]

    def done(self) -> dict:
        summary = self.next("done")[0]
        self.proc.join(TIMEOUT_S)
        assert summary["ending"] == "reached", summary["ending"]
        assert summary["delivered"] + summary["dropped"] + summary["filtered"] == summary["cursor"] - summary["start"]
        return summary


# -- the writer and the flusher ----------------------------------------------------------------------
def publish(session, first: int, last: int) -> None:
    for i in range(first, last + 1):
        assert session.publish(make_event(i, CATEGORIES[i % 4])).seq == i


def start_flusher(procs, name, directory, *extra):
    proc = procs("flush", name, str(directory), *extra)
    deadline = time.monotonic() + DEADLINE_S
    while not any(e["role"] == "flusher" and e["pid"] == proc.pid for e in ring_stats(name)["readers"]):
        assert proc.popen.poll() is None and time.monotonic() < deadline, f"the flusher did not attach: {proc.err}"
        time.sleep(0.01)
    return proc


def wait_flushed(name: str, seq: int) -> None:
    """Until the flusher has committed `seq` (written it, or recorded it as a gap)."""
    deadline = time.monotonic() + DEADLINE_S
    while not any(e["role"] == "flusher" and e["cursor"] >= seq for e in ring_stats(name)["readers"]):
        assert time.monotonic() < deadline, f"the flusher did not reach seq {seq}"
        time.sleep(0.01)


def oldest_in_ring(name: str) -> int:
    return ring_stats(name)["oldest_seq"]


def new_ring(name):
    return CaptureSession.create(name, capacity=CAPACITY, data_bytes=4 << 20)


# -- full history --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,path", [("many", "compiled"), ("read", "compiled"), ("raw", "compiled"),
                                       ("iter", "compiled"), ("read", "pure"), ("raw", "pure")])
def test_full_history_then_the_ring_every_seq_once_in_order(ring_name, procs, spawn, tmp_path, monkeypatch,
                                                            mode, path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 50_000)
        assert oldest_in_ring(ring_name) > 48_000  # the ring holds only the last 1,024
        if path == "pure":
            monkeypatch.setenv("SHMRING_PURE_PYTHON", "1")  # the child's import reads it
        elif hotpath is None:
            pytest.skip("the accelerator is not built here (or SHMRING_PURE_PYTHON is set): pure Python only")
        else:
            monkeypatch.delenv("SHMRING_PURE_PYTHON", raising=False)
        child = Child(spawn, ring_name, directory, 0, 55_000, mode=mode)
        publish(session, 50_001, 55_000)  # while it reads
        summary = child.done()
    assert summary["pure"] is (path == "pure")
    assert summary["drops"] == [] and summary["bad"] == 0
    assert summary["seqs"] == list(range(1, 55_001))
    assert summary["delivered"] == 55_000 and summary["filtered"] == 0 and summary["replayed"]
    assert summary["in_ring"]  # it rejoined the ring


def test_without_an_archive_the_same_history_is_a_drop(ring_name, procs, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 5_000)
        oldest = oldest_in_ring(ring_name)
        with Reader.attach(ring_name, after_seq=0) as reader:
            first = reader.read(TIMEOUT_S)
        assert (first.dropped, first.dropped_from, first.dropped_to) == (oldest - 1, 1, oldest - 1)
        with Reader.attach(ring_name, after_seq=0, archive=directory) as reader:
            first = reader.read(TIMEOUT_S)
        assert first.envelope is not None and first.envelope.seq == 1


def test_filtered_history_is_exactly_that_category_and_the_rest_is_filtered(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 50_000)
        children = [Child(spawn, ring_name, directory, 0, 55_000, mode=mode, filter_kwargs={"categories": ["page"]})
                    for mode in ("many", "raw")]
        publish(session, 50_001, 55_000)
        summaries = [child.done() for child in children]
    page = [seq for seq in range(1, 55_001) if CATEGORIES[seq % 4] == "page"]
    for summary in summaries:
        assert summary["drops"] == [] and summary["bad"] == 0
        assert summary["seqs"] == page
        assert summary["delivered"] == len(page) and summary["filtered"] == 55_000 - len(page)


def test_a_detail_level_filter_judges_history_as_the_ring_does(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        for i in range(1, 6_001):
            session.publish(make_event(i, CATEGORIES[i % 4], detail="verbose" if i % 3 else "minimal"))
        child = Child(spawn, ring_name, directory, 0, 6_000, mode="many", filter_kwargs={"detail_levels": ["minimal"]})
        summary = child.done()
    assert summary["drops"] == [] and summary["seqs"] == list(range(3, 6_001, 3))
    assert summary["filtered"] == 6_000 - 2_000


# -- lapped ---------------------------------------------------------------------------------------------
def test_a_reader_lapped_mid_replay_continues_from_the_files_without_a_drop(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 20_000)
        child = Child(spawn, ring_name, directory, 0, 40_000, mode="many", pause_at=5_000)
        cursor, replaying = child.next("paused")
        assert replaying and cursor < 20_000 - CAPACITY  # it stopped while reading the files
        publish(session, 20_001, 40_000)  # the files grow, the ring moves on by 20 rings
        child.resume.set()
        summary = child.done()
    assert summary["drops"] == [] and summary["bad"] == 0 and summary["seqs"] == list(range(1, 40_001))


def test_a_reader_lapped_in_the_ring_falls_back_on_the_files_and_rejoins(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 3_000)
        child = Child(spawn, ring_name, directory, 3_000, 16_000, mode="raw", pause_at=3_500)
        publish(session, 3_001, 3_500)
        cursor, replaying = child.next("paused")
        assert cursor == 3_500 and not replaying  # in the ring
        publish(session, 3_501, 15_000)  # laps it 11 times over
        assert oldest_in_ring(ring_name) > 3_501
        child.resume.set()
        publish(session, 15_001, 16_000)
        summary = child.done()
    assert summary["drops"] == [] and summary["bad"] == 0 and summary["seqs"] == list(range(3_001, 16_001))
    assert summary["replayed"] and summary["in_ring"]


# -- loss --------------------------------------------------------------------------------------------------
def test_events_published_before_any_flusher_are_one_exact_drop(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    with new_ring(ring_name) as session:
        publish(session, 1, 5_000)  # no flusher yet: the ring keeps only the last 1,024
        lost = oldest_in_ring(ring_name) - 1
        assert lost == 5_000 - CAPACITY
        # One reader before any flusher exists: nothing can bring those seqs back.
        early = Child(spawn, ring_name, directory, 0, 5_000, mode="many")
        start_flusher(procs, ring_name, directory)  # it records 1..lost in _gaps.jsonl
        # One reader right away, while the flusher may not yet have recorded the gap: it waits for it.
        late = Child(spawn, ring_name, directory, 0, 8_000, mode="read")
        publish(session, 5_001, 8_000)
        wait_flushed(ring_name, 8_000)
        publish(session, 8_001, 8_000 + 3 * CAPACITY)  # the ring moves past 5,001..8,000: the files hold them
        after = Child(spawn, ring_name, directory, 0, 8_000 + 3 * CAPACITY, mode="raw")
        results = [early.done(), late.done(), after.done()]
    for summary, last in zip(results, (5_000, 8_000, 8_000 + 3 * CAPACITY)):
        assert summary["drops"] == [(1, lost, lost)], summary["drops"]
        assert summary["seqs"] == list(range(lost + 1, last + 1)) and summary["bad"] == 0
    assert (directory / "_gaps.jsonl").read_text().count('"from_seq":1,') == 1


def test_a_torn_line_at_the_end_of_a_file_is_a_drop_of_its_seq(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory, "--max-file-bytes", "20000")
        publish(session, 1, 8_000)
        wait_flushed(ring_name, 8_000)
        rotated = directory / "network.1.jsonl"
        data = rotated.read_bytes()
        last = data[data.rstrip(b"\n").rfind(b"\n") + 1:]
        torn_seq = int(last.split(b'"seq":')[1].split(b",")[0])
        with open(rotated, "r+b") as f:
            f.truncate(len(data) - 20)  # the last line loses its end and its newline, as in a crash
        child = Child(spawn, ring_name, directory, 0, 8_000, mode="many")
        summary = child.done()
    assert torn_seq < 8_000 - CAPACITY
    assert summary["drops"] == [(torn_seq, torn_seq, 1)]
    assert summary["seqs"] == [seq for seq in range(1, 8_001) if seq != torn_seq] and summary["bad"] == 0


# -- files -------------------------------------------------------------------------------------------------
def test_replay_across_rotated_files_while_the_flusher_rotates(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory, "--max-file-bytes", "20000")
        publish(session, 1, 20_000)
        child = Child(spawn, ring_name, directory, 0, 30_000, mode="raw")
        publish(session, 20_001, 30_000)  # rotating on, while it replays
        summary = child.done()
        # From the middle: the rotated files wholly before seq 12,345 are passed over, the rest read.
        with Reader.attach(ring_name, after_seq=12_345, archive=directory) as reader:
            middle = []
            while reader.cursor < 30_000:
                middle += [r.seq for r in reader.read_raw_many(timeout=TIMEOUT_S)]
    assert middle == list(range(12_346, 30_001))
    assert len(list(directory.glob("console.*.jsonl"))) >= 20
    assert summary["drops"] == [] and summary["bad"] == 0 and summary["seqs"] == list(range(1, 30_001))


def test_two_sessions_in_one_directory_stay_apart(ring_name, more_ring_names, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as first:
        start_flusher(procs, ring_name, directory)
        publish(first, 1, 6_000)
    other = more_ring_names()
    with new_ring(other) as second:
        start_flusher(procs, other, directory)
        publish(second, 1, 4_000)
        child = Child(spawn, other, directory, 0, 5_000, mode="many")
        publish(second, 4_001, 5_000)
        summary = child.done()
    assert summary["drops"] == [] and summary["bad"] == 0 and summary["seqs"] == list(range(1, 5_001))
    assert first.capture_session_id != second.capture_session_id


def test_an_archive_that_is_not_a_directory_is_refused(ring_name, tmp_path):
    from shmring import ConfigError

    with new_ring(ring_name):
        with pytest.raises(ConfigError, match="is not a directory"):
            Reader.attach(ring_name, after_seq=0, archive=tmp_path / "missing")
        assert ring_stats(ring_name)["readers"] == []  # nothing left attached


# -- tail --archive -----------------------------------------------------------------------------------------
def test_tail_with_an_archive_prints_the_whole_history(ring_name, procs, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 5_000)
        wait_flushed(ring_name, 5_000)

        def tail(*args):
            return subprocess.run([*SHMRING, "tail", ring_name, "--no-follow", *args], capture_output=True,
                                  timeout=DEADLINE_S, check=False)

        full = tail("--archive", str(directory), "--from-start")
        after = tail("--archive", str(directory), "--after", "1234", "--category", "page")
        plain = tail("--from-start")
        last = tail("--archive", str(directory), "-n", "3000")
        last_page = tail("--archive", str(directory), "-n", "1500", "--category", "page")
    seqs = [int(line.split(b'"seq":')[1].split(b",")[0]) for line in full.stdout.splitlines()]
    assert full.returncode == 0 and full.stderr == b"" and seqs == list(range(1, 5_001))
    seqs = [int(line.split(b'"seq":')[1].split(b",")[0]) for line in after.stdout.splitlines()]
    assert after.returncode == 0 and seqs == [s for s in range(1_235, 5_001) if CATEGORIES[s % 4] == "page"]
    assert b"dropped %d events, seq 1-%d" % (5_000 - CAPACITY, 5_000 - CAPACITY) in plain.stderr  # as before
    seqs = [int(line.split(b'"seq":')[1].split(b",")[0]) for line in last.stdout.splitlines()]
    assert last.returncode == 0 and last.stderr == b"" and seqs == list(range(2_001, 5_001))  # more than the ring
    seqs = [int(line.split(b'"seq":')[1].split(b",")[0]) for line in last_page.stdout.splitlines()]
    assert seqs == [s for s in range(1, 5_001) if CATEGORIES[s % 4] == "page"][-1_500:]


def test_a_continued_session_reads_its_earlier_seqs_from_the_files(ring_name, procs, spawn, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as before:
        start_flusher(procs, ring_name, directory)
        publish(before, 1, 3_000)
    session_id = before.capture_session_id
    with CaptureSession.create(ring_name, capacity=CAPACITY, data_bytes=4 << 20, capture_session_id=session_id,
                               first_seq=3_001) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 3_001, 4_000)
        with Reader.attach(ring_name, after_seq=0) as plain:
            first = plain.read(TIMEOUT_S)
        assert (first.dropped_from, first.dropped_to) == (1, 3_000)  # never in this ring
        child = Child(spawn, ring_name, directory, 0, 5_000, mode="many")
        publish(session, 4_001, 5_000)
        summary = child.done()
    assert summary["drops"] == [] and summary["bad"] == 0 and summary["seqs"] == list(range(1, 5_001))


@pytest.mark.parametrize("complete", [True, False])
def test_a_rotation_between_listing_and_opening_hides_no_file_from_the_replay(ring_name, tmp_path, monkeypatch,
                                                                              complete):
    """The flusher renames <c>.jsonl to <c>.N.jsonl whenever it rotates: here it does so right after the replay
    listed the directory. The replay (complete=True) lists again and reads every file; a plain Archive read,
    which opens each file when it gets to it, would miss the renamed one (shown, so this test can fail)."""
    from shmring import Archive

    directory = tmp_path / "logs"
    session_id, _ = flush_session(ring_name, directory, 4_000, max_file_bytes=20_000)
    rotated = max(int(p.name.split(".")[1]) for p in directory.glob("console.*.jsonl"))
    archive = Archive(directory)
    opened = archive._open_file

    def open_after_a_rotation(dir_fd, name):
        if name == "console.jsonl" and not (directory / f"console.{rotated + 1}.jsonl").exists():
            os.rename(directory / "console.jsonl", directory / f"console.{rotated + 1}.jsonl")
            (directory / "console.jsonl").touch(mode=0o600)
        return opened(dir_fd, name)

    monkeypatch.setattr(archive, "_open_file", open_after_a_rotation)
    steps = list(archive.read(session_id, until_seq=4_000, _complete=complete))
    drops = [(s.dropped_from, s.dropped_to) for s in steps if s.envelope is None]
    seqs = [s.envelope.seq for s in steps if s.envelope is not None]
    if complete:
        assert drops == [] and seqs == list(range(1, 4_001))
    else:
        assert drops and len(seqs) < 4_000


def test_a_reader_waits_for_a_stalled_flusher_instead_of_reporting_a_drop(ring_name, procs, tmp_path):
    """The flusher is SIGSTOPped: the writer retires its gate and laps it. The seqs after its last commit are in
    neither the ring nor (yet) the files, and the flusher is alive, so the reader waits; once the flusher moves
    again it records them as a gap, and the reader reports exactly that range, then everything after it."""
    import json
    import signal

    directory = tmp_path / "logs"
    with CaptureSession.create(ring_name, capacity=CAPACITY, data_bytes=4 << 20, gate_stall_s=0.2) as session:
        flusher = start_flusher(procs, ring_name, directory)
        publish(session, 1, 2_000)
        wait_flushed(ring_name, 2_000)
        flusher.signal(signal.SIGSTOP)
        try:
            publish(session, 2_001, 6_000)  # waits 0.2 s for the stopped gate, retires it, laps it
            oldest = oldest_in_ring(ring_name)
            assert oldest > 2_001
            with Reader.attach(ring_name, after_seq=0, archive=directory) as reader:
                got = []
                while len(got) < 2_000:
                    got += reader.read_many(timeout=TIMEOUT_S)
                assert [s.envelope.seq for s in got] == list(range(1, 2_001))
                assert reader.read_many(timeout=0.3) == [] and reader.dropped == 0  # waiting, not dropping
            flusher.signal(signal.SIGCONT)
            with Reader.attach(ring_name, after_seq=1_000, archive=directory) as reader:
                steps = []
                while reader.cursor < 6_000:
                    steps += reader.read_raw_many(timeout=TIMEOUT_S)
        finally:
            flusher.signal(signal.SIGCONT)
    gaps = [json.loads(line) for line in (directory / "_gaps.jsonl").read_text().splitlines()]
    assert [(g["from_seq"], g["to_seq"]) for g in gaps] == [(2_001, gaps[0]["to_seq"])]
    lost = gaps[0]["to_seq"]
    assert oldest - 1 <= lost < 6_000
    assert [(s.dropped_from, s.dropped_to) for s in steps if s.dropped] == [(2_001, lost)]
    assert [s.seq for s in steps if not s.dropped] == [*range(1_001, 2_001), *range(lost + 1, 6_001)]


def test_an_old_after_seq_resumes_from_the_files(ring_name, procs, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 5_000)
        with Reader.attach(ring_name, after_seq=1_234, archive=directory,
                           filter=Filter(categories=["console", "page"])) as reader:
            steps = []
            while reader.cursor < 5_000:
                steps += reader.read_many(timeout=TIMEOUT_S)
            assert reader.delivered + reader.filtered == 5_000 - 1_234 and reader.dropped == 0
    wanted = [s for s in range(1_235, 5_001) if CATEGORIES[s % 4] in ("console", "page")]
    assert [s.envelope.seq for s in steps] == wanted


def test_mixing_read_kinds_mid_replay_skips_and_repeats_nothing(ring_name, procs, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 6_000)
        seqs = []
        with Reader.attach(ring_name, after_seq=0, archive=directory) as reader:
            turn = 0
            while reader.cursor < 6_000:
                turn += 1
                if turn % 3 == 0:
                    seqs += [r.seq for r in reader.read_raw_many(5 + turn % 7, timeout=TIMEOUT_S)]
                elif turn % 3 == 1:
                    seqs += [r.envelope.seq for r in reader.read_many(3 + turn % 11, timeout=TIMEOUT_S)]
                else:
                    seqs.append(next(iter(reader)).envelope.seq)
            assert reader.delivered == 6_000 and reader.dropped == reader.filtered == 0
            publish(session, 6_001, 6_100)  # and then the ring, live
            while reader.cursor < 6_100:
                seqs += [r.seq for r in reader.read_raw_many(timeout=TIMEOUT_S)]
        with pytest.raises(Exception, match="closed"):
            reader.read_many(timeout=0)
    assert seqs == list(range(1, 6_101))


def test_a_line_that_is_not_json_is_a_drop_of_its_seq_for_a_decoding_reader(ring_name, procs, tmp_path):
    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 4_000)
        wait_flushed(ring_name, 4_000)
        path = directory / "page.jsonl"
        data = path.read_bytes()
        at = data.index(b'"seq":1002,')  # a page event (1002 % 4 == 2), long gone from the ring
        broken = data[:at] + data[at:].replace(b'"i":', b'"i"x', 1)
        path.write_bytes(broken)  # same length, head and closing brace intact, not JSON
        with Reader.attach(ring_name, after_seq=0, archive=directory) as reader:
            steps = []
            while reader.cursor < 4_000:
                steps += reader.read_many(timeout=TIMEOUT_S)
            assert reader.dropped == 1 and reader.delivered == 3_999
        with Reader.attach(ring_name, after_seq=0, archive=directory) as reader:
            one_by_one = []
            for step in reader:
                one_by_one.append(step)
                if reader.cursor >= 4_000:
                    break
    assert one_by_one == steps
    assert [(s.dropped_from, s.dropped_to) for s in steps if s.envelope is None] == [(1_002, 1_002)]
    assert [s.envelope.seq for s in steps if s.envelope is not None] == [s for s in range(1, 4_001) if s != 1_002]


def test_a_replay_from_the_middle_of_a_long_file_starts_near_its_seq(ring_name, procs, tmp_path, monkeypatch):
    """No rotation: one file per category grows for the whole session. A reader resuming from the middle
    bisects to near its seq instead of reading from the start, and still gets every seq after it exactly."""
    import shmring.archive as archive_module

    directory = tmp_path / "logs"
    starts = []
    line_after = archive_module._line_after
    monkeypatch.setattr(archive_module, "_line_after", lambda *args: starts.append(line_after(*args)) or starts[-1])
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        for i in range(1, 20_001):
            session.publish(make_event(i, "console", pad=300))
        wait_flushed(ring_name, 20_000)
        size = (directory / "console.jsonl").stat().st_size
        with Reader.attach(ring_name, after_seq=12_345, archive=directory) as reader:
            seqs = []
            while reader.cursor < 20_000:
                seqs += [r.envelope.seq for r in reader.read_many(timeout=TIMEOUT_S)]
    assert seqs == list(range(12_346, 20_001))
    assert size > 4 << 20 and starts and size * 0.4 < starts[0] < size * 12_345 / 20_000


def test_a_category_filter_opens_only_that_categorys_files(ring_name, procs, tmp_path):
    from shmring import ConfigError

    directory = tmp_path / "logs"
    with new_ring(ring_name) as session:
        start_flusher(procs, ring_name, directory)
        publish(session, 1, 4_000)
        wait_flushed(ring_name, 4_000)
        os.rename(directory / "network.jsonl", tmp_path / "network.jsonl")
        os.symlink(tmp_path / "network.jsonl", directory / "network.jsonl")  # any open of it is refused
        with Reader.attach(ring_name, after_seq=0, archive=directory, filter=Filter(categories=["page"])) as reader:
            seqs = []
            while reader.cursor < 4_000:
                seqs += [r.envelope.seq for r in reader.read_many(timeout=TIMEOUT_S)]
        assert seqs == [s for s in range(1, 4_001) if CATEGORIES[s % 4] == "page"]
        with Reader.attach(ring_name, after_seq=0, archive=directory) as reader:
            with pytest.raises(ConfigError, match="network.jsonl is not a regular file"):
                reader.read_many(timeout=TIMEOUT_S)
