"""Benchmark shmring on this machine (a benchmark, not a test: it asserts nothing).

What it measures, for a ~300-byte encoded ``console.log`` envelope (the actual
size is printed), each measure repeated ``--runs`` times (default 3) and
reported as the median:

1. publish rate with no reader: one process publishing flat out.
2. fan-out: the writer publishes flat out for a fixed time to 1 and then 2
   reader processes that decode every event (``Reader.read`` decodes); the
   writer's rate, each reader's delivered rate and its drops.
3. wake-up latency of a blocked reader at a paced 10k events/s (p50/p99/max;
   the writer stamps ``time.monotonic_ns()``, system-wide on Linux, into the
   event's data, the reader subtracts it from its own clock on receipt); and
   the CPU a reader uses while blocked in ``read()`` on an idle ring.
4. a steady 150k events/s paced to 2 decoding readers: drops per reader
   (target 0) and the rate the writer actually achieved.
5. the same fan-out as (2) with 2 readers over ``multiprocessing.Queue`` (one
   bounded queue per reader; the writer msgspec-encodes each envelope once and
   puts the bytes into every queue; readers get and decode), as the baseline:
   shmring's per-reader delivered rate divided by mp.Queue's (target >= 5x).
6. the flusher (``Flusher(fsync="batch")`` in a child process, a gating
   reader writing into a fresh directory under /tmp): the writer publishes the
   same event flat out, round-robin over the categories console/network/page,
   for a fixed time. Reported: the flusher's end-to-end lines/s (lines written
   / time from the first publish to the flusher's exit after ``close()``,
   which waits until the gating flusher has written everything; target
   >= 400k lines/s), the writer's publish rate with the flusher attached
   (the flusher gates the writer, so this is also an end-to-end rate), and
   the files' line counts checked against what was published. In the same
   run the same loop is timed with no flusher, and the writer's CPU per
   publish (``time.process_time()`` around the publish loop) with the flusher
   is compared with it: added cost = with / without - 1 (target <= 25%).

Measures 7-11 are issue 11's targets (``--only rates``; the table "Issue 11
targets" gives each one's median, min-max and pass/fail). Reader and flusher
CPU is the scheduler's count for the whole process (/proc/PID/task/*/schedstat),
read by the parent when the writer starts and by the child itself the moment
its stream ends (RingClosed), so the window holds every event and the drain:

7. idle, per latency budget: a plain reader (``for r in reader``) with
   max_delay_s=0 and 0.002 reads 20 events, then the ring goes quiet; its CPU
   over the next 10 s as % of a core, and its wake-ups per second (target
   <= 0.3%).
8. one plain decoding reader, ``for r in reader``, at a paced 1k and 10k
   events/s with max_delay_s=0 and 0.002 (the writer of measure 3, stamping
   each event): its CPU per event and as % of a core, its sleeps per event,
   and delivery latency p50/p99/max. The reader only keeps its receipt time
   and the event's data per event and decodes the stamps after the stream.
   Targets: 10k/s <= 20 µs at 0 (wake-up p50 <= 50 µs, p99 <= 1 ms), <= 5 µs
   at 0.002 (p99 <= 2 ms after publish); 1k/s <= 30 µs at 0, <= 15 µs at 0.002.
9. measure 2 with 2 readers taking ``read_raw_many(1024)`` (nothing decoded):
   delivered per reader (target >= 600k/s; 2 decoding readers, measure 2:
   >= 350k/s). For both, also the delivered rate per second of the reader's
   own CPU: what it would reach with a core to itself (a flat-out writer and
   2 readers share 2 cores here).
10. the writer's CPU per publish at a paced 10k/s with 0, 1, 4 and 16 plain
   readers in either mode. The paced loop spins between publishes (a sleep
   costs more than the 100 µs period here), so instead of the loop's CPU,
   each publish() is bracketed by time.thread_time_ns() (user + system: the
   semaphore posts are in it), minus an empty bracket measured right after
   (~0.6 µs). Targets: <= 3 µs with readers at 0.002; at 0 no more than
   before (WRITER_BEFORE_US, measured the same way on the code before).
11. the flusher of measure 6 at a paced 10k events/s: its CPU as % of a core
   from the writer's start to the end of its run() (target <= 3%). Measure
   6's targets are now >= 400k lines/s and <= 25% added writer CPU.

Measures 12-13 are issue 13's replay-merge (``--only replay``):

12. replay from the files: a 1,024-slot ring with a Flusher child; REPLAY_EVENTS
   events round-robin over 4 categories (the flusher gates the writer, so all
   are in the files, and the ring keeps only the last 1,024). Then a reader
   child attaches with ``after_seq=0, archive=DIR`` and reads them all: with
   ``for r in reader`` (decoding; target >= 300k events/s), ``read_many`` and
   ``read_raw_many(1024)`` (target >= 600k events/s). Rate = events / time from
   its first step to its last; the last 1,024 come from the ring it rejoins.
13. the merge costs nothing once in the ring: a 65,536-slot ring holding
   65,536 events (no flusher); a reader child reads the whole ring from seq 1,
   REPLAY_RING_PASSES times each with and without ``archive=DIR``, alternating,
   with ``for r in reader`` and with ``read_raw_many(1024)``; median rate of each
   and their ratio (with / without, ~1.0).

Measures 14-16 are issue 14's targets (``--only groups``; the table "Issue 14
targets"), each member a process of its own:

14. scaling: a gating consumer group of 1, then 2 members, each event handled
   by burning 50 µs of CPU and acknowledged (``ack(seq)``); the writer
   publishes 40,000 events flat out. Events processed per second (all
   members, first receipt to last event done) and drops (target: 2 members
   >= 1.7x 1 member, zero drops).
15. overhead: a trivial handler, members that decode (``read_many(1024)``) and
   acknowledge per batch (``ack()``): 300,000 events published into a ring
   that holds them all, then the members of a group of 2 (and of 1, for
   reference) take them. Combined events/s (target >= 400k/s for 2).
16. gating: the writer's CPU per publish at a paced 10k/s (measure 10's
   method) with a plain ``gating=True`` reader attached (``read_raw_many``,
   max_delay_s=0.005, the flusher's budget) and with a flusher attached
   (target: the gating reader costs no more than the flusher).

Measures 17 are issue 25's (``--only plain``, tools/plain_flat_out.py has
the workload): the plain reader flat out, 1, 2 and 4 processes each taking
100,000 events of 593 bytes with ``read(timeout=1)`` per event
(``plain_read_N``) or ``for result in reader`` (``plain_iter_N``), against a
pure-Python seqlock reader over mmap in the same run (``floor_N``; target:
2 readers >= 1.4x the floor, and >= 1.3x b9a4714 under ``--baseline``).

``--baseline REV`` (tools/baseline.py) builds REV into a temporary virtual
environment, its dependencies pinned to this one's, and runs the chosen
measures (by default ``plain,idle,reader``: issue 25's figures) alternating
the two builds run by run; one table gives each figure for REV, for the
working tree and their ratio, then issue 25's verdicts. ``--quick`` with it
runs 2 readers and 10k/s only, in under two minutes.

Readers are separate processes (spawn). Each attaches, then says so over a
queue before the writer starts; each reads until ``RingClosed`` and sends
back what it counted. Delivered rate = delivered / (end of stream - first
event). Every ring is closed in a ``finally``; leftover ``/dev/shm`` objects
are reported at the end, and so is any reader whose delivered + dropped is
not exactly what the writer published (that would be a shmring bug).

Run from the repository root:

    python tools/bench.py                 # everything, ~6 min here
    python tools/bench.py --only rates    # issue 11's targets (7-11, and 2 and 6), ~4.5 min
    python tools/bench.py --only groups   # issue 14's targets (14-16), ~1.5 min
    python tools/bench.py --only classic  # measures 1-6, ~100 s (3 s phases)
    python tools/bench.py --only replay   # issue 13's replay-merge (12-13), ~40 s
    python tools/bench.py --quick         # shorter phases (1 s; 2 s idle)
    python tools/bench.py --only plain    # issue 25's plain reader flat out against the floor (17)
    python tools/bench.py --baseline b9a4714 --runs 5   # issue 25's figures, this tree against b9a4714
    python tools/bench.py --baseline HEAD~1 --quick     # the same guard in under two minutes
    python tools/bench.py --only rate_10k_0,writer_* --runs 5 --json
"""

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_mod
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time

import msgspec
import psutil

import plain_flat_out
from baseline import alternate, baseline_build, working_tree_build
from children import await_msgs, cleanup, spawn
from common import (CAPTURE_SESSION_ID, BenchError, Stamp, choose_pad, cpu_snapshot, foreign_pct, make_data,
                    make_event, process_cpu_ns)
from shmring import CaptureSession, Envelope, Event, Reader, RingClosed
from shmring.flusher import Flusher

CAPACITY = 65536
DATA_BYTES = 64 * 1024 * 1024
READY_TIMEOUT_S = 30.0
"""How long a child may take to start and attach (spawn imports everything)."""
STALL_TIMEOUT_S = 10.0
"""A reader that sees nothing for this long gives up and reports a stall."""
MPQ_MAXSIZE = 8192
"""Bound on each mp.Queue: the writer is back-pressured by it (instead of piling
events up in its own memory while its feeder threads fight it for the GIL), so
most of a run is the steady state and the drain after it is short."""
FLUSH_CATEGORIES = ("console", "network", "page")
"""Measure 6 spreads the event over these categories, round-robin (one file each)."""
FLUSH_TMP_PARENT = "/tmp"

_seq_counter = 0


def ring_name() -> str:
    global _seq_counter
    _seq_counter += 1
    return f"bench-{os.getpid()}-{_seq_counter}"


# --------------------------------------------------------------------------
# Child processes (top level: spawn pickles them by name)
# --------------------------------------------------------------------------

def _count_loop(reader) -> dict:
    """Read until RingClosed; every read decodes. Returns the counts."""
    read = reader.read
    stall = STALL_TIMEOUT_S
    delivered = dropped = 0
    stalled = False
    res = read(stall)
    t_first = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    s0 = process_cpu_ns(os.getpid())
    try:
        while True:
            if res is None:
                stalled = True
                break
            if res.envelope is not None:
                delivered += 1
            else:
                dropped += res.dropped
            res = read(stall)
    except RingClosed:
        pass
    return _count_report(reader, delivered, dropped, stalled, t_first, ru0, s0)


def _raw_count_loop(reader) -> dict:
    """_count_loop with read_raw_many (1024 at a time): nothing is decoded."""
    read_raw_many = reader.read_raw_many
    stall = STALL_TIMEOUT_S
    delivered = dropped = 0
    stalled = False
    records = read_raw_many(1024, stall)
    t_first = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    s0 = process_cpu_ns(os.getpid())
    try:
        while True:
            if not records:
                stalled = True
                break
            for record in records:
                if record.dropped:
                    dropped += record.dropped
                else:
                    delivered += 1
            records = read_raw_many(1024, stall)
    except RingClosed:
        pass
    return _count_report(reader, delivered, dropped, stalled, t_first, ru0, s0)


