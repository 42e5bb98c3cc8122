"""Child-process entry points for multi-process tests (top level, so spawn can import them).

Children never sleep to synchronise: they signal readiness with an Event and
report through a Queue. Every blocking call has a timeout.
"""

import os
import time
import zlib

import msgspec

from shmring import CaptureSession, Event, Filter, Reader, RingClosed, Source, WriterGone

TIMEOUT_S = 30


def make_event(i: int, category: str = "console", kind: str = "cdp", detail: str = "standard", pad: int = 0) -> Event:
    return Event(type=f"{category}.test", category=category, source=Source(kind=kind), detail_level=detail,
                 data={"i": i, "pad": "p" * pad})


def checksummed_event(i: int, size: int, category: str = "console") -> Event:
    body = (f"{i}:" * (size // 4 + 1))[:size]
    return Event(type="console.log", category=category, source=Source(kind="local_process"),
                 data={"i": i, "body": body, "crc": zlib.crc32(body.encode())})


def writer(name, count, ready, go=None, done=None, kwargs=None, categories=("console",), then="close"):
    """Create ring `name`, signal `ready`, wait for `go`, publish `count` events, signal `done`.

    then: "close" (close the ring and exit), "hold" (stay alive, unclosed,
    until killed), "half_write" (leave the next slot half-written, then hold).
    """
    session = CaptureSession.create(name, **(kwargs or {}))
    ready.set()
    if go is not None and not go.wait(TIMEOUT_S):
        session.close()
        return
    for i in range(1, count + 1):
        session.publish(make_event(i, categories[i % len(categories)]))
    if then == "half_write":
        from shmring.layout import HEADER_BYTES, SLOT, SLOT_BYTES

        core = session._res.core
        seq = session.last_seq + 1
        SLOT.pack_into(core.buf, HEADER_BYTES + (seq & core.mask) * SLOT_BYTES, 2 * seq + 1, 0, 0, 1, 2, 0, 0, 0,
                       b"console")
    if done is not None:
        done.set()
    if then == "close":
        session.close()
        return
    # Held open until the parent kills us by pid; bounded in case it never does.
    time.sleep(TIMEOUT_S)
    os._exit(0)


def reader(name, results, ready, after_seq=None, filter_kwargs=None, read_timeout=TIMEOUT_S):
    """Attach, signal `ready`, read to the end; report seqs, drops and the ending."""
    filt = Filter(**filter_kwargs) if filter_kwargs else None
    r = Reader.attach(name, after_seq=after_seq, filter=filt)
    ready.set()
    seqs, drops, ending = [], [], "timeout"
    try:
        while True:
            res = r.read(timeout=read_timeout)
            if res is None:
                break
            if res.envelope is not None:
                seqs.append(res.envelope.seq)
            else:
                drops.append(res.dropped)
    except RingClosed:
        ending = "closed"
    except WriterGone:
        ending = "writer_gone"
    results.put(dict(seqs=seqs, drops=drops, ending=ending, start=r.start_seq, cursor=r.cursor,
                     delivered=r.delivered, dropped=r.dropped, filtered=r.filtered, pid=os.getpid()))
    r.close()


TORN_CATEGORIES = ("console", "network", "page")
"""torn_read_writer's categories, in turn: seq i has TORN_CATEGORIES[i % 3]."""


def torn_read_writer(name, ready, go, duration_s, kwargs):
    session = CaptureSession.create(name, **kwargs)
    ready.set()
    go.wait(TIMEOUT_S)
    deadline = time.monotonic() + duration_s
    i = 0
    sizes = (40, 300, 2000, 60000)
    while time.monotonic() < deadline:
        for _ in range(100):
            i += 1
            session.publish(checksummed_event(i, sizes[i % len(sizes)], TORN_CATEGORIES[i % 3]))
    session.close()


def checking_reader(name, results, ready, slow_every, mode="iter", categories=None):
    """Verify every delivered event's checksum, its category against the filter, and the accounting invariants.

    mode: "iter" (``for res in r``) or "read" (``r.read()`` per event); categories: a Filter's, or None.
    """
    r = Reader.attach(name, after_seq=0, filter=None if categories is None else Filter(categories=categories))
    ready.set()
    corrupt = not_increasing = off_filter = 0
    last = 0
    n = 0

    def results_of(reader):
        if mode == "iter":
            yield from reader
            return
        while True:
            try:
                yield reader.read()
            except RingClosed:
                return

    for res in results_of(r):
        if res.envelope is None:
            continue
        env = res.envelope
        data = msgspec.json.decode(env.event.data)
        if zlib.crc32(data["body"].encode()) != data["crc"] or data["i"] != env.seq:
            corrupt += 1
        if env.event.category != TORN_CATEGORIES[env.seq % 3] or (categories and env.event.category not in categories):
            off_filter += 1
        if env.seq <= last:
            not_increasing += 1
        last = env.seq
        n += 1
        if slow_every and n % slow_every == 0:
            sum(range(20000))  # a slow consumer: burn CPU, don't sleep
    results.put(dict(corrupt=corrupt, not_increasing=not_increasing, off_filter=off_filter, delivered=r.delivered,
                     dropped=r.dropped, filtered=r.filtered, cursor=r.cursor, start=r.start_seq))
    r.close()


def _target_of(fd: int) -> str:
    """'category', 'checkpoint', 'gaps' or '' for what a flusher's fd is open on."""
    try:
        base = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return ""
    if base == "_checkpoint.json.tmp":
        return "checkpoint"
    if base == "_gaps.jsonl":
        return "gaps"
    return "category" if base.endswith(".jsonl") and not base.startswith("_") else ""


def faulty_flusher(name, directory, results, ready, fault, target, limit):
    """Run a Flusher whose ``os.write`` to its `target` files ('category', 'checkpoint', 'gaps') misbehaves.

    fault "crash": the `limit`-th write to a target file stops in the middle of
    its last line and the process SIGKILLs itself (a crash mid-write).
    fault "enospc": the target files accept `limit` more bytes (the write
    that crosses the limit is short), then every write fails with ENOSPC (a
    full disk). Reports the error and the fds left open after close().
    """
    import errno
    import signal
    import threading

    from shmring import Flusher, FlushError

    real_write = os.write
    state = {"writes": 0, "left": limit}

    def write(fd, data):
        if _target_of(fd) != target:
            return real_write(fd, data)
        data = bytes(data)
        if fault == "crash":
            state["writes"] += 1
            if state["writes"] == limit:
                line_start = data.rfind(b"\n", 0, len(data) - 1) + 1
                real_write(fd, data[: (line_start + len(data)) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(fd, data)
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real_write(fd, data[: state["left"]])
        state["left"] -= written
        return written

    os.write = write
    flusher = Flusher(name, directory)
    ready.set()
    try:
        stats = flusher.run()
        outcome = dict(error=None, stats=dict(stats))
    except FlushError as exc:
        outcome = dict(error=str(exc), stats=None)
    already_stopped = threading.Event()
    already_stopped.set()
    try:
        flusher.run(already_stopped)  # must refuse: what it had taken but not written is not in the files
        outcome["run_again"] = "ran"
    except FlushError as exc:
        outcome["run_again"] = str(exc)
    flusher.close()
    os.write = real_write
    open_paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    outcome["open_fds"] = sorted(p for p in open_paths if p.startswith(os.fspath(directory)))
    results.put(outcome)
