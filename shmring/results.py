"""Results: the steps of a stream, as readers and the archive give them.

Rules:
- A step is an event or a drop, never both. A drop gives the count and the
  inclusive seq range lost: ``dropped == dropped_to - dropped_from + 1``.
- ``RawRecord`` is the undecoded twin of ``ReadResult``: the envelope JSON
  exactly as the writer encoded it. Ring, files and replay-merge give the same
  types, so a consumer cannot tell (and need not care) where a step came from.
- Neither is tracked by the cyclic garbage collector (``gc=False``): they hold
  an Envelope, bytes and numbers, never a cycle.
- A record's bytes become a ``ReadResult`` only through ``decode_checked``:
  bytes that are not their seq's envelope are a counted drop of one, never
  a wrong event and never an exception.
"""

import msgspec

from .errors import ConfigError
from .schema import Envelope, decode_envelope

__all__ = ["RawRecord", "ReadResult"]


class ReadResult(msgspec.Struct, frozen=True, gc=False):
    """One step of a stream: an envelope, or the events lost here.

    A drop gives the count and the inclusive seq range lost:
    ``dropped == dropped_to - dropped_from + 1``. ``redelivered``: a consumer
    group's member got an event another member had been given and not acknowledged.
    """

    envelope: Envelope | None = None
    dropped: int = 0
    dropped_from: int = 0
    dropped_to: int = 0
    redelivered: bool = False


class RawRecord(msgspec.Struct, frozen=True, gc=False):
    """One step of a stream, undecoded: an envelope's JSON as the writer encoded it, or a drop.

    A drop is ``RawRecord(seq=<last lost seq>, category="", payload=b"", dropped=N)``, with the
    inclusive range lost in ``dropped_from`` and ``dropped_to`` (= seq).
    """

    seq: int
    category: str
    payload: bytes
    dropped: int = 0
    dropped_from: int = 0
    dropped_to: int = 0
    redelivered: bool = False


def check_max_events(max_events: object) -> None:
    """A batch size readers accept: a positive int (ConfigError otherwise)."""
    if type(max_events) is not int or max_events < 1:
        raise ConfigError(f"max_events must be a positive int, not {max_events!r}")


def decode_checked(payload: bytes, seq: int) -> Envelope | None:
    """The envelope, or None if the bytes are not seq's envelope.

    The seqlock already rejects torn copies; this end-to-end check makes any
    record that still fails to decode as its own seq a counted drop, never a
    wrong event or an exception in the reader.
    """
    try:
        envelope = decode_envelope(payload)
    except msgspec.DecodeError:
        return None
    return envelope if envelope.seq == seq else None


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive seq ranges, sorted, with overlapping or adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out
