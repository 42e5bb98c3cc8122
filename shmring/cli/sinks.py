"""``flush``, ``forward``: a ring carried into files, or into Redis Streams or NATS JetStream.

Rules:
- Their stop signals are taken by a thread in ``sigwait`` (``_sigwait_stop``), not by a handler: a handler would
  interrupt the reader's semaphore wait with an error.
- ``flush`` is also ``python -m shmring.flusher`` (``_add_flush_arguments`` builds both parsers).
"""

import argparse
import signal
import sys

from ..errors import ShmringError
from ..flusher import FSYNC_POLICIES
from .common import FSYNC_HELP, GROUP_READABLE_HELP, NAME_HELP, _err, _positive_int, _ring_name, _sigwait_stop


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


def add_parsers(sub) -> None:
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
