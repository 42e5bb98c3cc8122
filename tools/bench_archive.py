"""Benchmark replay from a flusher's directory (a benchmark, not a test: it asserts nothing).

A real CaptureSession and a real Flusher (in a thread of this process, with
rotation at ``--max-file-bytes``) write ``--events`` ~190-byte envelopes
round-robin over 4 categories into a fresh directory under /tmp. Then, each
``--runs`` times (reported as the median), the whole session is replayed:

1. ``Archive.read_raw`` (undecoded lines, as ``shmring replay`` prints them);
2. ``Archive.read`` (each line decoded into an Envelope);
3. ``Archive.read`` with a one-category filter (only that category's files);
4. ``Archive.sessions()`` (a scan of every line's head).

Rates are events delivered / wall time, and / this process's CPU time (the
fairer figure on a shared machine), with the page cache warm. Targets:
read >= 300k events/s, read_raw >= 600k events/s. The directory and the ring
are removed at the end.
"""

import argparse
import shutil
import statistics
import tempfile
import threading
import time
import uuid

from shmring import Archive, CaptureSession, Event, Filter, Flusher, Source
from shmring.segment import unlink_ring_objects

CATEGORIES = ("console", "network", "page", "interaction")


def make_directory(directory: str, events: int, max_file_bytes: int) -> str:
    name = f"shmring-bench-archive-{uuid.uuid4().hex[:8]}"
    try:
        session = CaptureSession.create(name, capacity=1 << 14, data_bytes=1 << 24)
        flusher = Flusher(name, directory, fsync="never", max_file_bytes=max_file_bytes)
        runner = threading.Thread(target=flusher.run)
        runner.start()
        for i in range(1, events + 1):
            category = CATEGORIES[i % 4]
            session.publish(Event(type=f"{category}.log", category=category, source=Source(kind="cdp"),
                                  url="https://example.test/page", data={"i": i, "text": "hello from the page"}))
        session.close()
        runner.join()
        flusher.close()
        return session.capture_session_id
    finally:
        unlink_ring_objects(name)


def timed(count_fn, runs: int) -> tuple[float, float, int]:
    """(median events/s of wall time, median events/s of this process's CPU time, events)."""
    wall, cpu, count = [], [], 0
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        count = count_fn()
        wall.append(count / (time.perf_counter() - start))
        cpu.append(count / (time.process_time() - start_cpu))
    return statistics.median(wall), statistics.median(cpu), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--max-file-bytes", type=int, default=8 << 20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="shmring-bench-archive-")
    try:
        session_id = make_directory(directory + "/logs", args.events, args.max_file_bytes)
        archive = Archive(directory + "/logs")

        def raw():
            return sum(1 for r in archive.read_raw(session_id) if not r.dropped)

        def decoded():
            return sum(1 for r in archive.read(session_id) if r.envelope is not None)

        def one_category():
            return sum(1 for r in archive.read(session_id, filter=Filter(categories=["console"]))
                       if r.envelope is not None)

        def sessions():
            return archive.sessions()[0].events

        for label, fn in (("read_raw", raw), ("read", decoded), ("read, 1 of 4 categories", one_category),
                          ("sessions()", sessions)):
            wall, cpu, count = timed(fn, args.runs)
            print(f"{label:<24} {wall:>10,.0f} events/s wall {cpu:>10,.0f} events/s CPU  "
                  f"({count:,} events, median of {args.runs})")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
