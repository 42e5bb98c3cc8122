"""The compiled JSON compactor (csrc/compact.c) against msgspec, on generated, random and mutated input.

No shared memory: ``compact_json`` is a pure function. Whenever it returns
bytes, ``msgspec.json.format(data, indent=-1)`` must accept the input and
return exactly those bytes; on ordinary ASCII JSON it must not give up (or the
publish fast path is never taken). The rest of the accelerator is tested in
tests/integration/test_hotpath.py.
"""

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from shmring.ring import hotpath
from tests.json_texts import json_texts

if hotpath is None:
    pytest.skip("the accelerator shmring._hotpath is not built (or SHMRING_PURE_PYTHON is set)",
                allow_module_level=True)

compact_json = hotpath.compact_json

def msgspec_compact(data) -> bytes:
    return msgspec.json.format(data, indent=-1)


def check_against_msgspec(data: bytes) -> None:
    """The contract: bytes from compact_json only for what msgspec accepts, and exactly what it returns."""
    vouched = compact_json(data)
    if vouched is None:
        return
    try:
        expected = msgspec_compact(data)
    except msgspec.DecodeError as exc:
        raise AssertionError(f"compact_json vouched for {data!r}, which msgspec rejects: {exc}") from None
    assert vouched == expected


# -- compact_json --------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(doc=json_texts())
def test_compact_json_matches_msgspec_on_generated_json(doc):
    assert msgspec_compact(doc.text) == doc.compact  # the generator agrees with msgspec
    vouched = compact_json(doc.text)
    if doc.ordinary:
        assert vouched == doc.compact  # plain ASCII JSON takes the fast path
    else:
        assert vouched is None or vouched == doc.compact
    assert compact_json(bytearray(doc.text)) == compact_json(memoryview(doc.text)) == vouched


JSONISH = list(b' \t\n\r{}[]",:\\/-+.0123456789eEtrufalsnbu\x00\x1f\x7f\x80\xc3\xa9\xff')


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=40), st.lists(st.sampled_from(JSONISH), max_size=40).map(bytes)))
def test_compact_json_never_vouches_for_random_bytes_msgspec_rejects(data):
    check_against_msgspec(data)


@st.composite
def mutated_json(draw) -> bytes:
    data = bytearray(draw(json_texts()).text)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.one_of(st.sampled_from(JSONISH), st.integers(0, 255)))
        if op == "insert":
            data.insert(draw(st.integers(0, len(data))), byte)
        elif data:
            at = draw(st.integers(0, len(data) - 1))
            if op == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


@settings(max_examples=250, deadline=None)
@given(data=mutated_json())
def test_compact_json_never_vouches_for_mutated_json_msgspec_rejects(data):
    check_against_msgspec(data)


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"01", b"-01", b"[1,]", b'{"a"}', b'{"a":1,}', b'{1:2}', b'"\\x"', b'"\\u12"', b'"\\u12G4"',
     b"1.", b".5", b"+1", b"-", b"1e", b"1e+", b"nul", b"tru", b"truex", b"NaN", b"Infinity", b"'a'",
     b'"\x01"', b'"\t"', b'"abc', b"[1] x", b"[1 2]", b'{"a" 1}', b"[", b"[]]", b"1\x00", b"\x0c1",
     b"\xef\xbb\xbf1"],
)
def test_compact_json_rejects_what_msgspec_rejects(data):
    with pytest.raises(msgspec.DecodeError):
        msgspec_compact(data)
    assert compact_json(data) is None


@pytest.mark.parametrize(
    "data, compact",
    [
        (b' [ 1 , {"a" : "b\\/\\u00e9"} ] ', b'[1,{"a":"b\\/\\u00e9"}]'),
        (b"\t\r\n-0.5E+10\n", b"-0.5E+10"),
        (b'"\x7f\\u0000\\"\\\\"', b'"\x7f\\u0000\\"\\\\"'),
        (b"-" + b"1" * 31, b"-" + b"1" * 31),  # 32 characters: still vouched for
        (b"[" * 64 + b"]" * 64, b"[" * 64 + b"]" * 64),
        (b'{"a":' * 63 + b"[]" + b"}" * 63, b'{"a":' * 63 + b"[]" + b"}" * 63),
    ],
)
def test_compact_json_vouches_for_ordinary_json(data, compact):
    assert compact_json(data) == msgspec_compact(data) == compact


@pytest.mark.parametrize("data", [b'"caf\xc3\xa9"', b"1" * 33, b"[" * 65 + b"]" * 65,
                                  b'{"a":' * 64 + b"[]" + b"}" * 64])
def test_compact_json_may_leave_unusual_json_to_msgspec(data):
    msgspec_compact(data)  # valid JSON
    assert compact_json(data) is None


def test_compact_json_survives_very_deep_nesting():
    assert compact_json(b"[" * 200_000 + b"]" * 200_000) is None
    assert compact_json(b'{"a":' * 200_000) is None


@pytest.mark.parametrize("data", [b'"\\ud800"', b'"\\udc00"', b'"\\uDBFF\\u0041"', b'["\\ud800\\ud800"]',
                                  b'{"\\udfff":1}', b'"\\udc00\\ud800"'])
def test_compact_json_leaves_surrogate_escapes_to_msgspec(data):
    with pytest.raises(msgspec.DecodeError):
        msgspec_compact(data)
    assert compact_json(data) is None


def test_a_valid_surrogate_pair_is_left_to_msgspec_too():
    data = b'["\\uD83D\\uDE00"]'
    assert msgspec_compact(data) == data
    assert compact_json(data) is None


# -- publish: a fast-path ring and a pure-Python ring, side by side ----------------------
