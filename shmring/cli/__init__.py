"""The ``shmring`` command: serve, capture-cdp, producer, publish, tail, replay, stat, ls, gc, flush, forward,
doctor, demo.

Rules:
- The only module that prints or exits.
- Every failure is one line on stderr (``shmring: what is wrong; what to
  do``) and a non-zero status, never a traceback.
- Every ring NAME argument is checked by ``validate_ring_name`` as it is
  parsed (``type=_ring_name``), so each command refuses a bad name alike.
- ``tail`` works in pipelines: a closed stdout ends it quietly, as do
  SIGINT and SIGTERM (status 0). Its ``--type`` and ``--grep`` select on
  the consumer side: what they leave out is delivered to tail, never a drop.
- Every option has a help text; the formatter adds its default and choices.
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

from .. import __version__
from ..edge import add_edge_arguments, edge_config_from_args
from ..errors import ConfigError, RingClosed, RingNotFound, ShmringError, WriterGone
from ..flusher import FSYNC_POLICIES
from ..ingest import DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS
from ..layout import DETAIL_LEVELS, SOURCE_KINDS
from ..segment import validate_ring_name
from ..session import DEFAULT_CAPACITY, DEFAULT_DATA_BYTES, DEFAULT_FLUSHER_GRACE_S, DEFAULT_GATE_STALL_S

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
    from ..serve import serve

    http = edge_config_from_args(args, log_dir=args.log_dir)  # a one-line error before the ring exists
    stop = _stop_on_signals()

    def ready(session):
        parts = [f"serving ring {session.name!r}", f"capture session {session.capture_session_id}",
                 f"capacity {session.capacity}"]
        if session.first_seq > 1:
            parts.append(f"first seq {session.first_seq}")
        if args.socket:
            parts.append(f"socket {args.socket}")
        if args.log_dir:
            parts.append(f"logs in {args.log_dir}")
        if http:
            parts.append(f"HTTP on http://{http.address}/")
        _err(", ".join(parts))

    result = serve(
        args.name, stop=stop, socket_path=args.socket, log_dir=args.log_dir, fsync=args.fsync,
        group_readable=args.group_readable, log=_err,
        on_ready=ready, cdp_url=args.cdp, cdp_detail_level=args.cdp_detail_level,
        cdp_console_hook=False if args.cdp_console_via_inspector else None,
        cdp_categories=args.cdp_categories, cdp_enabled=not args.cdp_disabled,
        capacity=args.capacity, data_bytes=args.data_bytes,
        max_connections=args.max_connections, max_buffered_bytes=args.max_buffered_bytes, forward=args.forward,
        flusher_grace_s=args.flusher_grace_s, gate_stall_s=args.gate_stall_s, capture_session_id=args.session_id,
        resume=args.resume, http=http,
    )
    _err(f"ring {args.name!r} closed after {result['published']} events"
         + (f" (last seq {result['last_seq']})" if result["last_seq"] != result["published"] else "")
         + (f"; flusher exit status {result['flusher_status']}" if args.log_dir else ""))
    return 1 if args.log_dir and result["flusher_status"] != 0 else 0  # the logs may be incomplete


def cmd_edge(args) -> int:
    from ..httpd import run_edge

    run_edge(edge_config_from_args(args, socket_path=args.socket, log_dir=args.log_dir))
    return 0


def cmd_capture_cdp(args) -> int:
    from ..cdp import capture
    from ..producer_config import CATEGORIES, ProducerConfig

    stop = _stop_on_signals()
    config = ProducerConfig(not args.disabled, CATEGORIES if args.categories is None else args.categories,
                            args.detail_level)
    capture(args.cdp, args.socket, stop=stop, name=args.name, log=_err, console_hook=args.console_hook,
            config=config, control_fd=args.control_fd)
    return 0


def cmd_producer(args) -> int:
    from ..control import get_config, set_config
    from ..producer_config import parse_categories

    patch = {k: v for k, v in (("enabled", args.enable), ("detail_level", args.detail_level)) if v is not None}
    if args.categories is not None:
        patch["categories"] = list(parse_categories(args.categories))
    if not patch:
        print(json.dumps(get_config(args.name, args.producer).to_dict()))
        return 0
    change = set_config(args.name, patch, args.producer)
    for failed in change.failed:
        _err(f"target {failed['target_id']} ({failed['url'] or 'no url'}) did not take the change: {failed['error']}")
    print(json.dumps(change.new.to_dict()))
    return 0


def cmd_flush(args) -> int:
    from ..flusher import Flusher

    stop = _sigwait_stop({signal.SIGTERM})
    try:
        with Flusher(args.name, args.directory, fsync=args.fsync, max_file_bytes=args.max_file_bytes or None,
                     group_readable=args.group_readable) as flusher:
            stats = flusher.run(stop)
    except ShmringError as exc:
        _err(str(exc))  # the same line as every other shmring command gives
        return 1
    if stats["ending"] == "writer_gone":
        _flusher_err(f"the writer of {args.name!r} died; flushed up to seq {stats['last_seq']}")
    return 0


def _sigwait_stop(signals: set) -> threading.Event:
    """An event set by `signals`, taken by a thread in sigwait, not by a handler: a handler
    would interrupt the reader's semaphore wait with an error."""
    stop = threading.Event()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    threading.Thread(target=lambda: (signal.sigwait(signals), stop.set()), daemon=True).start()
    return stop