def _count_report(reader, delivered: int, dropped: int, stalled: bool, t_first: float, ru0, s0: int | None) -> dict:
    t_end = time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    s1 = process_cpu_ns(os.getpid())
    per = max(1, delivered)
    return {"delivered": delivered, "dropped": dropped, "elapsed": t_end - t_first,
            "reader_delivered": reader.delivered, "reader_dropped": reader.dropped, "stalled": stalled,
            # How often the reader blocked (voluntary context switches), and its CPU, per event.
            "sleeps_per_event": (ru1.ru_nvcsw - ru0.ru_nvcsw) / per,
            "cpu_us_per_event": 1e6 * (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / per,
            # The same from the scheduler (ns, all threads), and the rate per second of reader CPU.
            "sched_cpu_us_per_event": (s1 - s0) / 1000 / per if s0 is not None and s1 is not None
            else float("nan"),
            "rate_per_cpu_s": delivered / ((s1 - s0) / 1e9) if s0 is not None and s1 is not None and s1 > s0
            else float("nan")}


def _latency_loop(reader) -> dict:
    """Read until RingClosed; record now - stamp for each event."""
    read = reader.read
    now_ns = time.monotonic_ns
    decode_stamp = msgspec.json.Decoder(Stamp).decode
    lat = []
    append = lat.append
    dropped = 0
    stalled = False
    try:
        while True:
            res = read(STALL_TIMEOUT_S)
            now = now_ns()
            if res is None:
                stalled = True
                break
            if res.envelope is None:
                dropped += res.dropped
                continue
            append(now - decode_stamp(res.envelope.event.data).t)
    except RingClosed:
        pass
    lat.sort()
    n = len(lat)

    def pct(p):
        return lat[min(n - 1, int(p * n))] / 1000.0 if n else float("nan")

    return {"n": n, "dropped": dropped, "stalled": stalled, "p50_us": pct(0.50), "p99_us": pct(0.99),
            "p999_us": pct(0.999), "max_us": lat[-1] / 1000.0 if n else float("nan")}


def shm_reader_main(name: str, idx: int, results, mode: str) -> None:
    reader = None
    try:
        reader = Reader.attach(name)
        results.put(("ready", idx, os.getpid()))
        if mode == "count":
            out = _count_loop(reader)
        elif mode == "latency":
            out = _latency_loop(reader)
        elif mode == "raw":
            out = _raw_count_loop(reader)
        elif mode == "idle":
            try:
                res = reader.read(timeout=120.0)  # the parent closes the ring long before
                out = {"unexpected": repr(res)}
            except RingClosed:
                out = {}
        else:
            raise ValueError(mode)
        results.put(("done", idx, out))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # report, so the parent need not wait for a timeout
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    finally:
        if reader is not None:
            reader.close()


def _attach(name: str, max_delay_s: float) -> Reader:
    """Attach with a latency budget; max_delay_s=0 passes none, so this runs on readers that predate it too."""
    return Reader.attach(name, max_delay_s=max_delay_s) if max_delay_s else Reader.attach(name)


def percentiles_us(lat_ns: list[int]) -> dict:
    """p50/p99/p99.9/max (µs) of a list of latencies in ns (sorted in place)."""
    lat_ns.sort()
    n = len(lat_ns)

    def pct(p):
        return lat_ns[min(n - 1, int(p * n))] / 1000.0 if n else float("nan")

    return {"p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "max_us": lat_ns[-1] / 1000.0 if n else float("nan")}


def plain_reader_main(name: str, idx: int, results, max_delay_s: float, warm_n: int, latency: bool) -> None:
    """One plain decoding reader, ``for r in reader``, until the ring closes (measures 7, 8 and 10).

    The parent reads this process's CPU (schedstat) when the writer starts; this
    process reads it again the moment the stream ends (RingClosed), so the window
    holds every event and the drain, and no sleep. With `latency`, it keeps the
    receipt time and the event's data (two appends) and computes now - stamp only
    after the stream. With `warm_n`, it says "warm" once it has read that many.
    """
    reader = None
    try:
        reader = _attach(name, max_delay_s)
        results.put(("ready", idx, os.getpid()))
        now_ns = time.monotonic_ns
        got, datas = [], []
        n = dropped = 0
        nvcsw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        for r in reader:
            envelope = r.envelope
            if envelope is None:
                dropped += r.dropped
                continue
            n += 1
            if latency:
                got.append(now_ns())
                datas.append(envelope.event.data)
            if n == warm_n:
                results.put(("warm", idx, None))
        cpu_end_ns = process_cpu_ns(os.getpid())
        t_end = time.monotonic()
        sleeps = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - nvcsw0
        out = {"delivered": n, "dropped": dropped, "cpu_end_ns": cpu_end_ns, "t_end": t_end,
               "sleeps_per_event": sleeps / max(1, n),
               "reader_delivered": reader.delivered, "reader_dropped": reader.dropped}
        if latency:
            decode_stamp = msgspec.json.Decoder(Stamp).decode
            out.update(percentiles_us([t - decode_stamp(d).t for t, d in zip(got, datas)]))
        results.put(("done", idx, out))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # report, so the parent need not wait for a timeout
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    finally:
        if reader is not None:
            reader.close()


def mpq_reader_main(q, idx: int, results) -> None:
    try:
        decode = msgspec.json.Decoder(Envelope).decode
        get = q.get
        results.put(("ready", idx, os.getpid()))
        delivered = 0
        stalled = False
        item = get(True, STALL_TIMEOUT_S)
        t_first = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            while item is not None:
                decode(item)
                delivered += 1
                item = get(True, STALL_TIMEOUT_S)
        except queue_mod.Empty:
            stalled = True
        t_end = time.monotonic()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        per = max(1, delivered)
        results.put(("done", idx, {"delivered": delivered, "dropped": 0, "elapsed": t_end - t_first,
                                   "stalled": stalled, "sleeps_per_event": (ru1.ru_nvcsw - ru0.ru_nvcsw) / per,
                                   "cpu_us_per_event": 1e6 * (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime
                                                              - ru0.ru_stime) / per}))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))


def flusher_main(name: str, directory: str, idx: int, results) -> None:
    """Attach a Flusher(fsync="batch") (a gating reader), say so, flush until the ring closes and drains."""
    flusher = None
    try:
        flusher = Flusher(name, directory, fsync="batch")
        results.put(("ready", idx, os.getpid()))
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        stats = flusher.run()
        cpu_end_ns, t_run_end = process_cpu_ns(os.getpid()), time.monotonic()
        flusher.close()  # files closed, gate released: the flusher is done
        t_end = time.monotonic()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        results.put(("done", idx, {
            "lines": stats["lines"], "gap_events": stats["gap_events"], "ending": stats["ending"],
            "last_seq": stats["last_seq"], "t_end": t_end, "cpu_end_ns": cpu_end_ns, "t_run_end": t_run_end,
            "cpu_s": ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime,
            "sleeps": ru1.ru_nvcsw - ru0.ru_nvcsw}))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    finally:
        if flusher is not None:
            flusher.close()


def group_member_main(name: str, idx: int, results, go, burn_us: float, ack_per_batch: bool) -> None:
    """A member of gating group "bench": handle each event (burn `burn_us` of CPU), acknowledge, until RingClosed."""
    reader = None
    try:
        reader = Reader.attach(name, group="bench", gating=True, after_seq=0)
        results.put(("ready", idx, os.getpid()))
        go.wait(READY_TIMEOUT_S)
        delivered = dropped = 0
        t_first = t_last = None
        burn = burn_us / 1e6
        clock = time.perf_counter
        stalled = False
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            while True:
                batch = reader.read_many(1024, timeout=STALL_TIMEOUT_S)
                if not batch:
                    stalled = True
                    break
                if t_first is None:
                    t_first = time.monotonic()
                for r in batch:
                    if r.dropped:
                        dropped += r.dropped
                        continue
                    delivered += 1
                    if burn:
                        end = clock() + burn
                        while clock() < end:
                            pass
                    if not ack_per_batch:
                        reader.ack(r.envelope.seq)
                if ack_per_batch:
                    reader.ack()
                t_last = time.monotonic()
        except RingClosed:
            pass
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        results.put(("done", idx, {"delivered": delivered, "dropped": dropped, "t_first": t_first,
                                   "t_last": t_last, "stalled": stalled,
                                   "cpu_s": ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime}))
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    finally:
        if reader is not None:
            reader.close()


def gating_reader_main(name: str, idx: int, results) -> None:
    """A plain gating reader taking read_raw_many with the flusher's latency budget, until RingClosed."""
    reader = None
    try:
        reader = Reader.attach(name, gating=True, after_seq=0, max_delay_s=0.005)
        results.put(("ready", idx, os.getpid()))
        delivered = dropped = 0
        try:
            while True:
                for record in reader.read_raw_many(1024, timeout=STALL_TIMEOUT_S):
                    if record.dropped:
                        dropped += record.dropped
                    else:
                        delivered += 1
        except RingClosed:
            pass
        results.put(("done", idx, {"delivered": delivered, "dropped": dropped}))
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    finally:
        if reader is not None:
            reader.close()


# --------------------------------------------------------------------------
# Parent-side helpers
# --------------------------------------------------------------------------

def schedstat_ns(pid: int) -> int | None:
    """CPU time of `pid` in ns from /proc/PID/schedstat (Linux), or None."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def new_session(name: str) -> CaptureSession:
    return CaptureSession.create(name, capture_session_id=CAPTURE_SESSION_ID, capacity=CAPACITY,
                                 data_bytes=DATA_BYTES)


def publish_flat_out(session: CaptureSession, event: Event, duration: float) -> tuple[int, float]:
    """Publish `event` as fast as possible for `duration` s: (count, elapsed)."""
    publish = session.publish
    clock = time.monotonic
    batch = range(256)
    n = 0
    t0 = clock()
    end = t0 + duration
    while True:
        for _ in batch:
            publish(event)
        n += 256
        if clock() >= end:
            break
    return n, clock() - t0


def publish_paced(session: CaptureSession, rate: int, duration: float, event: Event | None = None,
                  pad: str = "", *, timed: bool = False) -> dict:
    """Publish at `rate` events/s for `duration` s, catching up after stalls.

    With `event`, publish it unchanged; without, build each event with a fresh
    monotonic_ns stamp in its data just before publishing it. Sleeps only when
    more than 200 us ahead (sleep granularity here is ~130 us), else spins.

    timed (with `event`): also time the writer's CPU inside each publish()
    call. Then the loop never sleeps (at 10k/s a sleep is longer than the
    period, and a sleep-and-wake here costs 30-70 µs of CPU itself), so the CPU
    of the whole loop is 100% of a core and says nothing. Instead each publish
    is bracketed by time.thread_time_ns() (this thread's CPU, user + system,
    so the semaphore post and the wake-up it causes are in it); the cost of an
    empty bracket (~0.6 µs here: two clock_gettime syscalls) is measured in
    the same process right after and subtracted.
    """
    publish = session.publish
    now_ns = time.monotonic_ns
    cpu_ns = time.thread_time_ns
    sleep = time.sleep
    replace = msgspec.structs.replace
    template = make_event(pad)
    period = 1e9 / rate
    total = int(rate * duration)
    inside = 0
    t0 = now_ns()
    end = t0 + int(duration * 1e9)
    n = 0
    max_behind = 0
    while True:
        now = now_ns()
        if now >= end or n >= total:
            break
        due = min(int((now - t0) // period) + 1, total)
        if n < due:
            behind = due - n
            if behind > max_behind:
                max_behind = behind
            k = min(behind, 64)  # catch up in small bursts, re-checking the clock
            if timed:
                for _ in range(k):
                    c0 = cpu_ns()
                    publish(event)
                    inside += cpu_ns() - c0
            elif event is not None:
                for _ in range(k):
                    publish(event)
            else:
                for _ in range(k):
                    publish(replace(template, data=make_data(now_ns(), pad)))
            n += k
        elif not timed:
            ahead = t0 + n * period - now
            if ahead > 200_000:
                sleep((ahead - 100_000) / 1e9)
    elapsed = (now_ns() - t0) / 1e9
    out = {"published": n, "elapsed": elapsed, "rate": n / elapsed, "target_rate": rate,
           "max_behind_events": max_behind, "max_behind_ms": max_behind / rate * 1e3,
           "kept_pace": n >= 0.99 * total}
    if timed:
        calib_n = 50_000
        empty = 0
        for _ in range(calib_n):
            c0 = cpu_ns()
            empty += cpu_ns() - c0
        bracket_ns = empty / calib_n
        out.update(bracket_ns=bracket_ns, raw_cpu_us_per_publish=inside / max(1, n) / 1000,
                   cpu_us_per_publish=(inside / max(1, n) - bracket_ns) / 1000)
    return out


# --------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------

def measure_publish_no_reader(event: Event, duration: float) -> dict:
    with new_session(ring_name()) as s:
        n, elapsed = publish_flat_out(s, event, duration)
    return {"published": n, "elapsed": elapsed, "rate": n / elapsed}


def _run_shm_readers(ctx, n_readers: int, mode: str, writer, duration: float) -> tuple[object, dict]:
    """Start readers on a fresh ring, run `writer(session)`, close, collect the readers' reports."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    session = new_session(name)
    try:
        procs = spawn(ctx, shm_reader_main, [(name, i, results, mode) for i in range(n_readers)])
        await_msgs(results, "ready", n_readers, READY_TIMEOUT_S)
        writer_out = writer(session)
        session.close()
        done = await_msgs(results, "done", n_readers, duration + 30.0)
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
    return writer_out, done


