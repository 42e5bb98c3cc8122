"""read_many and read_raw_many: the same stream as read, in batches; and the latency budget's bound.

FORBIDDEN: a batch that differs from what ``read`` gives for the same ring
state (an event or drop missing, reordered, invented); raw bytes that differ
from the writer's encoding; accounting off by one; an event delivered later
than ``max_delay_s`` after its publish (beyond a generous margin for a
loaded machine).
"""

import time

import msgspec
import pytest

from shmring import CaptureSession, ConfigError, Filter, Reader, RingClosed, WriterGone
from shmring import RawRecord
from shmring.schema import encode_envelope
from tests.procs import TIMEOUT_S, make_event, writer

pytestmark = pytest.mark.usefixtures("ring_path")  # each test on the compiled and the pure path

CATEGORIES = ("console", "network", "page", "interaction")


def steps_by_read(reader):
    out = []
    try:
        while (r := reader.read(timeout=TIMEOUT_S)) is not None:
            out.append(("drop", r.dropped, r.dropped_from, r.dropped_to) if r.dropped
                       else (r.envelope.seq, encode_envelope(r.envelope)))
    except (RingClosed, WriterGone) as exc:
        out.append(type(exc).__name__)
    return out


def steps_by_read_many(reader, max_events):
    out = []
    try:
        while batch := reader.read_many(max_events, timeout=TIMEOUT_S):
            assert 1 <= len(batch) <= max_events
            out += [("drop", r.dropped, r.dropped_from, r.dropped_to) if r.dropped
                    else (r.envelope.seq, encode_envelope(r.envelope)) for r in batch]
    except (RingClosed, WriterGone) as exc:
        out.append(type(exc).__name__)
    return out


def steps_by_read_raw_many(reader, max_events):
    out = []
    try:
        while batch := reader.read_raw_many(max_events, timeout=TIMEOUT_S):
            assert 1 <= len(batch) <= max_events
            for rec in batch:
                assert type(rec) is RawRecord
                if rec.dropped:
                    assert (rec.category, rec.payload, rec.dropped_to) == ("", b"", rec.seq)
                    out.append(("drop", rec.dropped, rec.dropped_from, rec.dropped_to))
                else:
                    assert rec.category == msgspec.json.decode(rec.payload)["event"]["category"]
                    out.append((rec.seq, rec.payload))
    except (RingClosed, WriterGone) as exc:
        out.append(type(exc).__name__)
    return out


def accounting(reader):
    return reader.delivered, reader.dropped, reader.filtered, reader.cursor


@pytest.mark.parametrize("filter_kwargs", [None, dict(categories=["network", "page"])])
def test_batches_give_the_same_stream_as_read_after_overwrite_and_close(ring_name, filter_kwargs):
    session = CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20)
    filt = Filter(**filter_kwargs) if filter_kwargs else None
    readers = [Reader.attach(ring_name, after_seq=0, filter=filt) for _ in range(5)]
    try:
        for i in range(1, 301):
            session.publish(make_event(i, CATEGORIES[i % 4]))  # 300 into 64 slots: the start is overwritten
        session.close()
        expected = steps_by_read(readers[0])
        assert expected[0] == ("drop", 300 - 64, 1, 300 - 64) and expected[-1] == "RingClosed"
        assert steps_by_read_many(readers[1], 7) == expected
        assert steps_by_read_many(readers[2], 1024) == expected
        assert steps_by_read_raw_many(readers[3], 7) == expected
        assert steps_by_read_raw_many(readers[4], 1024) == expected
        for r in readers[1:]:
            assert accounting(r) == accounting(readers[0])
            assert r.delivered + r.dropped + r.filtered == r.cursor - r.start_seq == 300
    finally:
        session.close()
        for r in readers:
            r.close()


def test_batches_give_the_same_stream_as_read_after_a_writer_sigkill(ring_name, spawn):
    ready, done = spawn.Event(), spawn.Event()
    w = spawn.Process(target=writer, args=(ring_name, 200, ready, None, done),
                      kwargs=dict(kwargs=dict(capacity=64, data_bytes=1 << 20), categories=CATEGORIES,
                                  then="half_write"))
    w.start()
    assert ready.wait(TIMEOUT_S)
    readers = [Reader.attach(ring_name, after_seq=0, filter=Filter(categories=["console", "page"]) if i % 2 else None)
               for i in range(6)]
    try:
        assert done.wait(TIMEOUT_S)
        w.kill()
        w.join(TIMEOUT_S)
        for plain, first in ((readers[0], 0), (readers[1], 1)):
            expected = steps_by_read(plain)
            assert expected[-1] == "WriterGone" and expected[-2] == ("drop", 1, 201, 201)  # the half-written slot
            assert steps_by_read_many(readers[first + 2], 5) == expected
            assert steps_by_read_raw_many(readers[first + 4], 5) == expected
            for r in (readers[first + 2], readers[first + 4]):
                assert accounting(r) == accounting(plain)
    finally:
        for r in readers:
            r.close()


