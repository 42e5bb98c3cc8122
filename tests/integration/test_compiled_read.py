"""The compiled per-event read (``Reader.read``, ``_hotpath.ReadMethod``) and iteration (``ReadIterator``) give the
stream the pure-Python reference gives: the same results, drops with their ranges, filtered counts and counters.

One ring, read by a compiled and a pure-Python reader side by side (the
reference is chosen per reader with SHMRING_PURE_PYTHON at attach), after
the writer has lapped them, with and without a filter, to the end of the
stream. Also: the compiled path publishes the cursor as often as the
reference, a bound ``read`` keeps its reader, and the end sticks.
"""

import os

import pytest

from shmring import CaptureSession, Event, Filter, Reader, ReaderClosed, ReadResult, RingClosed, Source
from shmring.reader import PROGRESS_EVERY
from shmring.ring import hotpath
from shmring.stats import ring_stats

pytestmark = pytest.mark.skipif(hotpath is None, reason="the accelerator is not built here: nothing to compare")

CATEGORIES = ("console", "network", "page")


def event(i: int) -> Event:
    return Event(type="t", category=CATEGORIES[i % 3], source=Source(kind="cdp" if i % 5 else "extension"),
                 detail_level="verbose" if i % 7 == 0 else "", data={"i": i})


def attach(name: str, pure: bool, **kwargs) -> Reader:
    if pure:
        os.environ["SHMRING_PURE_PYTHON"] = "1"
    try:
        return Reader.attach(name, **kwargs)
    finally:
        os.environ.pop("SHMRING_PURE_PYTHON", None)


def steps(reader: Reader, mode: str) -> list:
    """Every result until the end of the stream, as plain tuples."""
    out = []

    def note(r: ReadResult) -> None:
        out.append((r.envelope.seq, r.envelope.event.data) if r.envelope is not None
                   else ("drop", r.dropped, r.dropped_from, r.dropped_to))

    if mode == "iter":
        for r in reader:
            note(r)
    else:
        read = reader.read if mode == "read" else (lambda: Reader.read(reader, 5.0))
        while True:
            try:
                r = read()
            except RingClosed:
                break
            note(r)
    return out


def counters(reader: Reader) -> tuple:
    return reader.cursor, reader.delivered, reader.dropped, reader.filtered


FILTERS = [None, dict(categories=["network"]), dict(categories=["console", "page"], source_kinds=["cdp"]),
           dict(detail_levels=["verbose"])]


@pytest.fixture(autouse=True)
def no_forced_path(monkeypatch):
    monkeypatch.delenv("SHMRING_PURE_PYTHON", raising=False)


@pytest.mark.parametrize("mode", ["read", "iter", "unbound"])
@pytest.mark.parametrize("filter_kwargs", FILTERS)
def test_the_compiled_read_gives_the_reference_stream(ring_name, mode, filter_kwargs):
    with CaptureSession.create(ring_name, capacity=64, data_bytes=1 << 20) as session:
        readers = {pure: attach(ring_name, pure, after_seq=0, filter=filter_kwargs and Filter(**filter_kwargs))
                   for pure in (False, True)}
        assert readers[False]._state is readers[False]._taker and readers[True]._taker is None
        try:
            for i in range(1, 301):  # the readers are lapped: they start with a drop
                session.publish(event(i))
            firsts = {pure: steps_until(r, mode, 5) for pure, r in readers.items()}
            for i in range(301, 801):  # and lapped again mid-stream
                session.publish(event(i))
            session.close()
            got = {pure: firsts[pure] + steps(r, mode) for pure, r in readers.items()}
            assert got[False] == got[True]
            assert counters(readers[False]) == counters(readers[True])
            cursor, delivered, dropped, filtered = counters(readers[False])
            assert cursor == 800 and delivered + dropped + filtered == 800
            assert dropped > 0 and (filtered > 0) == (filter_kwargs is not None)
            assert [s[0] for s in got[False] if s[0] != "drop"] == sorted({s[0] for s in got[False] if s[0] != "drop"})
        finally:
            for r in readers.values():
                r.close()


