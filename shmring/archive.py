"""Archive: a flusher's directory read back as history, without a ring.

Rules:
- Read only: nothing in the directory is ever written, cut or renamed. Every
  file is opened relative to the directory's fd with ``O_NOFOLLOW`` and
  ``O_NONBLOCK``; a symlink or non-regular file where a category file
  belongs is refused (ConfigError) before it is read.
- The files are the flusher's: ``<category>.N.jsonl`` (1 oldest, then 2, ...)
  then ``<category>.jsonl``, each line one envelope as the writer encoded it;
  ``_gaps.jsonl`` records seq ranges the flusher knows are lost. Lines of
  several capture sessions may interleave; a session's lines are told apart
  by the head of the line (``{"capture_session_id":"…","seq":N,``) without
  decoding it.
- ``read_raw``/``read`` give one session's events in seq order, merged across
  categories and rotated files, each seq once (a line whose seq is not above
  the last one delivered is a duplicate and is skipped).
- Drops, one record per contiguous range of lost seqs, in seq order:
  - without a category filter, every seq missing between two delivered (or
    filtered) events is a drop, whether ``_gaps.jsonl`` records it or not;
    before the first and after the last event present, only what
    ``_gaps.jsonl`` records (and torn lines) are drops: the files cannot say
    where a session started or ended;
  - with a category filter, other categories' seqs are invisible, so only
    recorded gaps and this category's torn lines are drops.
- A filtered-out event is not a drop. Detail-level and source-kind filters
  are judged on the event itself, category filters by the file.
- A torn line (the last line of a file without its newline, or a line that is
  not a whole envelope) is skipped and listed in ``torn_lines`` as
  ``(path, offset)``, never raised; its seq, when its head is whole, is lost.
  Raw reads check a line's head and closing brace, decoded reads its JSON.
- ``sessions()`` lists sessions oldest first, by the ``ts`` of each one's
  lowest-seq event in the files; a session with no line left (only gaps) is
  not listed. The newest session is the last listed.
- A directory a flusher is still writing is read as it is met: what the
  flusher writes (or rotates away) meanwhile may or may not be seen.
- Size: about 650 lines, over the project's ~600, for one concept: the walk
  over the files, its race with a flusher that writes and rotates them, and
  the exact drop accounting are one algorithm; its pure helpers sit at the end.
"""

import bisect
import errno
import heapq
import itertools
import json
import operator
import os
import re
import stat
from collections.abc import Callable, Iterator
from operator import itemgetter

import msgspec

from .errors import ConfigError
from .filters import Filter
from .logdir import CHECKPOINT_FILE
from .results import RawRecord, ReadResult, merge_ranges
from .schema import CATEGORY_PATTERN, decode_envelope

__all__ = ["Archive", "ArchiveSession"]

GAPS_FILE = "_gaps.jsonl"
CHUNK_BYTES = 1 << 20
_LINE_HEAD = re.compile(rb'\{"capture_session_id":"((?:[^"\\]|\\.)*)","seq":(\d+),')
_CATEGORY_FILE = re.compile(rf"({CATEGORY_PATTERN})(?:\.([1-9]\d*))?\.jsonl")
_CLOSE_BRACE = ord("}")
_NO_END = 1 << 63
_first = itemgetter(0)


class ArchiveSession(msgspec.Struct, frozen=True):
    """One capture session in a directory: the seqs its lines hold, and what `_gaps.jsonl` says it lost."""

    capture_session_id: str
    first_seq: int
    last_seq: int
    events: int
    """Distinct events in the files."""
    gaps: int
    """Events recorded as lost in ``_gaps.jsonl``."""


class _Ts(msgspec.Struct):
    ts: int = 0


class _TsOnly(msgspec.Struct):
    event: _Ts


class _Kind(msgspec.Struct):
    kind: str = ""


class _Judged(msgspec.Struct):
    source: _Kind
    detail_level: str = ""


