"""Archive and `shmring replay` over directories a real flusher wrote.

Each directory comes from a real CaptureSession and a real Flusher (run in a
thread until the ring closes), with small rings so that the files, not the
ring, hold the history. FORBIDDEN outcomes: a seq delivered twice or out of
order, bytes that differ from what was published, a lost seq not reported as
a drop (or a drop with the wrong range), another session's event, a torn line
raised as an error.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shmring import Archive, ConfigError, Filter
from shmring.flusher import GAPS_FILE
from shmring.schema import encode_envelope
from tests.integration.prepared import flush_session
from tests.procs import TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]


def events_and_drops(results):
    seqs, drops = [], []
    for r in results:
        if r.envelope is not None:
            seqs.append(r.envelope.seq)
        else:
            drops.append((len(seqs), r.dropped))
    return seqs, drops


def file_lines(directory: Path, category: str | None = None) -> list[bytes]:
    """Every line of the category files (one category's, or all), in no particular order."""
    out = []
    for path in directory.iterdir():
        if path.name.endswith(".jsonl") and not path.name.startswith("_"):
            if category is None or path.name.split(".")[0] == category:
                out.extend(path.read_bytes().splitlines())
    return out


def seq_of(line: bytes) -> int:
    return json.loads(line)["seq"]


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """20,000 events over 4 categories through a 64-slot ring, rotated every 20 kB: (directory, session, published)."""
    from tests.conftest import RUN_PREFIX
    from shmring.segment import unlink_ring_objects

    directory = tmp_path_factory.mktemp("archive") / "logs"
    name = f"{RUN_PREFIX}archive-rotated"
    try:
        session_id, published = flush_session(name, directory, 20_000, max_file_bytes=20_000)
    finally:
        unlink_ring_objects(name)
    return directory, session_id, published


def test_full_history_across_categories_and_rotated_files_is_every_seq_once_with_the_published_bytes(rotated):
    directory, session_id, published = rotated
    assert len(list(directory.glob("console.*.jsonl"))) >= 5  # rotation really happened
    archive = Archive(directory)
    results = list(archive.read(session_id))
    assert [r.dropped for r in results if r.envelope is None] == []
    assert [r.envelope.seq for r in results] == list(range(1, 20_001))
    assert all(encode_envelope(r.envelope) == published[r.envelope.seq][1] for r in results)
    raw = list(archive.read_raw())  # the newest (only) session
    assert [(r.seq, r.category, r.payload) for r in raw] == [(s, c, b) for s, (c, b) in sorted(published.items())]
    assert archive.torn_lines == [] and archive.duplicate_lines == 0
    assert archive.sessions() == [type(archive.sessions()[0])(session_id, 1, 20_000, 20_000, 0)]


def test_after_and_until_bound_the_replay(rotated):
    directory, session_id, _ = rotated
    seqs, drops = events_and_drops(Archive(directory).read(session_id, after_seq=12_345, until_seq=12_400))
    assert seqs == list(range(12_346, 12_401)) and drops == []


def test_a_category_filter_reads_only_that_categorys_files(rotated, tmp_path):
    directory, session_id, published = rotated
    copy = tmp_path / "logs"
    shutil.copytree(directory, copy)
    for path in copy.glob("console*.jsonl"):  # would be refused if the filtered read opened it
        path.unlink()
        path.symlink_to(directory / path.name)
    archive = Archive(copy)
    seqs, drops = events_and_drops(archive.read(session_id, filter=Filter(categories=["network"])))
    assert seqs == [s for s, (c, _) in sorted(published.items()) if c == "network"] and drops == []
    with pytest.raises(ConfigError, match="not a regular file"):
        list(archive.read(session_id))


def test_detail_and_kind_filters_judge_the_event_and_filtered_events_are_not_drops(rotated):
    directory, session_id, _ = rotated
    archive = Archive(directory)
    assert list(archive.read(session_id, filter=Filter(detail_levels=["verbose"]))) == []
    assert list(archive.read_raw(session_id, filter=Filter(source_kinds=["extension"]))) == []
    kept = list(archive.read_raw(session_id, until_seq=100, filter=Filter(detail_levels=["standard"],
                                                                             source_kinds=["cdp"])))
    assert [r.seq for r in kept] == list(range(1, 101))


def test_events_gone_before_the_flusher_attached_are_one_drop_with_the_exact_range(ring_name, tmp_path):
    directory = tmp_path / "logs"
    session_id, published = flush_session(ring_name, directory, 1000, before=500)
    lost = 500 - 64  # the ring held 437..500 when the flusher attached
    assert [json.loads(line)["from_seq"] for line in (directory / GAPS_FILE).read_bytes().splitlines()] == [1]
    archive = Archive(directory)
    results = list(archive.read(session_id))
    assert results[0].envelope is None and (results[0].dropped, results[0].dropped_from, results[0].dropped_to) == (
        lost, 1, lost)
    assert [r.envelope.seq for r in results[1:]] == list(range(lost + 1, 1001))
    raw = list(archive.read_raw(session_id))
    assert (raw[0].seq, raw[0].dropped, raw[0].dropped_from, raw[0].dropped_to) == (lost, lost, 1, lost)
    after = list(archive.read_raw(session_id, after_seq=100))
    assert (after[0].seq, after[0].dropped) == (lost, lost - 100)
    assert list(archive.read_raw(session_id, after_seq=lost))[0].seq == lost + 1
    # A category filter cannot see other categories' seqs, but a recorded gap is still exactly one drop.
    seqs, drops = events_and_drops(archive.read(session_id, filter=Filter(categories=["page"])))
    assert drops == [(0, lost)] and seqs == [s for s in range(lost + 1, 1001) if published[s][0] == "page"]
    assert archive.sessions()[0].gaps == lost and archive.sessions()[0].first_seq == lost + 1


def test_a_missing_line_is_a_drop_only_when_every_category_is_read(ring_name, tmp_path):
    directory = tmp_path / "logs"
    session_id, published = flush_session(ring_name, directory, 400)
    path = directory / "network.jsonl"  # remove seqs 201 and 205 (both network), keeping 202..204 elsewhere
    lines = [line for line in path.read_bytes().splitlines(keepends=True) if seq_of(line) not in (201, 205)]
    path.write_bytes(b"".join(lines))
    archive = Archive(directory)
    raw = list(archive.read_raw(session_id))
    assert [(r.seq, r.dropped) for r in raw if r.dropped] == [(201, 1), (205, 1)]
    assert [r.seq for r in raw if not r.dropped] == [s for s in range(1, 401) if s not in (201, 205)]
    assert [r for r in archive.read_raw(session_id, filter=Filter(categories=["network", "page"])) if r.dropped] == []


def test_duplicated_lines_are_delivered_once(ring_name, tmp_path):
    directory = tmp_path / "logs"
    session_id, _ = flush_session(ring_name, directory, 100)
    path = directory / "page.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:5] + lines[4:]))
    archive = Archive(directory)
    assert [r.seq for r in archive.read_raw(session_id)] == list(range(1, 101))
    assert archive.duplicate_lines == 1
    assert archive.sessions()[0].events == 100


def test_two_sessions_in_one_directory_stay_apart(ring_name, more_ring_names, tmp_path):
    directory = tmp_path / "logs"
    old_id, old = flush_session(ring_name, directory, 300, session_id="old-session")
    new_id, new = flush_session(more_ring_names(), directory, 500, session_id="new-ses\u00e9sion")
    archive = Archive(directory)
    listed = archive.sessions()
    assert [(s.capture_session_id, s.first_seq, s.last_seq, s.events, s.gaps) for s in listed] == [
        ("old-session", 1, 300, 300, 0), ("new-ses\u00e9sion", 1, 500, 500, 0)]
    assert [r.payload for r in archive.read_raw("old-session")] == [b for _, b in (old[s] for s in sorted(old))]
    assert [r.payload for r in archive.read_raw()] == [b for _, b in (new[s] for s in sorted(new))]  # the newest
    with pytest.raises(ConfigError, match="no capture session 'nope'"):
        list(archive.read("nope"))


def test_a_torn_last_line_is_skipped_reported_and_its_seq_is_a_drop(ring_name, tmp_path):
    directory = tmp_path / "logs"
    session_id, _ = flush_session(ring_name, directory, 400)
    # A crash mid-write: seq 399's line (console is seq % 4 == 0 ... so 399 is interaction) cut after its head.
    path = directory / "interaction.jsonl"
    data = path.read_bytes()
    assert seq_of(data.splitlines()[-1]) == 399
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + 80])
    # And a tail of zeros where a power cut left an unwritten block.
    page = directory / "page.jsonl"
    page_size = page.stat().st_size
    with open(page, "ab") as f:
        f.write(b"\0" * 100)
    archive = Archive(directory)
    raw = list(archive.read_raw(session_id))
    assert [(r.seq, r.dropped) for r in raw if r.dropped] == [(399, 1)]
    assert [r.seq for r in raw if not r.dropped] == [s for s in range(1, 401) if s != 399]
    assert sorted(archive.torn_lines) == sorted([(str(path), start), (str(page), page_size)])
    seqs, drops = events_and_drops(Archive(directory).read(session_id, filter=Filter(categories=["interaction"])))
    assert drops == [(99, 1)] and seqs[-1] == 395  # known lost even though other categories are not read
    assert Archive(directory).sessions()[0].events == 399


