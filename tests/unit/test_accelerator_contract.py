"""What the compiled accelerator (csrc/) and the Python around it must agree on, checked without shared memory.

- The writer's state: ``ring._WriterState`` (the pure-Python path) names the
  members the C type ``_hotpath.Writer`` declares, no more and no fewer, so
  ``ring.py``'s reference ``write`` runs over either.

These run on the extension whether or not SHMRING_PURE_PYTHON is set; they skip
only when it is not built.
"""

import types

import pytest

from shmring import ring
from shmring.layout import ring_bytes

hotpath = pytest.importorskip("shmring._hotpath", reason="the accelerator shmring._hotpath is not built")

CAPACITY = 8


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
