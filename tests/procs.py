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


def checksummed_event(i: int, size: int) -> Event:
    body = (f"{i}:" * (size // 4 + 1))[:size]
    return Event(type="console.log", category="console", source=Source(kind="local_process"),
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
            session.publish(checksummed_event(i, sizes[i % len(sizes)]))
    session.close()


def checking_reader(name, results, ready, slow_every):
    """Verify every delivered event's checksum and the accounting invariants."""
    r = Reader.attach(name, after_seq=0)
    ready.set()
    corrupt = not_increasing = 0
    last = 0
    n = 0
    for res in r:
        if res.envelope is None:
            continue
        env = res.envelope
        data = msgspec.json.decode(env.event.data)
        if zlib.crc32(data["body"].encode()) != data["crc"] or data["i"] != env.seq:
            corrupt += 1
        if env.seq <= last:
            not_increasing += 1
        last = env.seq
        n += 1
        if slow_every and n % slow_every == 0:
            sum(range(20000))  # a slow consumer: burn CPU, don't sleep
    results.put(dict(corrupt=corrupt, not_increasing=not_increasing, delivered=r.delivered, dropped=r.dropped,
                     filtered=r.filtered, cursor=r.cursor, start=r.start_seq))
    r.close()