def cmd_forward(args) -> int:
    from ..forward import Forwarder

    stop = _sigwait_stop({signal.SIGTERM, signal.SIGINT})  # before the sink's client thread starts: it inherits
    with Forwarder(args.name, args.to, archive=args.archive, stream=args.stream, subject=args.subject,
                   maxlen=args.maxlen, log=_err) as forwarder:
        stats = forwarder.run(stop)
    if stats["ending"] == "writer_gone":
        _err(f"the writer of {args.name!r} died; forwarded up to seq {stats['position']}")
    return 0


def _flusher_err(message: str) -> None:
    print(f"shmring flusher: {message}", file=sys.stderr, flush=True)


def _add_flush_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", type=_ring_name, help=NAME_HELP)
    p.add_argument("directory", help="the log directory (created 0700 if missing)")
    p.add_argument("--fsync", choices=FSYNC_POLICIES, default="batch", help=FSYNC_HELP)
    p.add_argument("--max-file-bytes", type=_positive_int, metavar="N",
                   help="rotate a category's file when it would grow past N bytes (0 or absent: never)")
    p.add_argument("--group-readable", action="store_true", help=GROUP_READABLE_HELP)
    p.set_defaults(func=cmd_flush)


# -- publish ---------------------------------------------------------------------------
def cmd_publish(args) -> int:
    from ..producer import Producer

    failed = 0
    with Producer.connect(args.socket) as producer:
        numbered = []
        for number, line in enumerate(sys.stdin.buffer, 1):
            if line.strip():
                numbered.append((number, line.strip()))
            if len(numbered) >= 512:
                failed += _send(producer, numbered, args.print_seqs)
                numbered = []
        failed += _send(producer, numbered, args.print_seqs)
    return 1 if failed else 0


def _send(producer, numbered, print_seqs: bool) -> int:
    """Publish a batch of (line number, line); report rejects on stderr, seqs on stdout if asked; count rejects."""
    from ..producer import PublishRejected

    if not numbered:
        return 0
    rejected = []
    try:
        seqs = producer.publish_many([line for _, line in numbered])
    except PublishRejected as exc:
        seqs, rejected = exc.seqs, exc.rejected
    if print_seqs:
        sys.stdout.write("".join(f"{seq}\n" for seq in seqs if seq is not None))
        sys.stdout.flush()
    for index, message in rejected:
        print(f"line {numbered[index][0]}: {message}", file=sys.stderr)
    return len(rejected)


# -- tail --------------------------------------------------------------------------------
TAIL_MAX_DELAY_S = 0.005
"""tail's latency budget: what came in the last few ms is printed in one go."""


def _raise_stop(*_):
    # KeyboardInterrupt, not an exception of our own: posix_ipc lets only that
    # one out of an interrupted semaphore wait (others become its SignalError).
    raise KeyboardInterrupt


