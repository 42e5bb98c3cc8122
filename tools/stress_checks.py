"""The stress harness's checks: what every reader's result and the flusher's files must satisfy.

Rules: pure functions over results and files, no processes and no shared
memory (tools/stress.py orchestrates and calls them after the run). Each check
returns the problems it found as one-line strings; an empty list is a pass.
The stream's contract, which writer, readers and checks all rely on, lives
here too: seq s has category ``CATEGORIES[s % 3]`` and carries
``{"i": s, "body": ..., "crc": crc32(body, s)}``.
"""

import json
import os
import zlib

import msgspec

__all__ = ["CATEGORIES", "KIND_FILTERS", "MEMBER_KINDS", "READER_CHECKS", "READER_KINDS", "TYPES", "Data",
           "check_flusher_files", "check_group", "check_member", "check_reader", "check_writer", "gap_explained",
           "payload_ok", "seqs_of_categories_in"]

# Category of seq s is CATEGORIES[s % 3]; both sides know it, so a misplaced
# or misdelivered event is caught.
CATEGORIES = ("page", "console", "network")
TYPES = {"page": "page.load", "console": "console.log", "network": "network.response"}
READER_KINDS = ("fast", "slow", "filtered", "filtered-slow")
KIND_FILTERS = {"fast": None, "slow": None, "filtered": ["network"], "filtered-slow": ["console", "page"]}
MEMBER_KINDS = ("member", "async-member")
"""A group member: a Reader, or an AsyncReader."""
READER_CHECKS = (("events", "events"), ("corrupt", "corrupt"), ("out_of_order", "order_violations"),
                 ("bad_steps", "step_violations"), ("off_filter", "filter_violations"))
"""(report name, reader result key) of what each reader checked, summed over its instances."""


class Data(msgspec.Struct):
    i: int
    body: str
    crc: int


class FlushedEvent(msgspec.Struct):
    category: str
    data: Data


class FlushedLine(msgspec.Struct):
    capture_session_id: str
    seq: int
    event: FlushedEvent


def payload_ok(seq: int, event, decode) -> bool:
    """Whether an event delivered as `seq` carries seq's payload, checksum, category and type."""
    try:
        d = decode(event.data)
    except Exception:  # a torn or garbled payload
        return False
    return (d.i == seq and zlib.crc32(d.body.encode(), seq & 0xFFFFFFFF) == d.crc
            and event.category == CATEGORIES[seq % 3] and event.type == TYPES[event.category])


def check_member(r: dict) -> list[str]:
    """A group member instance that read to the end."""
    problems = []
    if r["ending"] != "closed":
        problems.append(f"ended with {r['ending']}, not RingClosed")
    if r["corrupt"]:
        problems.append(f"{r['corrupt']} corrupt payloads (e.g. {r['examples']})")
    return problems


def check_group(record_paths: list[str], last: int) -> tuple[dict, list[str]]:
    """(summary, problems) of a gating group's members' records (every instance's, killed ones too; each line
    ``seq redelivered`` or ``D from to``, written before the acknowledgement): every seq 1..last went to a
    member, none to two members fresh, nothing dropped."""
    fresh = bytearray(last + 1)
    seen = bytearray(last + 1)
    summary = {"seqs": last, "deliveries": 0, "redelivered": 0, "lost": 0, "fresh_twice": 0, "drops": 0,
               "corrupt": 0}
    problems = []
    for path in record_paths:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts[0] == "D":
                    summary["drops"] += int(parts[2]) - int(parts[1]) + 1
                    continue
                seq, redelivered = int(parts[0]), parts[1] == "1"
                if not 1 <= seq <= last:
                    summary["corrupt"] += 1
                    continue
                summary["deliveries"] += 1
                seen[seq] = 1
                if redelivered:
                    summary["redelivered"] += 1
                elif fresh[seq]:
                    summary["fresh_twice"] += 1
                    if summary["fresh_twice"] <= 3:
                        problems.append(f"seq {seq} went to two members fresh (the second not marked redelivered)")
                else:
                    fresh[seq] = 1
    summary["lost"] = seen.count(0) - 1
    if summary["lost"]:
        problems.append(f"{summary['lost']} seqs went to no member (the first: {seen.index(0, 1)})")
    if summary["drops"]:
        problems.append(f"{summary['drops']} events dropped: the group gates, it must lose nothing")
    if summary["corrupt"]:
        problems.append(f"{summary['corrupt']} records of seqs outside 1..{last}")
    return summary, problems