def _reader_summary(done: dict) -> dict:
    readers = [done[i] for i in sorted(done)]
    for r in readers:
        r["rate"] = r["delivered"] / r["elapsed"] if r["elapsed"] > 0 else 0.0
    return {"readers": readers, "reader_rate_mean": statistics.fmean(r["rate"] for r in readers),
            "sleeps_per_event": statistics.fmean(r.get("sleeps_per_event", float("nan")) for r in readers),
            "rate_per_cpu_s_mean": statistics.fmean(r.get("rate_per_cpu_s", float("nan")) for r in readers),
            "reader_rate_min": min(r["rate"] for r in readers),
            "drops_max": max(r["dropped"] for r in readers),
            "drops_total": sum(r["dropped"] for r in readers),
            "stalled": any(r.get("stalled") for r in readers)}


def measure_fanout_shm(ctx, event: Event, n_readers: int, duration: float) -> dict:
    def writer(session):
        return publish_flat_out(session, event, duration)

    (n, elapsed), done = _run_shm_readers(ctx, n_readers, "count", writer, duration)
    out = {"published": n, "writer_rate": n / elapsed}
    out.update(_reader_summary(done))
    return out


def measure_fanout_mpq(ctx, event: Event, n_readers: int, duration: float) -> dict:
    results = ctx.Queue()
    queues = [ctx.Queue(maxsize=MPQ_MAXSIZE) for _ in range(n_readers)]
    procs = []
    ok = False
    try:
        procs = spawn(ctx, mpq_reader_main, [(queues[i], i, results) for i in range(n_readers)])
        await_msgs(results, "ready", n_readers, READY_TIMEOUT_S)
        # The same envelope publish would build (ts and detail level filled in once).
        ev = msgspec.structs.replace(event, ts=time.time_ns() // 1000, detail_level="standard")
        encode = msgspec.json.Encoder(order="deterministic").encode
        puts = [q.put for q in queues]
        clock = time.monotonic
        seq = 0
        t0 = clock()
        end = t0 + duration
        while True:
            for _ in range(256):
                seq += 1
                payload = encode(Envelope(CAPTURE_SESSION_ID, seq, ev))
                for put in puts:
                    put(payload, True, STALL_TIMEOUT_S)
            if clock() >= end:
                break
        elapsed = clock() - t0
        for put in puts:
            put(None, True, STALL_TIMEOUT_S)
        done = await_msgs(results, "done", n_readers, duration + 60.0)
        ok = True
    finally:
        cleanup(None, procs, queues + [results], ok)
    out = {"published": seq, "writer_rate": seq / elapsed}
    out.update(_reader_summary(done))
    return out


def measure_latency(ctx, pad: str, rate: int, duration: float) -> dict:
    def writer(session):
        return publish_paced(session, rate, duration, pad=pad)

    paced, done = _run_shm_readers(ctx, 1, "latency", writer, duration)
    out = dict(done[0])
    out["writer"] = paced
    return out


def measure_idle_cpu(ctx, idle_s: float) -> dict:
    """CPU used by a reader blocked in read() on a ring nobody publishes to."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    session = new_session(name)
    try:
        procs = spawn(ctx, shm_reader_main, [(name, 0, results, "idle")])
        pid = await_msgs(results, "ready", 1, READY_TIMEOUT_S)[0]
        proc = psutil.Process(pid)
        time.sleep(0.2)  # let it get from the handshake into its blocking wait
        c0, s0, x0 = proc.cpu_times(), schedstat_ns(pid), proc.num_ctx_switches().voluntary
        w0 = time.monotonic()
        time.sleep(idle_s)
        c1, s1, x1 = proc.cpu_times(), schedstat_ns(pid), proc.num_ctx_switches().voluntary
        wall = time.monotonic() - w0
        session.close()
        done = await_msgs(results, "done", 1, 30.0)
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    out = {"cpu_s": cpu, "wall_s": wall, "cpu_pct": 100.0 * cpu / wall, "wakeups_per_s": (x1 - x0) / wall,
           # psutil's cpu_times ticks at 10 ms; the scheduler's own count is in ns.
           "sched_cpu_pct": (100.0 * (s1 - s0) / 1e9 / wall) if s0 is not None and s1 is not None
           else float("nan")}
    if done[0]:
        out["reader"] = done[0]
    return out


def measure_paced_fanout(ctx, event: Event, n_readers: int, rate: int, duration: float) -> dict:
    def writer(session):
        return publish_paced(session, rate, duration, event=event)

    paced, done = _run_shm_readers(ctx, n_readers, "count", writer, duration)
    out = {"writer": paced, "achieved_rate": paced["rate"]}
    out.update(_reader_summary(done))
    return out


def _run_plain_readers(ctx, n_readers: int, max_delay_s: float, latency: bool, writer,
                       duration: float) -> tuple[object, list[dict]]:
    """Start `n_readers` plain_reader_main children, run `writer(session)`, close; each reader's report
    with its CPU over [writer start, its end of stream] (cpu_ns), that window (wall_s) and % of a core."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    session = new_session(name)
    try:
        procs = spawn(ctx, plain_reader_main, [(name, i, results, max_delay_s, 0, latency) for i in range(n_readers)])
        pids = await_msgs(results, "ready", n_readers, READY_TIMEOUT_S + 2.0 * n_readers)
        c0 = {i: process_cpu_ns(pid) for i, pid in pids.items()}
        t0 = time.monotonic()
        writer_out = writer(session)
        session.close()
        done = await_msgs(results, "done", n_readers, duration + 30.0)
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
    readers = []
    for i in sorted(done):
        x = done[i]
        x["cpu_ns"] = x["cpu_end_ns"] - c0[i]
        x["wall_s"] = x["t_end"] - t0
        x["cpu_us_per_event"] = x["cpu_ns"] / 1000 / max(1, x["delivered"])
        x["cpu_pct"] = 100.0 * x["cpu_ns"] / 1e9 / x["wall_s"]
        readers.append(x)
    return writer_out, readers


def measure_idle_mode(ctx, max_delay_s: float, idle_s: float, warm_n: int = 20) -> dict:
    """Measure 7: a plain reader that has read `warm_n` events, then blocks on a quiet ring for `idle_s`."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    session = new_session(name)
    try:
        procs = spawn(ctx, plain_reader_main, [(name, 0, results, max_delay_s, warm_n, False)])
        pid = await_msgs(results, "ready", 1, READY_TIMEOUT_S)[0]
        event = make_event("idle")
        for _ in range(warm_n):
            session.publish(event)
        await_msgs(results, "warm", 1, 10.0)
        proc = psutil.Process(pid)
        time.sleep(0.5)  # from its last event into its blocking wait (a batching reader dozes max_delay_s first)
        s0, x0, w0 = process_cpu_ns(pid), proc.num_ctx_switches().voluntary, time.monotonic()
        time.sleep(idle_s)
        s1, x1, wall = process_cpu_ns(pid), proc.num_ctx_switches().voluntary, time.monotonic() - w0
        session.close()
        done = await_msgs(results, "done", 1, 30.0)[0]
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
    return {"max_delay_s": max_delay_s, "wall_s": wall, "cpu_ns": s1 - s0, "cpu_pct": 100.0 * (s1 - s0) / 1e9 / wall,
            "wakeups_per_s": (x1 - x0) / wall, "reader": done}


def measure_reader_rate(ctx, pad: str, rate: int, max_delay_s: float, duration: float) -> dict:
    """Measure 8: one plain decoding reader at a paced `rate` (stamped events): its CPU per event and
    the delivery latency (receipt - publish stamp)."""
    def writer(session):
        return publish_paced(session, rate, duration, pad=pad)

    paced, readers = _run_plain_readers(ctx, 1, max_delay_s, True, writer, duration)
    out = dict(readers[0])
    out["writer"] = paced
    out["max_delay_s"] = max_delay_s
    return out


def measure_writer_rate(ctx, event: Event, n_readers: int, max_delay_s: float, rate: int, duration: float) -> dict:
    """Measure 10: the writer's CPU per publish at a paced `rate` with `n_readers` plain readers."""
    def writer(session):
        return publish_paced(session, rate, duration, event=event, timed=True)

    if n_readers == 0:
        with new_session(ring_name()) as s:
            paced, readers = writer(s), []
    else:
        paced, readers = _run_plain_readers(ctx, n_readers, max_delay_s, False, writer, duration)
    out = {"writer": paced, "cpu_us_per_publish": paced["cpu_us_per_publish"], "readers": readers,
           "max_delay_s": max_delay_s, "n_readers": n_readers, "published": paced["published"],
           "reader_cpu_us_per_event_mean": statistics.fmean(x["cpu_us_per_event"] for x in readers)
           if readers else float("nan"),
           "reader_sleeps_per_event_mean": statistics.fmean(x["sleeps_per_event"] for x in readers)
           if readers else float("nan")}
    return out


def measure_fanout_raw(ctx, event: Event, n_readers: int, duration: float) -> dict:
    """Measure 9: measure 2 with read_raw_many readers (nothing decoded)."""
    def writer(session):
        return publish_flat_out(session, event, duration)

    (n, elapsed), done = _run_shm_readers(ctx, n_readers, "raw", writer, duration)
    out = {"published": n, "writer_rate": n / elapsed}
    out.update(_reader_summary(done))
    return out


def flush_events(event: Event) -> list[Event]:
    """The bench event once per category of FLUSH_CATEGORIES (same size give or take the name)."""
    return [msgspec.structs.replace(event, category=c) for c in FLUSH_CATEGORIES]


def publish_flat_out_cpu(session: CaptureSession, events: list[Event], duration: float) -> dict:
    """Publish `events` round-robin as fast as possible for `duration` s; count, wall time, and this
    process's CPU time (time.process_time) over the publish loop."""
    publish = session.publish
    clock = time.monotonic
    batch = events * (256 // len(events))
    per_batch = len(batch)
    n = 0
    c0 = time.process_time()
    t0 = clock()
    end = t0 + duration
    while True:
        for ev in batch:
            publish(ev)
        n += per_batch
        if clock() >= end:
            break
    t1 = clock()
    cpu = time.process_time() - c0
    per_category = {c: n // len(events) for c in FLUSH_CATEGORIES}
    return {"published": n, "per_category": per_category, "t0": t0, "elapsed": t1 - t0, "rate": n / (t1 - t0),
            "cpu_s": cpu, "cpu_us_per_publish": 1e6 * cpu / n}


def count_lines(directory: str) -> tuple[dict[str, int], list[str]]:
    """Lines per category file in `directory`, and the other files (besides the checkpoint) found there."""
    counts, other = {}, []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        category = entry[: -len(".jsonl")]
        if entry.endswith(".jsonl") and not entry.startswith("_") and "." not in category:
            n = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    n += chunk.count(b"\n")
            counts[category] = n
        elif entry not in ("_checkpoint.json",):
            other.append(entry)
    return counts, other


def _fs_type(path: str) -> str:
    """The file system type holding `path` (fsync costs nothing on tmpfs)."""
    best, fstype = "", "?"
    path = os.path.realpath(path)
    try:
        for part in psutil.disk_partitions(all=True):
            mp_ = part.mountpoint
            if (path == mp_ or path.startswith(mp_.rstrip("/") + "/")) and len(mp_) > len(best):
                best, fstype = mp_, part.fstype
    except OSError:
        pass
    return fstype


def _run_flusher(ctx, writer, duration: float) -> dict:
    """On a fresh ring, a Flusher(fsync="batch") child into a fresh directory; run `writer(session)`,
    close, collect its report and the files' line counts. Its CPU over [writer start, end of its run()]."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    directory = tempfile.mkdtemp(prefix=f"shmring-bench-flush-{os.getpid()}-", dir=FLUSH_TMP_PARENT)
    session = None
    try:
        session = new_session(name)
        procs = spawn(ctx, flusher_main, [(name, directory, 0, results)])
        pid = await_msgs(results, "ready", 1, READY_TIMEOUT_S)[0]
        c0, t0 = process_cpu_ns(pid), time.monotonic()
        writer_out = writer(session)
        session.close()  # waits until the gating flusher has written (not yet fsynced) everything
        t_closed = time.monotonic()
        done = await_msgs(results, "done", 1, duration + 60.0)[0]
        counts, other_files = count_lines(directory)
        fs_type = _fs_type(directory)
        ok = True
    finally:
        try:
            if not ok:
                # A live but stuck flusher would hold close() for ever: end it (our child, by its
                # handle) first, so close() waits for it at most the grace period.
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                        p.join(2.0)
            cleanup(session, procs, [results], ok)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            if os.path.exists(directory):
                print(f"  warning: could not remove {directory}", file=sys.stderr)
    problems = []
    if other_files:
        problems.append(f"unexpected files in the flush directory: {other_files}")
    return {"writer": writer_out, "flusher": done, "files": counts, "fs_type": fs_type, "t_closed": t_closed,
            "problems": problems, "cpu_ns": done["cpu_end_ns"] - c0, "wall_s": done["t_run_end"] - t0}


def _flusher_problems(done: dict, counts: dict, published: int, per_category: dict) -> list[str]:
    problems = []
    if sum(counts.values()) != published or counts != per_category:
        problems.append(f"lines in files {counts} != published {per_category} (total {published})")
    lines = done["lines"]
    if lines != published or done["last_seq"] != published or done["gap_events"] or done["ending"] != "closed":
        problems.append(f"flusher reported lines {lines}, last_seq {done['last_seq']}, gap_events "
                        f"{done['gap_events']}, ending {done['ending']!r}; published {published}")
    return problems


def measure_flusher(ctx, event: Event, duration: float) -> dict:
    """Measure 6: the same flat-out loop without, then with, a Flusher(fsync="batch") child attached."""
    events = flush_events(event)
    with new_session(ring_name()) as s:
        without = publish_flat_out_cpu(s, events, duration)
    run = _run_flusher(ctx, lambda session: publish_flat_out_cpu(session, events, duration), duration)
    with_, done, counts = run["writer"], run["flusher"], run["files"]
    published = with_["published"]
    lines = done["lines"]
    e2e = done["t_end"] - with_["t0"]
    problems = _flusher_problems(done, counts, published, with_["per_category"]) + run["problems"]
    return {
        "without": without, "with": with_, "flusher": done, "files": counts, "problems": problems,
        "fs_type": run["fs_type"],
        "lines_per_s": lines / e2e, "e2e_s": e2e, "drain_s": done["t_end"] - (with_["t0"] + with_["elapsed"]),
        "close_wait_s": run["t_closed"] - (with_["t0"] + with_["elapsed"]),
        "file_minus_published": sum(counts.values()) - published,
        "flusher_cpu_us_per_line": 1e6 * done["cpu_s"] / max(1, lines),
        "cpu_overhead_pct": 100.0 * (with_["cpu_us_per_publish"] / without["cpu_us_per_publish"] - 1.0),
    }


def measure_flusher_paced(ctx, event: Event, rate: int, duration: float) -> dict:
    """Measure 11: a Flusher(fsync="batch") child while the writer publishes `event` at a paced `rate`:
    the flusher's CPU (schedstat, all threads) from the writer's start to the end of its run()."""
    run = _run_flusher(ctx, lambda session: publish_paced(session, rate, duration, event=event), duration)
    paced, done = run["writer"], run["flusher"]
    published = paced["published"]
    problems = _flusher_problems(done, run["files"], published, {event.category: published}) + run["problems"]
    return {"writer": paced, "flusher": done, "problems": problems, "fs_type": run["fs_type"],
            "cpu_pct": 100.0 * run["cpu_ns"] / 1e9 / run["wall_s"],
            "cpu_us_per_line": run["cpu_ns"] / 1000 / max(1, done["lines"])}


def measure_group(ctx, event: Event, n_members: int, count: int, burn_us: float, ack_per_batch: bool,
                  backlog: bool) -> dict:
    """Measures 12-13: a gating group of `n_members` takes `count` events; events/s over all members.

    backlog: publish everything first (into a ring that holds it), then let the members go; else the
    members go first and the writer publishes flat out meanwhile.
    """
    capacity = 1 << max(16, (count - 1).bit_length())
    data_bytes = max(DATA_BYTES, 1 << (count * 400 - 1).bit_length())
    results, go = ctx.Queue(), ctx.Event()
    session, procs, ok = None, [], False
    try:
        session = CaptureSession.create(ring_name(), capture_session_id=CAPTURE_SESSION_ID, capacity=capacity,
                                        data_bytes=data_bytes)
        procs = spawn(ctx, group_member_main, [(session.name, i, results, go, burn_us, ack_per_batch)
                                               for i in range(n_members)])
        await_msgs(results, "ready", n_members, READY_TIMEOUT_S)
        if not backlog:
            go.set()
        publish = session.publish
        for _ in range(count):
            publish(event)
        go.set()
        session.close()  # waits until the gating group has acknowledged everything
        done = await_msgs(results, "done", n_members, READY_TIMEOUT_S + STALL_TIMEOUT_S)
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
    members = list(done.values())
    span = max(m["t_last"] for m in members if m["t_last"]) - min(m["t_first"] for m in members if m["t_first"])
    delivered = sum(m["delivered"] for m in members)
    return {"n_members": n_members, "published": count, "delivered": delivered,
            "dropped": sum(m["dropped"] for m in members), "rate": delivered / span, "span_s": span,
            "per_member": [m["delivered"] for m in members], "stalled": any(m["stalled"] for m in members),
            "burn_us": burn_us, "cpu_us_per_event": 1e6 * sum(m["cpu_s"] for m in members) / max(1, delivered),
            # what the members would reach with a core each: their CPU per event is all that limits them
            "rate_own_cores": n_members * delivered / max(1e-9, sum(m["cpu_s"] for m in members))}


def measure_gating_publish(ctx, event: Event, kind: str, rate: int, duration: float) -> dict:
    """Measure 14: the writer's CPU per publish at a paced `rate` with a gating reader or a flusher attached."""
    results = ctx.Queue()
    session, procs, ok, directory = None, [], False, None
    try:
        session = new_session(ring_name())
        if kind == "flusher":
            directory = tempfile.mkdtemp(prefix="shmring-bench-gating-", dir=FLUSH_TMP_PARENT)
            procs = spawn(ctx, flusher_main, [(session.name, os.path.join(directory, "logs"), 0, results)])
        else:
            procs = spawn(ctx, gating_reader_main, [(session.name, 0, results)])
        await_msgs(results, "ready", 1, READY_TIMEOUT_S)
        paced = publish_paced(session, rate, duration, event=event, timed=True)
        session.close()
        done = await_msgs(results, "done", 1, READY_TIMEOUT_S + STALL_TIMEOUT_S)[0]
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    return {"writer": paced, "cpu_us_per_publish": paced["cpu_us_per_publish"], "published": paced["published"],
            "gate": done, "kind": kind}


# --------------------------------------------------------------------------
# One run, many runs, the report
# --------------------------------------------------------------------------

MODES = {"0": 0.0, "2ms": 0.002}
"""The latency budgets measured in 7-11: max_delay_s=0 (wake for every event) and 0.002."""
WRITER_READERS = (0, 1, 4, 16)
"""Reader counts of measure 10 (0: the publish cost at rate with nobody to wake)."""


REPLAY_EVENTS = 200_000
REPLAY_CAPACITY = 1024
REPLAY_CATEGORIES = ("console", "network", "page", "interaction")
REPLAY_RING_PASSES = 15


def _read_all(reader, mode: str, until: int) -> tuple[int, int, float, float]:
    """Read `reader` to seq `until`: (events, drops, seconds from the first step to the last, CPU seconds)."""
    events = drops = 0
    c0 = time.process_time()
    t0 = None
    if mode == "read":
        for step in reader:
            if t0 is None:
                t0 = time.perf_counter()
            if step.dropped:
                drops += step.dropped
            else:
                events += 1
            if reader.cursor >= until:
                break
    else:
        take = reader.read_raw_many if mode == "raw" else reader.read_many
        while reader.cursor < until:
            steps = take(1024, STALL_TIMEOUT_S)
            if not steps:
                raise BenchError(f"a replay reader stalled at seq {reader.cursor}")
            if t0 is None:
                t0 = time.perf_counter()
            events += len(steps)
            for step in steps:
                if step.dropped:
                    drops += step.dropped
                    events -= 1
    return events, drops, time.perf_counter() - t0, time.process_time() - c0


def replay_reader_main(name: str, directory: str, idx: int, results, modes: list[str], until: int) -> None:
    """Measure 12: for each mode, a reader with after_seq=0, archive=directory reads everything up to `until`."""
    try:
        out = {}
        for mode in modes:
            with Reader.attach(name, after_seq=0, archive=directory) as reader:
                events, drops, wall, cpu = _read_all(reader, mode, until)
                out[mode] = {"events": events, "drops": drops, "rate": events / wall, "rate_per_cpu_s": events / cpu,
                             "delivered": reader.delivered, "in_ring": not reader._replaying}
        results.put(("done", idx, out))
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))


def ring_cost_reader_main(name: str, directory: str, idx: int, results, until: int, passes: int) -> None:
    """Measure 13: the whole ring from seq 1, with and without archive=, alternating, read and raw."""
    try:
        rates: dict[str, list[float]] = {}
        for i in range(passes * 2):
            archive = directory if i % 2 else None
            for mode in ("read", "raw"):
                with Reader.attach(name, after_seq=0, archive=archive) as reader:
                    events, drops, wall, _ = _read_all(reader, mode, until)
                    if drops or events != until or reader._replaying:
                        raise BenchError(f"ring pass: {events} events, {drops} drops (expected {until}, 0)")
                rates.setdefault(f"{mode}_{'with' if archive else 'without'}", []).append(events / wall)
        results.put(("done", idx, {k: statistics.median(v) for k, v in rates.items()}))
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))


