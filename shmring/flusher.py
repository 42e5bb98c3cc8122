"""Flusher: tails a ring into one JSONL file per category, losing nothing.

Rules:
- It attaches as a *gating* reader: while it is attached, the writer never
  overwrites an event it has not written (a dead flusher is waited for only
  the writer's grace period).
- Each envelope goes to ``DIR/<category>.jsonl`` as the exact bytes the writer
  encoded plus a newline; a batch is one ``write`` per file, so lines are
  never split or interleaved. Files open lazily.
- Three cursors, in order: *taken* (read from the ring) >= *committed*
  (written to the files; the writer gates on it) >= *checkpoint* (fsynced;
  a restart trusts it). The checkpoint only advances after ``fsync``.
- A restart repairs a partial last line, treats lines written after the
  checkpoint as present (no duplicates), and resumes right after the
  checkpoint. Loss that cannot be avoided goes to ``DIR/_gaps.jsonl`` as one
  line per seq range, never silently, and never twice.
- Lines of another capture session never count as this session's.
- Every file operation goes through the checked directory (logdir.py):
  never through a symlink, never in a directory another user controls.
"""

import json
import os
import re
import threading
import time
from collections.abc import Iterable

import msgspec

from .errors import ConfigError, FlushError, RingClosed, ShmringError, WriterGone
from .header import open_ring_info
from .logdir import CHECKPOINT_FILE, CHECKPOINT_TMP, GAPS_FILE, LogDirectory, prepare_log_directory
from .reader import GatingReader
from .schema import CATEGORY_PATTERN, validate_category
from .segment import open_segment, ring_shm_name, validate_ring_name

__all__ = ["Flusher", "FlushStats", "FSYNC_POLICIES", "prepare_log_directory"]

FSYNC_POLICIES = ("always", "batch", "never")
BATCH_MAX_LINES = 4096
MAX_DELAY_S = 0.05
"""The flusher's latency budget: it takes what came in the last 50 ms in one go (see waiting.py), so it
wakes at most 20 times a second under load. A writer held back by the flusher's gate hurries it out of
that doze, so the budget never costs the writer throughput."""
STOP_CHECK_S = 1.0
"""With a stop event, how often an idle flusher looks at it."""
_LINE_HEAD = re.compile(rb'\{"capture_session_id":"((?:[^"\\]|\\.)*)","seq":(\d+),')
_ROTATED = re.compile(rf"({CATEGORY_PATTERN})\.(\d+)\.jsonl")


class FlushStats(dict):
    """What a run did: lines, gaps (events), ending ('closed', 'writer_gone', 'stopped'), last seq."""