class _JudgedOnly(msgspec.Struct):
    event: _Judged


_decode_ts = msgspec.json.Decoder(_TsOnly).decode
_decode_judged = msgspec.json.Decoder(_JudgedOnly).decode


class Archive:
    """History from a flusher's directory. Create with ``Archive(directory)``; nothing is held open between calls."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self._torn: dict[tuple[str, int], None] = {}
        self.duplicate_lines = 0
        """Lines skipped because their seq was already delivered (a robust reader's count; the flusher writes none)."""

    @property
    def torn_lines(self) -> list[tuple[str, int]]:
        """(path, byte offset) of every torn line met so far, each once, in the order met."""
        return list(self._torn)

    # -- sessions ------------------------------------------------------------------------
    def sessions(self) -> list[ArchiveSession]:
        """The capture sessions with lines in the directory, oldest first (see the module rules)."""
        dir_fd = self._open_directory()
        try:
            chains = self._chains(dir_fd)
            found: dict[bytes, list] = {}  # sid -> [first, last, events, first line, order]
            for chain in chains.values():
                last_in_chain: dict[bytes, int] = {}
                for name in chain:
                    for lines, base, block in self._chunks(dir_fd, name):
                        head = _LINE_HEAD.match(lines[0])
                        if head is not None and _all_start_with(block, lines, head[0][: -len(head[2]) - 1]):
                            # One session's whole lines (the common case): counted at C speed if they increase.
                            sid, plen = head[1], len(head[0]) - len(head[2]) - 1
                            seqs = [int(line[plen:line.find(b",", plen)]) for line in lines]
                            if seqs[0] > last_in_chain.get(sid, 0) and all(map(operator.lt, seqs, seqs[1:])):
                                last_in_chain[sid] = seqs[-1]
                                entry = found.get(sid)
                                if entry is None:
                                    found[sid] = [seqs[0], seqs[-1], len(seqs), lines[0], len(found)]
                                    continue
                                entry[2] += len(seqs)
                                if seqs[0] < entry[0]:
                                    entry[0], entry[3] = seqs[0], lines[0]
                                if seqs[-1] > entry[1]:
                                    entry[1] = seqs[-1]
                                continue
                        for line in lines:
                            head = _LINE_HEAD.match(line)
                            if head is None or line[-1] != _CLOSE_BRACE:
                                self._torn[(self._path(name), _offset_of(line, lines, base))] = None
                                continue
                            sid, seq = head.group(1, 2)
                            seq = int(seq)
                            if seq <= last_in_chain.get(sid, 0):
                                continue  # a duplicate
                            last_in_chain[sid] = seq
                            entry = found.get(sid)
                            if entry is None:
                                found[sid] = [seq, seq, 1, line, len(found)]
                                continue
                            entry[2] += 1
                            if seq < entry[0]:
                                entry[0], entry[3] = seq, line
                            elif seq > entry[1]:
                                entry[1] = seq
            gaps = self._all_gaps(dir_fd)
        finally:
            os.close(dir_fd)
        out = []
        for sid, (first, last, events, line, order) in found.items():
            session_id = msgspec.json.decode(b'"' + sid + b'"')
            try:
                ts = _decode_ts(line).event.ts
            except msgspec.DecodeError:
                ts = 0
            lost = sum(b - a + 1 for a, b in merge_ranges(gaps.get(session_id, [])))
            out.append(((ts, order), ArchiveSession(session_id, first, last, events, lost)))
        out.sort(key=lambda pair: pair[0])
        return [session for _, session in out]

    # -- reading ---------------------------------------------------------------------------
    def read(self, capture_session_id: str | None = None, *, after_seq: int = 0, until_seq: int | None = None,
             filter: Filter | None = None, _complete: bool = False) -> Iterator[ReadResult]:
        """The events of one session (the newest when None) after `after_seq` (up to `until_seq`), decoded;
        a drop is ``ReadResult(dropped=N, dropped_from=A, dropped_to=B)``, one per contiguous range lost."""
        keep = None
        if filter is not None and (filter.detail_levels is not None or filter.source_kinds is not None):
            detail_levels, source_kinds = filter.detail_levels, filter.source_kinds

            def keep(envelope) -> bool:
                event = envelope.event
                return ((detail_levels is None or event.detail_level in detail_levels)
                        and (source_kinds is None or event.source.kind in source_kinds))
        return self._walk(capture_session_id, after_seq, until_seq, filter, decode_envelope, keep,
                          lambda seq, category, envelope: ReadResult(envelope),
                          lambda seq, dropped: ReadResult(dropped=dropped, dropped_from=seq - dropped + 1,
                                                          dropped_to=seq),
                          _complete)

    def read_raw(self, capture_session_id: str | None = None, *, after_seq: int = 0, until_seq: int | None = None,
                 filter: Filter | None = None, _complete: bool = False) -> Iterator[RawRecord]:
        """Like ``read``, undecoded: each line's bytes (without the newline) as a RawRecord; a drop is
        ``RawRecord(seq=<last lost seq>, category="", payload=b"", dropped=N)``."""
        keep = None
        if filter is not None and (filter.detail_levels is not None or filter.source_kinds is not None):
            detail_levels, source_kinds = filter.detail_levels, filter.source_kinds

            def keep(line: bytes) -> bool:  # judged from a partial decode, which still checks the whole JSON
                event = _decode_judged(line).event
                return ((detail_levels is None or event.detail_level in detail_levels)
                        and (source_kinds is None or event.source.kind in source_kinds))
        return self._walk(capture_session_id, after_seq, until_seq, filter, None, keep, RawRecord,
                          lambda seq, dropped: RawRecord(seq, "", b"", dropped, seq - dropped + 1, seq), _complete)

    def _walk(self, session: str | None, after_seq: int, until_seq: int | None, filter: Filter | None,
              convert: Callable | None, keep: Callable | None, event_out: Callable, drop_out: Callable,
              complete: bool = False):
        """``event_out(seq, category, convert(line))`` for each event that `keep`s, ``drop_out(last lost seq,
        count)`` for each drop; a DecodeError from `convert` or `keep` makes the line torn.

        complete=True (replay-merge, history.py): the files are known to hold every seq up to `until_seq`
        that is not lost. Then what is missing after the last event present is a drop too (when every
        category is read), the current files are opened before any is read (see _snapshot: so a rotation
        meanwhile cannot hide one), and a missing directory or a session without lines is an empty history, not an
        error."""
        categories = filter.categories if filter is not None else None
        if not isinstance(after_seq, int) or after_seq < 0:
            raise ConfigError(f"after_seq must be an int >= 0, not {after_seq!r}")
        if until_seq is not None and (not isinstance(until_seq, int) or until_seq < 0):
            raise ConfigError(f"until_seq must be None or an int >= 0, not {until_seq!r}")
        if session is None:
            listed = self.sessions()
            if not listed:
                raise ConfigError(f"{self.directory} holds no events; give the directory a flusher wrote")
            session = listed[-1].capture_session_id
        end = _NO_END if until_seq is None else until_seq + 1  # the first seq not wanted
        prefix = b'{"capture_session_id":"' + msgspec.json.encode(session)[1:-1] + b'","seq":'
        contiguous = categories is None
        if complete:
            try:
                dir_fd = self._open_directory()
            except ConfigError:  # no directory: the files hold nothing
                if contiguous and after_seq + 1 < end:
                    yield drop_out(end - 1, end - 1 - after_seq)
                return
        else:
            dir_fd = self._open_directory()
        held: dict[str, int] | None = {} if complete else None  # the snapshot's fds, by name
        try:
            if complete:
                chains = self._snapshot(dir_fd, categories, held)
                gaps = self._all_gaps(dir_fd).get(session, [])
            else:
                chains = self._chains(dir_fd)
                gaps = self._all_gaps(dir_fd).get(session, [])
                if not gaps and not self._has_lines(dir_fd, chains, prefix):
                    raise ConfigError(f"no capture session {session!r} in {self.directory}; "
                                      "`shmring replay DIR --sessions` lists them")
                if categories is not None:
                    chains = {c: names for c, names in chains.items() if c in categories}
            # Known-lost ranges: the recorded gaps, and the seqs of torn lines as the file readers meet them
            # (always before the merge yields anything above them).
            known = [(max(lo, after_seq + 1), hi) for lo, hi in merge_ranges(gaps) if hi > after_seq]
            heapq.heapify(known)

            def torn(where: tuple[str, int], seq: int | None) -> None:
                self._torn[where] = None
                if seq is not None:
                    heapq.heappush(known, (seq, seq))

            streams = [self._events(dir_fd, names, category, prefix, after_seq, end, torn, held)
                       for category, names in sorted(chains.items())]
            nxt = after_seq + 1  # the lowest seq not yet delivered, filtered or dropped
            judged = convert is not None or keep is not None
            for batch in _merge_batches(streams):
                last = batch[-1][0]
                if contiguous and not judged and batch[0][0] == nxt and last - nxt == len(batch) - 1:
                    nxt = last + 1  # nothing lost, duplicated or judged in this batch: given at C speed
                    yield from itertools.starmap(event_out, batch)
                    continue
                for seq, category, value in batch:
                    if seq < nxt:
                        self.duplicate_lines += 1
                        continue
                    if judged:  # here, not in the file readers: a batch of decoded events would wake the GC
                        try:
                            line = value
                            if convert is not None:
                                value = convert(value)
                            wanted = keep is None or keep(value)
                        except msgspec.DecodeError:
                            torn(self._locate(dir_fd, chains[category], line), seq)
                            continue
                    else:
                        wanted = True
                    if known and known[0][0] < seq:
                        lost = []  # below `seq` and not yet accounted for
                        while known and known[0][0] < seq:
                            lo, hi = heapq.heappop(known)
                            if hi > seq:
                                heapq.heappush(known, (seq + 1, hi))
                            if not contiguous:
                                lost.append((max(lo, nxt), min(hi, seq - 1)))
                        if not contiguous:
                            for lo, hi in merge_ranges([r for r in lost if r[0] <= r[1]]):
                                yield drop_out(hi, hi - lo + 1)
                    # With every category read, all that is missing below `seq` is lost.
                    if contiguous and seq > nxt:
                        yield drop_out(seq - 1, seq - nxt)
                    nxt = seq + 1
                    if wanted:
                        yield event_out(seq, category, value)
            # After the last event present, only what is known lost.
            trailing = [(max(lo, nxt), min(hi, end - 1)) for lo, hi in known]
            if complete and contiguous:
                trailing.append((nxt, end - 1))
            for lo, hi in merge_ranges([r for r in trailing if r[0] <= r[1]]):
                yield drop_out(hi, hi - lo + 1)
        finally:
            for fd in (held or {}).values():
                os.close(fd)
            os.close(dir_fd)

    def _events(self, dir_fd: int, names: list[str], category: str, prefix: bytes, after_seq: int, end: int,
                torn: Callable, held: dict[str, int] | None = None) -> Iterator[list[tuple[int, str, bytes]]]:
        """Batches of (seq, category, value) of the session's lines in one category's files, in file order."""
        plen = len(prefix)
        for name in names:
            if held is not None and name not in held:  # a rotated file of a snapshot: opened now, by its stable name
                fd = self._open_file(dir_fd, name)
                if fd is None:
                    continue
                if after_seq and _ends_by(fd, prefix, after_seq):
                    os.close(fd)  # wholly at or before after_seq: not read at all
                    continue
                held[name] = fd
            for lines, base, block in self._chunks(dir_fd, name, held,
                                                   (prefix, after_seq) if held is not None and after_seq else None):
                if _all_start_with(block, lines, prefix):  # the common case, at C speed: all whole, all ours
                    batch = [(int(line[plen:line.find(b",", plen)]), category, line) for line in lines]
                    if batch[0][0] > after_seq and batch[-1][0] < end:
                        yield batch
                        continue
                    batch = [item for item in batch if after_seq < item[0]]
                    kept = [item for item in batch if item[0] < end]
                    if kept:
                        yield kept
                    if len(kept) < len(batch):
                        return
                    continue
                batch = []
                append = batch.append
                for line in lines:
                    if not line.startswith(prefix) or line[-1] != _CLOSE_BRACE:
                        head = _LINE_HEAD.match(line)
                        if head is not None and line[-1] == _CLOSE_BRACE:
                            continue  # another session's line
                        seq = int(head[2]) if head is not None and line.startswith(prefix) else None
                        if seq is None or after_seq < seq < end:
                            torn((self._path(name), _offset_of(line, lines, base)), seq)
                        continue
                    seq = int(line[plen:line.find(b",", plen)])
                    if seq <= after_seq:
                        continue
                    if seq >= end:
                        if batch:
                            yield batch
                        return  # a session's seqs increase along its category's files
                    append((seq, category, line))
                if batch:
                    yield batch

    def _chunks(self, dir_fd: int, name: str, held: dict[str, int] | None = None,
                skip: tuple[bytes, int] | None = None) -> Iterator[tuple[list[bytes], int, bytes]]:
        """(lines without their newlines, offset of the first, the bytes they were split from) of file `name`,
        a chunk at a time. A last line
        without its newline is torn: it is listed, and only its head, if whole, is given (its seq is lost).
        With `held` (a snapshot), the file is the fd held for `name`, not opened again by name. With
        `skip` (prefix, seq), reading starts at a line found by bisection before which the session has no
        line after seq (``_line_after``)."""
        if held is not None:
            fd = held.pop(name, None)
        else:
            fd = self._open_file(dir_fd, name)
        if fd is None:
            return
        with open(fd, "rb", buffering=0, closefd=True) as f:
            rest = b""
            base = 0 if skip is None else _line_after(fd, *skip)  # file offset of rest
            if base:
                f.seek(base)
            while chunk := f.read(CHUNK_BYTES):
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if not cut:
                    continue
                block = data[:cut]
                lines = block.split(b"\n")
                lines.pop()
                if b"" in lines:
                    lines = [line for line in lines if line]  # an empty line is nothing
                yield lines, base, block
                base += cut
            if rest:
                self._torn[(self._path(name), base)] = None
                head = _LINE_HEAD.match(rest)
                if head is not None:
                    yield [rest[: head.end()]], base, rest[: head.end()]

    def _locate(self, dir_fd: int, names: list[str], line: bytes) -> tuple[str, int]:
        """(path, offset) of `line` in one of `names` (for reporting a line that did not decode)."""
        for name in names:
            for lines, base, block in self._chunks(dir_fd, name):
                for other in lines:
                    if other == line:
                        return self._path(name), _offset_of(other, lines, base)
        return self._path(names[-1]), -1

    def _has_lines(self, dir_fd: int, chains: dict[str, list[str]], prefix: bytes) -> bool:
        anchored = b"\n" + prefix
        for names in chains.values():
            for name in names:
                fd = self._open_file(dir_fd, name)
                if fd is None:
                    continue
                with open(fd, "rb", buffering=0, closefd=True) as f:
                    data = f.read(CHUNK_BYTES)
                    if data.startswith(prefix):
                        return True
                    while data:
                        if anchored in data:
                            return True
                        more = f.read(CHUNK_BYTES)
                        data = data[-len(anchored):] + more if more else b""
        return False

    # -- the directory -------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _open_directory(self) -> int:
        try:
            return os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ConfigError(f"no directory {self.directory}; give the directory a flusher wrote") from None
        except NotADirectoryError:
            raise ConfigError(f"{self.directory} is not a directory; give the directory a flusher wrote") from None

    def _open_file(self, dir_fd: int, name: str) -> int | None:
        """An fd of regular file `name`, or None if it is gone (rotated away meanwhile)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                raise self._not_a_file(name) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._not_a_file(name)
        return fd

    def _not_a_file(self, name: str) -> ConfigError:
        return ConfigError(f"{self._path(name)} is not a regular file (a symbolic link?); "
                           "move it out of the directory to read the rest")

    def _snapshot(self, dir_fd: int, categories, held: dict[str, int]) -> dict[str, list[str]]:
        """The chains of `categories` (None: all), each current file (``<c>.jsonl``) opened into `held`.

        A rotation renames ``<c>.jsonl`` to ``<c>.N.jsonl`` while the flusher runs; a current file opened by
        name after that could miss the renamed one. So the current files are opened at once, and the listing
        is taken again: if any name appeared, vanished or now names another file, it is done again. A rotated
        file keeps its name for good (the flusher only ever renames the current one), so it is opened when
        its turn comes, and a replay holds one fd per category, however many files were rotated.
        """
        while True:
            chains = self._chains(dir_fd)
            if categories is not None:
                chains = {c: names for c, names in chains.items() if c in categories}
            try:
                for category, names in chains.items():
                    if names[-1] == f"{category}.jsonl":
                        fd = self._open_file(dir_fd, names[-1])
                        if fd is None:
                            raise FileNotFoundError(names[-1])
                        held[names[-1]] = fd
                again = self._chains(dir_fd)
                if categories is not None:
                    again = {c: names for c, names in again.items() if c in categories}
                if again == chains and all(_same_file(os.fstat(fd), os.stat(name, dir_fd=dir_fd,
                                                                             follow_symlinks=False))
                                           for name, fd in held.items()):
                    return chains
            except FileNotFoundError:
                pass
            for fd in held.values():
                os.close(fd)
            held.clear()

    def _checkpoint_seq(self, capture_session_id: str) -> int:
        """The seq the flusher's ``_checkpoint.json`` says is on disk for this session (0: none, or another's)."""
        try:
            dir_fd = self._open_directory()
        except ConfigError:
            return 0
        try:
            fd = self._open_file(dir_fd, CHECKPOINT_FILE)
            if fd is None:
                return 0
            with open(fd, "rb", buffering=0, closefd=True) as f:
                data = f.read(1 << 20)
        finally:
            os.close(dir_fd)
        try:
            checkpoint = json.loads(data)
        except ValueError:
            return 0  # being replaced? the flusher writes a new one and renames it over: never torn
        if (isinstance(checkpoint, dict) and checkpoint.get("capture_session_id") == capture_session_id
                and type(checkpoint.get("seq")) is int):
            return checkpoint["seq"]
        return 0

    def _chains(self, dir_fd: int) -> dict[str, list[str]]:
        """category -> its file names, oldest first: <c>.1.jsonl, <c>.2.jsonl, ..., <c>.jsonl."""
        numbered: dict[str, list[tuple[int, str]]] = {}
        for entry in os.listdir(dir_fd):
            match = _CATEGORY_FILE.fullmatch(entry)
            if match:
                number = int(match[2]) if match[2] else _NO_END
                numbered.setdefault(match[1], []).append((number, entry))
        return {c: [name for _, name in sorted(files)] for c, files in numbered.items()}

    def _all_gaps(self, dir_fd: int) -> dict[str, list[tuple[int, int]]]:
        """capture_session_id -> its recorded lost ranges; a line that is not a whole gap record is torn."""
        out: dict[str, list[tuple[int, int]]] = {}
        for lines, base, block in self._chunks(dir_fd, GAPS_FILE):
            for line in lines:
                try:
                    gap = json.loads(line)
                    session, first, last = gap["capture_session_id"], gap["from_seq"], gap["to_seq"]
                    if not (isinstance(session, str) and isinstance(first, int) and isinstance(last, int)):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    self._torn[(self._path(GAPS_FILE), _offset_of(line, lines, base))] = None
                    continue
                if 0 < first <= last:
                    out.setdefault(session, []).append((first, last))
        return out


def _line_after(fd: int, prefix: bytes, seq: int) -> int:
    """A line start in the file before which the session (`prefix`) has no line after `seq`, found by bisection
    (its lines increase along the file): a replay from the middle of a long file reads from near there, not from
    its start. Lines of other sessions, or longer than the window, only make it stop earlier."""
    lo, hi = 0, os.fstat(fd).st_size
    while hi - lo > CHUNK_BYTES:
        mid = (lo + hi) // 2
        window = os.pread(fd, 1 << 16, mid)
        pos = window.find(b"\n") + 1
        found = None
        while pos:
            end = window.find(b"\n", pos)
            if end < 0:
                break
            if window.startswith(prefix, pos):
                digits = window[pos + len(prefix):window.find(b",", pos + len(prefix), end)]
                if digits.isdigit():
                    found = int(digits)
                break
            pos = end + 1
        if found is not None and found <= seq:
            lo = mid + pos
        else:
            hi = mid
    return lo


def _ends_by(fd: int, prefix: bytes, seq: int) -> bool:
    """Whether the file's last line is whole, of the session (`prefix`), and at or before `seq` (its lines of the
    session all are then: they increase along a category's files)."""
    size = os.fstat(fd).st_size
    tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
    if not tail.endswith(b"\n"):
        return size == 0
    start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
    if start == 0 and size > len(tail):
        return False  # a line longer than the tail read
    line = tail[start:-1]
    if not line.startswith(prefix):
        return False
    digits = line[len(prefix):line.find(b",", len(prefix))]
    return digits.isdigit() and int(digits) <= seq


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def _all_start_with(block: bytes, lines: list[bytes], prefix: bytes) -> bool:
    """Whether every line of `block` (`lines`, each with its newline) starts with `prefix` and ends with "}"
    (JSON never holds a raw newline, so each counted pair is a line's edge)."""
    return (block.startswith(prefix) and block.count(b"\n" + prefix) + 1 == len(lines)
            and block.count(b"}\n") == len(lines))


