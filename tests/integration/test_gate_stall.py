"""A gate that is alive but takes nothing holds the writer for at most gate_stall_s.

FORBIDDEN: a publish or a close that waits for ever on a stopped flusher or
on a reader that forged a gate; `serve` ignoring SIGTERM while its flusher
is stopped; an event the stalled flusher missed that is neither in its
files nor in ``_gaps.jsonl``.
"""

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from shmring import CaptureSession, Producer, Reader
from shmring.flusher import GAPS_FILE
from shmring.layout import ENTRY_GATING_OFFSET, REG_GATES_CHANGED, U64, entry_offset
from shmring.stats import ring_stats
from tests.integration.flusher_procs import finish, poll_until, publish, wait_attached, wait_written
from tests.procs import TIMEOUT_S, make_event

STALL_S = 1.0
SMALL = dict(capacity=64, data_bytes=1 << 20, gate_stall_s=STALL_S)


def forge_gate(reader: Reader) -> None:
    """What any same-user reader can do: mark its own registry entry gating and tell the writer."""
    buf = reader._registry.buf
    U64.pack_into(buf, entry_offset(reader._index) + ENTRY_GATING_OFFSET, 1)
    buf[REG_GATES_CHANGED] = 1


def timed_publish(session, count) -> float:
    started = time.monotonic()
    for i in range(count):
        session.publish(make_event(i))
    return time.monotonic() - started


def test_a_forged_gate_holds_publish_for_gate_stall_s_only(ring_name):
    with CaptureSession.create(ring_name, **SMALL) as session:
        with Reader.attach(ring_name, after_seq=0) as forger:
            forge_gate(forger)
            took = timed_publish(session, 5 * 64)
            assert STALL_S * 0.9 <= took < STALL_S + 10, took
            results = [forger.read(timeout=0) for _ in range(400)]
            dropped = sum(r.dropped for r in results if r is not None)
            delivered = [r.envelope.seq for r in results if r is not None and r.envelope is not None]
            assert dropped > 0 and delivered == sorted(set(delivered))
            assert forger.delivered + forger.dropped == forger.cursor == 5 * 64


def test_close_with_a_timeout_returns_false_on_a_stalled_gate(ring_name):
    session = CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20, gate_stall_s=None)
    with Reader.attach(ring_name, after_seq=0) as forger:
        forge_gate(forger)
        session.publish(make_event(1))
        started = time.monotonic()
        assert session.close(timeout=0.5) is False
        assert 0.4 <= time.monotonic() - started < 5
    assert session.close() is True  # idempotent


def test_a_sigstopped_flusher_lets_go_and_records_what_it_missed(ring_name, flushers, tmp_path):
    directory = tmp_path / "logs"
    with CaptureSession.create(ring_name, **SMALL) as session:
        proc = flushers(ring_name, directory)
        wait_attached(session, proc)
        publish(session, 1, 10)
        wait_written(session, proc.pid, 10)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            took = timed_publish(session, 4 * 64)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert STALL_S * 0.9 <= took < STALL_S + 10, took
        last = session.last_seq
    finish(proc)
    assert assert_each_seq_once(directory, last), "the flusher missed events while stopped; they must be recorded"


def test_serve_sigterm_with_a_stopped_flusher_exits_within_its_bound(ring_name, tmp_path):
    sock = str(tmp_path / "s.sock")
    directory = tmp_path / "logs"
    serve = subprocess.Popen(
        [sys.executable, "-m", "shmring", "serve", ring_name, "--socket", sock, "--log-dir", str(directory),
         "--gate-stall-s", str(STALL_S), "--capacity", "64", "--data-bytes", str(1 << 20)],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    flusher = None
    try:
        assert b"serving ring" in serve.stderr.readline()
        with Producer.connect(sock) as producer:
            producer.publish_many([make_event(i) for i in range(20)])
        (flusher,) = [c for c in psutil.Process(serve.pid).children() if c.cmdline()[1:4] == ["-m", "shmring", "flush"]]
        poll_until(lambda: any(r["role"] == "flusher" and r["cursor"] >= 20 for r in ring_stats(ring_name)["readers"]),
                   "the flusher to take 20 events")
        flusher.send_signal(signal.SIGSTOP)  # serve's own child: a process this test started
        with Producer.connect(sock) as producer:
            producer.publish_many([make_event(i) for i in range(200)])  # needs the stalled gate retired
        stopped_at = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        serve.wait(TIMEOUT_S + 10)
        took = time.monotonic() - stopped_at
        err = serve.stderr.read().decode()
    finally:
        if flusher is not None and flusher.is_running():
            flusher.send_signal(signal.SIGCONT)
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        serve.stderr.close()
    assert took < STALL_S + 10 + 5 + 5, (took, err)  # stall bound + flusher stop bound + margin
    assert "Traceback" not in err
    assert not flusher.is_running()
    assert_each_seq_once(directory, 220)


def assert_each_seq_once(directory, last):
    """Every seq 1..last is exactly once in the files: a line or inside a recorded gap."""
    seqs = [json.loads(line)["seq"] for f in directory.glob("[a-z]*.jsonl") for line in f.read_text().splitlines()]
    gaps_path = directory / GAPS_FILE
    gaps = [json.loads(line) for line in gaps_path.read_text().splitlines()] if gaps_path.exists() else []
    gap_seqs = [s for g in gaps for s in range(g["from_seq"], g["to_seq"] + 1)]
    assert sorted(seqs + gap_seqs) == list(range(1, last + 1))
    return gap_seqs


def test_a_writer_held_back_hurries_a_gate_out_of_its_latency_budget(ring_name):
    """A gate dozing out a long budget is woken by the writer it holds back, so the budget costs no throughput."""
    import threading

    from shmring.reader import GatingReader

    budget_s = 5.0
    events = 10 * 64
    with CaptureSession.create(ring_name, **SMALL) as session:
        gate = GatingReader.attach(ring_name, after_seq=0, max_delay_s=budget_s)
        taken = []

        def sink():
            while len(taken) < events:
                records = gate.read_raw_many(64, timeout=TIMEOUT_S)
                assert records, "the gate got nothing"
                taken.extend(r.seq for r in records)
                gate.commit()

        thread = threading.Thread(target=sink, daemon=True)
        thread.start()
        try:
            took = timed_publish(session, events)
        finally:
            thread.join(TIMEOUT_S)
            gate.close()
        # Ten ring-fulls: without the hurry each would wait out a doze of budget_s.
        assert took < budget_s, took
        assert taken == list(range(1, events + 1))
