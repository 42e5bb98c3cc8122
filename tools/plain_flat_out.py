"""The plain reader flat out: the per-event read a new user writes first, against a pure-Python floor.

tools/bench.py runs these as its ``plain`` measures (``--only plain``); this module holds them.

The workload, the same for every case: one writer (the bench process) and N
reader processes (1, 2 or 4), PLAIN_EVENTS events of a CDP ``console.log`` in
its envelope (593 bytes encoded), published flat out into a ring of the
default size (65,536 slots, as a new user creates it; a reader that falls
that far behind loses events, and says how many); the writer encodes every
event and every reader decodes every event with msgspec. Readers attach
before the first publish and say so.

- ``plain_read_N``: ``Reader.attach(name, after_seq=0)``, then
  ``read(timeout=1)`` once per event, until ``RingClosed``;
- ``plain_iter_N``: the same with ``for result in reader``;
- ``floor_N``: a pure-Python seqlock over mmap, the least a reader written
  by hand does: the writer msgspec-encodes ``Envelope(session, seq, event)``
  and writes it into slot ``seq % FLOOR_SLOTS`` of a POSIX shared-memory
  segment (stamp odd, length and bytes, stamp even); each reader polls the
  next slot's stamp, yielding the CPU (``os.sched_yield``) while it is not
  there, copies the record, checks the stamp again and decodes it. It counts
  a slot the writer already overwrote as lost. It has no wake-up, no
  cursor in shared memory, no liveness check and no end of stream but the
  event count.

Per reader: delivered / (its last event - its first), its drops and its
CPU per event (schedstat, all threads, over the same window); the writer's
publish rate. ``ratios`` adds, per run, each shmring case over the floor of
the same N in the same run.
"""

import mmap
import os
import resource
import struct
import time

import msgspec
import posix_ipc

from children import await_msgs, cleanup, spawn
from common import CAPTURE_SESSION_ID, process_cpu_ns
from shmring import CaptureSession, Envelope, Event, Reader, RingClosed, Source

__all__ = ["PLAIN_EVENTS", "PLAIN_READERS", "PLAIN_ENVELOPE_BYTES", "plain_event", "plain_steps", "ratios",
           "ROWS", "TARGETS"]

PLAIN_EVENTS = 100_000
PLAIN_READERS = (1, 2, 4)
PLAIN_ENVELOPE_BYTES = 593
FLOOR_SLOTS = 65536
"""As many as shmring's default ring."""
FLOOR_SLOT_BYTES = 1024
FLOOR_HEADER = struct.Struct("<QI")  # stamp (2 * seq while whole, odd while written), length
FLOOR_STAMP = struct.Struct("<Q")
READY_TIMEOUT_S = 30.0
STALL_S = 10.0
"""A reader that gets nothing for this long gives up and says so."""

_counter = 0


def _unique(prefix: str) -> str:
    global _counter
    _counter += 1
    return f"{prefix}-{os.getpid()}-{_counter}"


def plain_event() -> Event:
    """A CDP console.log as a capture publishes it, its data the CDP params' JSON, padded to 593 bytes encoded."""

    def event(pad: str) -> Event:
        data = (b'{"type":"log","args":[{"type":"string","value":"%s"}],"executionContextId":1,'
                b'"timestamp":1733555555555.123,"stackTrace":{"callFrames":[{"functionName":"checkout",'
                b'"scriptId":"42","url":"http://127.0.0.1:8000/app.js","lineNumber":17,"columnNumber":9}]}}'
                % pad.encode())
        return Event(type="console.log", category="console",
                     source=Source(kind="cdp", event="Runtime.consoleAPICalled",
                                   metadata={"target_id": "8F3A2B1C9D0E4F5A6B7C8D9E0F1A2B3C"}),
                     url="http://127.0.0.1:8000/checkout", data=msgspec.Raw(data))

    def size(e: Event) -> int:
        stamped = msgspec.structs.replace(e, ts=1733555555555123, detail_level="standard")
        return len(msgspec.json.encode(Envelope(CAPTURE_SESSION_ID, 123456, stamped)))

    pad = "x" * max(0, PLAIN_ENVELOPE_BYTES - size(event("")))
    return event(pad)


# --------------------------------------------------------------------------
# Readers (child processes)
# --------------------------------------------------------------------------

