"""Where the accelerator refuses msgspec's layout, shmring runs the pure-Python path and says so once.

The compiled writer and reader read Struct fields by offset and refuse
(``_hotpath.StructLayoutMismatch``) types not laid out as they assume
(tests/unit/test_accelerator_contract.py). Here a look-alike type, with
the fields in another order, stands in for a msgspec that lays Structs out
otherwise: handed to the accelerator by session.py or reader.py, it makes the
session publish, or the reader decode, on the pure-Python path, with one
one-line RuntimeWarning, and every event still arrives exactly as published.
With schema.py's own types nothing is warned and the compiled paths run.
"""

import types
import warnings

import msgspec
import pytest

import shmring.reader as reader_module
import shmring.session as session_module
from shmring import CaptureSession, Event, Reader, Source
from shmring.ring import hotpath
from shmring.schema import SourceKind

pytestmark = pytest.mark.skipif(
    hotpath is None, reason="the accelerator is not built (or SHMRING_PURE_PYTHON is set): nothing to fall back from")

EVENTS = 50


class SourceReordered(msgspec.Struct, omit_defaults=True):
    """Source with ``event`` and ``kind`` swapped."""

    event: str = ""
    kind: SourceKind = "cdp"
    metadata: dict[str, str] = {}


class EnvelopeReordered(msgspec.Struct):
    """Envelope with ``seq`` and ``capture_session_id`` swapped."""

    seq: int
    capture_session_id: str
    event: Event


def event(n: int) -> Event:
    return Event(type="console.log", category="console", source=Source(kind="cdp", metadata={"n": str(n)}),
                 data=msgspec.Raw(b'{"n":%d}' % n))


def publish_and_read_back(writer: CaptureSession, attach=Reader.attach):
    """Publish EVENTS events; read them all with a reader attached first. Returns (published, read)."""
    with attach(writer.name) as r:
        published = [writer.publish(event(n)) for n in range(EVENTS)]
        results = [r.read(timeout=10) for _ in range(EVENTS)]
    assert all(result is not None and result.dropped == 0 for result in results), results
    return published, [result.envelope for result in results]


def assert_one_line(record, says: str) -> None:
    assert len(record) == 1, [str(w.message) for w in record]
    message = str(record[0].message)
    assert "\n" not in message
    assert message.startswith("shmring._hotpath cannot read") and says in message


def test_schemas_own_types_warn_nothing_and_run_compiled(ring_name):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with CaptureSession.create(ring_name) as writer:
            assert isinstance(writer.publish, types.BuiltinMethodType)  # _hotpath.Writer.publish
            with Reader.attach(ring_name) as r:
                assert r._taker is not None
                writer.publish(event(0))
                assert r.read(timeout=10).envelope.seq == 1
    assert record == []


def test_a_session_refused_by_the_accelerator_publishes_on_the_pure_python_path(ring_name, monkeypatch):
    monkeypatch.setattr(session_module, "Source", SourceReordered)  # what session.py hands to configure_publish
    with pytest.warns(RuntimeWarning) as record:
        writer = CaptureSession.create(ring_name)
    assert_one_line(record, "this session publishes on the pure-Python path")
    with writer:
        assert writer.publish.__func__ is CaptureSession.publish
        published, read = publish_and_read_back(writer)
    assert [e.seq for e in published] == list(range(1, EVENTS + 1))
    assert read == published


def test_a_reader_refused_by_the_accelerator_decodes_on_the_pure_python_path(ring_name, monkeypatch):
    monkeypatch.setattr(reader_module, "Envelope", EnvelopeReordered)  # what reader.py hands to RecordTaker
    with CaptureSession.create(ring_name) as writer:
        with pytest.warns(RuntimeWarning) as record:
            r = Reader.attach(ring_name)
        assert_one_line(record, "this reader decodes on the pure-Python path")
        assert r._taker is None
        published, read = publish_and_read_back(writer, attach=lambda name: r)
    assert read == published
