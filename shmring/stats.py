"""Read-only inspection of rings on this machine (removal lives in ``cleanup``).

Rules:
- ``ring_stats`` and ``list_rings`` only read: rings are mapped read-only,
  registries are read without claiming an entry or taking a lock.
"""

import time

from .errors import IncompatibleRing, RingNotFound, ShmringError
from .groups import GroupTable
from .header import open_ring_info
from .liveness import command_line, is_alive, maps_file
from .registry import Registry
from .ring import RingReaderCore
from .segment import list_ring_names, open_segment, registry_shm_name, ring_shm_name, validate_ring_name

__all__ = ["ring_stats", "list_rings", "redact_url", "group_lines"]

ACCELERATOR_FILE = "/shmring/_hotpath."
"""Part of the path of the compiled accelerator, as mapped in a process that loaded it."""


def ring_stats(name: str, *, sample_s: float = 0.0, accelerator: bool = False) -> dict:
    """Everything stat shows about ring `name`; publish rate sampled over `sample_s`.

    accelerator: also tell whether the writer runs the compiled accelerator
    (``writer["accelerator"]``: True, False, or None if that can't be told).
    """
    ring = open_segment(ring_shm_name(validate_ring_name(name)), writable=False)
    try:
        info = open_ring_info(name, ring)
        core = RingReaderCore(ring.buf, info.capacity, info.data_bytes)
        first = core.latest()
        started = time.monotonic()
        if sample_s > 0:
            time.sleep(sample_s)
        latest = core.latest()
        rate = (latest - first) / (time.monotonic() - started) if sample_s > 0 else None
        oldest = core.oldest_retained(latest)
        closed = core.closed()
        try:
            registry_mapping = open_segment(registry_shm_name(name), writable=False)
        except RingNotFound:
            entries, groups = [], []
        else:
            try:
                registry = Registry(registry_mapping)
                entries = registry.entries()
                try:
                    groups = GroupTable(registry).groups(latest)
                except IncompatibleRing:
                    groups = []
            finally:
                registry_mapping.close()
    finally:
        ring.close()
    readers = [
        dict(pid=e["pid"], alive=e["alive"], role=e["role"], gating=e["gating"], cursor=e["cursor"],
             lag=max(0, latest - e["cursor"]), delivered=e["delivered"], dropped=e["dropped"],
             filtered=e["filtered"], waiting=e["waiting"])
        for e in entries if e["role"] != "group"  # a gating group's gate: shown with its group
    ]
    for reader, entry in zip(readers, entries):
        if reader["role"] == "forwarder":
            reader["sink"] = forwarder_sink(entry["pid"], entry["start_time"]) if entry["alive"] else None
    writer = dict(pid=info.writer_pid, alive=is_alive(info.writer_pid, info.writer_start_time))
    if accelerator:  # the writer's process has the compiled extension mapped, or not (None: can't tell)
        writer["accelerator"] = (maps_file(info.writer_pid, info.writer_start_time, ACCELERATOR_FILE)
                                 if writer["alive"] else None)
    return dict(
        name=name,
        capture_session_id=info.capture_session_id,
        writer=writer,
        capacity=info.capacity,
        data_bytes=info.data_bytes,
        latest_seq=latest,
        oldest_seq=oldest if oldest <= latest else None,
        first_seq=info.first_seq,
        closed=closed,
        publish_rate=rate,
        created_us=info.created_us,
        readers=readers,
        groups=groups,
    )


def forwarder_sink(pid: int, start_time: float) -> str | None:
    """A ``shmring forward`` process's sink as its command line names it (password hidden); None if unknown."""
    args = command_line(pid, start_time)
    if not args or "forward" not in args:
        return None
    options = {}
    rest = args[args.index("forward") + 1:]
    for flag, value in zip(rest, rest[1:]):
        if flag in ("--to", "--stream", "--subject"):
            options[flag] = value
    if "--to" not in options:
        return None
    return " ".join([redact_url(options["--to"])] + [f"{flag[2:]} {options[flag]}" for flag in ("--stream", "--subject")
                                                     if flag in options])


def redact_url(url: str) -> str:
    """The URL with its password (or token) replaced by ***."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    credentials, _, host = authority.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user + ':***' if colon else '***'}@{host}{slash}{path}"


def group_lines(groups: list[dict]) -> list[str]:
    """stat's table of consumer groups (one line per group, then one per member)."""
    if not groups:
        return []
    lines = [f"{'group':16} {'gating':6} {'members':>7} {'position':>12} {'pending':>8} {'lag':>10} {'acked':>12} "
             f"{'dropped':>10} {'filtered':>10} {'redelivered':>11}"]
    for g in groups:
        lines.append(f"{g['name']:16} {'yes' if g['gating'] else 'no':6} {len(g['members']):>7} {g['position']:>12} "
                     f"{g['pending']:>8} {g['lag']:>10} {g['acked']:>12} {g['dropped']:>10} {g['filtered']:>10} "
                     f"{g['redelivered']:>11}")
        for m in g["members"]:
            lines.append(f"  member pid {m['pid']} {'alive' if m['alive'] else 'DEAD'}  pending {m['pending']}")
    return lines


def list_rings() -> list[dict]:
    """One row per ring segment on this machine, with writer liveness."""
    rows = []
    for name in list_ring_names():
        try:
            stats = ring_stats(name)
        except RingNotFound:
            continue  # removed while we looked
        except (ShmringError, PermissionError) as exc:  # another user's ring is listed, not fatal
            rows.append(dict(name=name, error=str(exc)))
            continue
        rows.append(dict(name=name, writer=stats["writer"], latest_seq=stats["latest_seq"],
                         readers=len(stats["readers"]), capture_session_id=stats["capture_session_id"]))
    return rows

