"""``serve``, ``edge``, ``capture-cdp``, ``producer``: a ring's writer and what runs beside it.

Rules:
- ``serve --log-dir`` exits non-zero if its flusher did not end cleanly: the log files may then be incomplete.
- ``serve`` checks its HTTP settings before the ring exists: a bad one is a one-line error and no ring.
"""

import json

from ..edge import add_edge_arguments, edge_config_from_args
from ..flusher import FSYNC_POLICIES
from ..ingest import DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS
from ..layout import DETAIL_LEVELS
from ..session import DEFAULT_CAPACITY, DEFAULT_DATA_BYTES, DEFAULT_FLUSHER_GRACE_S, DEFAULT_GATE_STALL_S
from .common import (
    CATEGORIES_HELP, FSYNC_HELP, GROUP_READABLE_HELP, NAME_HELP, _categories, _err, _positive_int, _ring_name,
    _stop_on_signals,
)


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
    # Standalone, it serves the ring's control socket itself; under serve --cdp, serve does (--control-fd).
    capture(args.cdp, args.socket, stop=stop, name=args.name, log=_err, console_hook=args.console_hook,
            config=config, control_fd=args.control_fd, control_socket=args.control_fd is None)
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


def add_parsers(sub) -> None:
    # One add_argument per option, each with its own help: runs of these calls look alike from one command
    # family to the next (serve, edge, capture-cdp, producer here), but no two declare the same option.
    # Options that are the same wherever they appear take their type and help from cli/common.py.
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
    s.add_argument("name", type=_ring_name, help="the ring: events go through --socket; its control socket (`shmring "
                   "producer NAME cdp`) is served here unless serve passes --control-fd")
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

    s = sub.add_parser("producer", help="show or change the config of ring NAME's CDP producer (`serve NAME --cdp`, "
                       "or a standalone `capture-cdp NAME`)")
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
