"""The portable event schema, its validation, and the size rule.

Rules:
- ``Event`` is producer content; ``Envelope`` adds what the write path assigns
  (``capture_session_id`` and ``seq``). Drops are never Events.
- JSON is compact, fields in declaration order, map keys sorted: byte for byte
  what Go's ``encoding/json`` writes for the same structs, except that Go also
  escapes ``<``, ``>`` and ``&`` inside strings (both decode to the same value).
- Fields Go tags ``omitempty`` are omitted when empty; ``ts`` and
  ``detail_level`` are always written, as in Go.
- ``prepare`` is the only place an Event is validated and normalised. It
  raises ``InvalidEvent`` and never modifies the caller's object.
- The Structs are not tracked by the cyclic garbage collector (msgspec's
  ``gc=False``): they hold strings, numbers, ``Raw`` and one another, never a
  cycle, and a reader makes several per event. An Event built with data that
  refers back to itself would never be freed; publish turns data into ``Raw``.
"""

import re
import time
from typing import Any, Literal

import msgspec
from msgspec import Raw

from .errors import ConfigError, EventTooLarge, InvalidEvent
from .layout import DETAIL_LEVELS, MAX_RECORD_BYTES, SESSION_ID_MAX_BYTES, SOURCE_KINDS
from .ring import hotpath

__all__ = [
    "Source",
    "Event",
    "Envelope",
    "SourceKind",
    "DetailLevel",
    "BUILTIN_CATEGORIES",
    "validate_category",
    "EventPreparer",
    "normalise_data",
    "encode_data",
    "NO_DATA",
    "encode_envelope",
    "decode_envelope",
    "decode_event",
]

SourceKind = Literal[SOURCE_KINDS]
DetailLevel = Literal[DETAIL_LEVELS]

BUILTIN_CATEGORIES = ("console", "network", "page", "interaction", "liveview", "captcha", "system")
CATEGORY_PATTERN = r"[a-z][a-z0-9_]{0,31}"
"""A category that is not built in must match this: it becomes a file name downstream."""
_CATEGORY_PATTERN = re.compile(CATEGORY_PATTERN)
_KNOWN_CATEGORIES_MAX = 4096

NO_DATA = Raw()
"""The default of ``Event.data``: no data. The identity matters: it is omitted."""
NULL_DATA = Raw(b"null")


def _zero() -> int:
    return 0


def _empty() -> str:
    return ""


class Source(msgspec.Struct, omit_defaults=True, gc=False):
    """Provenance: which producer emitted the event, in its own terms."""

    kind: SourceKind
    event: str = ""
    metadata: dict[str, str] = {}

    def __post_init__(self) -> None:
        # Go writes map keys sorted; keeping them sorted here makes any
        # msgspec encoder agree with it. Runs on every decode too, so the
        # common case (a key order seen before) is one set lookup.
        metadata = self.metadata
        if len(metadata) > 1 and tuple(metadata) not in _SORTED_KEY_ORDERS:
            _sort_metadata(self)

    if hotpath is not None:  # the same, compiled for the common case (a decode's Python call cost 90 ns)
        __post_init__ = hotpath.MetadataOrder(__post_init__)


_SORTED_KEY_ORDERS: set[tuple] = set()
_SORTED_KEY_ORDERS_MAX = 4096


def _sort_metadata(source: Source) -> None:
    metadata = source.metadata
    if type(metadata) is not dict:
        return  # rejected at publish
    keys = sorted(metadata)
    if list(metadata) != keys:
        source.metadata = {k: metadata[k] for k in keys}
    if len(_SORTED_KEY_ORDERS) < _SORTED_KEY_ORDERS_MAX:
        _SORTED_KEY_ORDERS.add(tuple(keys))


class Event(msgspec.Struct, omit_defaults=True, kw_only=True, gc=False):
    """One event as a producer emits it.

    ``ts`` is Unix microseconds (0: stamped at publish). ``data`` is raw JSON:
    give a ``msgspec.Raw``, bytes or str holding JSON, or any object msgspec
    can encode; publish turns it into compact ``Raw``.
    """

    # A default factory (not a plain default) keeps these in the JSON when
    # they hold their default, as Go does for fields without omitempty.
    ts: int = msgspec.field(default_factory=_zero)
    type: str
    category: str
    source: Source
    detail_level: Literal[DETAIL_LEVELS + ("",)] = msgspec.field(default_factory=_empty)
    url: str = ""
    data: Raw = NO_DATA
    truncated: bool = False


class Envelope(msgspec.Struct, gc=False):
    """An Event as published: the session it belongs to and its seq."""

    capture_session_id: str
    seq: int
    event: Event


def validate_category(category: object) -> str:
    if not isinstance(category, str) or (
        category not in BUILTIN_CATEGORIES and not _CATEGORY_PATTERN.fullmatch(category)
    ):
        raise InvalidEvent(
            f"invalid category {category!r}: use one of {', '.join(BUILTIN_CATEGORIES)}, "
            f"or a name matching {CATEGORY_PATTERN}"
        )
    return category


_KINDS = frozenset(SOURCE_KINDS)
_DETAILS = frozenset(DETAIL_LEVELS)
_compact = msgspec.json.format
_data_encoder = msgspec.json.Encoder()
encode_data = _data_encoder.encode
"""Event data that is not JSON text yet -> compact JSON bytes (what normalise_data uses)."""
_encoder = msgspec.json.Encoder(order="deterministic")
_envelope_decoder = msgspec.json.Decoder(Envelope)
_event_decoder = msgspec.json.Decoder(Event)


