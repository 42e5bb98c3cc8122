"""The ``shmring`` command: serve, publish, tail, replay, stat, ls, gc, flush, demo.

Rules:
- The only module that prints or exits.
- Every failure is one line on stderr (``shmring: what is wrong; what to
  do``) and a non-zero status, never a traceback.
- Every ring NAME argument is checked by ``validate_ring_name`` as it is
  parsed (``type=_ring_name``), so each command refuses a bad name alike.
- ``tail`` works in pipelines: a closed stdout ends it quietly, as do
  SIGINT and SIGTERM (status 0).
- ``serve --log-dir`` exits non-zero if its flusher did not end cleanly:
  the log files may then be incomplete.
"""

import argparse
import json
import os
import signal
import sys
import threading

import msgspec

from . import __version__
from .errors import ConfigError, RingClosed, RingNotFound, ShmringError, WriterGone
from .flusher import FSYNC_POLICIES
from .ingest import DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS
from .layout import DETAIL_LEVELS, SOURCE_KINDS
from .segment import validate_ring_name
from .session import DEFAULT_CAPACITY, DEFAULT_DATA_BYTES, DEFAULT_FLUSHER_GRACE_S, DEFAULT_GATE_STALL_S

__all__ = ["main"]

GROUP_READABLE_HELP = "create the log directory 0750 and its files 0640 (default 0700 and 0600)"


def _err(message: str) -> None:
    print(f"shmring: {message}", file=sys.stderr, flush=True)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


# -- serve / flush -------------------------------------------------------------------
def cmd_serve(args) -> int:
    from .serve import serve

    stop = _stop_on_signals()

    def ready(session):
        parts = [f"serving ring {session.name!r}", f"capture session {session.capture_session_id}",
                 f"capacity {session.capacity}"]
        if args.socket:
            parts.append(f"socket {args.socket}")
        if args.log_dir:
            parts.append(f"logs in {args.log_dir}")
        _err(", ".join(parts))

    result = serve(
        args.name, stop=stop, socket_path=args.socket, log_dir=args.log_dir, fsync=args.fsync,
        group_readable=args.group_readable, log=_err,
        on_ready=ready, cdp_url=args.cdp, cdp_detail_level=args.cdp_detail_level,
        cdp_console_hook=False if args.cdp_console_via_inspector else None,
        capacity=args.capacity, data_bytes=args.data_bytes,
        max_connections=args.max_connections, max_buffered_bytes=args.max_buffered_bytes,
        flusher_grace_s=args.flusher_grace_s, gate_stall_s=args.gate_stall_s, capture_session_id=args.session_id,
    )
    _err(f"ring {args.name!r} closed after {result['published']} events"
         + (f"; flusher exit status {result['flusher_status']}" if args.log_dir else ""))
    return 1 if args.log_dir and result["flusher_status"] != 0 else 0  # the logs may be incomplete


def cmd_capture_cdp(args) -> int:
    from .cdp import capture

    stop = _stop_on_signals()
    capture(args.cdp, args.socket, stop=stop, detail_level=args.detail_level, name=args.name, log=_err,
            console_hook=args.console_hook)
    return 0


def cmd_flush(args) -> int:
    from .flusher import Flusher

    stop = threading.Event()
    # SIGTERM is taken by a thread in sigwait, not by a handler: a handler
    # would interrupt the reader's semaphore wait with an error.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=lambda: (signal.sigwait({signal.SIGTERM}), stop.set()), daemon=True).start()
    try:
        with Flusher(args.name, args.directory, fsync=args.fsync, max_file_bytes=args.max_file_bytes or None,
                     group_readable=args.group_readable) as flusher:
            stats = flusher.run(stop)
    except ShmringError as exc:
        _flusher_err(str(exc))
        return 1
    if stats["ending"] == "writer_gone":
        _flusher_err(f"the writer of {args.name!r} died; flushed up to seq {stats['last_seq']}")
    return 0


def _flusher_err(message: str) -> None:
    print(f"shmring flusher: {message}", file=sys.stderr, flush=True)


def _add_flush_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", type=_ring_name)
    p.add_argument("directory")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="batch")
    p.add_argument("--max-file-bytes", type=_positive_int, metavar="N",
                   help="rotate a category's file when it would grow past N bytes (0 or absent: never)")
    p.add_argument("--group-readable", action="store_true", help=GROUP_READABLE_HELP)
    p.set_defaults(func=cmd_flush)