def measure_replay_files(ctx, event: Event) -> dict:
    """Measure 12 (see the module docstring)."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    directory = tempfile.mkdtemp(prefix=f"shmring-bench-flush-{os.getpid()}-", dir=FLUSH_TMP_PARENT)
    session = None
    events = [msgspec.structs.replace(event, category=c) for c in REPLAY_CATEGORIES]
    try:
        session = CaptureSession.create(name, capacity=REPLAY_CAPACITY, data_bytes=8 << 20)
        procs = spawn(ctx, flusher_main, [(name, directory, 0, results)])
        await_msgs(results, "ready", 1, READY_TIMEOUT_S)
        publish = session.publish
        for i in range(REPLAY_EVENTS):
            publish(events[i % 4])
        readers = spawn(ctx, replay_reader_main, [(name, directory, 1, results, ["read", "many", "raw"],
                                                   REPLAY_EVENTS)])
        procs += readers
        out = await_msgs(results, "done", 1, 300.0)[1]
        session.close()
        await_msgs(results, "done", 1, 60.0)  # the flusher
        ok = True
    finally:
        try:
            cleanup(session, procs, [results], ok)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    out["drops_total"] = sum(out[m]["drops"] for m in ("read", "many", "raw"))
    out["problems"] = [f"{m}: {out[m]['events']} events, {out[m]['drops']} drops, in ring {out[m]['in_ring']}"
                       for m in ("read", "many", "raw")
                       if out[m]["events"] != REPLAY_EVENTS or out[m]["drops"] or not out[m]["in_ring"]]
    return out


def measure_replay_ring_cost(ctx, event: Event) -> dict:
    """Measure 13 (see the module docstring)."""
    name = ring_name()
    results = ctx.Queue()
    procs = []
    ok = False
    directory = tempfile.mkdtemp(prefix=f"shmring-bench-flush-{os.getpid()}-", dir=FLUSH_TMP_PARENT)
    session = None
    try:
        session = new_session(name)
        for _ in range(CAPACITY):
            session.publish(event)
        procs = spawn(ctx, ring_cost_reader_main, [(name, directory, 0, results, CAPACITY, REPLAY_RING_PASSES)])
        out = await_msgs(results, "done", 1, 300.0)[0]
        ok = True
    finally:
        try:
            cleanup(session, procs, [results], ok)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    out["read_ratio"] = out["read_with"] / out["read_without"]
    out["raw_ratio"] = out["raw_with"] / out["raw_without"]
    return out


def all_steps(ctx, event: Event, pad: str, d: dict) -> list[tuple[str, object]]:
    """Every measure as (key, thunk), in the order a run takes them."""
    steps = [
        ("publish_no_reader", lambda: measure_publish_no_reader(event, d["flat"])),
        ("fanout_shm_1", lambda: measure_fanout_shm(ctx, event, 1, d["fanout"])),
        ("fanout_shm_2", lambda: measure_fanout_shm(ctx, event, 2, d["fanout"])),
        ("fanout_mpq_2", lambda: measure_fanout_mpq(ctx, event, 2, d["fanout"])),
        ("latency_10k", lambda: measure_latency(ctx, pad, 10_000, d["latency"])),
        ("idle_cpu", lambda: measure_idle_cpu(ctx, d["idle"])),
        ("paced_150k_2", lambda: measure_paced_fanout(ctx, event, 2, 150_000, d["paced"])),
        ("flush_batch", lambda: measure_flusher(ctx, event, d["flush"])),
    ]
    for m, delay in MODES.items():
        steps.append((f"idle_{m}", lambda delay=delay: measure_idle_mode(ctx, delay, d["idle_mode"])))
    for rate, tag in ((1_000, "1k"), (10_000, "10k")):
        for m, delay in MODES.items():
            steps.append((f"rate_{tag}_{m}",
                          lambda rate=rate, delay=delay: measure_reader_rate(ctx, pad, rate, delay, d["rate"])))
    steps.append(("fanout_raw_2", lambda: measure_fanout_raw(ctx, event, 2, d["fanout"])))
    for n in WRITER_READERS:
        for m, delay in (MODES.items() if n else [("0", 0.0)]):
            steps.append((f"writer_10k_{n}r_{m}",
                          lambda n=n, delay=delay: measure_writer_rate(ctx, event, n, delay, 10_000, d["writer"])))
    steps.append(("flush_paced_10k", lambda: measure_flusher_paced(ctx, event, 10_000, d["rate"])))
    steps.append(("replay_files", lambda: measure_replay_files(ctx, event)))
    steps.append(("replay_ring", lambda: measure_replay_ring_cost(ctx, event)))
    for n in (1, 2):
        steps.append((f"group_scale_{n}", lambda n=n: measure_group(ctx, event, n, 40_000, 50.0, False, False)))
    for n in (1, 2):
        steps.append((f"group_overhead_{n}", lambda n=n: measure_group(ctx, event, n, 300_000, 0.0, True, True)))
    for kind in ("gating_reader", "flusher"):
        steps.append((f"gating_publish_{kind}",
                      lambda kind=kind: measure_gating_publish(ctx, event, kind, 10_000, d["writer"])))
    steps += plain_flat_out.plain_steps(ctx, plain_flat_out.PLAIN_EVENTS)
    return steps


CLASSIC = ("publish_no_reader", "fanout_shm_1", "fanout_shm_2", "fanout_mpq_2", "latency_10k", "idle_cpu",
           "paced_150k_2", "flush_batch")
GROUPS = {
    "classic": lambda k: k in CLASSIC,
    "idle": lambda k: k.startswith("idle_") and k != "idle_cpu",
    "reader": lambda k: k.startswith("rate_"),
    "flat": lambda k: k in ("fanout_shm_2", "fanout_raw_2"),
    "writer": lambda k: k.startswith("writer_"),
    "flusher": lambda k: k in ("flush_batch", "flush_paced_10k"),
    "replay": lambda k: k.startswith("replay_"),
    "groups": lambda k: k.startswith(("group_", "gating_publish_")),
    "plain": lambda k: k.startswith(("plain_", "floor_")),
}
GROUPS["rates"] = lambda k: any(GROUPS[g](k) for g in ("idle", "reader", "flat", "writer", "flusher"))
"""--only: the issue-11 targets (rates) and its parts, the original measures (classic), issue 25's plain reader
flat out against the pure-Python floor (plain), or step keys."""
BASELINE_DEFAULT = "plain,idle,reader"
"""What --baseline runs unless --only says: issue 25's figures (the plain reader flat out, the readers at rate)."""
BASELINE_QUICK = "plain_read_2,plain_iter_2,floor_2,rate_10k_0,rate_10k_2ms"
"""--baseline --quick: the same figures at two readers and 10k/s only, in under two minutes here."""