def test_batches_under_concurrent_overwrite_keep_the_invariants(ring_name, spawn):
    ready, go, done = spawn.Event(), spawn.Event(), spawn.Event()
    w = spawn.Process(target=writer, args=(ring_name, 60_000, ready, go, done),
                      kwargs=dict(kwargs=dict(capacity=256, data_bytes=1 << 20), categories=CATEGORIES))
    w.start()
    assert ready.wait(TIMEOUT_S)
    raw = Reader.attach(ring_name, after_seq=0)
    decoded = Reader.attach(ring_name, after_seq=0, filter=Filter(categories=["console"]))
    go.set()
    last = {id(raw): 0, id(decoded): 0}
    ended = set()
    while len(ended) < 2:
        for reader in (raw, decoded):
            if id(reader) in ended:
                continue
            try:
                if reader is raw:
                    for rec in raw.read_raw_many(300, timeout=TIMEOUT_S):
                        if not rec.dropped:
                            assert msgspec.json.decode(rec.payload)["seq"] == rec.seq > last[id(raw)]
                        last[id(raw)] = rec.seq
                else:
                    for res in decoded.read_many(300, timeout=TIMEOUT_S):
                        if res.envelope is not None:
                            assert res.envelope.seq > last[id(decoded)] and res.envelope.event.category == "console"
                            last[id(decoded)] = res.envelope.seq
            except RingClosed:
                ended.add(id(reader))
    w.join(TIMEOUT_S)
    for reader in (raw, decoded):
        assert reader.delivered + reader.dropped + reader.filtered == reader.cursor - reader.start_seq == 60_000
        reader.close()


def test_an_empty_batch_only_on_timeout_and_bad_sizes_are_refused(ring_name):
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session, \
            Reader.attach(ring_name) as reader:
        started = time.monotonic()
        assert reader.read_many(timeout=0.2) == [] and reader.read_raw_many(timeout=0) == []
        assert time.monotonic() - started >= 0.19
        session.publish(make_event(1))
        assert [r.envelope.seq for r in reader.read_many(timeout=TIMEOUT_S)] == [1]
        for bad in (0, -1, 1.5, None):
            with pytest.raises(ConfigError, match="max_events"):
                reader.read_many(bad)
            with pytest.raises(ConfigError, match="max_events"):
                reader.read_raw_many(bad)
    for bad in (-0.1, "1", True, 11.0):
        with pytest.raises(ConfigError, match="max_delay_s"):
            Reader.attach(ring_name, max_delay_s=bad)


def paced_writer(name, ready, go, rate, seconds, result_queue):
    session = CaptureSession.create(name)
    ready.set()
    go.wait(TIMEOUT_S)
    period = 1.0 / rate
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        if now >= start + n * period:
            session.publish(make_event(n))
            n += 1
        else:
            time.sleep(min(period / 2, start + n * period - now))
    result_queue.put(n)
    session.close()


@pytest.mark.alone  # a latency bound
@pytest.mark.parametrize("max_delay_s", [0.0, 0.02])
def test_max_delay_s_bounds_the_delivery_latency(ring_name, spawn, max_delay_s):
    ready, go, results = spawn.Event(), spawn.Event(), spawn.Queue()
    w = spawn.Process(target=paced_writer, args=(ring_name, ready, go, 1000, 2.0, results))
    w.start()
    assert ready.wait(TIMEOUT_S)
    latencies, batch_sizes = [], []
    with Reader.attach(ring_name, after_seq=0, max_delay_s=max_delay_s) as reader:
        go.set()
        try:
            while batch := reader.read_many(timeout=TIMEOUT_S):
                now_us = time.time_ns() // 1000
                batch_sizes.append(len(batch))
                latencies += [(now_us - r.envelope.event.ts) / 1e6 for r in batch if r.envelope]
        except RingClosed:
            pass
        assert reader.dropped == 0
    published = results.get(timeout=TIMEOUT_S)
    assert len(latencies) == published
    latencies.sort()
    p99 = latencies[int(0.99 * len(latencies))]
    # The margin is for a loaded 2-core machine; a reader that misses its wake-ups would wait its 1 s backstop.
    assert p99 < max_delay_s + 0.3, f"p99 latency {p99 * 1e3:.1f} ms with max_delay_s={max_delay_s}"
    if max_delay_s:
        # 1k/s with a 20 ms budget: the reader takes events in batches, not one by one
        assert sum(batch_sizes) / len(batch_sizes) > 3, batch_sizes[:50]

