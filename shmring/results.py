"""Results: the steps of a stream, as readers and the archive give them.

Rules:
- A step is an event or a drop, never both. A drop gives the count and the
  inclusive seq range lost: ``dropped == dropped_to - dropped_from + 1``.
- ``RawRecord`` is the undecoded twin of ``ReadResult``: the envelope JSON
  exactly as the writer encoded it. Ring, files and replay-merge give the same
  types, so a consumer cannot tell (and need not care) where a step came from.
"""

import msgspec

from .schema import Envelope

__all__ = ["RawRecord", "ReadResult"]


class ReadResult(msgspec.Struct, frozen=True):
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


class RawRecord(msgspec.Struct, frozen=True):
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
