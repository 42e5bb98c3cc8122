"""``doctor``, ``demo``: what this installation can do here, and everything run together for a few seconds."""

import json
import os
import sys

from ..errors import ConfigError
from .common import _err, _positive_int


def cmd_doctor(args) -> int:
    from ..doctor import diagnose

    d = diagnose()
    if args.json:
        print(json.dumps(d))
        return 1 if d["problems"] else 0
    acc, shm, mm = d["accelerator"], d["dev_shm"], d["memory_model"]
    print(f"shmring {d['shmring']}, Python {d['python']} on {d['machine']}")
    if acc["in_use"]:
        print(f"accelerator: compiled and in use ({acc['path']})")
    else:
        print(f"accelerator: NOT in use, {acc['why_not']}. shmring runs in pure Python: the same behaviour, "
              "a slower writer")
    print(f"memory model: {mm['detail']}")
    if shm["free_bytes"] is None:
        print("/dev/shm: missing")
    else:
        mib = 1 << 20
        fits = "fits" if shm["default_ring_fits"] else ("does NOT fit: lower --capacity/--data-bytes, or give the "
                                                        "machine more shared memory (docker run --shm-size)")
        print(f"/dev/shm: {shm['free_bytes'] / mib:,.1f} MiB free of {shm['total_bytes'] / mib:,.1f} MiB; a default "
              f"ring ({shm['default_ring_bytes'] / mib:,.1f} MiB) {fits}")
    print("libraries: " + ", ".join(f"{name} {version or 'NOT INSTALLED'}" for name, version in d["libraries"].items()))
    for problem in d["problems"]:
        _err(problem)
    return 1 if d["problems"] else 0


def cmd_demo(args) -> int:
    from ..demo import READERS, run_demo

    if args.chromium and not args.browser:
        raise ConfigError("--chromium PATH chooses the browser of --browser: add --browser")
    chromium = None
    if args.browser:
        from ..cdp.browser import resolve_chromium

        chromium = resolve_chromium(args.chromium)  # a missing binary: one line before anything starts
    tty = sys.stdout.isatty()
    producer = ("headless Chromium on a local page (CDP)" if args.browser
                else f"synthetic browser producer ({args.rate}/s)")
    print(f"shmring demo: serve + {producer} + readers "
          f"[{'] ['.join(READERS)}] + flusher into {args.dir}/ for {args.seconds:.0f} s")

    def progress(p):
        parts = [f"{p['elapsed']:4.1f}s published {p['published']:>7}"]
        for r in p["readers"]:
            parts.append(f"{r['role']} {r['pid']}: {r['delivered']} delivered, {r['dropped']} dropped, lag {r['lag']}")
        line = " | ".join(parts)
        print(("\r" + line + "\033[K") if tty else line, end="" if tty else "\n", flush=True)

    summary = run_demo(seconds=args.seconds, rate=args.rate, directory=args.dir, progress=progress,
                       browser=args.browser, chromium=chromium)
    if tty:
        print()
    secs = summary["seconds"]
    print(f"\npublished {summary['published']} events in {secs:.1f} s ({summary['rate']:,.0f}/s), "
          f"capture session {summary['capture_session_id']}")
    for label, r in summary["readers"].items():
        print(f"  reader [{label}]: delivered {r['delivered']} ({r['delivered'] / secs:,.0f}/s), "
              f"dropped {r['dropped']}, filtered out {r['filtered']}")
    total = sum(summary["files"].values())
    print(f"  flusher: wrote {total} lines this run ({total / secs:,.0f}/s):")
    for file, lines in summary["files"].items():
        print(f"    {os.path.join(summary['directory'], file)}: {lines} lines")
    print(f"files are in {summary['directory']}/")
    if total != summary["published"] or summary["serve_status"] != 0:
        _err(f"expected {summary['published']} lines in the files, found {total} (serve status "
             f"{summary['serve_status']})")
        return 1
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("doctor", help="what this installation can do here: accelerator, memory model, /dev/shm space")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("demo", help="run everything for ten seconds on synthetic browser events")
    s.add_argument("--seconds", type=float, default=10.0, metavar="S", help="how long the demo runs")
    s.add_argument("--rate", type=_positive_int, default=2000, metavar="N",
                   help="events per second of the synthetic producer")
    s.add_argument("--dir", default="shmring-demo", metavar="DIR", help="where the flusher writes")
    s.add_argument("--browser", action="store_true", help="real events from a headless Chromium on a local page")
    s.add_argument("--chromium", metavar="PATH",
                   help="the Chromium binary for --browser (default: $SHMRING_CHROMIUM, else /usr/bin/chromium)")
    s.set_defaults(func=cmd_demo)
