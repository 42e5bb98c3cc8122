"""A short stress run in the default suite: overwrite, batches, latency budgets, and faults, all at once.

A writer process publishes checksummed events of mixed sizes flat out into a
small ring for a few seconds. Beside it run readers of every kind (``read``,
``read_many``, ``read_raw_many``; filtered; with a latency budget; slow) and
a flusher process that this test SIGKILLs and restarts, and SIGSTOPs once.
FORBIDDEN: a corrupt or out-of-order event; delivered + dropped + filtered !=
published - start for any reader; a seq neither in the flusher's files nor in
its gap records, or in both, or twice. (tools/stress.py is the long, tunable
version of this; this test does not depend on it.)
"""

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgspec
import pytest

from shmring import Filter, Reader, RingClosed
from shmring.stats import ring_stats
from tests.procs import TIMEOUT_S, torn_read_writer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN_S = 6.0
KINDS = {  # name: (batch call, filter categories, max_delay_s, slow)
    "read": ("read", None, 0.0, False),
    "read_many": ("read_many", None, 0.002, False),
    "raw": ("read_raw_many", None, 0.0, False),
    "filtered_raw": ("read_raw_many", ["console"], 0.005, True),
    "slow_filtered": ("read_many", ["console"], 0.0, True),
}


def checked_reader(name, kind, ready, results):
    call, categories, max_delay_s, slow = KINDS[kind]
    r = Reader.attach(name, after_seq=0, filter=Filter(categories=categories) if categories else None,
                      max_delay_s=max_delay_s)
    ready.set()
    corrupt = out_of_order = last = n = 0
    try:
        while True:
            if call == "read":
                got = [r.read(timeout=TIMEOUT_S)]
            else:
                got = getattr(r, call)(512, timeout=TIMEOUT_S)
            for item in got:
                if item is None or item.dropped:
                    continue
                if call == "read_raw_many":
                    env = msgspec.json.decode(item.payload)
                    seq, data = env["seq"], env["event"]["data"]
                else:
                    seq, data = item.envelope.seq, msgspec.json.decode(item.envelope.event.data)
                if zlib.crc32(data["body"].encode()) != data["crc"] or data["i"] != seq:
                    corrupt += 1
                out_of_order += seq <= last
                last = seq
                n += 1
                if slow and n % 50 == 0:
                    sum(range(30000))  # a slow consumer: burn CPU, don't sleep
    except RingClosed:
        pass
    results.put(dict(kind=kind, corrupt=corrupt, out_of_order=out_of_order, delivered=r.delivered,
                     dropped=r.dropped, filtered=r.filtered, cursor=r.cursor, start=r.start_seq))
    r.close()


def start_flusher(name, directory):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "shmring.flusher", name, str(directory)], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_few_seconds_of_faults_break_no_guarantee(ring_name, spawn, tmp_path):
    ready, go, results = spawn.Event(), spawn.Event(), spawn.Queue()
    w = spawn.Process(target=torn_read_writer,
                      args=(ring_name, ready, go, RUN_S, dict(capacity=256, data_bytes=1 << 20, flusher_grace_s=2.0)))
    w.start()
    assert ready.wait(TIMEOUT_S)
    readers = []
    for kind in KINDS:
        attached = spawn.Event()
        p = spawn.Process(target=checked_reader, args=(ring_name, kind, attached, results))
        p.start()
        assert attached.wait(TIMEOUT_S)
        readers.append(p)
    directory = tmp_path / "logs"
    flusher = start_flusher(ring_name, directory)
    flushers = [flusher]
    faults = dict(flusher_kills=0, flusher_stops=0)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(r["role"] == "flusher" and r["pid"] == flusher.pid for r in ring_stats(ring_name)["readers"]):
            assert time.monotonic() < deadline and flusher.poll() is None, "the first flusher did not attach"
            time.sleep(0.01)
        go.set()
        started = time.monotonic()
        while time.monotonic() - started < RUN_S - 1:
            time.sleep(0.7)  # pacing the faults, not synchronising: every outcome is checked at the end
            if faults["flusher_kills"] == 2 and not faults["flusher_stops"]:
                flusher.send_signal(signal.SIGSTOP)
                time.sleep(0.3)
                flusher.send_signal(signal.SIGCONT)
                faults["flusher_stops"] += 1
                continue
            flusher.kill()
            flusher.wait(TIMEOUT_S)
            faults["flusher_kills"] += 1
            flusher = start_flusher(ring_name, directory)
            flushers.append(flusher)
        w.join(TIMEOUT_S + RUN_S)
        assert w.exitcode == 0
        assert flusher.wait(TIMEOUT_S) == 0, flusher.stderr.read()
        got = [results.get(timeout=TIMEOUT_S) for _ in readers]
    finally:
        for proc in flushers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT_S)
            proc.stderr.close()
    published = max(r["cursor"] for r in got)
    assert published > 1000 and faults["flusher_kills"] >= 3
    for r in got:
        assert r["corrupt"] == 0 and r["out_of_order"] == 0, r
        assert r["delivered"] + r["dropped"] + r["filtered"] == published - r["start"], r
    lines = [json.loads(line)["seq"] for f in directory.glob("[a-z]*.jsonl") for line in f.read_text().splitlines()]
    gaps_file = directory / "_gaps.jsonl"
    gaps = [json.loads(line) for line in gaps_file.read_text().splitlines()] if gaps_file.exists() else []
    gap_seqs = [s for g in gaps for s in range(g["from_seq"], g["to_seq"] + 1)]
    assert sorted(lines + gap_seqs) == list(range(1, published + 1))