def select_steps(steps: list[tuple[str, object]], only: str | None) -> list[tuple[str, object]]:
    if not only:
        return steps
    keys = {k for k, _ in steps}
    wanted = set()
    for word in only.split(","):
        word = word.strip()
        if word in GROUPS:
            wanted |= {k for k in keys if GROUPS[word](k)}
        elif word.endswith("*") and any(k.startswith(word[:-1]) for k in keys):
            wanted |= {k for k in keys if k.startswith(word[:-1])}
        elif word in keys:
            wanted.add(word)
        else:
            raise BenchError(f"--only: no group or measure {word!r}; groups: {', '.join(GROUPS)}; "
                             f"measures: {', '.join(sorted(keys))}")
    return [(k, fn) for k, fn in steps if k in wanted]


def one_run(steps: list[tuple[str, object]], keep_going: bool = False) -> dict:
    """Every step once. keep_going: a step that fails is recorded as {"error": ...} and the run goes on (under
    --baseline a revision may lack what a step uses)."""
    r = {}
    ncpu = os.cpu_count() or 1
    start = before = cpu_snapshot()
    for key, fn in steps:
        load = os.getloadavg()[0]
        try:
            r[key] = fn()
        except (BenchError, Exception) as exc:
            if not keep_going:
                raise
            r[key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"    {key}: failed: {r[key]['error']}", file=sys.stderr)
        after = cpu_snapshot()
        r[key]["foreign_cpu_pct"] = foreign_pct(before, after)
        r[key]["loadavg_1m_at_start"] = load
        print(f"    {key:<20} {after[0] - before[0]:5.1f} s   other processes' CPU "
              f"{r[key]['foreign_cpu_pct']:4.1f}% of the machine, load {load:.2f}", file=sys.stderr)
        before = after
    end = cpu_snapshot()
    plain_flat_out.ratios(r)
    if "fanout_shm_2" in r and "fanout_mpq_2" in r:
        r["ratio_shm_over_mpq_2"] = r["fanout_shm_2"]["reader_rate_mean"] / r["fanout_mpq_2"]["reader_rate_mean"]
    # Interference: CPU the machine spent on processes other than ours, and
    # time the hypervisor stole, as % of all cores over the run.
    r["foreign_cpu_pct"] = foreign_pct(start, end)
    r["steal_pct"] = 100.0 * (end[2] - start[2]) / ((end[0] - start[0]) * ncpu)
    return r