def steps_until(reader: Reader, mode: str, n: int) -> list:
    """The first `n` results (fewer if the ring runs dry), taken the way `mode` says."""
    out = []
    it = iter(reader) if mode == "iter" else None
    while len(out) < n:
        if it is not None:
            r = next(it)
        else:
            r = reader.read(0) if mode == "read" else Reader.read(reader, 0)
            if r is None:
                break
        out.append((r.envelope.seq, r.envelope.event.data) if r.envelope is not None
                   else ("drop", r.dropped, r.dropped_from, r.dropped_to))
    return out


@pytest.mark.parametrize("mode", ["read", "iter"])
def test_the_compiled_read_publishes_the_cursor_every_progress_every_steps(ring_name, mode):
    with CaptureSession.create(ring_name, capacity=4096) as session, \
            Reader.attach(ring_name, after_seq=0) as reader:
        for i in range(1, PROGRESS_EVERY + 11):
            session.publish(event(i))
        it = iter(reader)
        for _ in range(PROGRESS_EVERY + 5):  # never waits: only the fast path publishes
            next(it) if mode == "iter" else reader.read(0)
        entry, = [e for e in ring_stats(ring_name)["readers"] if e["pid"] == os.getpid()]
        assert entry["cursor"] == PROGRESS_EVERY
        assert entry["delivered"] == PROGRESS_EVERY


def test_a_filtered_compiled_reader_counts_what_it_skips_and_publishes_it(ring_name):
    with CaptureSession.create(ring_name, capacity=4096) as session, \
            Reader.attach(ring_name, after_seq=0, filter=Filter(categories=["page"])) as reader:
        for i in range(1, 3 * PROGRESS_EVERY + 1):
            session.publish(event(i))
        results = [reader.read(0) for _ in range(PROGRESS_EVERY // 3 + 2)]
        assert all(r.envelope.event.category == "page" for r in results)
        assert reader.delivered == len(results) and reader.cursor == 3 * len(results) - 1  # seqs 2, 5, 8 ...
        assert reader.filtered == reader.cursor - reader.delivered
        entry, = [e for e in ring_stats(ring_name)["readers"] if e["pid"] == os.getpid()]
        assert entry["cursor"] >= PROGRESS_EVERY and entry["filtered"] == entry["cursor"] - entry["delivered"]


def test_a_bound_read_keeps_its_reader_and_the_end_sticks(ring_name):
    with CaptureSession.create(ring_name, capacity=64) as session:
        read = Reader.attach(ring_name, after_seq=0).read  # the reader lives as long as its bound read
        closed_early = Reader.attach(ring_name, after_seq=0)
        session.publish(event(1))
        assert read(1).envelope.seq == 1
        closed_early.close()
        with pytest.raises(ReaderClosed):
            closed_early.read(0)
        session.close()
        for _ in range(2):
            with pytest.raises(RingClosed):
                read(0)
        read.__self__.close()


def test_an_iteration_ends_for_good_and_a_closed_reader_refuses_the_next(ring_name):
    with CaptureSession.create(ring_name, capacity=64) as session:
        reader = Reader.attach(ring_name, after_seq=0)
        it = iter(reader)
        session.publish(event(1))
        assert next(it).envelope.seq == 1
        reader.close()
        with pytest.raises(ReaderClosed):
            next(it)
        reader = Reader.attach(ring_name, after_seq=0)
        session.publish(event(2))
        session.close()
        it = iter(reader)
        assert [r.envelope.seq for r in it] == [1, 2]
        assert list(it) == []  # exhausted, as a generator stays
        reader.close()


def test_read_keeps_its_documentation():
    assert Reader.read.__doc__.startswith("The next ReadResult")
    assert Reader.read.__wrapped__.__name__ == "read"