def cmd_tail(args) -> int:
    from ..reader import Filter, Reader
    from ..stats import ring_stats

    filt = None
    if args.category or args.detail_level or args.source_kind:
        filt = Filter(categories=args.category, detail_levels=args.detail_level, source_kinds=args.source_kind)
    sink = _TailSink(args, colour=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    after, backlog_to = (0 if args.from_start else args.after), None
    if args.lines:
        # The last N events: with no filter, start N before the latest; with
        # one, read what the ring holds and keep the last N that match.
        s = ring_stats(args.name)
        oldest = 1 if args.archive else s["oldest_seq"] or s["latest_seq"] + 1  # with an archive: all the history
        filtered = filt is not None or sink.selects
        after = oldest - 1 if filtered else max(oldest - 1, s["latest_seq"] - args.lines)
        backlog_to = s["latest_seq"] if filtered else None
    if args.group and args.lines:
        raise ConfigError("tail --group takes the group's events from where the group stands; -n does not apply")
    with Reader.attach(args.name, after_seq=after, filter=filt, archive=args.archive,
                       max_delay_s=TAIL_MAX_DELAY_S, group=args.group) as reader:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise_stop)
        try:
            if backlog_to is not None:
                sink.last(reader, args.lines, backlog_to)
            while records := reader.read_raw_many(timeout=0 if args.no_follow else None):
                for record in records:
                    sink.emit(record)
                sink.flush()
                if args.group:
                    reader.ack()  # each line printed is done
        except (RingClosed, KeyboardInterrupt):
            pass
        except WriterGone:
            sink.flush()
            _err(f"the writer of ring {args.name!r} died; everything it left was printed")
            return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # the reader closes undisturbed
            try:
                sink.flush()
            except BrokenPipeError:
                pass
    return 0


def cmd_replay(args) -> int:
    from ..archive import Archive
    from ..reader import Filter

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


class _TailSink:
    """tail's output: --type and --grep select (consumer side, never drops), --format renders, drops are told."""

    def __init__(self, args, colour: bool):
        from ..render import decode, parse_format, pretty_line

        self.out = sys.stdout.buffer
        self.format = parse_format(args.format)
        self.colour = colour
        self.types = tuple(args.type or ())
        self.grep = args.grep.encode() if args.grep is not None else None
        self.selects = bool(self.types) or self.grep is not None
        self.json_drops = args.json_drops
        self.decode = decode
        self.pretty_line = pretty_line

    def render(self, record) -> bytes | None:
        """The line for an event record (without its newline), or None if --type/--grep leave it out."""
        payload = record.payload
        if self.grep is not None and self.grep not in payload:
            return None
        if self.format == "json" and not self.types:
            return payload
        envelope = self.decode(payload)
        if self.types and not str((envelope.get("event") or {}).get("type", "")).startswith(self.types):
            return None
        if self.format == "json":
            return payload
        if self.format == "pretty":
            return self.pretty_line(envelope, colour=self.colour).encode()
        return self.format.render(envelope).encode()

    def emit(self, record, line: bytes | None = None) -> None:
        if record.dropped:
            self.drop(record)
            return
        if line is None:
            line = self.render(record)
        if line is not None:
            self.out.write(line)
            self.out.write(b"\n")

    def drop(self, record) -> None:
        first, last = record.seq - record.dropped + 1, record.seq
        self.flush()
        span = f"seq {first}" if first == last else f"seq {first}-{last}"
        print(f"shmring: dropped {record.dropped} event{'s' if record.dropped != 1 else ''}, {span} (overwritten "
              "before this reader got them)", file=sys.stderr, flush=True)
        if self.json_drops:
            self.out.write(b'{"dropped":%d,"from_seq":%d,"to_seq":%d}\n' % (record.dropped, first, last))

    def last(self, reader, count: int, up_to_seq: int) -> None:
        """Read up to seq `up_to_seq` and print only the last `count` selected events (and drops among them)."""
        from collections import deque

        kept: deque = deque()  # (record, line); a drop's line is None
        events = 0
        try:
            while reader.cursor < up_to_seq and (records := reader.read_raw_many(timeout=0)):
                for record in records:
                    line = None if record.dropped else self.render(record)
                    if not record.dropped and line is None:
                        continue
                    kept.append((record, line))
                    events += not record.dropped
                    # Once N events are kept, what comes before the first of them is out of the window.
                    while events > count or (kept and kept[0][0].dropped and events >= count):
                        events -= not kept.popleft()[0].dropped
        finally:  # the end of the stream, too, prints what was kept
            for record, line in kept:
                self.emit(record, line)
            self.flush()

    def flush(self) -> None:
        self.out.flush()