# (label, extractor, unit, target, format)
ROWS = [
    ("1. publish, no reader", lambda r: r["publish_no_reader"]["rate"], "ev/s", "—", "rate"),
    ("2. 1 reader: writer rate", lambda r: r["fanout_shm_1"]["writer_rate"], "ev/s", "—", "rate"),
    ("2. 1 reader: reader delivered", lambda r: r["fanout_shm_1"]["reader_rate_mean"], "ev/s", "—", "rate"),
    ("2. 1 reader: drops", lambda r: r["fanout_shm_1"]["drops_total"], "events", "—", "int"),
    ("2. 2 readers: writer rate", lambda r: r["fanout_shm_2"]["writer_rate"], "ev/s", "—", "rate"),
    ("2. 2 readers: delivered/reader (mean)", lambda r: r["fanout_shm_2"]["reader_rate_mean"], "ev/s", "—",
     "rate"),
    ("2. 2 readers: drops (sum of both)", lambda r: r["fanout_shm_2"]["drops_total"], "events", "—", "int"),
    ("2. 2 readers: blocking waits per event", lambda r: r["fanout_shm_2"]["sleeps_per_event"], "/event", "—",
     "float2"),
    ("3. wake latency p50 @10k/s", lambda r: r["latency_10k"]["p50_us"], "µs", "—", "us"),
    ("3. wake latency p99 @10k/s", lambda r: r["latency_10k"]["p99_us"], "µs", "—", "us"),
    ("3. wake latency max @10k/s", lambda r: r["latency_10k"]["max_us"], "µs", "—", "us"),
    ("3. latency reader drops", lambda r: r["latency_10k"]["dropped"], "events", "0", "int"),
    ("3. blocked reader idle CPU (psutil)", lambda r: r["idle_cpu"]["cpu_pct"], "% core", "—", "pct"),
    ("3. blocked reader idle CPU (schedstat)", lambda r: r["idle_cpu"]["sched_cpu_pct"], "% core", "—", "pct3"),
    ("3. blocked reader wake-ups while idle", lambda r: r["idle_cpu"]["wakeups_per_s"], "/s", "—", "float"),
    ("4. 150k/s paced: achieved rate", lambda r: r["paced_150k_2"]["achieved_rate"], "ev/s", "≥ 148.5k (99%)",
     "rate"),
    ("4. 150k/s paced: drops (worst reader)", lambda r: r["paced_150k_2"]["drops_max"], "events", "0", "int"),
    ("5. mp.Queue 2 readers: writer rate", lambda r: r["fanout_mpq_2"]["writer_rate"], "ev/s", "—", "rate"),
    ("5. mp.Queue 2 readers: delivered/reader", lambda r: r["fanout_mpq_2"]["reader_rate_mean"], "ev/s", "—",
     "rate"),
    ("5. shmring / mp.Queue per reader", lambda r: r["ratio_shm_over_mpq_2"], "×", "≥ 5×", "ratio"),
    ("6. flusher fsync=batch: lines/s end to end", lambda r: r["flush_batch"]["lines_per_s"], "lines/s",
     "≥ 400k lines/s", "rate"),
    ("6. flusher attached: writer publish rate", lambda r: r["flush_batch"]["with"]["rate"], "ev/s", "—", "rate"),
    ("6. no flusher: writer publish rate", lambda r: r["flush_batch"]["without"]["rate"], "ev/s", "—", "rate"),
    ("6. flusher attached: writer CPU/publish", lambda r: r["flush_batch"]["with"]["cpu_us_per_publish"], "µs",
     "—", "us2"),
    ("6. no flusher: writer CPU/publish", lambda r: r["flush_batch"]["without"]["cpu_us_per_publish"], "µs", "—",
     "us2"),
    ("6. flusher's added writer CPU/publish", lambda r: r["flush_batch"]["cpu_overhead_pct"], "%", "≤ 25%",
     "spct"),
    ("6. lines in files − published", lambda r: r["flush_batch"]["file_minus_published"], "lines", "0", "int"),
    ("2. 2 readers: delivered per s of reader CPU", lambda r: r["fanout_shm_2"]["rate_per_cpu_s_mean"], "ev/s",
     "—", "rate"),
    *[(f"7. idle plain reader, max_delay_s={MODES[m]:g}: CPU (schedstat)", lambda r, m=m: r[f"idle_{m}"]["cpu_pct"],
       "% core", "≤ 0.3%", "pct3") for m in MODES],
    *[(f"7. idle plain reader, max_delay_s={MODES[m]:g}: wake-ups", lambda r, m=m: r[f"idle_{m}"]["wakeups_per_s"],
       "/s", "—", "float") for m in MODES],
    *[row for tag in ("1k", "10k") for m in MODES for row in (
        (f"8. {tag}/s, max_delay_s={MODES[m]:g}: reader CPU/event",
         lambda r, k=f"rate_{tag}_{m}": r[k]["cpu_us_per_event"], "µs", "—", "us2"),
        (f"8. {tag}/s, max_delay_s={MODES[m]:g}: reader CPU",
         lambda r, k=f"rate_{tag}_{m}": r[k]["cpu_pct"], "% core", "—", "pct1"),
        (f"8. {tag}/s, max_delay_s={MODES[m]:g}: reader sleeps per event",
         lambda r, k=f"rate_{tag}_{m}": r[k]["sleeps_per_event"], "/event", "—", "float2"),
        (f"8. {tag}/s, max_delay_s={MODES[m]:g}: delivery p50 / p99 / max",
         lambda r, k=f"rate_{tag}_{m}": (r[k]["p50_us"], r[k]["p99_us"], r[k]["max_us"]), "µs", "—", "us3"))],
    ("9. 2 read_raw_many readers: writer rate", lambda r: r["fanout_raw_2"]["writer_rate"], "ev/s", "—", "rate"),
    ("9. 2 read_raw_many readers: delivered/reader", lambda r: r["fanout_raw_2"]["reader_rate_mean"], "ev/s",
     "≥ 600k", "rate"),
    ("9. 2 read_raw_many readers: delivered per s of reader CPU", lambda r: r["fanout_raw_2"]["rate_per_cpu_s_mean"],
     "ev/s", "—", "rate"),
    *[row for n in WRITER_READERS for m in (MODES if n else ["0"]) for row in (
        (f"10. 10k/s, {n} readers, max_delay_s={MODES[m]:g}: writer CPU/publish",
         lambda r, k=f"writer_10k_{n}r_{m}": r[k]["cpu_us_per_publish"], "µs", "—", "us2"),
        (f"10. 10k/s, {n} readers, max_delay_s={MODES[m]:g}: reader CPU/event (mean)",
         lambda r, k=f"writer_10k_{n}r_{m}": r[k]["reader_cpu_us_per_event_mean"], "µs", "—", "us2"))
      if n or row[0].endswith("writer CPU/publish")],
    ("11. flusher at 10k/s: CPU", lambda r: r["flush_paced_10k"]["cpu_pct"], "% core", "≤ 3%", "pct1"),
    ("11. flusher at 10k/s: CPU per line", lambda r: r["flush_paced_10k"]["cpu_us_per_line"], "µs", "—", "us2"),
    ("12. replay from files, decoding (for r in reader)", lambda r: r["replay_files"]["read"]["rate"], "ev/s",
     "≥ 300k", "rate"),
    ("12. replay from files, read_many", lambda r: r["replay_files"]["many"]["rate"], "ev/s", "—", "rate"),
    ("12. replay from files, read_raw_many", lambda r: r["replay_files"]["raw"]["rate"], "ev/s", "≥ 600k", "rate"),
    ("12. replay from files, decoding: per s of reader CPU", lambda r: r["replay_files"]["read"]["rate_per_cpu_s"],
     "ev/s", "—", "rate"),
    ("12. replay from files, raw: per s of reader CPU", lambda r: r["replay_files"]["raw"]["rate_per_cpu_s"],
     "ev/s", "—", "rate"),
    ("12. replay drops (all three readers)", lambda r: r["replay_files"]["drops_total"], "events", "0", "int"),
    ("13. in the ring, decoding read: without / with archive=",
     lambda r: (r["replay_ring"]["read_without"], r["replay_ring"]["read_with"]), "ev/s", "—", "rates"),
    ("13. in the ring, decoding read: with / without", lambda r: r["replay_ring"]["read_ratio"], "×", "≈ 1",
     "ratio"),
    ("13. in the ring, read_raw_many: without / with archive=",
     lambda r: (r["replay_ring"]["raw_without"], r["replay_ring"]["raw_with"]), "ev/s", "—", "rates"),
    ("13. in the ring, read_raw_many: with / without", lambda r: r["replay_ring"]["raw_ratio"], "×", "≈ 1", "ratio"),
    *plain_flat_out.ROWS,
    ("noise: other processes' CPU during run", lambda r: r["foreign_cpu_pct"], "% of all cores", "≈ 0", "pct1"),
    ("noise: hypervisor steal during run", lambda r: r["steal_pct"], "% of all cores", "≈ 0", "pct1"),
]


_FORMATS = {"int": "{:.0f}", "pct": "{:.2f}%", "pct1": "{:.1f}%", "pct3": "{:.3f}%", "spct": "{:+.1f}%",
            "us2": "{:.2f}", "float2": "{:.2f}", "float": "{:.1f}", "ratio": "{:.2f}×"}


def fmt(value, kind: str) -> str:
    if isinstance(value, tuple):
        return " / ".join(fmt(v, kind[:-1]) for v in value)
    if value != value:  # NaN
        return "n/a"
    if kind == "rate":
        return f"{value / 1000:.1f}k" if value < 1e6 else f"{value / 1e6:.2f}M"
    if kind == "us":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    spec = _FORMATS.get(kind)
    return spec.format(value) if spec else str(value)


def _values(runs: list[dict], get) -> list | None:
    """get(run) for every run, or None if a run lacks the measure (not selected with --only)."""
    try:
        return [get(r) for r in runs]
    except KeyError:
        return None


def _median(values: list):
    if isinstance(values[0], tuple):
        return tuple(statistics.median(v[i] for v in values) for i in range(len(values[0])))
    return statistics.median(values)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for label, get, unit, target, kind in ROWS:
        values = _values(runs, get)
        if values is not None:
            rows.append({"measure": label, "unit": unit, "median": _median(values), "runs": values,
                         "target": target, "kind": kind})
    return rows


WRITER_BEFORE_US = {1: 13.4, 4: 13.1, 16: 5.9}
"""Measure 10 in the default mode before issue 11's readers: this bench on commit 74431d1 (its parent),
machine otherwise idle, medians of 3 (issue 11 itself quotes 22 µs with 1 reader and 7 µs with 16)."""