class _CategoryFile:
    """The current file of one category, plus how many rotated files precede it."""

    __slots__ = ("directory", "category", "rotated", "fd", "size", "dirty")

    def __init__(self, directory: LogDirectory, category: str, rotated: int):
        self.directory = directory
        self.category = category
        self.rotated = rotated
        self.fd = None
        self.size = 0
        self.dirty = False

    @property
    def name(self) -> str:
        return f"{self.category}.jsonl"

    def rotated_name(self, number: int) -> str:
        return f"{self.category}.{number}.jsonl"

    def open(self) -> None:
        if self.fd is None:
            self.fd = self.directory.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        self.open()
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
            self.size += written
        self.dirty = True

    def sync(self) -> None:
        if self.fd is not None and self.dirty:
            os.fsync(self.fd)
            self.dirty = False

    def rotate(self) -> None:
        """Close the (synced) current file and rename it to the next number."""
        self.close()
        self.directory.rename_new(self.name, self.rotated_name(self.rotated + 1))
        self.rotated += 1
        self.size = 0

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Flusher:
    """Tails ring `name` into `directory`. Use ``run()``; close with ``close()``."""

    def __init__(
        self,
        name: str,
        directory: str | os.PathLike,
        *,
        fsync: str = "batch",
        fsync_every_lines: int = 4096,
        fsync_every_s: float = 0.1,
        max_file_bytes: int | None = None,
        group_readable: bool = False,
    ):
        if fsync not in FSYNC_POLICIES:
            raise ConfigError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        if type(fsync_every_lines) is not int or fsync_every_lines < 1:
            raise ConfigError(f"fsync_every_lines must be a positive int, not {fsync_every_lines!r}")
        if not isinstance(fsync_every_s, (int, float)) or fsync_every_s <= 0:
            raise ConfigError(f"fsync_every_s must be a positive number of seconds, not {fsync_every_s!r}")
        if max_file_bytes is not None and (type(max_file_bytes) is not int or max_file_bytes < 1):
            raise ConfigError(f"max_file_bytes must be None or a positive int, not {max_file_bytes!r}")
        self.directory = os.fspath(directory)
        self.fsync = fsync
        self.fsync_every_lines = 1 if fsync == "always" else fsync_every_lines
        self.fsync_every_s = fsync_every_s
        self.max_file_bytes = max_file_bytes
        self._dir = LogDirectory(self.directory, bool(group_readable))
        self._files: dict[bytes, _CategoryFile] = {}
        self._closed = False
        self._failed = False
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.lines_written = 0
        self.gap_events = 0
        self._reader = None
        try:
            self._recover(name)
        except BaseException:
            self._dir.close()
            raise

    # -- restart ------------------------------------------------------------------
    def _recover(self, name: str) -> None:
        """Read the checkpoint, repair the files, and attach right after the checkpoint."""
        # Read the session id from the header, without attaching: a plain
        # reader's claim could take over the entry of a dead flusher that the
        # writer still honours.
        mapping = open_segment(ring_shm_name(validate_ring_name(name)), writable=False)
        try:
            self.capture_session_id = session = open_ring_info(name, mapping).capture_session_id
        finally:
            mapping.close()
        # Every name is checked before anything is read, cut or written.
        categories = self._categories_on_disk(self._dir.check_entries())
        checkpoint = self._load_checkpoint()
        if checkpoint.get("capture_session_id") == session:
            self._checkpoint_seq = checkpoint["seq"]
            marks = checkpoint.get("files", {})
        else:
            self._checkpoint_seq = 0
            marks = {}
        present: set[int] = set()
        for category, rotated in categories.items():
            cat_file = _CategoryFile(self._dir, category, rotated)
            self._repair_partial_line(cat_file.name)
            self._files[category] = cat_file
            for file_name, offset in self._names_after_mark(cat_file, marks.get(category)):
                present.update(self._seqs_in(file_name, offset, session))
        # Only lines after the checkpoint matter: the reader resumes there.
        self._present = {seq for seq in present if seq > self._checkpoint_seq}
        self._repair_partial_line(GAPS_FILE)
        self._recorded_gaps = self._load_gaps(session)
        self._through = self._checkpoint_seq  # the last seq written to the files or recorded as a gap
        try:
            self._reader = GatingReader.attach(name, after_seq=self._checkpoint_seq, max_delay_s=MAX_DELAY_S)
        except ConfigError as exc:
            raise FlushError(
                f"{self.directory} holds seq {self._checkpoint_seq} of capture session {session}, but ring "
                f"{name!r} is behind it ({exc}); the ring was recreated with the same capture_session_id. "
                "Use a new directory or a new capture session id"
            ) from None

    def _load_checkpoint(self) -> dict:
        path = self._dir.join(CHECKPOINT_FILE)
        try:
            with self._dir.open_file(CHECKPOINT_FILE, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise FlushError(f"cannot read checkpoint {path}: {exc}; move it away to rescan the files") from None
        return data if isinstance(data, dict) and isinstance(data.get("seq"), int) else {}

    @staticmethod
    def _categories_on_disk(entries: list[str]) -> dict[str, int]:
        """category -> number of rotated files, for every category file among the directory's entries."""
        found: dict[str, int] = {}
        for entry in entries:
            if entry.startswith("_") or not entry.endswith(".jsonl"):
                continue
            rotated = _ROTATED.fullmatch(entry)
            if rotated:
                found[rotated[1]] = max(found.get(rotated[1], 0), int(rotated[2]))
            else:
                found.setdefault(entry[: -len(".jsonl")], 0)
        return {c: n for c, n in found.items() if re.fullmatch(CATEGORY_PATTERN, c)}

    def _repair_partial_line(self, name: str) -> None:
        """Cut a last line that a crash left without its newline."""
        try:
            with self._dir.open_file(name, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                block = 1 << 16
                end = size
                while end > 0:
                    start = max(0, end - block)
                    f.seek(start)
                    chunk = f.read(end - start)
                    cut = chunk.rfind(b"\n")
                    if cut != -1:
                        f.truncate(start + cut + 1)
                        return
                    end = start
                f.truncate(0)
        except FileNotFoundError:
            return

    @staticmethod
    def _names_after_mark(cat_file: _CategoryFile, mark: dict | None) -> Iterable[tuple[str, int]]:
        """(file name, offset) of every byte of this category written after the checkpoint."""
        first, offset = (1, 0) if mark is None else (mark.get("rotated", 0) + 1, mark.get("size", 0))
        for number in range(first, cat_file.rotated + 1):
            yield cat_file.rotated_name(number), offset
            offset = 0
        yield cat_file.name, offset if first > cat_file.rotated else 0

    def _seqs_in(self, name: str, offset: int, session: str) -> set[int]:
        try:
            with self._dir.open_file(name, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return set()
        encoded = msgspec.json.encode(session)[1:-1]  # as the writer encodes it (raw UTF-8, not \\u escapes)
        seqs = set()
        for line in data.splitlines():
            head = _LINE_HEAD.match(line)
            if head and head[1] == encoded:
                seqs.add(int(head[2]))
        return seqs

    def _load_gaps(self, session: str) -> list[tuple[int, int]]:
        """Seq ranges already recorded as lost for this session (never recorded twice)."""
        recorded = []
        try:
            with self._dir.open_file(GAPS_FILE, "rb") as f:
                for line in f:
                    try:
                        gap = json.loads(line)
                    except ValueError:
                        continue
                    if gap.get("capture_session_id") == session:
                        recorded.append((gap["from_seq"], gap["to_seq"]))
        except FileNotFoundError:
            pass
        return recorded

    # -- the loop -------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> FlushStats:
        """Flush until the ring is closed and drained, or until `stop` is set.

        Returns a FlushStats; raises FlushError on an I/O error (the
        checkpoint stays consistent, so a restart resumes without loss).
        """
        if self._closed:
            raise FlushError("this flusher is closed; create a new one")
        if self._failed:
            raise FlushError(
                "this flusher stopped on an error, and what it had read but not written is not in the files; "
                f"close it and create a new one, which resumes after the checkpoint (seq {self._checkpoint_seq})"
            )
        reader = self._reader
        read_raw_many = reader.read_raw_many
        batch_lines = min(BATCH_MAX_LINES, self.fsync_every_lines)
        files = self._files
        present = self._present
        ending = "stopped"
        batch: dict[str, list[bytes]] = {}
        try:
            while stop is None or not stop.is_set():
                lines = 0
                records = read_raw_many(batch_lines, self._wait_s(stop))
                while records:
                    for record in records:
                        seq = record.seq
                        if record.dropped:
                            self._write_batch(batch)  # commits up to the record before the drop
                            self._record_gap(seq - record.dropped + 1, seq)
                            self._through = seq
                            continue
                        self._through = seq
                        if present and seq in present:
                            present.discard(seq)
                            continue
                        pending = batch.get(record.category)
                        if pending is None:
                            pending = batch[record.category] = []
                            if record.category not in files:
                                self._open_category(record.category)
                        pending.append(record.payload)
                    lines += len(records)
                    if lines >= batch_lines:
                        break
                    records = read_raw_many(batch_lines - lines, 0)
                self._write_batch(batch)
                self._maybe_sync()
        except RingClosed:
            ending = "closed"
        except WriterGone:
            ending = "writer_gone"
        except OSError as exc:
            self._failed = True
            raise self._io_error(exc) from None
        except FlushError:
            self._failed = True
            raise
        try:
            self._write_batch(batch)
            self._sync_and_checkpoint()
        except OSError as exc:
            self._failed = True
            raise self._io_error(exc) from None
        return FlushStats(lines=self.lines_written, gap_events=self.gap_events, ending=ending,
                          last_seq=reader.cursor, capture_session_id=self.capture_session_id)

    def _wait_s(self, stop) -> float | None:
        if self._unsynced:
            return max(0.0, self.fsync_every_s - (time.monotonic() - self._last_sync))
        return STOP_CHECK_S if stop is not None else None

    def _open_category(self, name: str) -> None:
        try:
            validate_category(name)  # never trust a name from shared memory with the file system
        except ShmringError:
            raise FlushError(f"ring carries an invalid category {name!r}; refusing to create a file for it") from None
        self._files[name] = _CategoryFile(self._dir, name, 0)

    def _write_batch(self, batch: dict[str, list[bytes]]) -> None:
        """Write each category's lines with one write (one per file when rotating), then let the writer past them."""
        count = 0
        for category, payloads in batch.items():
            cat_file = self._files[category]
            if self.max_file_bytes is None:
                cat_file.write(b"\n".join([*payloads, b""]))
            else:
                self._write_rotating(cat_file, payloads)
            count += len(payloads)
        batch.clear()
        self.lines_written += count
        self._unsynced += count
        if self._through != self._reader.committed:
            self._reader.commit(self._through)

    def _write_rotating(self, cat_file: _CategoryFile, payloads: list[bytes]) -> None:
        """Write `payloads` as lines; rotate first whenever the next line would take the file over the limit
        (a file holds more only if it holds a single line)."""
        limit = self.max_file_bytes
        cat_file.open()
        start, size = 0, cat_file.size
        for end, payload in enumerate(payloads):
            if size and size + len(payload) + 1 > limit:
                if end > start:
                    cat_file.write(b"\n".join([*payloads[start:end], b""]))
                cat_file.sync()
                cat_file.rotate()
                start, size = end, 0
            size += len(payload) + 1
        cat_file.write(b"\n".join([*payloads[start:], b""]))

    def _record_gap(self, first: int, last: int) -> None:
        """Append the seqs in [first, last] that are neither in the files nor recorded yet."""
        present = [seq for seq in self._present if first <= seq <= last]
        self._present.difference_update(present)
        missing = _subtract(first, last, [(seq, seq) for seq in present] + self._recorded_gaps)
        if not missing:
            return
        now_us = time.time_ns() // 1000
        lines = b"".join(
            json.dumps({"capture_session_id": self.capture_session_id, "from_seq": a, "to_seq": b,
                        "dropped": b - a + 1, "ts": now_us}, separators=(",", ":")).encode() + b"\n"
            for a, b in missing
        )
        fd = self._dir.open(GAPS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            _write_all(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._recorded_gaps.extend(missing)
        self.gap_events += sum(b - a + 1 for a, b in missing)

    def _maybe_sync(self) -> None:
        if self._unsynced and (
            self._unsynced >= self.fsync_every_lines or time.monotonic() - self._last_sync >= self.fsync_every_s
        ):
            self._sync_and_checkpoint()

    def _sync_and_checkpoint(self) -> None:
        """fsync what was written, then advance the checkpoint."""
        if self.fsync != "never":
            for cat_file in self._files.values():
                cat_file.sync()
        self._write_checkpoint(self._reader.committed)
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def _write_checkpoint(self, seq: int) -> None:
        marks = {f.category: {"rotated": f.rotated, "size": f.size} for f in self._files.values()
                 if f.fd is not None or f.rotated or f.size}
        data = json.dumps({"capture_session_id": self.capture_session_id, "seq": seq, "files": marks},
                          separators=(",", ":")).encode()
        fd = self._dir.create_exclusive(CHECKPOINT_TMP)
        try:
            _write_all(fd, data)
            if self.fsync != "never":
                os.fsync(fd)
        finally:
            os.close(fd)
        self._dir.replace(CHECKPOINT_TMP, CHECKPOINT_FILE)
        self._checkpoint_seq = seq

    def _io_error(self, exc: OSError) -> FlushError:
        return FlushError(
            f"flushing to {self.directory} failed: {exc.strerror or exc} ({exc.filename or 'write'}). "
            f"Nothing after seq {self._checkpoint_seq} is trusted; fix the cause and restart the flusher, "
            "which resumes from there"
        )

    # -- lifecycle --------------------------------------------------------------------
    @property
    def checkpoint_seq(self) -> int:
        """The last seq known to be on disk."""
        return self._checkpoint_seq

    def close(self) -> None:
        """Close every file and detach from the ring. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for cat_file in self._files.values():
            cat_file.close()
        self._dir.close()
        if self._reader is not None:
            # After an error, the writer keeps waiting (its grace period) for
            # a restarted flusher to take over, as if this process had died.
            if self._failed:
                self._reader.abandon()
            else:
                self._reader.close()

    def __enter__(self) -> "Flusher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written: a short write (a full disk) is followed by the error."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _subtract(first: int, last: int, known: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges of [first, last] not covered by any (a, b) in `known`."""
    out = []
    start = first
    for a, b in sorted(known):
        if b < start or a > last:
            continue
        if a > start:
            out.append((start, a - 1))
        start = max(start, b + 1)
    if start <= last:
        out.append((start, last))
    return out


if __name__ == "__main__":
    # `python -m shmring.flusher NAME DIR ...` is `shmring flush NAME DIR ...`; only the CLI prints and exits.
    from .cli import flusher_module_main

    flusher_module_main()