def _offset_of(line: bytes, lines: list[bytes], base: int) -> int:
    """The file offset of `line` (an item of `lines`, which start at `base`); only for reporting, so not fast."""
    offset = base
    for other in lines:
        if other is line:
            return offset
        offset += len(other) + 1
    return base


def _merge_batches(streams: list[Iterator[list[tuple]]]) -> Iterator[list[tuple]]:
    """Merge streams of seq-sorted batches into seq-sorted batches (each round takes, from every stream, what is
    at or below the smallest last seq of their current batches: nothing later can come below it)."""
    if len(streams) == 1:
        yield from streams[0]
        return
    buffers = []  # [batch, position, stream]
    for stream in streams:
        batch = next(stream, None)
        if batch is not None:
            buffers.append([batch, 0, stream])
    while len(buffers) > 1:
        bound = min(entry[0][-1][0] for entry in buffers)
        out = []
        for entry in buffers:
            batch, position = entry[0], entry[1]
            cut = bisect.bisect_right(batch, bound, position, key=_first)
            out += batch[position:cut]
            entry[1] = cut
        out.sort(key=_first)
        yield out
        for entry in buffers:
            if entry[1] == len(entry[0]):
                entry[0], entry[1] = next(entry[2], None), 0
        buffers = [entry for entry in buffers if entry[0] is not None]
    if buffers:
        batch, position, stream = buffers[0]
        yield batch[position:]
        yield from stream
