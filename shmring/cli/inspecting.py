"""``stat``, ``ls``, ``gc``: the rings on this machine as they stand, and the removal of those whose writer died."""

import json
import sys

import msgspec

from ..errors import RingNotFound
from .common import NAME_HELP, _ring_name, _stop_on_signals


def _stat_table(s: dict) -> str:
    from ..stats import group_lines

    writer = s["writer"]
    rate = "-" if s["publish_rate"] is None else f"{s['publish_rate']:,.0f}/s"
    state = "alive" if writer["alive"] else ("exited" if s["closed"] else "DEAD")
    accelerator = {True: "  (accelerator in use)", False: "  (pure Python: no accelerator)"}.get(
        writer.get("accelerator"), "")
    lines = [
        f"ring {s['name']}  capture session {s['capture_session_id']}{'  (closed)' if s['closed'] else ''}",
        f"writer pid {writer['pid']} {state}{accelerator}  capacity {s['capacity']}  "
        f"latest seq {s['latest_seq']}  oldest seq {s['oldest_seq'] if s['oldest_seq'] is not None else '-'}  "
        + (f"first seq {s['first_seq']}  " if s["first_seq"] > 1 else "")
        + f"publish rate {rate}",
    ]
    if s["readers"]:
        lines.append(f"{'role':8} {'pid':>8} {'state':6} {'cursor':>12} {'lag':>10} {'delivered':>12} "
                     f"{'dropped':>10} {'filtered':>10}")
        for r in s["readers"]:
            lines.append(f"{r['role']:8} {r['pid']:>8} {'alive' if r['alive'] else 'DEAD':6} {r['cursor']:>12} "
                         f"{r['lag']:>10} {r['delivered']:>12} {r['dropped']:>10} {r['filtered']:>10}"
                         + (f"  sink {r.get('sink') or '?'}" if r["role"] == "forwarder" else ""))
    else:
        lines.append("no readers attached")
    for h in s.get("archive", ()):
        lines.append(f"history {h['capture_session_id']}  seqs {h['first_seq']}-{h['last_seq']}  events {h['events']}  "
                     f"recorded lost {h['gaps']}" + ("  (this ring's session)" if h["this_ring"] else ""))
    return "\n".join(lines + group_lines(s.get("groups", [])))


def cmd_stat(args) -> int:
    from ..archive import Archive
    from ..stats import ring_stats

    stop = _stop_on_signals()
    history = None if args.archive is None else [msgspec.to_builtins(h) for h in Archive(args.archive).sessions()]
    last = None
    while True:
        try:
            s = ring_stats(args.name, sample_s=0.25, accelerator=True)
            if history is not None:
                s["archive"] = [dict(h, this_ring=h["capture_session_id"] == s["capture_session_id"]) for h in history]
        except RingNotFound:
            if last is None:
                raise
            # --watch: the ring went away. A clean close removes it; so does `shmring gc` after a writer died.
            if not last["closed"] and not last["writer"]["alive"]:
                raise RingNotFound(f"ring {args.name!r} was removed after its writer died") from None
            s = None
        if s is not None:
            if args.json:
                print(json.dumps(s), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\033[H\033[J", end="")
                print(_stat_table(s), flush=True)
        if args.watch and (s is None or s["closed"]):
            if not args.json:
                print(f"ring {args.name!r} closed", flush=True)
            return 0
        last = s
        if not args.watch or stop.wait(1.0):
            return 0


def cmd_ls(args) -> int:
    from ..stats import list_rings

    rows = list_rings()
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no rings on this machine")
        return 0
    print(f"{'name':40} {'writer':>8} {'state':6} {'latest seq':>12} {'readers':>8}")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:40} {row['error']}")
            continue
        w = row["writer"]
        print(f"{row['name']:40} {w['pid']:>8} {'alive' if w['alive'] else 'DEAD':6} {row['latest_seq']:>12} "
              f"{row['readers']:>8}")
    return 0


def cmd_gc(args) -> int:
    from ..cleanup import collect_garbage
    from ..segment import list_ring_names, orphaned_ring_names, ring_not_found

    names = args.names
    present = set(list_ring_names()) | set(orphaned_ring_names()) if names else set()
    removed = collect_garbage(names or None)
    for name in removed:
        print(f"removed {name}")
    if not names:
        if not removed:
            print("nothing to remove: every ring has a live writer")
        return 0
    for name in names:
        if name in present and name not in removed:
            print(f"kept {name}: its writer is alive")
    missing = [name for name in names if name not in present]
    if missing:  # the others are judged already: the first unknown name is the error
        raise ring_not_found(missing[0])
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("stat", help="show a ring's writer, readers, cursors, lag and drops")
    s.add_argument("name", type=_ring_name, help=NAME_HELP)
    s.add_argument("--json", action="store_true", help="one JSON object (a line per refresh with --watch)")
    s.add_argument("--watch", action="store_true",
                   help="refresh every second; exit 0 once the ring is closed")
    s.add_argument("--archive", metavar="DIR",
                   help="also list the capture sessions in this flusher directory (read once), oldest first")
    s.set_defaults(func=cmd_stat)

    s = sub.add_parser("ls", help="list the rings on this machine")
    s.add_argument("--json", action="store_true", help="a JSON list, one object per ring")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("gc", help="remove rings whose writer is dead")
    s.add_argument("names", nargs="*", metavar="NAME", type=_ring_name,
                   help="judge only these rings (default: every ring on the machine)")
    s.set_defaults(func=cmd_gc)