# -- publish ---------------------------------------------------------------------------
def cmd_publish(args) -> int:
    from .producer import Producer

    failed = 0
    with Producer.connect(args.socket) as producer:
        numbered = []
        for number, line in enumerate(sys.stdin.buffer, 1):
            if line.strip():
                numbered.append((number, line.strip()))
            if len(numbered) >= 512:
                failed += _send(producer, numbered)
                numbered = []
        failed += _send(producer, numbered)
    return 1 if failed else 0


def _send(producer, numbered) -> int:
    from .producer import PublishRejected

    if not numbered:
        return 0
    try:
        producer.publish_many([line for _, line in numbered])
    except PublishRejected as exc:
        for index, message in exc.rejected:
            print(f"line {numbered[index][0]}: {message}", file=sys.stderr)
        return len(exc.rejected)
    return 0


# -- tail --------------------------------------------------------------------------------
TAIL_MAX_DELAY_S = 0.005
"""tail's latency budget: what came in the last few ms is printed in one go."""


def _raise_stop(*_):
    # KeyboardInterrupt, not an exception of our own: posix_ipc lets only that
    # one out of an interrupted semaphore wait (others become its SignalError).
    raise KeyboardInterrupt


def cmd_tail(args) -> int:
    from .reader import Filter, Reader

    filt = None
    if args.category or args.detail_level or args.source_kind:
        filt = Filter(categories=args.category, detail_levels=args.detail_level, source_kinds=args.source_kind)
    after = 0 if args.from_start else args.after
    out = sys.stdout.buffer
    with Reader.attach(args.name, after_seq=after, filter=filt, max_delay_s=TAIL_MAX_DELAY_S) as reader:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise_stop)
        try:
            while records := reader.read_raw_many(timeout=0 if args.no_follow else None):
                for record in records:
                    if record.dropped:
                        out.flush()
                        print(f"shmring: dropped {record.dropped} events (overwritten before this reader got them)",
                              file=sys.stderr, flush=True)
                    else:
                        out.write(record.payload)
                        out.write(b"\n")
                out.flush()
        except (RingClosed, KeyboardInterrupt):
            pass
        except WriterGone:
            out.flush()
            _err(f"the writer of ring {args.name!r} died; everything it left was printed")
            return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # the reader closes undisturbed
            try:
                out.flush()
            except BrokenPipeError:
                pass
    return 0


def cmd_replay(args) -> int:
    from .archive import Archive
    from .reader import Filter

    archive = Archive(args.directory)
    if args.sessions:
        for s in archive.sessions():
            print(f"{s.capture_session_id}  seqs {s.first_seq}-{s.last_seq}  events {s.events}  "
                  f"recorded lost {s.gaps}")
        return 0
    filt = None
    if args.category or args.detail_level or args.source_kind:
        filt = Filter(categories=args.category, detail_levels=args.detail_level, source_kinds=args.source_kind)
    out = sys.stdout.buffer
    for record in archive.read_raw(args.session, after_seq=args.after, until_seq=args.until, filter=filt):
        if record.dropped:
            out.flush()
            first = record.seq - record.dropped + 1
            print(f"shmring: dropped {record.dropped} events (seqs {first}-{record.seq} are not in the files)",
                  file=sys.stderr, flush=True)
        else:
            out.write(record.payload)
            out.write(b"\n")
    out.flush()
    for path, offset in archive.torn_lines:
        _err(f"skipped a torn line at byte {offset} of {path}")
    return 0


# -- stat / ls / gc ------------------------------------------------------------------------
def _stat_table(s: dict) -> str:
    writer = s["writer"]
    rate = "-" if s["publish_rate"] is None else f"{s['publish_rate']:,.0f}/s"
    lines = [
        f"ring {s['name']}  capture session {s['capture_session_id']}{'  (closed)' if s['closed'] else ''}",
        f"writer pid {writer['pid']} {'alive' if writer['alive'] else 'DEAD'}  capacity {s['capacity']}  "
        f"latest seq {s['latest_seq']}  oldest seq {s['oldest_seq'] if s['oldest_seq'] is not None else '-'}  "
        + (f"first seq {s['first_seq']}  " if s["first_seq"] > 1 else "")
        + f"publish rate {rate}",
    ]
    if s["readers"]:
        lines.append(f"{'role':8} {'pid':>8} {'state':6} {'cursor':>12} {'lag':>10} {'delivered':>12} "
                     f"{'dropped':>10} {'filtered':>10}")
        for r in s["readers"]:
            lines.append(f"{r['role']:8} {r['pid']:>8} {'alive' if r['alive'] else 'DEAD':6} {r['cursor']:>12} "
                         f"{r['lag']:>10} {r['delivered']:>12} {r['dropped']:>10} {r['filtered']:>10}")
    else:
        lines.append("no readers attached")
    return "\n".join(lines)


