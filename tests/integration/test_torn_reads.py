"""Torn-read stress: a writer laps a small ring flat out while slow readers check every record.

FORBIDDEN: a record whose checksum or seq does not match its own data; a seq
delivered out of order; an event the filter does not accept; delivered +
dropped + filtered != cursor - start.

Readers iterate (``for res in r``) or call ``read()``, with no filter or one
that takes a third of the stream: on the compiled path those are the C read
and iteration, which skip filtered slots themselves.
"""

import pytest

from tests.procs import TIMEOUT_S, checking_reader, torn_read_writer

pytestmark = pytest.mark.usefixtures("ring_path")  # each test on the compiled and the pure path

DURATION_S = 2.0


@pytest.mark.parametrize("mode,categories", [("iter", None), ("read", None), ("iter", ("network",)),
                                             ("read", ("console", "page"))])
def test_no_torn_record_is_ever_returned(ring_name, spawn, mode, categories):
    ready, go = spawn.Event(), spawn.Event()
    # 64 slots and the smallest data area, with records up to 60 KB: both the
    # slots and the data area are overwritten under the readers many times.
    w = spawn.Process(target=torn_read_writer, args=(ring_name, ready, go, DURATION_S),
                      kwargs=dict(kwargs=dict(capacity=64, data_bytes=1 << 20)))
    w.start()
    assert ready.wait(TIMEOUT_S)
    results = spawn.Queue()
    readers = []
    for slow_every in (0, 1, 7):
        reader_ready = spawn.Event()
        p = spawn.Process(target=checking_reader, args=(ring_name, results, reader_ready, slow_every, mode,
                                                        categories))
        p.start()
        assert reader_ready.wait(TIMEOUT_S)
        readers.append(p)
    go.set()
    outcomes = [results.get(timeout=TIMEOUT_S + DURATION_S) for _ in readers]
    w.join(TIMEOUT_S)
    for p in readers:
        p.join(TIMEOUT_S)
    total_dropped = 0
    for got in outcomes:
        assert got["corrupt"] == 0
        assert got["not_increasing"] == 0
        assert got["off_filter"] == 0
        assert got["delivered"] + got["dropped"] + got["filtered"] == got["cursor"] - got["start"]
        assert got["delivered"] > 0
        assert (got["filtered"] > 0) == (categories is not None)
        total_dropped += got["dropped"]
    # The readers were lapped, so torn reads were really attempted.
    assert total_dropped > 0