# Issue 11's targets: (label, extractor, unit, "<=" or ">=", threshold or None (reported only), kind)
TARGETS = [
    *[(f"idle blocked reader, max_delay_s={MODES[m]:g}, over 10 s", lambda r, m=m: r[f"idle_{m}"]["cpu_pct"],
       "% of a core", "<=", 0.3, "pct3") for m in MODES],
    ("10k/s, max_delay_s=0: reader CPU per event", lambda r: r["rate_10k_0"]["cpu_us_per_event"], "µs", "<=", 20.0,
     "us2"),
    ("10k/s, max_delay_s=0: wake-up p50", lambda r: r["rate_10k_0"]["p50_us"], "µs", "<=", 50.0, "us"),
    ("10k/s, max_delay_s=0: wake-up p99", lambda r: r["rate_10k_0"]["p99_us"], "µs", "<=", 1000.0, "us"),
    ("10k/s, max_delay_s=0.002: reader CPU per event", lambda r: r["rate_10k_2ms"]["cpu_us_per_event"], "µs", "<=",
     5.0, "us2"),
    ("10k/s, max_delay_s=0.002: delivery p99 after publish", lambda r: r["rate_10k_2ms"]["p99_us"], "µs", "<=",
     2000.0, "us"),
    ("1k/s, max_delay_s=0: reader CPU per event", lambda r: r["rate_1k_0"]["cpu_us_per_event"], "µs", "<=", 30.0,
     "us2"),
    ("1k/s, max_delay_s=0: wake-up p50", lambda r: r["rate_1k_0"]["p50_us"], "µs", "<=", None, "us"),
    ("1k/s, max_delay_s=0: wake-up p99", lambda r: r["rate_1k_0"]["p99_us"], "µs", "<=", None, "us"),
    ("1k/s, max_delay_s=0.002: reader CPU per event", lambda r: r["rate_1k_2ms"]["cpu_us_per_event"], "µs", "<=",
     15.0, "us2"),
    ("1k/s, max_delay_s=0.002: delivery p99 after publish", lambda r: r["rate_1k_2ms"]["p99_us"], "µs", "<=", None,
     "us"),
    ("flat out, 2 decoding readers (read): delivered per reader", lambda r: r["fanout_shm_2"]["reader_rate_mean"],
     "events/s", ">=", 350_000.0, "rate"),
    ("flat out, 2 read_raw_many readers: delivered per reader", lambda r: r["fanout_raw_2"]["reader_rate_mean"],
     "events/s", ">=", 600_000.0, "rate"),
    *[(f"writer CPU per publish at 10k/s, {n} reader{'s' if n > 1 else ''}, max_delay_s=0.002",
       lambda r, n=n: r[f"writer_10k_{n}r_2ms"]["cpu_us_per_publish"], "µs", "<=", 3.0, "us2")
      for n in WRITER_READERS if n],
    *[(f"writer CPU per publish at 10k/s, {n} reader{'s' if n > 1 else ''}, max_delay_s=0 (≤ before)",
       lambda r, n=n: r[f"writer_10k_{n}r_0"]["cpu_us_per_publish"], "µs", "<=", WRITER_BEFORE_US[n], "us2")
      for n in WRITER_READERS if n],
    ("writer CPU per publish at 10k/s, no reader (reference)", lambda r: r["writer_10k_0r_0"]["cpu_us_per_publish"],
     "µs", "<=", None, "us2"),
    ("flusher end to end, writer flat out", lambda r: r["flush_batch"]["lines_per_s"], "lines/s", ">=", 400_000.0,
     "rate"),
    ("flusher CPU at 10k/s", lambda r: r["flush_paced_10k"]["cpu_pct"], "% of a core", "<=", 3.0, "pct1"),
    ("replay from files into a decoding reader", lambda r: r["replay_files"]["read"]["rate"], "events/s", ">=",
     300_000.0, "rate"),
    ("replay from files, read_raw_many", lambda r: r["replay_files"]["raw"]["rate"], "events/s", ">=", 600_000.0,
     "rate"),
    ("flusher's added writer CPU per publish", lambda r: r["flush_batch"]["cpu_overhead_pct"], "%", "<=", 25.0,
     "spct"),
    *plain_flat_out.TARGETS,
]


GROUP_TARGETS = [
    ("gating group, 50 µs handler: 1 member", lambda r: r["group_scale_1"]["rate"], "events/s", ">=", None, "rate"),
    ("gating group, 50 µs handler: 2 members", lambda r: r["group_scale_2"]["rate"], "events/s", ">=", None, "rate"),
    ("gating group, 50 µs handler: 2 members / 1 member",
     lambda r: r["group_scale_2"]["rate"] / r["group_scale_1"]["rate"], "x", ">=", 1.7, "ratio"),
    ("gating group, 50 µs handler: drops (1 and 2 members)",
     lambda r: r["group_scale_1"]["dropped"] + r["group_scale_2"]["dropped"], "events", "<=", 0, "int"),
    ("gating group, 50 µs handler: 2 members / 1 member, each with a core of its own (CPU per event)",
     lambda r: r["group_scale_2"]["rate_own_cores"] / r["group_scale_1"]["rate_own_cores"], "x", ">=", None,
     "ratio"),
    ("group of 2 decoding members, ack per batch: combined", lambda r: r["group_overhead_2"]["rate"], "events/s",
     ">=", 400_000.0, "rate"),
    ("group of 2 decoding members, ack per batch: combined, a core each (CPU per event)",
     lambda r: r["group_overhead_2"]["rate_own_cores"], "events/s", ">=", None, "rate"),
    ("group of 1 decoding member, ack per batch (reference)", lambda r: r["group_overhead_1"]["rate"], "events/s",
     ">=", None, "rate"),
    ("writer CPU per publish at 10k/s, a gating reader attached",
     lambda r: r["gating_publish_gating_reader"]["cpu_us_per_publish"], "µs", "<=", None, "us2"),
    ("writer CPU per publish at 10k/s, a flusher attached",
     lambda r: r["gating_publish_flusher"]["cpu_us_per_publish"], "µs", "<=", None, "us2"),
    ("gating reader's publish cost / flusher's",
     lambda r: r["gating_publish_gating_reader"]["cpu_us_per_publish"]
     / r["gating_publish_flusher"]["cpu_us_per_publish"], "x", "<=", 1.0, "ratio"),
]
"""Issue 14's targets (measures 14-16)."""


def targets_table(runs: list[dict], targets: list | None = None) -> str:
    """Issue 11's targets (or `targets`): median, min-max of the runs, pass/fail (on the median)."""
    lines = ["| target | median | min–max | runs | unit | pass/fail |", "|---|---:|---|---|---|---|"]
    for label, get, unit, op, threshold, kind in TARGETS if targets is None else targets:
        values = _values(runs, get)
        if values is None:
            continue
        med = statistics.median(values)
        if threshold is None:
            verdict = "(reported)"
        else:
            met = med <= threshold if op == "<=" else med >= threshold
            verdict = f"{'pass' if met else 'FAIL'} ({'≤' if op == '<=' else '≥'} {fmt(threshold, kind)})"
        runs_s = ", ".join(fmt(v, kind) for v in values)
        lines.append(f"| {label} | {fmt(med, kind)} | {fmt(min(values), kind)}–{fmt(max(values), kind)} | {runs_s} "
                     f"| {unit} | {verdict} |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| measure | median | all runs | unit | target |", "|---|---:|---|---|---|"]
    for row in rows:
        kind = row["kind"]
        runs = ", ".join(fmt(v, kind) for v in row["runs"])
        lines.append(f"| {row['measure']} | {fmt(row['median'], kind)} | {runs} | {row['unit']} | {row['target']} |")
    return "\n".join(lines)


def accounting_problems(runs: list[dict]) -> list[str]:
    """Loss accounting: a reader attached before the first publish and reading to
    RingClosed must have delivered + dropped == published, and its own counters
    must agree with ours. Anything else is a shmring bug."""
    problems = []
    for i, r in enumerate(runs):
        keys = [k for k in r if isinstance(r[k], dict) and "error" not in r[k]
                and (k in ("fanout_shm_1", "fanout_shm_2", "paced_150k_2", "fanout_raw_2")
                     or k.startswith(("writer_", "plain_", "floor_")))]
        checks = [(key, r[key]["published"] if "published" in r[key] else r[key]["writer"]["published"],
                   r[key]["readers"]) for key in keys]
        checks += [(key, r[key]["writer"]["published"], [r[key]]) for key in r
                   if key.startswith("rate_") and "error" not in r[key]]
        if "latency_10k" in r:
            lat = r["latency_10k"]
            checks.append(("latency_10k", lat["writer"]["published"],
                           [{"delivered": lat["n"], "dropped": lat["dropped"]}]))
        for key, published, readers in checks:
            for j, x in enumerate(readers):
                if x["delivered"] + x["dropped"] != published:
                    problems.append(f"run {i + 1}: {key} reader {j}: delivered {x['delivered']} + dropped "
                                    f"{x['dropped']} != published {published}")
                if "reader_delivered" in x and (x["reader_delivered"], x["reader_dropped"]) != (
                        x["delivered"], x["dropped"]):
                    problems.append(f"run {i + 1}: {key} reader {j}: Reader counters "
                                    f"({x['reader_delivered']}, {x['reader_dropped']}) disagree with the "
                                    f"results read ({x['delivered']}, {x['dropped']})")
    return problems


def per_reader_details(runs: list[dict]) -> str:
    """Each reader of each run: delivered rate, drops, CPU per event, blocking waits per event."""
    lines = ["Per reader, run by run (delivered rate / drops / CPU µs per event / blocking waits per event):"]
    plain = [(key, f"25. {key}") for n in plain_flat_out.PLAIN_READERS
             for key in (f"floor_{n}", f"plain_read_{n}", f"plain_iter_{n}")]
    for key, label in (("fanout_shm_1", "2. shmring, 1 reader"), ("fanout_shm_2", "2. shmring, 2 readers"),
                       ("paced_150k_2", "4. shmring, 150k/s paced"), ("fanout_mpq_2", "5. mp.Queue, 2 readers"),
                       ("fanout_raw_2", "9. shmring read_raw_many, 2 readers"), *plain):
        if key not in runs[0] or any("readers" not in r.get(key, {}) for r in runs):
            continue
        cells = []
        for r in runs:
            cells.append(" + ".join(
                f"{x['rate'] / 1000:.1f}k/{x['dropped']}/{x.get('cpu_us_per_event', float('nan')):.1f}"
                f"/{x.get('sleeps_per_event', float('nan')):.2f}" for x in r[key]["readers"]))
        lines.append(f"- {label}: " + " | ".join(cells))
    if "flush_batch" in runs[0]:
        lines.append("")
        lines.append("Flusher (6), run by run (published / lines/s end to end / drain after the last publish / "
                     "flusher CPU µs per line / file system):")
        cells = []
        for r in runs:
            f = r["flush_batch"]
            cells.append(f"{f['with']['published']} / {f['lines_per_s'] / 1000:.1f}k / {f['drain_s'] * 1000:.0f} "
                         f"ms / {f['flusher_cpu_us_per_line']:.2f} / {f['fs_type']}")
        lines.append("- " + " | ".join(cells))
    writer_keys = [k for k in runs[0] if k.startswith("writer_")]
    if writer_keys:
        lines.append("")
        lines.append("Writer at 10k/s (10), run by run (published / raw bracketed CPU µs per publish / empty "
                     "bracket ns / achieved rate / readers' sleeps per event):")
        for k in writer_keys:
            cells = [f"{r[k]['writer']['published']} / {r[k]['writer']['raw_cpu_us_per_publish']:.2f} / "
                     f"{r[k]['writer']['bracket_ns']:.0f} / {r[k]['writer']['rate'] / 1000:.2f}k / "
                     f"{r[k]['reader_sleeps_per_event_mean']:.2f}" for r in runs]
            lines.append(f"- {k}: " + " | ".join(cells))
    return "\n".join(lines)


def noisy_steps(runs: list[dict], limit_pct: float = 20.0) -> list[str]:
    """Steps during which other processes used more than `limit_pct` of the machine: rerun those."""
    notes = []
    for i, r in enumerate(runs):
        for key, x in r.items():
            if isinstance(x, dict) and x.get("foreign_cpu_pct", 0.0) > limit_pct:
                notes.append(f"run {i + 1}: {key}: other processes used {x['foreign_cpu_pct']:.0f}% of the machine "
                             f"(load {x['loadavg_1m_at_start']:.2f}); noisy, rerun it with --only {key}")
    return notes


