"""How ``shmring tail`` turns an envelope into a line: json, pretty, or a template. No I/O.

Rules:
- ``json`` is the writer's bytes as they are; the other formats decode the
  envelope once, to a plain dict of its JSON.
- A template is text with ``{field.path}`` placeholders: dot-separated keys
  of the envelope's JSON (``seq``, ``capture_session_id``, ``event.type``,
  ``event.data.url``), a number indexing a list (``event.data.args.0``).
  A missing field is empty; a string is inserted as it is, anything else as
  compact JSON. ``{{`` and ``}}`` are literal braces; ``\\t``, ``\\n`` and
  ``\\\\`` are a tab, a newline and a backslash.
- ``pretty`` is one line per event: local time, seq, category, type, the
  URL (the request's own ``data.url`` if there is one, else the page's
  ``url``) and a short preview of ``data``; coloured only when asked to (a
  terminal), never otherwise.
"""

import datetime
import re

import msgspec

from .errors import ConfigError

__all__ = ["Template", "parse_format", "pretty_line", "decode", "PREVIEW_CHARS"]

PREVIEW_CHARS = 80
"""How much of ``data`` the pretty line shows."""

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

_TOKEN = re.compile(r"\{\{|\}\}|\\[tn\\]|\{([^{}]*)\}|[{}]")
_FIELD = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\\\": "\\", "{{": "{", "}}": "}"}

_RESET = "\033[0m"
_DIM = "\033[2m"
_BOLD = "\033[1m"
_CATEGORY_COLOURS = {"console": "\033[33m", "network": "\033[36m", "page": "\033[32m", "interaction": "\033[35m",
                     "system": "\033[34m", "captcha": "\033[31m", "liveview": "\033[94m"}


def decode(payload: bytes) -> dict:
    """An envelope's JSON as a plain dict."""
    return _decoder.decode(payload)


class Template:
    """A compiled ``--format`` template: ``Template("{seq} {event.type}").render(envelope_dict)``."""

    __slots__ = ("text", "_parts")

    def __init__(self, text: str):
        self.text = text
        parts: list[str | tuple[str | int, ...]] = []
        position = 0
        for match in _TOKEN.finditer(text):
            if match.start() > position:
                parts.append(text[position:match.start()])
            token = match[0]
            if token in _ESCAPES:
                parts.append(_ESCAPES[token])
            elif match[1] is None:
                raise ConfigError(f"template {text!r} has an unmatched {token!r} at character {match.start() + 1}; "
                                  "write {{ or }} for a literal brace")
            elif not _FIELD.fullmatch(match[1]):
                raise ConfigError(f"template {text!r} has a bad field {token!r}: use dot-separated names or list "
                                  "indices, e.g. {event.data.url} or {event.data.args.0}")
            else:
                parts.append(tuple(int(p) if p.isdigit() else p for p in match[1].split(".")))
            position = match.end()
        if position < len(text):
            parts.append(text[position:])
        if not any(isinstance(p, tuple) for p in parts):
            raise ConfigError(f"--format {text!r} is neither json nor pretty, nor a template with a {{field}}; "
                              "for example '{seq} {event.type} {event.data.url}'")
        self._parts = parts

    def render(self, envelope: dict) -> str:
        out = []
        for part in self._parts:
            out.append(part if isinstance(part, str) else _text(_lookup(envelope, part)))
        return "".join(out)


def parse_format(text: str) -> str | Template:
    """``"json"``, ``"pretty"``, or a Template; ConfigError for a template that is not one."""
    return text if text in ("json", "pretty") else Template(text)


def _lookup(value, path: tuple[str | int, ...]):
    for key in path:
        if isinstance(value, dict):
            value = value.get(str(key))
        elif isinstance(value, list) and isinstance(key, int) and key < len(value):
            value = value[key]
        else:
            return None
    return value


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _encoder.encode(value).decode()


def pretty_line(envelope: dict, *, colour: bool = False) -> str:
    """One human line for an envelope: time, seq, category, type, url, a short data preview."""
    event = envelope.get("event") or {}
    data = event.get("data")
    ts = event.get("ts")
    when = (datetime.datetime.fromtimestamp(ts / 1e6).strftime("%H:%M:%S.%f")[:-3]
            if isinstance(ts, int) else "--:--:--.---")
    category = str(event.get("category", ""))
    url = data.get("url") if isinstance(data, dict) and isinstance(data.get("url"), str) else event.get("url", "")
    preview = "" if data is None else _text(data)
    if len(preview) > PREVIEW_CHARS:
        preview = preview[:PREVIEW_CHARS - 1] + "…"
    if event.get("truncated"):
        preview = "(data truncated)"
    fields = [when, f"{envelope.get('seq', '?'):>8}", f"{category:<11}", f"{event.get('type', ''):<24}", url or "",
              preview]
    if colour:
        tint = _CATEGORY_COLOURS.get(category, "")
        fields = [f"{_DIM}{fields[0]}{_RESET}", f"{_BOLD}{fields[1]}{_RESET}", f"{tint}{fields[2]}{_RESET}",
                  f"{tint}{_BOLD}{fields[3]}{_RESET}", f"\033[4m{fields[4]}{_RESET}" if fields[4] else "",
                  f"{_DIM}{fields[5]}{_RESET}" if fields[5] else ""]
    return " ".join(f for f in fields if f).rstrip()
