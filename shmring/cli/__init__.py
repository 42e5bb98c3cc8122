"""The ``shmring`` command: serve, edge, capture-cdp, producer, publish, tail, replay, stat, ls, gc, flush,
forward, doctor, demo.

Rules:
- This package is the only place that prints or exits.
- One module per command family: ``serving`` (serve, edge, capture-cdp, producer), ``streams`` (publish, tail,
  replay), ``inspecting`` (stat, ls, gc), ``sinks`` (flush, forward), ``checking`` (doctor, demo); ``common``
  holds what they share. Each family module has ``add_parsers(sub)`` and its ``cmd_*`` functions;
  ``build_parser`` calls them in the order ``shmring --help`` lists the commands.
- Every failure is one line on stderr (``shmring: what is wrong; what to
  do``) and a non-zero status, never a traceback (``_run``).
- Every ring NAME argument is checked by ``validate_ring_name`` as it is
  parsed (``type=_ring_name``), so each command refuses a bad name alike.
- Every option has a help text; the formatter adds its default and choices.
"""

import argparse
import os
import sys

import msgspec

from .. import __version__
from ..errors import ShmringError
from . import checking, inspecting, serving, sinks, streams
from .common import _err, _Parser
from .sinks import _add_flush_arguments

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shmring", description="A shared-memory event broker for processes on one machine.")
    p.add_argument("--version", action="version", version=f"shmring {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these (`shmring COMMAND --help` for its options):")
    for family in (serving, streams, inspecting, sinks, checking):
        family.add_parsers(sub)
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