def cmd_stat(args) -> int:
    from .stats import ring_stats

    stop = _stop_on_signals()
    while True:
        s = ring_stats(args.name, sample_s=0.25)
        if args.json:
            print(json.dumps(s), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[H\033[J", end="")
            print(_stat_table(s), flush=True)
        if not args.watch or stop.wait(1.0):
            return 0


def cmd_ls(args) -> int:
    from .stats import list_rings

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
    from .cleanup import collect_garbage

    removed = collect_garbage()
    for name in removed:
        print(f"removed {name}")
    if not removed:
        print("nothing to remove: every ring has a live writer")
    return 0


# -- demo ------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import READERS, run_demo

    if args.chromium and not args.browser:
        raise ConfigError("--chromium PATH chooses the browser of --browser: add --browser")
    chromium = None
    if args.browser:
        from .cdp.browser import resolve_chromium

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


# -- parser ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _ring_name(text: str) -> str:
    try:
        return validate_ring_name(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line too (subcommand parsers are made of this class)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shmring", description="A shared-memory event broker for processes on one machine.")
    p.add_argument("--version", action="version", version=f"shmring {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run a ring's writer (with ingest socket and flusher)")
    s.add_argument("name", type=_ring_name)
    s.add_argument("--socket", metavar="PATH", help="accept events from producers on this Unix socket (mode 0600)")
    s.add_argument("--log-dir", metavar="DIR", help="run a flusher into DIR/<category>.jsonl")
    s.add_argument("--capacity", type=_positive_int, default=DEFAULT_CAPACITY, help="slots (a power of two)")
    s.add_argument("--data-bytes", type=_positive_int, default=DEFAULT_DATA_BYTES, help="data area size")
    s.add_argument("--flusher-grace-s", type=float, default=DEFAULT_FLUSHER_GRACE_S,
                   help="how long publish waits for a dead flusher")
    s.add_argument("--gate-stall-s", type=float, default=DEFAULT_GATE_STALL_S,
                   help="how long publish and shutdown wait for a live flusher that takes nothing (stopped, hung "
                        "disk); then the writer goes on and the missed range becomes a recorded gap")
    s.add_argument("--fsync", choices=FSYNC_POLICIES, default="batch")
    s.add_argument("--group-readable", action="store_true", help=GROUP_READABLE_HELP)
    s.add_argument("--session-id", help="capture session id (default: a new uuid4)")
    s.add_argument("--cdp", metavar="URL", help="also capture the Chromium at URL (needs --socket)")
    s.add_argument("--cdp-detail-level", choices=DETAIL_LEVELS, default="standard")
    s.add_argument("--cdp-console-via-inspector", action="store_true",
                   help="capture console calls through Runtime.consoleAPICalled (see capture-cdp)")
    s.add_argument("--max-connections", type=_positive_int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help="producers served at once on --socket; one more gets an error reply and is closed "
                        f"(default {DEFAULT_MAX_CONNECTIONS})")
    s.add_argument("--max-buffered-bytes", type=_positive_int, default=DEFAULT_MAX_BUFFERED_BYTES, metavar="N",
                   help="bytes of partial lines held across all --socket connections; the connection that would "
                        f"go over gets an error reply and is closed (default {DEFAULT_MAX_BUFFERED_BYTES})")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("capture-cdp", help="publish a live Chromium's events (CDP) through a serve socket")
    s.add_argument("name", type=_ring_name, help="the ring (for messages; events go through --socket)")
    s.add_argument("--cdp", metavar="URL", required=True,
                   help="http://127.0.0.1:PORT or the browser's ws://.../devtools/browser/... URL")
    s.add_argument("--socket", metavar="PATH", required=True)
    s.add_argument("--detail-level", choices=DETAIL_LEVELS, default="standard",
                   help="how much goes into data: minimal, standard, verbose (headers, stacks), raw (CDP params)")
    console = s.add_mutually_exclusive_group()
    console.add_argument("--console-hook", dest="console_hook", action="store_const", const=True,
                         help="console calls through an in-page hook (the default below --detail-level raw): the "
                              "page runs at full speed, but its console calls no longer reach DevTools or other "
                              "CDP clients")
    console.add_argument("--console-via-inspector", dest="console_hook", action="store_const", const=False,
                         help="console calls through Runtime.consoleAPICalled (the default at raw): they still "
                              "reach DevTools, but Chromium's inspector slows a console-heavy page 2-3x")
    s.set_defaults(func=cmd_capture_cdp)

    s = sub.add_parser("publish", help="send JSON Event lines from stdin to a serve socket")
    s.add_argument("--socket", metavar="PATH", required=True)
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("tail", help="print a ring's envelopes as JSON lines")
    s.add_argument("name", type=_ring_name)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--from-start", action="store_true", help="start at seq 1 (or the oldest retained)")
    where.add_argument("--after", type=_positive_int, metavar="SEQ", help="start right after SEQ")
    s.add_argument("--category", action="append", metavar="C")
    s.add_argument("--detail-level", action="append", choices=DETAIL_LEVELS, metavar="L")
    s.add_argument("--source-kind", action="append", choices=SOURCE_KINDS, metavar="K")
    s.add_argument("--no-follow", action="store_true", help="exit once caught up")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser("replay", help="print a flusher directory's envelopes as JSON lines, in seq order")
    s.add_argument("directory", metavar="DIR")
    s.add_argument("--sessions", action="store_true", help="list the capture sessions in DIR, oldest first")
    s.add_argument("--session", metavar="ID", help="the capture session (default: the newest)")
    s.add_argument("--after", type=_positive_int, default=0, metavar="SEQ", help="start right after SEQ")
    s.add_argument("--until", type=_positive_int, metavar="SEQ", help="stop after SEQ")
    s.add_argument("--category", action="append", metavar="C")
    s.add_argument("--detail-level", action="append", choices=DETAIL_LEVELS, metavar="L")
    s.add_argument("--source-kind", action="append", choices=SOURCE_KINDS, metavar="K")
    s.set_defaults(func=cmd_replay)

    s = sub.add_parser("stat", help="show a ring's writer, readers, cursors, lag and drops")
    s.add_argument("name", type=_ring_name)
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="refresh every second")
    s.set_defaults(func=cmd_stat)

    s = sub.add_parser("ls", help="list the rings on this machine")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("gc", help="remove rings whose writer is dead")
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("flush", help="tail a ring into DIR/<category>.jsonl")
    _add_flush_arguments(s)

    s = sub.add_parser("demo", help="run everything for ten seconds on synthetic browser events")
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--rate", type=_positive_int, default=2000, help="events per second")
    s.add_argument("--dir", default="shmring-demo", help="where the flusher writes (default ./shmring-demo)")
    s.add_argument("--browser", action="store_true", help="real events from a headless Chromium on a local page")
    s.add_argument("--chromium", metavar="PATH",
                   help="the Chromium binary for --browser (default: $SHMRING_CHROMIUM, else /usr/bin/chromium)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def flusher_module_main() -> None:
    """``python -m shmring.flusher NAME DIR ...``: ``shmring flush`` under its old name; exits with its status."""
    p = _Parser(prog="python -m shmring.flusher", description="Tail ring NAME into DIR/<category>.jsonl until it "
                "closes (the same as `shmring flush`).")
    _add_flush_arguments(p)
    sys.exit(_run(p.parse_args()))


def _run(args) -> int:
    try:
        return args.func(args)
    except RingNotFound as exc:
        name = getattr(args, "name", None)
        _err(f"no ring {name!r} on this machine ({exc}); `shmring ls` lists the rings" if name else str(exc))
    except ShmringError as exc:
        _err(str(exc))
    except PermissionError as exc:
        _err(f"permission denied: {exc.filename or exc}; run as the ring's owner or choose another path")
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as exc:
        _err(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except msgspec.MsgspecError as exc:
        _err(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the rule is one line, never a traceback
        _err(f"{type(exc).__name__}: {exc}")
    return 1