def leftover_shm() -> list[str]:
    prefix = f"bench-{os.getpid()}-"
    try:
        entries = os.listdir("/dev/shm")
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if prefix in e)


def leftover_flush_dirs() -> list[str]:
    prefix = f"shmring-bench-flush-{os.getpid()}-"
    try:
        entries = os.listdir(FLUSH_TMP_PARENT)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(FLUSH_TMP_PARENT, e) for e in entries if e.startswith(prefix))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter phases (~40 s in all)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every measure (>= 3; default 3)")
    parser.add_argument("--json", action="store_true", help="also print every result as JSON")
    parser.add_argument("--only", metavar="WHAT[,WHAT...]",
                        help="run only these groups (" + ", ".join(GROUPS) + ") or measures (their keys, "
                        "e.g. rate_10k_0, or a prefix ending in *: writer_*); default: everything "
                        f"(with --baseline: {BASELINE_DEFAULT}, and with --quick as well: {BASELINE_QUICK})")
    parser.add_argument("--baseline", metavar="REV",
                        help="also build git revision REV into a temporary virtual environment and run the same "
                        "measures under both, alternating, in one table: REV, the working tree, their ratio")
    parser.add_argument("--emit-run", metavar="FILE", help=argparse.SUPPRESS)  # --baseline's children: one run
    args = parser.parse_args(argv)
    if args.runs < 3 and not args.emit_run:
        parser.error("--runs must be at least 3 (medians of fewer runs mean little here)")
    if args.baseline and args.emit_run:
        parser.error("--baseline and --emit-run do not go together")
    if args.baseline:
        return baseline_main(parser, args)

    if args.quick:
        durations = {"flat": 1.0, "fanout": 1.0, "latency": 1.0, "idle": 1.0, "paced": 1.0, "flush": 1.0,
                     "idle_mode": 2.0, "rate": 1.0, "writer": 1.0}
    else:
        durations = {"flat": 3.0, "fanout": 3.0, "latency": 3.0, "idle": 2.0, "paced": 3.0, "flush": 3.0,
                     "idle_mode": 10.0, "rate": 5.0, "writer": 3.0}

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through every finally: rings closed, children reaped

    signal.signal(signal.SIGTERM, on_sigterm)
    pad, size = choose_pad()
    event = make_event(pad)
    ctx = mp.get_context("spawn")
    try:
        steps = select_steps(all_steps(ctx, event, pad, durations), args.only)
    except BenchError as exc:
        parser.error(str(exc))
    if args.emit_run:
        run = one_run(steps, keep_going=True)
        with open(args.emit_run, "w") as f:
            json.dump(run, f)
        return 0
    command = " ".join(["python", "tools/bench.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"shmring bench: envelope {size} B encoded, {args.runs} runs, phases {durations}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", file=sys.stderr)

    background = psutil.cpu_percent(interval=0.5)
    if background > 15:
        print(f"WARNING: the machine is already {background:.0f}% busy before the bench starts; "
              "numbers will be low and noisy", file=sys.stderr)

    runs = []
    t_start = time.monotonic()
    try:
        for i in range(args.runs):
            print(f"  run {i + 1}/{args.runs}", file=sys.stderr)
            load = os.getloadavg()[0]
            runs.append(one_run(steps))
            runs[-1]["loadavg_1m_at_start"] = load
    except (KeyboardInterrupt, SystemExit) as exc:
        print(f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}: "
              "rings closed, children reaped", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else exc.code
    finally:
        left = leftover_shm()
        if left:
            print(f"WARNING: leftover /dev/shm objects: {left}", file=sys.stderr)
        left_dirs = leftover_flush_dirs()
        if left_dirs:
            print(f"WARNING: leftover flush directories: {left_dirs}", file=sys.stderr)
    total = time.monotonic() - t_start

    rows = summarise(runs)
    print()
    print(f"shmring bench — envelope {size} B, median of {args.runs} runs, "
          f"{'quick' if args.quick else 'default'} phases, {total:.0f} s total, "
          f"machine {background:.0f}% busy before start, load average at the runs' starts "
          + ", ".join(f"{r['loadavg_1m_at_start']:.2f}" for r in runs))
    print(f"command: {command}")
    print()
    print(markdown_table(rows))
    if any(_values(runs, t[1]) is not None for t in TARGETS):
        print()
        print("Targets of issues 11, 13 and 25 (pass/fail on the median):")
        print()
        print(targets_table(runs))
    if any(_values(runs, t[1]) is not None for t in GROUP_TARGETS):
        print()
        print("Issue 14 targets (pass/fail on the median):")
        print()
        print(targets_table(runs, GROUP_TARGETS))
    print()
    print(per_reader_details(runs))
    notes = accounting_problems(runs)
    for i, r in enumerate(runs):
        for key in ("flush_batch", "flush_paced_10k", "replay_files"):
            for problem in r.get(key, {}).get("problems", []):
                notes.append(f"run {i + 1}: {'replay' if key.startswith('replay') else 'flusher'} ({key}): {problem}")
        for key in r:
            if isinstance(r[key], dict) and r[key].get("stalled"):
                notes.append(f"run {i + 1}: a reader in {key} stalled (no event for {STALL_TIMEOUT_S} s)")
        paced_keys = [k for k in r if isinstance(r[k], dict) and isinstance(r[k].get("writer"), dict)
                      and "kept_pace" in r[k]["writer"]]
        for key in paced_keys:
            label = f"{r[key]['writer']['target_rate'] / 1000:g}k/s"
            w = r[key]["writer"]
            if not w["kept_pace"]:
                notes.append(f"run {i + 1}: writer did not keep {label}: achieved {w['rate'] / 1000:.1f}k/s, "
                             f"up to {w['max_behind_events']} events ({w['max_behind_ms']:.0f} ms) behind schedule")
    notes += noisy_steps(runs)
    if notes:
        print()
        for n in notes:
            print(f"- {n}")
    if args.json:
        print()
        print(json.dumps({"envelope_bytes": size, "durations_s": durations, "background_cpu_pct": background,
                          "runs": runs,
                          "summary": [{k: v for k, v in row.items() if k != "kind"} for row in rows],
                          "leftover_shm": leftover_shm()}, indent=2))
    return 0


def baseline_main(parser, args) -> int:
    """--baseline REV: the selected measures under REV's build and under the working tree, alternating."""
    only = args.only or (BASELINE_QUICK if args.quick else BASELINE_DEFAULT)
    try:
        select_steps(all_steps(None, None, "", {}), only)  # a bad --only fails here, before any build
    except BenchError as exc:
        parser.error(str(exc))
    command = " ".join(["python", "tools/bench.py", *sys.argv[1:]])
    t_start = time.monotonic()
    background = psutil.cpu_percent(interval=0.5)
    try:
        work = working_tree_build()
        with baseline_build(args.baseline) as base:
            child_args = ["--only", only, *(["--quick"] if args.quick else [])]
            runs = alternate([base, work], child_args, args.runs)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the baseline build removed", file=sys.stderr)
        return 130
    print()
    print(f"shmring bench --baseline — {args.runs} runs alternating the two builds, "
          f"{'quick' if args.quick else 'default'} phases, {time.monotonic() - t_start:.0f} s total, "
          f"machine {background:.0f}% busy before start")
    print(f"command: {command}")
    print(f"- {base.label}: {base.description}")
    print(f"- working tree: {work.description}")
    print()
    print(comparison_table(runs[base.label], runs[work.label], base.label))
    verdicts = baseline_verdicts(runs[base.label], runs[work.label], base.label)
    if verdicts:
        print()
        print(f"Issue 25 (pass/fail on the medians; against {base.label} and the floor of the same runs):")
        print()
        print(verdicts)
    if any(_values(runs[work.label], t[1]) is not None for t in TARGETS):
        print()
        print("The working tree's targets of issues 11, 13 and 25 (pass/fail on the median):")
        print()
        print(targets_table(runs[work.label]))
    notes = []
    for label, build_runs in runs.items():
        notes += [f"{label}: {n}" for n in accounting_problems(build_runs)]
        notes += _failures(label, build_runs)
        notes += [f"{label}: {n}" for n in noisy_steps(build_runs)]
    for n in notes:
        print(f"- {n}")
    return 0


def _failures(label: str, build_runs: list[dict]) -> list[str]:
    """One line per measure and error: in which runs it failed (an older build may lack what a measure uses)."""
    runs_of: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(build_runs):
        for key, x in r.items():
            if isinstance(x, dict) and "error" in x:
                runs_of.setdefault((key, x["error"]), []).append(i + 1)
    lines = []
    for (key, error), failed in runs_of.items():
        which = f"all {len(build_runs)} runs" if len(failed) == len(build_runs) else \
            "run" + ("s " if len(failed) > 1 else " ") + ", ".join(map(str, failed))
        lines.append(f"{label}: {key} failed in {which}: {error}")
    return lines


def comparison_table(base_runs: list[dict], work_runs: list[dict], base_label: str) -> str:
    """Each measure's median under the baseline and the working tree, and working tree / baseline."""
    lines = [f"| measure | {base_label} | working tree | working tree / {base_label} | unit |",
             "|---|---:|---:|---:|---|"]
    for label, get, unit, _target, kind in ROWS:
        base, work = _values(base_runs, get), _values(work_runs, get)
        if base is None and work is None:
            continue
        b = _median(base) if base is not None else float("nan")
        w = _median(work) if work is not None else float("nan")
        ratio = (w / b if isinstance(b, (int, float)) and isinstance(w, (int, float)) and b else float("nan"))
        lines.append(f"| {label} | {fmt(b, kind)} | {fmt(w, kind)} | {fmt(ratio, 'ratio')} | {unit} |")
    return "\n".join(lines)


def baseline_verdicts(base_runs: list[dict], work_runs: list[dict], base_label: str) -> str:
    """Issue 25's targets: the plain reader flat out against the baseline build and against the floor."""
    checks = []
    for n in plain_flat_out.PLAIN_READERS:
        for mode, label in (("read", "read(timeout=1)"), ("iter", "for result in reader")):
            key = f"plain_{mode}_{n}"
            base = _values(base_runs, lambda r, k=key: r[k]["reader_rate_mean"])
            work = _values(work_runs, lambda r, k=key: r[k]["reader_rate_mean"])
            if base is not None and work is not None:
                threshold = 1.3 if n == 2 else 1.0
                checks.append((f"{n} reader{'s' if n > 1 else ''}, {label}: working tree / {base_label}",
                               statistics.median(work) / statistics.median(base), threshold))
            floor = _values(work_runs, lambda r, k=f"ratio_{mode}_floor_{n}": r[k])
            if floor is not None and n == 2:
                checks.append((f"{n} readers, {label}: working tree / pure-Python floor (same runs)",
                               statistics.median(floor), 1.4))
    if not checks:
        return ""
    lines = ["| target | figure | pass/fail |", "|---|---:|---|"]
    for label, value, threshold in checks:
        lines.append(f"| {label} | {value:.2f}× | {'pass' if value >= threshold else 'FAIL'} (≥ {threshold:g}×) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