# -- stat / ls / gc ------------------------------------------------------------------------
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

    removed = collect_garbage()
    for name in removed:
        print(f"removed {name}")
    if not removed:
        print("nothing to remove: every ring has a live writer")
    return 0


# -- demo ------------------------------------------------------------------------------------
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


def _categories(text: str) -> tuple[str, ...]:
    from ..producer_config import parse_categories

    try:
        return parse_categories(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


CATEGORIES_HELP = "capture only these categories, comma-separated (console, network, page, interaction); default: all"


def _format(text: str) -> str:
    from ..render import parse_format

    try:
        parse_format(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _HelpFormatter(argparse.HelpFormatter):
    """ArgumentDefaultsHelpFormatter's rule, plus: choices are listed when a metavar hides them.

    A flag's default (off) and a None default go unsaid: the help says what happens without the option.
    """

    def _get_help_string(self, action):
        help = action.help or ""
        if action.choices and action.metavar and not isinstance(action, argparse._SubParsersAction):
            help += " (choices: " + ", ".join(map(str, action.choices)) + ")"
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help and (
                action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)):
            help += " (default: %(default)s)"
        return help


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line too (subcommand parsers are made of this class); help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


NAME_HELP = "the ring's name: 1-100 letters, digits, '_', '-', '.', starting with a letter or digit"
FSYNC_HELP = "when the flusher fsyncs: every line, every 4096 lines or 100 ms, or never"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shmring", description="A shared-memory event broker for processes on one machine.")
    p.add_argument("--version", action="version", version=f"shmring {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these (`shmring COMMAND --help` for its options):")

    s = sub.add_parser("serve", help="run a ring's writer (with ingest socket and flusher)")
    s.add_argument("name", type=_ring_name, help=NAME_HELP)
    s.add_argument("--socket", metavar="PATH",
                   help="accept events from producers on this Unix socket (mode 0600); default: no socket")
    s.add_argument("--log-dir", metavar="DIR", help="run a flusher into DIR/<category>.jsonl; default: no flusher")
    s.add_argument("--capacity", type=_positive_int, default=DEFAULT_CAPACITY, metavar="N",
                   help="slots: the events the ring retains (a power of two)")
    s.add_argument("--data-bytes", type=_positive_int, default=DEFAULT_DATA_BYTES, metavar="N",
                   help="size of the data area holding the encoded envelopes (at least 1 MiB)")
    s.add_argument("--flusher-grace-s", type=float, default=DEFAULT_FLUSHER_GRACE_S, metavar="S",
                   help="how long publish waits for a dead flusher")
    s.add_argument("--gate-stall-s", type=float, default=DEFAULT_GATE_STALL_S, metavar="S",
                   help="how long publish and shutdown wait for a live flusher that takes nothing (stopped, hung "
                        "disk); then the writer goes on and the missed range becomes a recorded gap")
    s.add_argument("--fsync", choices=FSYNC_POLICIES, default="batch", help=FSYNC_HELP)
    s.add_argument("--group-readable", action="store_true", help=GROUP_READABLE_HELP)
    s.add_argument("--session-id", metavar="ID", help="capture session id (default: a new uuid4)")
    s.add_argument("--resume", action="store_true",
                   help="continue the newest capture session in --log-dir (its id, seqs after its last), first "
                        "draining a dead writer's ring of it into DIR; a new session if DIR holds none")
    s.add_argument("--cdp", metavar="URL", help="also capture the Chromium at URL (through --socket, else a private "
                                                "socket next to the ring); default: none")
    s.add_argument("--cdp-detail-level", choices=DETAIL_LEVELS, default="standard",
                   help="the --cdp producer's detail level (see capture-cdp --detail-level)")
    s.add_argument("--cdp-console-via-inspector", action="store_true",
                   help="capture console calls through Runtime.consoleAPICalled (see capture-cdp)")
    s.add_argument("--cdp-categories", type=_categories, metavar="C,...", help=f"the --cdp producer: {CATEGORIES_HELP}")
    s.add_argument("--cdp-disabled", action="store_true",
                   help="start the --cdp producer disabled (connected, capturing nothing) until `shmring producer NAME "
                        "cdp --enable`")
    s.add_argument("--max-connections", type=_positive_int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help="producers served at once on --socket; one more gets an error reply and is closed")
    s.add_argument("--max-buffered-bytes", type=_positive_int, default=DEFAULT_MAX_BUFFERED_BYTES, metavar="N",
                   help="bytes of partial lines held across all --socket connections; the connection that would "
                        "go over gets an error reply and is closed")
    s.add_argument("--forward", action="append", metavar="URL",
                   help="also run and supervise `shmring forward NAME --to URL` (repeatable; with --log-dir it reads "
                        "the backlog from there); default: none")
    add_edge_arguments(s, required=False)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("edge", help="serve a ring over HTTP (what serve --http runs), publishing through its socket")
    s.add_argument("name", type=_ring_name, help=NAME_HELP)
    s.add_argument("--socket", metavar="PATH", required=True, help="the socket of `shmring serve NAME --socket PATH`")
    s.add_argument("--log-dir", metavar="DIR", help="the ring's flusher directory: history beyond the ring")
    add_edge_arguments(s, required=True)
    s.set_defaults(func=cmd_edge)

    s = sub.add_parser("capture-cdp", help="publish a live Chromium's events (CDP) through a serve socket")
    s.add_argument("name", type=_ring_name, help="the ring (for messages; events go through --socket)")
    s.add_argument("--cdp", metavar="URL", required=True,
                   help="http://127.0.0.1:PORT or the browser's ws://.../devtools/browser/... URL")
    s.add_argument("--socket", metavar="PATH", required=True, help="the socket of `shmring serve NAME --socket PATH`")
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
    s.add_argument("--categories", type=_categories, metavar="C,...", help=CATEGORIES_HELP)
    s.add_argument("--disabled", action="store_true", help="start disabled: follow the targets, capture nothing")
    s.add_argument("--control-fd", type=_positive_int, metavar="FD",
                   help="a connected socket on which config changes arrive (serve --cdp passes it); default: none")
    s.set_defaults(func=cmd_capture_cdp)

    s = sub.add_parser("producer", help="show or change the config of the producer `serve NAME --cdp` runs")
    s.add_argument("name", type=_ring_name, help=NAME_HELP)
    s.add_argument("producer", choices=("cdp",), help="which producer")
    on = s.add_mutually_exclusive_group()
    on.add_argument("--enable", dest="enable", action="store_const", const=True, help="capture again")
    on.add_argument("--disable", dest="enable", action="store_const", const=False,
                    help="capture nothing; the browser connection and its targets are kept")
    s.add_argument("--categories", metavar="C,...", help=CATEGORIES_HELP.replace("; default: all", ""))
    s.add_argument("--detail-level", metavar="L",
                   help="minimal, standard, verbose (headers, stacks) or raw (CDP params)")
    s.set_defaults(func=cmd_producer)

    s = sub.add_parser("publish", help="send JSON Event lines from stdin to a serve socket")
    s.add_argument("--socket", metavar="PATH", required=True, help="the socket of `shmring serve NAME --socket PATH`")
    s.add_argument("--print-seqs", action="store_true",
                   help="print each published event's seq on stdout, one per line in input order (a rejected line "
                        "gets none: it is reported on stderr)")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("tail", help="print a ring's envelopes as JSON lines (or pretty, or a template)")
    s.add_argument("name", type=_ring_name, help=NAME_HELP)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--from-start", action="store_true", help="start at seq 1 (or the oldest retained)")
    where.add_argument("--after", type=_positive_int, metavar="SEQ", help="start right after SEQ")
    where.add_argument("-n", "--lines", type=_positive_int, metavar="N",
                       help="start with the last N events (the last N that pass the filters), then follow; "
                            "default: only events published from now on")
    s.add_argument("--category", action="append", metavar="C",
                   help="only this category (repeat for several); default: all")
    s.add_argument("--detail-level", action="append", choices=DETAIL_LEVELS, metavar="L",
                   help="only this detail level (repeat for several); default: all")
    s.add_argument("--source-kind", action="append", choices=SOURCE_KINDS, metavar="K",
                   help="only this source kind (repeat for several); default: all")
    s.add_argument("--type", action="append", metavar="PREFIX",
                   help="only events whose type starts with PREFIX, e.g. network. (repeat for several); default: all")
    s.add_argument("--grep", metavar="TEXT",
                   help="only events whose envelope JSON (as --format json prints it) contains TEXT; default: all")
    s.add_argument("--format", type=_format, default="json", metavar="FORMAT",
                   help="json (the envelope as the writer encoded it), pretty (one line: time, seq, category, type, "
                        "url, data preview; coloured on a terminal unless NO_COLOR is set), or a template of field "
                        "paths such as '{seq} {event.type} {event.data.url}' (see the README)")
    s.add_argument("--json-drops", action="store_true",
                   help='also print each drop on stdout, as {"dropped":N,"from_seq":A,"to_seq":B}')
    s.add_argument("--no-follow", action="store_true", help="exit once caught up")
    s.add_argument("--archive", metavar="DIR",
                   help="the ring's flusher directory: what the ring no longer holds is read from its files, then "
                        "tail goes on in the ring (replay-merge); default: none")
    s.add_argument("--group", metavar="G", help="join consumer group G: print only the events this member claims, "
                   "acknowledging each line printed (a new group starts as --from-start/--after say)")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser("replay", help="print a flusher directory's envelopes as JSON lines, in seq order")
    s.add_argument("directory", metavar="DIR", help="a flusher's log directory (serve --log-dir, shmring flush)")
    s.add_argument("--sessions", action="store_true", help="list the capture sessions in DIR, oldest first")
    s.add_argument("--session", metavar="ID", help="the capture session (default: the newest)")
    s.add_argument("--after", type=_positive_int, default=0, metavar="SEQ", help="start right after SEQ")
    s.add_argument("--until", type=_positive_int, metavar="SEQ", help="stop after SEQ")
    s.add_argument("--category", action="append", metavar="C", help="only this category (repeatable); default: all")
    s.add_argument("--detail-level", action="append", choices=DETAIL_LEVELS, metavar="L",
                   help="only events at this detail level (repeatable); default: all")
    s.add_argument("--source-kind", action="append", choices=SOURCE_KINDS, metavar="K",
                   help="only events from this source kind (repeatable); default: all")
    s.set_defaults(func=cmd_replay)

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
    s.set_defaults(func=cmd_gc)

    s = sub.add_parser("flush", help="tail a ring into DIR/<category>.jsonl")
    _add_flush_arguments(s)

    s = sub.add_parser("forward", help="forward a ring into Redis Streams or NATS JetStream, exactly once per seq")
    s.add_argument("name", type=_ring_name, help=NAME_HELP)
    s.add_argument("--to", required=True, metavar="URL", help="redis://HOST:PORT/DB or nats://HOST:PORT")
    s.add_argument("--archive", metavar="DIR", help="a flusher's directory, read when the ring no longer holds "
                   "the next seq (replay-merge); default: the ring only, losses become gap markers")
    s.add_argument("--stream", metavar="S", help="the Redis stream key (default shmring:NAME) or the JetStream "
                   "stream (default shmring-NAME, created if missing)")
    s.add_argument("--subject", metavar="S", help="the NATS subject (default shmring.NAME)")
    s.add_argument("--maxlen", type=_positive_int, metavar="N", help="trim the Redis stream with MAXLEN ~ N; "
                   "default: never")
    s.set_defaults(func=cmd_forward)

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
    except ShmringError as exc:  # RingNotFound included: its message says how to list and start rings
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
