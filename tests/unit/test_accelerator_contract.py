"""What the compiled accelerator (csrc/) and the Python around it must agree on, checked without shared memory.

- The writer's state: ``ring._WriterState`` (the pure-Python path) names the
  members the C type ``_hotpath.Writer`` declares, no more and no fewer, so
  ``ring.py``'s reference ``write`` runs over either.
- msgspec's layout: the accelerator reads Event, Source and Envelope fields by
  offset, so ``Writer.configure_publish`` and ``RecordTaker`` refuse, with
  ``StructLayoutMismatch``, any type that is not laid out as it assumes: not a
  msgspec Struct, other fields or another field order, or a field that is not
  a slot of its own. Look-alike types stand in for a msgspec that lays Structs
  out otherwise. (tests/integration/test_accelerator_fallback.py checks that
  shmring then runs the pure-Python path.)

These run on the extension whether or not SHMRING_PURE_PYTHON is set; they skip
only when it is not built.
"""

import types

import msgspec
import pytest

from shmring import ring
from shmring.layout import (
    ACCELERATOR_LAYOUT,
    DETAIL_CODES,
    KIND_CODES,
    MAX_RECORD_BYTES,
    REGISTRY_BYTES,
    data_offset,
    ring_bytes,
)
from shmring.schema import NO_DATA, Envelope, Event, Source, encode_data, normalise_data

hotpath = pytest.importorskip("shmring._hotpath", reason="the accelerator shmring._hotpath is not built")

CAPACITY = 8
DATA_BYTES = MAX_RECORD_BYTES  # the smallest data area the fast path accepts


def members(cls) -> set[str]:
    """The data members a class declares itself: slots (member descriptors) and getset descriptors."""
    return {name for name, attr in vars(cls).items()
            if isinstance(attr, (types.MemberDescriptorType, types.GetSetDescriptorType))}


# -- the writer's state ----------------------------------------------------------

def test_the_python_writer_state_has_exactly_the_c_writers_members():
    assert members(hotpath.Writer), "the C Writer declares no members: the comparison below would be empty"
    assert members(ring._WriterState) == set(ring._WriterState.__slots__)
    assert len(ring._WriterState.__slots__) == len(set(ring._WriterState.__slots__))
    assert set(ring._WriterState.__slots__) == members(hotpath.Writer)


def test_the_python_writer_state_has_no_method_the_c_writer_lacks():
    methods = {name for name, attr in vars(ring._WriterState).items()
               if callable(attr) and not name.startswith("__")}
    assert methods == {"release"}
    assert methods <= set(dir(hotpath.Writer))


def test_the_writer_core_adds_no_members_of_its_own():
    # __slots__ = (): a misspelt member is an AttributeError on both paths, never a silent new attribute.
    assert ring.RingWriterCore.__slots__ == ()
    assert not hasattr(ring.RingWriterCore(bytearray(ring_bytes(CAPACITY, 4096)), CAPACITY, 4096), "__dict__")


# -- msgspec's layout ------------------------------------------------------------

def look_alike(struct, order=None, extra=()):
    """A new msgspec Struct with `struct`'s fields (types, defaults) in `order` (its own by default), then `extra`."""
    fields = {f.name: f for f in msgspec.structs.fields(struct)}
    spec = []
    for name in order or struct.__struct_fields__:
        f = fields[name]
        if f.default is not msgspec.NODEFAULT:
            spec.append((name, f.type, msgspec.field(default=f.default)))
        elif f.default_factory is not msgspec.NODEFAULT:
            spec.append((name, f.type, msgspec.field(default_factory=f.default_factory)))
        else:
            spec.append((name, f.type))
    return msgspec.defstruct(f"{struct.__name__}LookAlike", spec + list(extra), kw_only=True,
                             omit_defaults=struct.__struct_config__.omit_defaults)


