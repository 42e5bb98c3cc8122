"""shmring: a shared-memory event broker for processes on one machine.

One writer (``CaptureSession``) publishes ``Event``s into a named ring of
seqlocked slots; any number of ``Reader``s attach by name, each with its own
seq cursor, and learn exactly how many events they lost.
"""

from .archive import Archive
from .errors import (
    ConfigError,
    EventTooLarge,
    FlushError,
    IncompatibleRing,
    InvalidEvent,
    ProducerError,
    PublishRejected,
    ReaderClosed,
    RegistryFull,
    ResumeError,
    RingBusy,
    RingClosed,
    RingNotFound,
    ServeError,
    ShmringError,
    SocketPathError,
    UnsupportedPlatform,
    WriterGone,
)
from .producer import Producer
from .reader import Filter, RawRecord, Reader, ReadResult
from .schema import Envelope, Event, Source
from .session import CaptureSession

__all__ = [
    "Event",
    "Source",
    "Envelope",
    "CaptureSession",
    "Reader",
    "AsyncReader",
    "ReadResult",
    "RawRecord",
    "Filter",
    "Flusher",
    "Archive",
    "Producer",
    "PublishRejected",
    "ShmringError",
    "ConfigError",
    "SocketPathError",
    "InvalidEvent",
    "EventTooLarge",
    "RingNotFound",
    "RingBusy",
    "IncompatibleRing",
    "RingClosed",
    "ReaderClosed",
    "WriterGone",
    "RegistryFull",
    "UnsupportedPlatform",
    "FlushError",
    "ProducerError",
    "ServeError",
    "ResumeError",
]

__version__ = "0.1.0"


_LAZY = {"AsyncReader": "aio", "Flusher": "flusher"}
"""Imported on first use. AsyncReader: asyncio costs every process that never needs it ~50 ms to start.
Flusher: ``python -m shmring.flusher`` runs that module as ``__main__``, and runpy warns when importing the
package has already imported the module it is about to run."""


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
