"""The ring header: who owns a ring and how it is built, read and written in one place.

Rules:
- The header holds the magic, the layout version, the config (capacity,
  data_bytes, owner pid and start time, epoch, created_us, the flusher grace)
  and the capture session id; the offsets and formats live in ``layout``.
- The writer fills the header with ``write_header``, then, once everything
  else is ready, ``mark_attachable`` writes the version and the magic last:
  nobody attaches to a half-built ring.
- ``open_ring_info`` accepts only a complete ring of this layout version,
  raising ``IncompatibleRing`` otherwise.
- ``read_owner`` is tolerant: it reads the owner of a half-built or stale
  segment without checking it, to decide whether the segment may be reclaimed.
- It works on a mapped buffer and names no segment: that is ``segment``'s.
"""

import msgspec

from .errors import IncompatibleRing
from .layout import (
    CONFIG,
    HDR_CONFIG,
    HDR_FIRST_SEQ,
    HDR_MAGIC,
    HDR_SESSION_ID,
    HDR_VERSION,
    HEADER_BYTES,
    LAYOUT_VERSION,
    MAGIC,
    SESSION_ID,
    U64,
    ring_bytes,
)

__all__ = ["RingInfo", "open_ring_info", "read_owner", "write_header", "mark_attachable"]


class RingInfo(msgspec.Struct):
    """What a ring's header says about it."""

    name: str
    capture_session_id: str
    capacity: int
    data_bytes: int
    writer_pid: int
    writer_start_time: float
    epoch: int
    created_us: int
    flusher_grace_s: float
    first_seq: int = 1
    """The first seq the writer assigned: seqs below it were never in this ring."""


def open_ring_info(name: str, mapping) -> RingInfo:
    """Check that `mapping` (a segment.Mapping) is a ring of this layout and read its header."""
    buf = mapping.buf
    if mapping.size < HEADER_BYTES or U64.unpack_from(buf, HDR_MAGIC)[0] != MAGIC:
        raise IncompatibleRing(f"{mapping.shm_name} is not a shmring ring (or is still being created)", name=name)
    version = U64.unpack_from(buf, HDR_VERSION)[0]
    if version != LAYOUT_VERSION:
        raise IncompatibleRing(
            f"ring {name!r} has layout version {version}; this shmring reads version {LAYOUT_VERSION}. "
            "Use the same shmring version as the writer", name=name
        )
    capacity, data_bytes, pid, start_time, epoch, created_us, grace_us = CONFIG.unpack_from(buf, HDR_CONFIG)
    if mapping.size < ring_bytes(capacity, data_bytes):
        raise IncompatibleRing(f"ring {name!r} is shorter than its header says; it is damaged", name=name)
    length, raw_id = SESSION_ID.unpack_from(buf, HDR_SESSION_ID)
    return RingInfo(name, raw_id[:length].decode(), capacity, data_bytes, pid, start_time, epoch, created_us,
                    grace_us / 1e6, max(1, U64.unpack_from(buf, HDR_FIRST_SEQ)[0]))


def read_owner(mapping) -> tuple[int, float] | None:
    """(pid, start time) of the writer named in the header, unchecked; None if the segment is too short.

    A segment still being created reads as pid 0 until its writer has filled the header.
    """
    if mapping.size < HEADER_BYTES:
        return None
    _, _, pid, start_time, _, _, _ = CONFIG.unpack_from(mapping.buf, HDR_CONFIG)
    return pid, start_time


def write_header(buf, *, capacity: int, data_bytes: int, pid: int, start_time: float, epoch: int, created_us: int,
                 flusher_grace_s: float, capture_session_id: str, first_seq: int = 1) -> None:
    """Fill the header of a new ring, all but the version and magic (see ``mark_attachable``)."""
    CONFIG.pack_into(buf, HDR_CONFIG, capacity, data_bytes, pid, start_time, epoch, created_us,
                     int(flusher_grace_s * 1e6))
    U64.pack_into(buf, HDR_FIRST_SEQ, first_seq)
    encoded_id = capture_session_id.encode()
    SESSION_ID.pack_into(buf, HDR_SESSION_ID, len(encoded_id), encoded_id)


def mark_attachable(buf) -> None:
    """Write the layout version, then the magic: from here on readers may attach."""
    U64.pack_into(buf, HDR_VERSION, LAYOUT_VERSION)
    U64.pack_into(buf, HDR_MAGIC, MAGIC)
