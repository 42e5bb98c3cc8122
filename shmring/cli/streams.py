"""``publish``, ``tail``, ``replay``: events in from stdin, out to stdout.

Rules:
- ``publish`` reports each rejected line on stderr by its line number and exits 1 if any was rejected.
- ``tail`` works in pipelines: a closed stdout ends it quietly, as do SIGINT and SIGTERM (status 0). Its ``--type``
  and ``--grep`` select on the consumer side: what they leave out is delivered to tail, never a drop.
- A drop is always told on stderr (and on stdout too with ``tail --json-drops``).
"""

import os
import signal
import sys

from ..errors import ConfigError, RingClosed, WriterGone
from ..layout import DETAIL_LEVELS, SOURCE_KINDS
from .common import NAME_HELP, _err, _format, _positive_int, _ring_name


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


def add_parsers(sub) -> None:
    # One add_argument per option, each with its own help: runs of these calls look alike from one command
    # family to the next (publish, tail, replay here), but no two declare the same option. Options that are the same
    # wherever they appear take their type and help from cli/common.py.
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
