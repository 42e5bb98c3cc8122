"""A writer that continues a capture session: seqs from first_seq, and the ring says what it never held."""

import json
import subprocess
import sys
import threading

import pytest

from shmring import CaptureSession, ConfigError, Flusher, Reader, ReadResult
from shmring.flusher import GAPS_FILE
from shmring.stats import ring_stats
from tests.procs import TIMEOUT_S, make_event


def test_a_continued_session_publishes_from_first_seq(ring_name):
    with CaptureSession.create(ring_name, capture_session_id="continued", first_seq=101, capacity=64,
                               data_bytes=1 << 20) as session:
        assert session.first_seq == 101 and session.last_seq == 100
        with Reader.attach(ring_name) as new_only, Reader.attach(ring_name, after_seq=0) as from_start, \
                Reader.attach(ring_name, after_seq=100) as resumed:
            assert new_only.cursor == 100 and from_start.first_seq == 101
            assert session.publish(make_event(1)).seq == 101
            assert session.publish(make_event(2)).seq == 102
            assert from_start.read(timeout=TIMEOUT_S) == ReadResult(dropped=100, dropped_from=1, dropped_to=100)
            for reader in (new_only, from_start, resumed):
                assert [reader.read(timeout=TIMEOUT_S).envelope.seq for _ in range(2)] == [101, 102]
                assert reader.read(timeout=0) is None
            assert from_start.delivered + from_start.dropped == from_start.cursor == 102
            raw = Reader.attach(ring_name, after_seq=0)
            assert [(r.seq, r.dropped, r.dropped_from) for r in raw.read_raw_many(timeout=TIMEOUT_S)] == [
                (100, 100, 1), (101, 0, 0), (102, 0, 0)]
            raw.close()
        stats = ring_stats(ring_name)
        assert (stats["first_seq"], stats["latest_seq"], stats["oldest_seq"]) == (101, 102, 101)
        out = subprocess.run([sys.executable, "-m", "shmring", "stat", ring_name], capture_output=True, text=True,
                             timeout=TIMEOUT_S).stdout
        assert "first seq 101" in out


def test_a_fresh_directory_records_what_the_continued_ring_never_held(ring_name, tmp_path):
    with CaptureSession.create(ring_name, capture_session_id="continued", first_seq=51, capacity=64,
                               data_bytes=1 << 20) as session:
        flusher = Flusher(ring_name, tmp_path / "logs")
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(flusher.run()))
        thread.start()
        for i in range(10):
            session.publish(make_event(i))
    thread.join(TIMEOUT_S)
    flusher.close()
    assert outcome["ending"] == "closed"
    seqs = [json.loads(line)["seq"] for line in (tmp_path / "logs" / "console.jsonl").read_text().splitlines()]
    assert seqs == list(range(51, 61))
    gaps = [json.loads(line) for line in (tmp_path / "logs" / GAPS_FILE).read_text().splitlines()]
    assert [(g["from_seq"], g["to_seq"]) for g in gaps] == [(1, 50)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", 1 << 62])
def test_bad_first_seq_is_refused(ring_name, bad):
    with pytest.raises(ConfigError, match="first_seq"):
        CaptureSession.create(ring_name, first_seq=bad)
