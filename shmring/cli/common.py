"""What the command's families share: the one-line error, signal handling, argument types, the parser and help.

Rules:
- ``_err`` is how every command says what went wrong: one line, ``shmring: what is wrong; what to do``.
- Every ring NAME argument is ``type=_ring_name``: checked by ``validate_ring_name`` as it is parsed, so each
  command refuses a bad name alike. The other types here refuse bad values the same way (a one-line usage error).
- Every parser is a ``_Parser``: bad arguments are one line, and ``_HelpFormatter`` adds defaults and choices.
"""

import argparse
import signal
import sys
import threading

from ..errors import ConfigError
from ..segment import validate_ring_name


def _err(message: str) -> None:
    print(f"shmring: {message}", file=sys.stderr, flush=True)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _sigwait_stop(signals: set) -> threading.Event:
    """An event set by `signals`, taken by a thread in sigwait, not by a handler: a handler
    would interrupt the reader's semaphore wait with an error."""
    stop = threading.Event()
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    threading.Thread(target=lambda: (signal.sigwait(signals), stop.set()), daemon=True).start()
    return stop


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
GROUP_READABLE_HELP = "create the log directory 0750 and its files 0640 (default 0700 and 0600)"
CATEGORIES_HELP = "capture only these categories, comma-separated (console, network, page, interaction); default: all"