def seqs_of_categories_in(first_excl: int, last_incl: int, categories) -> int:
    """How many seqs s in (first_excl, last_incl] have CATEGORIES[s % 3] in `categories`."""

    def upto(n: int, r: int) -> int:  # count of s in 1..n with s % 3 == r
        return (n + (3 - r) % 3) // 3 if n > 0 else 0

    return sum(upto(last_incl, r) - upto(first_excl, r) for r, c in enumerate(CATEGORIES) if c in categories)


def check_writer(result: dict) -> list[str]:
    problems = []
    if result["seq_mismatch"]:
        problems.append(f"publish returned {result['seq_mismatch']} unexpected seqs")
    if result["published"] != result["last_seq"]:
        problems.append(f"published {result['published']} but its last seq is {result['last_seq']}")
    return problems


def check_reader(r: dict, last: int) -> list[str]:
    """A reader instance that read to the end: its accounting, its counts, what it checked while reading."""
    problems = []
    if r["ending"] != "closed":
        problems.append(f"ended with {r['ending']}, not RingClosed")
    if r["cursor"] != last:
        problems.append(f"final cursor {r['cursor']} != last seq {last}")
    accounted = r["delivered"] + r["dropped"] + r["filtered"]
    if accounted != last - r["start"]:
        problems.append(f"delivered {r['delivered']} + dropped {r['dropped']} + filtered {r['filtered']} = "
                        f"{accounted} != published after its start {last} - {r['start']} = {last - r['start']}")
    if (r["events"], r["dropped_seen"]) != (r["delivered"], r["dropped"]):
        problems.append(f"saw {r['events']} events and {r['dropped_seen']} dropped, the Reader counts "
                        f"{r['delivered']} and {r['dropped']}")
    if r["after_seq"] is not None and r["start"] != r["after_seq"]:
        problems.append(f"attached after seq {r['after_seq']} but starts at {r['start']}")
    categories = KIND_FILTERS[r["kind"]]
    if categories is None and r["filtered"]:
        problems.append(f"unfiltered, yet {r['filtered']} filtered")
    if categories is not None:
        if r["filtered"] > seqs_of_categories_in(r["start"], last, set(CATEGORIES) - set(categories)):
            problems.append(f"{r['filtered']} filtered: more than the range holds")
        if r["delivered"] > seqs_of_categories_in(r["start"], last, set(categories)):
            problems.append(f"{r['delivered']} delivered: more than the range holds of its categories")
    for key in ("corrupt", "order_violations", "step_violations", "filter_violations"):
        if r[key]:
            problems.append(f"{r[key]} {key.replace('_', ' ')}")
    return problems


def gap_explained(lo: int, hi: int, outages: list[dict], capacity: int, grace_s: float) -> bool:
    """A gap may only come from a flusher outage longer than the grace period."""
    for o in outages:
        if o["attached_at"] is None or o["seq_at_kill"] is None:
            continue
        if (o["outage_s"] >= grace_s - 0.1 and lo > o["seq_at_kill"] - capacity
                and hi <= o["seq_at_attach"] + capacity):
            return True
    return False