def test_a_whole_looking_line_that_is_not_json_is_torn_for_a_decoding_read(ring_name, tmp_path):
    directory = tmp_path / "logs"
    session_id, _ = flush_session(ring_name, directory, 100)
    path = directory / "network.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    assert seq_of(lines[3]) == 13
    bad = f'{{"capture_session_id":"{session_id}","seq":13,"event":{{"ts":1,oops}}}}\n'.encode()
    path.write_bytes(b"".join(lines[:3] + [bad] + lines[4:]))
    archive = Archive(directory)
    seqs, drops = events_and_drops(archive.read(session_id))
    assert drops == [(12, 1)] and seqs == [s for s in range(1, 101) if s != 13]
    assert archive.torn_lines == [(str(path), sum(map(len, lines[:3])))]


# -- the command ---------------------------------------------------------------------------------


def replay(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "shmring", "replay", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, timeout=TIMEOUT_S)


def test_replay_prints_the_files_lines_in_seq_order(rotated):
    directory, session_id, _ = rotated
    everything = sorted(file_lines(directory), key=seq_of)
    proc = replay(directory)
    assert proc.returncode == 0 and proc.stderr == b""
    assert proc.stdout == b"".join(line + b"\n" for line in everything)
    proc = replay(directory, "--session", session_id, "--after", 100, "--until", 300, "--category", "page",
                  "--category", "console")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [line for line in everything if 100 < seq_of(line) <= 300
                                        and json.loads(line)["event"]["category"] in ("page", "console")]
    proc = replay(directory, "--sessions")
    assert proc.returncode == 0 and proc.stdout.decode().split() == [session_id, "seqs", "1-20000", "events",
                                                                     "20000", "recorded", "lost", "0"]


def test_replay_reports_drops_and_torn_lines_on_stderr(ring_name, tmp_path):
    directory = tmp_path / "logs"
    flush_session(ring_name, directory, 1000, before=500)
    with open(directory / "page.jsonl", "ab") as f:
        f.write(b'{"capture_')
    proc = replay(directory)
    assert proc.returncode == 0
    assert [seq_of(line) for line in proc.stdout.splitlines()] == list(range(437, 1001))
    assert proc.stderr.decode().splitlines() == [
        "shmring: dropped 436 events (seqs 1-436 are not in the files)",
        f"shmring: skipped a torn line at byte {(directory / 'page.jsonl').stat().st_size - 10} of "
        f"{directory / 'page.jsonl'}"]


@pytest.mark.parametrize("case", ["missing", "empty", "unknown session", "bad filter"])
def test_replay_errors_are_one_line_and_exit_1(rotated, tmp_path, case):
    directory, _, _ = rotated
    args = {"missing": [tmp_path / "nowhere"], "empty": [tmp_path], "unknown session": [directory, "--session", "x"],
            "bad filter": [directory, "--category", "Bad"]}[case]
    proc = replay(*args)
    assert proc.returncode == 1 and proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmring: ") and "Traceback" not in lines[0], lines
