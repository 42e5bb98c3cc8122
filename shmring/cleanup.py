"""Removal of dead rings: what ``shmring gc`` does.

Rules:
- A ring is removed only when its writer is dead (pid plus start time),
  never a live one. A ring still being built (no magic yet) counts as live
  for ``CREATION_WINDOW_S`` after its segment was made, then as abandoned.
- Registries and wake semaphores whose ring is gone are removed too, but
  not those of a ring that was listed at the start and closed meanwhile:
  its writer removes them itself.
- Rings of another user are not judged and not touched.
- Given names, only those rings (and their leftovers) are judged.
"""

from collections.abc import Iterable

from .errors import IncompatibleRing, RingNotFound
from .header import open_ring_info, read_owner
from .liveness import is_alive
from .segment import (
    list_ring_names,
    open_segment,
    orphaned_ring_names,
    ring_age_s,
    ring_shm_name,
    unlink_orphan,
    unlink_ring_objects,
)

__all__ = ["collect_garbage", "CREATION_WINDOW_S"]

CREATION_WINDOW_S = 5.0
"""How long a half-built ring is left alone for its writer to finish it."""


def _in_use(name: str) -> bool:
    """Its writer is alive, or the ring is still being created."""
    ring = open_segment(ring_shm_name(name), writable=False)
    try:
        try:
            open_ring_info(name, ring)
            complete = True
        except IncompatibleRing:
            complete = False
        owner = read_owner(ring)
    finally:
        ring.close()
    if owner is None:
        return False
    if is_alive(*owner):
        return True
    return not complete and ring_age_s(name) < CREATION_WINDOW_S


def collect_garbage(names: Iterable[str] | None = None) -> list[str]:
    """Remove rings whose writer is dead, and orphaned registries/semaphores; only those of `names` when given.
    Return the names removed."""
    wanted = None if names is None else set(names)
    removed = []
    present = set(list_ring_names())
    for name in sorted(present if wanted is None else present & wanted):
        try:
            in_use = _in_use(name)
        except (RingNotFound, FileNotFoundError, PermissionError):
            continue  # gone meanwhile, or not ours to judge
        if not in_use:
            unlink_ring_objects(name)
            removed.append(name)
    for name in orphaned_ring_names():
        if (wanted is None or name in wanted) and name not in present and unlink_orphan(name) \
                and name not in removed:
            removed.append(name)
    return removed