def check_flusher_files(log_dir: str, last: int, session: str, explained) -> tuple[dict, list[str]]:
    """(summary, problems) of a flusher's directory: files + gaps are exactly seqs 1..last, once each.

    `explained(lo, hi)` says whether a recorded gap is allowed (see gap_explained).
    """
    decode = msgspec.json.Decoder(FlushedLine).decode
    crc32 = zlib.crc32
    seen = bytearray(last + 1)  # 0 missing, 1 in a file, 2 in a gap
    summary = {"files": {}, "lines": 0, "gaps": [], "gap_events": 0, "corrupt": 0,
               "out_of_order": 0, "duplicates": 0, "missing": 0}
    problems = []
    try:
        entries = sorted(os.listdir(log_dir))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.startswith("_") or not entry.endswith(".jsonl"):
            continue
        category = entry.split(".")[0]
        prev = 0
        bad = dup = unordered = 0
        n = 0
        with open(os.path.join(log_dir, entry), "rb") as f:
            for line in f:
                n += 1
                if not line.endswith(b"\n"):
                    problems.append(f"{entry} ends in a partial line")
                try:
                    rec = decode(line)
                except msgspec.DecodeError as exc:
                    bad += 1
                    if bad <= 3:
                        problems.append(f"{entry} line {n}: not a valid envelope ({exc}): {line[:80]!r}")
                    continue
                s = rec.seq
                d = rec.event.data
                if (rec.capture_session_id != session or not 1 <= s <= last or rec.event.category != category
                        or CATEGORIES[s % 3] != category or d.i != s
                        or crc32(d.body.encode(), s & 0xFFFFFFFF) != d.crc):
                    bad += 1
                    if bad <= 3:
                        problems.append(f"{entry} line {n}: wrong session, seq, category or checksum: {line[:80]!r}")
                    continue
                if s <= prev:
                    unordered += 1
                prev = s
                if seen[s]:
                    dup += 1
                    if dup <= 3:
                        problems.append(f"seq {s} is in the files more than once (again in {entry})")
                seen[s] = 1
        summary["files"][entry] = n
        summary["lines"] += n
        summary["corrupt"] += bad
        summary["out_of_order"] += unordered
        summary["duplicates"] += dup
        if bad > 3:
            problems.append(f"{entry}: {bad} bad lines in all")
        if dup > 3:
            problems.append(f"{entry}: {dup} duplicate seqs in all")
        if unordered:
            problems.append(f"{entry}: seqs not strictly increasing {unordered} times")
    problems += _check_gaps(os.path.join(log_dir, "_gaps.jsonl"), last, session, seen, summary, explained)
    missing = summary["missing"] = seen.count(0) - 1
    if missing:
        problems.append(f"{missing} seqs neither in the files nor in _gaps.jsonl (the first: {seen.index(0, 1)})")
    try:
        with open(os.path.join(log_dir, "_checkpoint.json")) as f:
            cp = json.load(f)
        if cp.get("seq") != last or cp.get("capture_session_id") != session:
            problems.append(f"the checkpoint ends at seq {cp.get('seq')}, not {last}")
    except (OSError, ValueError) as exc:
        problems.append(f"no checkpoint: {exc}")
    return summary, problems


def _check_gaps(path: str, last: int, session: str, seen: bytearray, summary: dict, explained) -> list[str]:
    problems = []
    if not os.path.exists(path):
        return problems
    with open(path, "rb") as f:
        for n, line in enumerate(f.read().splitlines(), 1):
            try:
                g = json.loads(line)
                lo, hi = g["from_seq"], g["to_seq"]
                ok = g["capture_session_id"] == session and 1 <= lo <= hi <= last and g["dropped"] == hi - lo + 1
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                problems.append(f"_gaps.jsonl line {n} is not a valid gap record of this session: {line!r}")
                continue
            summary["gaps"].append((lo, hi))
            summary["gap_events"] += hi - lo + 1
            overlap = sum(1 for s in range(lo, hi + 1) if seen[s])
            if overlap:
                problems.append(f"gap {lo}-{hi} overlaps {overlap} seqs already in the files or gaps")
            seen[lo: hi + 1] = b"\x02" * (hi - lo + 1)
            if not explained(lo, hi):
                problems.append(f"gap {lo}-{hi} ({hi - lo + 1} events) is not in a flusher outage longer than the "
                                "grace period: lost while gated")
    return problems