def _sleeps() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def _waited_ns() -> int:
    """How long this process was runnable but waiting for a CPU (schedstat's second field, this thread)."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1])


def _report(idx: int, delivered: int, dropped: int, t_first: float | None, t_last: float, cpu0: int | None,
            extra: dict) -> tuple:
    cpu1 = process_cpu_ns(os.getpid())
    elapsed = (t_last - t_first) if t_first is not None else 0.0
    out = {"delivered": delivered, "dropped": dropped, "elapsed": elapsed,
           "rate": delivered / elapsed if elapsed > 0 else 0.0,
           "cpu_us_per_event": (cpu1 - cpu0) / 1000 / max(1, delivered) if None not in (cpu0, cpu1)
           else float("nan")}
    out.update(extra)
    return ("done", idx, out)


def shmring_reader_main(name: str, idx: int, results, mode: str) -> None:
    """A plain reader from the start of the stream, per-event ``read`` or ``for result in reader``."""
    reader = None
    try:
        reader = Reader.attach(name, after_seq=0)
        results.put(("ready", idx, os.getpid()))
        delivered = dropped = 0
        t_first = cpu0 = None
        stalled = False
        clock = time.perf_counter
        sleeps0 = _sleeps()
        try:  # the two loops repeat their body: a shared helper would add a call per event to what is measured
            if mode == "read":
                read = reader.read
                while True:
                    result = read(STALL_S)
                    if result is None:
                        stalled = True
                        break
                    if t_first is None:
                        t_first, cpu0 = clock(), process_cpu_ns(os.getpid())
                    if result.envelope is not None:
                        delivered += 1
                    else:
                        dropped += result.dropped
            else:
                for result in reader:
                    if t_first is None:
                        t_first, cpu0 = clock(), process_cpu_ns(os.getpid())
                    if result.envelope is not None:
                        delivered += 1
                    else:
                        dropped += result.dropped
        except RingClosed:
            pass
        t_last = clock()
        results.put(_report(idx, delivered, dropped, t_first, t_last, cpu0, {
            "stalled": stalled, "reader_delivered": reader.delivered, "reader_dropped": reader.dropped,
            "sleeps_per_event": (_sleeps() - sleeps0) / max(1, delivered)}))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # report, so the parent need not wait for a timeout
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))
    finally:
        if reader is not None:
            reader.close()


def floor_reader_main(shm_name: str, idx: int, results, events: int) -> None:
    """The floor's reader: poll, copy, re-check, decode, for seq 1..events."""
    try:
        shm = posix_ipc.SharedMemory(shm_name, read_only=True)
        try:
            mapped = mmap.mmap(shm.fd, shm.size, prot=mmap.PROT_READ)
        finally:
            shm.close_fd()
        buf = memoryview(mapped)
        try:
            results.put(("ready", idx, os.getpid()))
            unpack_from = FLOOR_HEADER.unpack_from
            decode = msgspec.json.Decoder(Envelope).decode
            yield_cpu = os.sched_yield
            clock = time.perf_counter
            slots, slot_bytes = FLOOR_SLOTS, FLOOR_SLOT_BYTES
            seq = 1
            delivered = dropped = spins = 0
            t_first = cpu0 = None
            last_progress = clock()
            stalled = False
            while seq <= events:
                off = (seq % slots) * slot_bytes
                stamp, length = unpack_from(buf, off)
                if stamp == 2 * seq:
                    payload = bytes(buf[off + 12:off + 12 + length])
                    if unpack_from(buf, off)[0] == 2 * seq:
                        decode(payload)
                        if t_first is None:
                            t_first, cpu0 = clock(), process_cpu_ns(os.getpid())
                        delivered += 1
                        seq += 1
                        continue
                elif stamp > 2 * seq:  # overwritten before this reader got to it
                    dropped += 1
                    seq += 1
                    continue
                yield_cpu()
                spins += 1
                if not spins & 4095:
                    now = clock()
                    if now - last_progress > STALL_S:
                        stalled = True
                        break
                    last_progress = now if delivered else last_progress
            t_last = clock()
            results.put(_report(idx, delivered, dropped, t_first, t_last, cpu0,
                                {"stalled": stalled, "sleeps_per_event": 0.0}))
        finally:
            buf.release()
            mapped.close()
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        results.put(("error", idx, f"{type(exc).__name__}: {exc}"))


# --------------------------------------------------------------------------
# Measures (the bench process is the writer)
# --------------------------------------------------------------------------

def _summary(published: int, writer_elapsed: float, writer_waited_ns: int, done: dict) -> dict:
    readers = [done[i] for i in sorted(done)]
    return {"published": published, "writer_rate": published / writer_elapsed, "readers": readers,
            # The share of its run the writer was ready to publish but had no CPU.
            "writer_waited_pct": 100.0 * writer_waited_ns / 1e9 / writer_elapsed,
            "reader_rate_mean": sum(r["rate"] for r in readers) / len(readers),
            "reader_cpu_us_per_event_mean": sum(r["cpu_us_per_event"] for r in readers) / len(readers),
            "drops_total": sum(r["dropped"] for r in readers),
            "stalled": any(r["stalled"] for r in readers)}


def measure_shmring(ctx, event: Event, n_readers: int, mode: str, events: int) -> dict:
    name = _unique("bench-plain")
    results = ctx.Queue()
    procs = []
    ok = False
    session = CaptureSession.create(name, capture_session_id=CAPTURE_SESSION_ID)
    try:
        procs = spawn(ctx, shmring_reader_main, [(name, i, results, mode) for i in range(n_readers)])
        await_msgs(results, "ready", n_readers, READY_TIMEOUT_S)
        publish = session.publish
        waited0 = _waited_ns()
        t0 = time.perf_counter()
        for _ in range(events):
            publish(event)
        elapsed = time.perf_counter() - t0
        waited = _waited_ns() - waited0
        session.close()
        done = await_msgs(results, "done", n_readers, STALL_S + 30.0)
        ok = True
    finally:
        cleanup(session, procs, [results], ok)
    return _summary(events, elapsed, waited, done)