EVENT_FIELDS = Event.__struct_fields__
EventFieldsReordered = look_alike(Event, order=("ts", "category", "type") + EVENT_FIELDS[3:])
"""Event with ``type`` and ``category`` swapped: what another field order would look like."""
assert EVENT_FIELDS[1:3] == ("type", "category")

EventAlike = look_alike(Event)
"""Event's fields in Event's order: another class, the same layout."""

SourceWithMore = look_alike(Source, extra=[("extra", str, "")])


class EnvelopeNotAStruct:
    """Envelope's field names as plain slots: not a msgspec Struct."""

    __slots__ = Envelope.__struct_fields__
    __struct_fields__ = Envelope.__struct_fields__


EnvelopeSeqNotASlot = look_alike(Envelope)
EnvelopeSeqNotASlot.seq = property(lambda self: 0)  # the field is no longer read from its slot


def configure(writer=None, **overrides):
    """configure_publish over plain buffers with the session's arguments (but `overrides`), on a bare Writer."""
    if writer is None:
        writer = hotpath.Writer()
        writer.mask = CAPACITY - 1
        writer.data_base = data_offset(CAPACITY)
        writer.data_bytes = DATA_BYTES
    kwargs = dict(event_type=Event, source_type=Source, envelope_type=Envelope, slow=lambda event: None) | overrides
    writer.configure_publish(
        ring=bytearray(ring_bytes(CAPACITY, DATA_BYTES)), registry=bytearray(REGISTRY_BYTES),
        layout=ACCELERATOR_LAYOUT, capture_session_id="csid", category_fields={}, kind_codes=KIND_CODES,
        detail_codes=DETAIL_CODES, standard="standard", raw_type=msgspec.Raw, no_data=NO_DATA,
        on_flags=lambda: None, normalise_data=normalise_data, encode_data=encode_data, **kwargs)
    return writer


def taker(envelope_type):
    return hotpath.RecordTaker(
        ring=bytearray(ring_bytes(CAPACITY, 4096)), capacity=CAPACITY, data_bytes=4096, layout=ACCELERATOR_LAYOUT,
        decode=msgspec.json.Decoder(Envelope).decode, decode_error=msgspec.DecodeError, envelope_type=envelope_type)


def test_schemas_types_are_accepted():
    configure().release()
    taker(Envelope).release()


def test_a_different_class_with_the_same_layout_is_accepted():
    configure(event_type=EventAlike).release()


@pytest.mark.parametrize("types_, match", [
    ({"event_type": EventFieldsReordered}, r"its fields are \('ts', 'category', 'type'"),
    ({"source_type": SourceWithMore}, r"its fields are \('kind', 'event', 'metadata', 'extra'\)"),
    ({"envelope_type": EnvelopeNotAStruct}, "not a msgspec Struct"),
    ({"envelope_type": EnvelopeSeqNotASlot}, "its field seq is not a slot of its own"),
], ids=["event-field-order", "source-extra-field", "envelope-not-a-struct", "envelope-field-not-a-slot"])
def test_the_writer_refuses_a_type_not_laid_out_as_it_reads_it(types_, match):
    with pytest.raises(hotpath.StructLayoutMismatch, match=match) as refused:
        configure(**types_)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("envelope_type, match", [
    (EnvelopeNotAStruct, "not a msgspec Struct"),
    (EnvelopeSeqNotASlot, "its field seq is not a slot of its own"),
], ids=["not-a-struct", "field-not-a-slot"])
def test_the_record_taker_refuses_a_type_not_laid_out_as_it_reads_it(envelope_type, match):
    with pytest.raises(hotpath.StructLayoutMismatch, match=match):
        taker(envelope_type)


def test_a_refused_configuration_leaves_a_configured_writer_as_it_was():
    writer = configure()
    with pytest.raises(hotpath.StructLayoutMismatch):
        configure(writer, event_type=EventFieldsReordered, slow=lambda event: "the second slow path")
    # Still configured with its first slow path: what it does not vouch for (not an Event) goes there.
    assert writer.publish(object()) is None
    writer.release()