encode_envelope = _encoder.encode
"""Envelope -> compact JSON bytes (a bound method: no wrapper on the hot path)."""
decode_envelope = _envelope_decoder.decode
"""JSON bytes -> Envelope."""


def decode_event(data: bytes) -> Event:
    """Decode one JSON Event (ingest); raises InvalidEvent with the reason."""
    try:
        return _event_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"not a valid Event: {exc}") from None
    except RecursionError:
        raise InvalidEvent("not a valid Event: JSON nested too deeply") from None


def normalise_data(data: Any) -> Raw:
    """Validate and compact the event's data; NO_DATA when there is none."""
    if data is NO_DATA or data is None:
        return NO_DATA
    if isinstance(data, (Raw, bytes, bytearray, memoryview, str)):
        if len(data) == 0:
            return NO_DATA
        try:
            # Validates and strips insignificant whitespace, as Go's compact does.
            return Raw(_compact(data, indent=-1))
        except (msgspec.DecodeError, TypeError) as exc:
            raise InvalidEvent(f"event data is not valid JSON: {exc}") from None
    try:
        return Raw(encode_data(data))
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
        raise InvalidEvent(f"event data cannot be encoded as JSON: {exc}") from None


class EventPreparer:
    """Validates Events and fills in what publish defaults. One per writer."""

    def __init__(self) -> None:
        self._known_categories = set(BUILTIN_CATEGORIES)

    def prepare(self, event: Event) -> Event:
        """Return `event` validated, with ts, detail_level and data normalised.

        The caller's object is never modified: a copy is made if anything
        changes.
        """
        if type(event) is not Event:
            raise InvalidEvent(f"publish takes a shmring.Event, not {type(event).__name__}")
        etype = event.type
        if type(etype) is not str or not etype:
            raise InvalidEvent("event type must be a non-empty string, such as 'console.log'")
        if event.category not in self._known_categories:
            self._learn_category(event.category)
        source = event.source
        if type(source) is not Source:
            raise InvalidEvent(f"event source must be a shmring.Source, not {type(source).__name__}")
        if source.kind not in _KINDS:
            raise InvalidEvent(f"invalid source kind {source.kind!r}: use one of {', '.join(SOURCE_KINDS)}")
        if type(source.event) is not str:
            raise InvalidEvent("source event must be a string, such as 'Runtime.consoleAPICalled'")
        if source.metadata:
            _check_metadata(source.metadata)
        if type(event.url) is not str:
            raise InvalidEvent("event url must be a string")
        if type(event.truncated) is not bool:
            raise InvalidEvent("event truncated must be a bool")
        ts = event.ts
        detail = event.detail_level
        data = event.data
        if type(ts) is not int or not 0 < ts <= _MAX_TS or detail not in _DETAILS or data is not NO_DATA:
            if type(ts) is not int or not 0 <= ts <= _MAX_TS:
                raise InvalidEvent(
                    f"event ts must be Unix microseconds as an int from 0 to {_MAX_TS} (Go's int64), not {ts!r}"
                )
            if detail not in _DETAILS:
                if detail != "":
                    raise InvalidEvent(
                        f"invalid detail level {detail!r}: use one of {', '.join(DETAIL_LEVELS)}"
                    )
                detail = "standard"
            event = _replace(
                event,
                ts=ts or time.time_ns() // 1000,
                detail_level=detail,
                data=normalise_data(data),
            )
        return event

    def _learn_category(self, category: object) -> None:
        validate_category(category)
        if len(self._known_categories) < _KNOWN_CATEGORIES_MAX:
            self._known_categories.add(category)


_replace = msgspec.structs.replace
_MAX_TS = 2**63 - 1


def _check_metadata(metadata: object) -> None:
    if type(metadata) is not dict:
        raise InvalidEvent("source metadata must be a dict of strings to strings")
    for key, value in metadata.items():
        if type(key) is not str or type(value) is not str:
            raise InvalidEvent(f"source metadata must map strings to strings; got {key!r}: {value!r}")


def apply_size_rule(envelope: Envelope) -> tuple[Envelope, bytes]:
    """Encode `envelope`; over the limit, drop its data as Go does, or raise."""
    encoded = _encoder.encode(envelope)
    if len(encoded) <= MAX_RECORD_BYTES:
        return envelope, encoded
    event = msgspec.structs.replace(envelope.event, data=NULL_DATA, truncated=True)
    envelope = Envelope(envelope.capture_session_id, envelope.seq, event)
    encoded = _encoder.encode(envelope)
    if len(encoded) > MAX_RECORD_BYTES:
        raise EventTooLarge(
            f"event is {len(encoded)} bytes encoded even without its data, over the "
            f"{MAX_RECORD_BYTES}-byte limit: shorten its url, type or source metadata",
            size_bytes=len(encoded), limit_bytes=MAX_RECORD_BYTES,
        )
    return envelope, encoded


def validate_capture_session_id(value: object) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > SESSION_ID_MAX_BYTES:
        raise ConfigError(f"capture_session_id must be a non-empty string of at most {SESSION_ID_MAX_BYTES} bytes")
    return value