def measure_floor(ctx, event: Event, n_readers: int, events: int) -> dict:
    shm_name = "/" + _unique("bench-floor")
    shm = posix_ipc.SharedMemory(shm_name, posix_ipc.O_CREX, size=FLOOR_SLOTS * FLOOR_SLOT_BYTES)
    results = ctx.Queue()
    procs = []
    ok = False
    try:
        try:
            mapped = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        buf = memoryview(mapped)
        try:
            procs = spawn(ctx, floor_reader_main, [(shm_name, i, results, events) for i in range(n_readers)])
            await_msgs(results, "ready", n_readers, READY_TIMEOUT_S)
            encode = msgspec.json.Encoder().encode
            pack_header, pack_stamp = FLOOR_HEADER.pack_into, FLOOR_STAMP.pack_into
            stamped = msgspec.structs.replace(event, ts=time.time_ns() // 1000, detail_level="standard")
            slots, slot_bytes = FLOOR_SLOTS, FLOOR_SLOT_BYTES
            waited0 = _waited_ns()
            t0 = time.perf_counter()
            for seq in range(1, events + 1):
                payload = encode(Envelope(CAPTURE_SESSION_ID, seq, stamped))
                off = (seq % slots) * slot_bytes
                pack_header(buf, off, 2 * seq - 1, len(payload))
                buf[off + 12:off + 12 + len(payload)] = payload
                pack_stamp(buf, off, 2 * seq)
            elapsed = time.perf_counter() - t0
            waited = _waited_ns() - waited0
            done = await_msgs(results, "done", n_readers, STALL_S + 30.0)
            ok = True
        finally:
            buf.release()
            mapped.close()
    finally:
        posix_ipc.unlink_shared_memory(shm_name)
        cleanup(None, procs, [results], ok)
    return _summary(events, elapsed, waited, done)


def plain_steps(ctx, events: int) -> list[tuple[str, object]]:
    """(key, thunk) of every case, floor first for each N."""
    event = plain_event()
    steps = []
    for n in PLAIN_READERS:
        steps.append((f"floor_{n}", lambda n=n: measure_floor(ctx, event, n, events)))
        for mode in ("read", "iter"):
            steps.append((f"plain_{mode}_{n}", lambda n=n, mode=mode: measure_shmring(ctx, event, n, mode, events)))
    return steps


def ratios(run: dict) -> None:
    """Each shmring case over the floor with as many readers, in the same run (in place)."""
    for n in PLAIN_READERS:
        for mode in ("read", "iter"):
            key, floor = f"plain_{mode}_{n}", f"floor_{n}"
            if key in run and floor in run and run[floor]["reader_rate_mean"] > 0:
                run[f"ratio_{mode}_floor_{n}"] = run[key]["reader_rate_mean"] / run[floor]["reader_rate_mean"]


def _rows() -> list[tuple]:
    rows = []
    for n in PLAIN_READERS:
        for key, label in ((f"floor_{n}", "pure-Python seqlock floor"), (f"plain_read_{n}", "shmring read()"),
                           (f"plain_iter_{n}", "shmring for r in reader")):
            rows.append((f"25. flat out, {n} reader{'s' if n > 1 else ''}, {label}: delivered/reader",
                         lambda r, k=key: r[k]["reader_rate_mean"], "ev/s", "—", "rate"))
        for key, label in ((f"plain_read_{n}", "read()"), (f"plain_iter_{n}", "for r in reader")):
            rows.append((f"25. flat out, {n} reader{'s' if n > 1 else ''}, {label}: reader CPU/event",
                         lambda r, k=key: r[k]["reader_cpu_us_per_event_mean"], "µs", "—", "us2"))
            rows.append((f"25. flat out, {n} reader{'s' if n > 1 else ''}, {label}: writer rate",
                         lambda r, k=key: r[k]["writer_rate"], "ev/s", "—", "rate"))
            rows.append((f"25. flat out, {n} reader{'s' if n > 1 else ''}, {label}: writer waiting for a CPU",
                         lambda r, k=key: r[k]["writer_waited_pct"], "% of its run", "—", "pct1"))
            rows.append((f"25. flat out, {n} reader{'s' if n > 1 else ''}, {label} / floor",
                         lambda r, k=f"ratio_{key.split('_')[1]}_floor_{n}": r[k], "×",
                         "≥ 1.4×" if n == 2 else "—", "ratio"))
    return rows


ROWS = _rows()
"""bench.py's table rows for these cases (label, extractor, unit, target, format)."""

TARGETS = [
    (f"flat out, 2 decoding readers, {label} / pure-Python floor (same run)",
     lambda r, k=key: r[k], "x", ">=", 1.4, "ratio")
    for key, label in (("ratio_read_floor_2", "read(timeout=1)"), ("ratio_iter_floor_2", "for result in reader"))
]
"""Issue 25's targets against the floor; those against a baseline build are bench.py --baseline's."""
