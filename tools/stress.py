"""Stress shmring with fault injection and check every guarantee; exit 1 on any violation.

What runs, each in its own process:
- one writer (``CaptureSession``), publishing at ``--rate`` events/s (0 = flat
  out), with bursts of 4 x capacity events published flat out on demand;
- ``--readers`` readers, kinds in turn: fast, slow (burns ``--slow-us`` of CPU
  per event), filtered (``Filter(categories=["network"])``), filtered and slow
  (``["console", "page"]``);
- a flusher, ``python -m shmring flush NAME DIR`` (what ``serve --log-dir`` runs);
- ``--members`` members of one gating consumer group, kinds in turn: a
  ``Reader`` (``read_many``, ``ack(seq)`` per event) and an ``AsyncReader``
  (``read_many``, ``ack()`` per batch), with a short ``claim_timeout_s``
  (``MEMBER_CLAIM_TIMEOUT_S``). Each records every event it gets (seq,
  redelivered) with one unbuffered write *before* it acknowledges it, and
  works on each batch ``MEMBER_WORK_S`` before acknowledging, so kills and
  stops land while it holds claims.

Faults, injected at random (``--seed``) for a bounded time, then stopped:
- SIGKILL of a reader, restarted 0.1-0.5 s later as a new reader: every other
  restart resumes after the killed reader's last published cursor
  (``after_seq=``), the others attach at the head (``after_seq=None``);
- SIGSTOP of a reader for 0.3-1.0 s, then SIGCONT (it gets lapped and must
  count exactly what it lost);
- SIGKILL of the flusher, restarted 0.1-0.6 s later (well inside the writer's
  ``--grace``, so nothing may be lost); in runs long enough, one long outage of
  grace + 1.5 s, after which the writer goes on and the gap must be recorded;
- a burst of publishing (SIGUSR1 to the writer);
- SIGKILL of a group member, restarted 0.1-0.5 s later (it joins the group
  where it stands); SIGSTOP of a member for 0.3-1.0 s (past its claim
  timeout: its claims go to the others, and it joins again when it wakes).

What is verified (each failure is a violation; the exit status is 1 if any):
- every reader instance that was not killed, read to ``RingClosed``:
  delivered + dropped + filtered == (writer's last seq) - (its attach cursor);
  its counts agree with what it saw; each step adds up (the cursor moves by 1
  for an event, by N for a drop of N, plus what was filtered); delivered seqs
  strictly increase; zero corrupt payloads (every event carries
  ``{"i": seq, "body": ..., "crc": crc32(body, seq)}`` and a category fixed by
  its seq); filtered readers get only their categories, and no more filtered
  events than the range holds;
- the flusher's files: every line valid JSON of this capture session, with a
  good checksum, in the file of its category; seqs strictly increase in each
  file and appear once across files; file seqs plus the ranges in
  ``_gaps.jsonl`` are exactly 1..last seq, without overlap; every gap falls in
  a flusher outage longer than the grace period (anything else was lost while
  the writer should have been waiting for the flusher); the checkpoint ends at the last seq; the last flusher exits 0;
- the group, over the records of every member instance (killed ones too):
  every seq 1..last went to some member (none lost: the group gates), no seq
  went to two members fresh (every second delivery is marked redelivered),
  no drop, no corrupt payload; each member that read to the end ended with
  ``RingClosed``;
- no process exits unexpectedly; nothing of the ring is left in /dev/shm.

The report lists, per reader (summed over its instances that read to the
end) and for the flusher, how many events or lines it checked and how many
were corrupt or out of order (0 when it passes), not only the verdict.

Every process's CPU time and peak RSS are measured with psutil (sampled every
100 ms and right before each kill), topped up at reap with the kernel's rusage
from ``os.wait4`` (exact, even for a killed process).

Run from the repository root:

    python tools/stress.py                      # 60 s in all, rate 5000/s, 4 readers
    python tools/stress.py --seconds 10         # the variant the test suite runs
    python tools/stress.py --rate 0 --readers 6 --seed 7 --json

Every child is started by this tool and signalled only by its pid; a stopped
child is continued before it is killed; every wait is bounded; the temporary
directory and the ring are removed at the end.
"""

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import msgspec

from stress_checks import (CATEGORIES, KIND_FILTERS, MEMBER_KINDS, READER_CHECKS, READER_KINDS, TYPES, Data,
                           check_flusher_files, check_group, check_member, check_reader, check_writer, gap_explained,
                           payload_ok, seqs_of_categories_in)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STALL_S = 30.0
"""A reader that sees nothing for this long reports a stall (a violation)."""
GO_TIMEOUT_S = 60.0
GROUP = "stress"
MEMBER_CLAIM_TIMEOUT_S = 0.5
"""Shorter than a member's SIGSTOP (0.3-1.0 s), so some stops forfeit claims that the others then get redelivered."""
MEMBER_WORK_S = 0.002
"""A member's work on each batch between recording it and acknowledging it (the window a fault lands in)."""
BURST_SLOTS = 4
"""A burst publishes this many ring capacities flat out."""


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


# =============================================================================
# Child: the writer
# =============================================================================

def writer_main(cfg: dict) -> int:
    from shmring import CaptureSession, Event, Source

    state = {"stop": False, "bursts": 0}

    def on_burst(*_):
        state["bursts"] += 1

    def on_stop(*_):
        state["stop"] = True

    signal.signal(signal.SIGUSR1, on_burst)
    signal.signal(signal.SIGUSR2, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    rng = random.Random(cfg["seed"])
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-_/"
    bodies = [bytes(rng.choice(alphabet) for _ in range(rng.choice((24, 80, 180, 300, 600))))
              for _ in range(32)]
    nbodies = len(bodies)
    source = Source(kind="local_process", event="stress")
    crc32 = zlib.crc32
    Raw = msgspec.Raw
    perf = time.perf_counter
    out = {"published": 0, "bursts_done": 0, "burst_events": 0, "max_publish_s": 0.0, "publishes_over_50ms": 0,
           "blocked_s": 0.0, "seq_mismatch": 0}

    session = CaptureSession.create(cfg["name"], capacity=cfg["capacity"], data_bytes=cfg["data_bytes"],
                                    flusher_grace_s=cfg["grace"])
    out["capture_session_id"] = session.capture_session_id
    try:
        deadline = time.monotonic() + GO_TIMEOUT_S
        while not os.path.exists(cfg["go_file"]) and not state["stop"] and time.monotonic() < deadline:
            time.sleep(0.005)
        publish = session.publish
        i = 0

        def publish_one():
            nonlocal i
            i += 1
            category = CATEGORIES[i % 3]
            body = bodies[i % nbodies]
            data = Raw(b'{"i":%d,"body":"%s","crc":%d}' % (i, body, crc32(body, i & 0xFFFFFFFF)))
            t = perf()
            env = publish(Event(type=TYPES[category], category=category, source=source, data=data))
            dt = perf() - t
            if env.seq != i:
                out["seq_mismatch"] += 1
            out["max_publish_s"] = max(out["max_publish_s"], dt)
            if dt > 0.05:
                out["publishes_over_50ms"] += 1
                out["blocked_s"] += dt

        rate = cfg["rate"]
        burst_n = cfg["burst"]
        t_start = time.monotonic()
        cap = t_start + cfg["max_s"]
        base_t, base_n = t_start, 0
        while not state["stop"]:
            now = time.monotonic()
            if now >= cap:
                break
            if state["bursts"] > out["bursts_done"]:
                for _ in range(burst_n):
                    publish_one()
                out["bursts_done"] += 1
                out["burst_events"] += burst_n
                base_t, base_n = time.monotonic(), i  # no catching up for the burst's own time
                continue
            if rate <= 0:
                for _ in range(64):
                    publish_one()
                continue
            due = int((now - base_t) * rate) - (i - base_n)
            if due > rate * 0.1:  # more than 100 ms behind (a back-pressure stall): don't catch up in a rush
                base_t, base_n = now, i
                due = 1
            if due > 0:
                for _ in range(min(due, 64)):
                    publish_one()
            else:
                time.sleep(0.001)
        out["published"] = i
        out["elapsed_s"] = time.monotonic() - t_start
    finally:
        t = time.monotonic()
        session.close()  # waits for a live flusher to take everything; removes the ring
        out["close_s"] = time.monotonic() - t
        out["last_seq"] = session.last_seq
        write_json_atomic(cfg["result"], out)
    return 0


# =============================================================================
# Child: a reader
# =============================================================================

def reader_main(cfg: dict) -> int:
    from shmring import Filter, Reader, RingClosed, WriterGone

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    categories = KIND_FILTERS[cfg["kind"]]
    slow_s = cfg["slow_us"] / 1e6 if cfg["kind"].endswith("slow") else 0.0
    filt = Filter(categories=categories) if categories else None
    accepted = set(categories) if categories else set(CATEGORIES)
    not_accepted = set(CATEGORIES) - accepted
    reader = Reader.attach(cfg["name"], after_seq=cfg["after_seq"], filter=filt)
    decode = msgspec.json.Decoder(Data).decode
    perf = time.perf_counter
    read = reader.read
    out = {"pid": os.getpid(), "kind": cfg["kind"], "after_seq": cfg["after_seq"], "start": reader.start_seq,
           "events": 0, "drop_results": 0, "dropped_seen": 0, "corrupt": 0, "order_violations": 0,
           "step_violations": 0, "filter_violations": 0, "first_seq": None, "last_seq_seen": 0, "ending": None,
           "examples": []}

    def note(kind, text):
        if len(out["examples"]) < 5:
            out["examples"].append(f"{kind}: {text}")

    prev_cursor = reader.cursor
    prev_filtered = reader.filtered
    last = 0
    try:
        while True:
            try:
                res = read(STALL_S)
            except RingClosed:
                out["ending"] = "closed"
                break
            except WriterGone:
                out["ending"] = "writer_gone"
                break
            if res is None:
                out["ending"] = "stall"
                break
            cursor = reader.cursor
            filtered_now = reader.filtered
            df = filtered_now - prev_filtered
            env = res.envelope
            if env is not None:
                seq = env.seq
                out["events"] += 1
                if out["first_seq"] is None:
                    out["first_seq"] = seq
                if seq != cursor or cursor - prev_cursor != 1 + df:
                    out["step_violations"] += 1
                    note("step", f"event seq {seq}, cursor {prev_cursor}->{cursor}, filtered +{df}")
                if seq <= last:
                    out["order_violations"] += 1
                    note("order", f"seq {seq} after {last}")
                last = seq
                event = env.event
                if not payload_ok(seq, event, decode):
                    out["corrupt"] += 1
                    note("corrupt", f"seq {seq}: {bytes(event.data)[:80]!r}")
                if event.category not in accepted:
                    out["filter_violations"] += 1
                    note("filter", f"seq {seq} of category {event.category} delivered")
                if slow_s:
                    end = perf() + slow_s
                    while perf() < end:
                        pass
            else:
                out["drop_results"] += 1
                out["dropped_seen"] += res.dropped
                if res.dropped <= 0 or cursor - prev_cursor != res.dropped + df:
                    out["step_violations"] += 1
                    note("step", f"drop of {res.dropped}, cursor {prev_cursor}->{cursor}, filtered +{df}")
            if df and (filt is None or df < 0 or df > seqs_of_categories_in(prev_cursor, cursor, not_accepted)):
                out["filter_violations"] += 1
                note("filter", f"filtered +{df} over ({prev_cursor}, {cursor}]")
            prev_cursor, prev_filtered = cursor, filtered_now
    finally:
        out.update(cursor=reader.cursor, delivered=reader.delivered, dropped=reader.dropped,
                   filtered=reader.filtered, last_seq_seen=last)
        reader.close()
        write_json_atomic(cfg["result"], out)
    return 0


# =============================================================================
# Child: a consumer group member
# =============================================================================

def member_main(cfg: dict) -> int:
    from shmring import AsyncReader, Reader, RingClosed, WriterGone

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    decode = msgspec.json.Decoder(Data).decode
    fd = os.open(cfg["records"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    out = {"pid": os.getpid(), "kind": cfg["kind"], "events": 0, "redelivered": 0, "drops": 0, "corrupt": 0,
           "ending": None, "examples": []}

    def record(results) -> None:
        """Check and record a batch (one write, before the acknowledgement)."""
        lines = []
        for r in results:
            if r.dropped:
                out["drops"] += r.dropped
                lines.append(f"D {r.dropped_from} {r.dropped_to}\n")
                continue
            env = r.envelope
            if not payload_ok(env.seq, env.event, decode):
                out["corrupt"] += 1
                if len(out["examples"]) < 5:
                    out["examples"].append(f"corrupt seq {env.seq}: {bytes(env.event.data)[:80]!r}")
            out["events"] += 1
            out["redelivered"] += r.redelivered
            lines.append(f"{env.seq} {int(r.redelivered)}\n")
        if lines:
            os.write(fd, "".join(lines).encode())

    kwargs = dict(group=GROUP, gating=True, after_seq=0, claim_timeout_s=MEMBER_CLAIM_TIMEOUT_S)
    try:
        if cfg["kind"] == "member":
            reader = Reader.attach(cfg["name"], **kwargs)
            try:
                while True:
                    batch = reader.read_many(64, timeout=STALL_S)
                    if not batch:
                        out["ending"] = "stall"
                        break
                    record(batch)
                    time.sleep(MEMBER_WORK_S)
                    for r in batch:
                        if not r.dropped:
                            reader.ack(r.envelope.seq)
            except RingClosed:
                out["ending"] = "closed"
            except WriterGone:
                out["ending"] = "writer_gone"
            finally:
                reader.close()
        else:
            import asyncio

            async def run():
                reader = await AsyncReader.attach(cfg["name"], **kwargs)
                try:
                    while True:
                        batch = await reader.read_many(64, timeout=STALL_S)
                        if not batch:
                            return "stall"
                        record(batch)
                        await asyncio.sleep(MEMBER_WORK_S)
                        reader.ack()
                except RingClosed:
                    return "closed"
                except WriterGone:
                    return "writer_gone"
                finally:
                    reader.close()

            out["ending"] = asyncio.run(run())
    finally:
        os.close(fd)
        write_json_atomic(cfg["result"], out)
    return 0


# =============================================================================
# The orchestrator
# =============================================================================

class Child:
    """One process we started: its role, its measures, how it ended."""

    def __init__(self, role: str, slot: str, popen: subprocess.Popen, cfg: dict, log_base: str):
        self.role = role
        self.slot = slot
        self.popen = popen
        self.pid = popen.pid
        self.cfg = cfg
        self.log_base = log_base
        self.started = time.monotonic()
        self.attached_at = None
        self.stopped = False
        self.killed = False
        self.reaped = False
        self.rc = None
        self.cpu_s = 0.0
        self.peak_rss = 0
        self.result = None
        self.ps = None

    def stderr_tail(self, n: int = 600) -> str:
        try:
            with open(self.log_base + ".err", "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-n:].decode("utf-8", "replace").strip()


class Stress:
    def __init__(self, args):
        import psutil

        self.psutil = psutil
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = tempfile.mkdtemp(prefix="shmring-stress-")
        self.name = args.ring_name or f"stress-{os.getpid()}-{secrets.token_hex(4)}"
        self.log_dir = os.path.join(self.tmp, "flushed")
        self.out_dir = os.path.join(self.tmp, "out")
        os.makedirs(self.out_dir)
        self.go_file = os.path.join(self.tmp, "go")
        self.children: list[Child] = []
        self.lock = threading.Lock()
        self.violations: list[str] = []
        self.pending: list[tuple[float, str, object]] = []  # (due, description, action)
        self.faults = {"reader_kills": 0, "reader_restarts_resuming": 0, "reader_restarts_at_head": 0,
                       "reader_stops": 0, "reader_stopped_s": 0.0, "flusher_kills": 0, "long_outages": 0,
                       "bursts": 0, "member_kills": 0, "member_stops": 0}
        self.outages: list[dict] = []
        self.fault_log: list[str] = []
        self.t0 = time.monotonic()
        self.writer: Child | None = None
        self.flusher: Child | None = None
        self.readers: dict[str, Child] = {}
        self.members: dict[str, Child] = {}
        self.member_kinds = {f"g{i}": MEMBER_KINDS[i % len(MEMBER_KINDS)] for i in range(args.members)}
        self.reader_kinds = {f"r{i}": READER_KINDS[i % len(READER_KINDS)] for i in range(args.readers)}
        self.resume_next = {slot: (i % 2 == 0) for i, slot in enumerate(self.reader_kinds)}
        self.instance = 0
        self._sampling = True
        self.sampler = threading.Thread(target=self._sample_loop, daemon=True)

    # -- processes ----------------------------------------------------------------
    def log(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.2f}s] {text}"
        self.fault_log.append(line)
        if self.args.verbose:
            print(line, file=sys.stderr, flush=True)

    def _spawn(self, role: str, slot: str, argv: list[str], cfg: dict) -> Child:
        base = cfg.get("base") or self._next_base(slot)
        with open(base + ".out", "wb") as out, open(base + ".err", "wb") as err:
            popen = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT,
                                     start_new_session=True)  # Ctrl-C reaches only us; we stop them in order
        child = Child(role, slot, popen, cfg, base)
        with self.lock:
            self.children.append(child)
        return child

    def _next_base(self, slot: str) -> str:
        self.instance += 1
        return os.path.join(self.out_dir, f"{slot}-{self.instance}")

    def _child_argv(self, role: str, cfg: dict) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), role, json.dumps(cfg)]

    def start_writer(self) -> None:
        a = self.args
        cfg = dict(name=self.name, capacity=a.capacity, data_bytes=a.data_bytes, grace=a.grace, rate=a.rate,
                   burst=BURST_SLOTS * a.capacity, seed=a.seed, go_file=self.go_file, max_s=a.seconds + 60,
                   result=os.path.join(self.out_dir, "writer.json"))
        self.writer = self._spawn("writer", "writer", self._child_argv("_writer", cfg), cfg)

    def start_flusher(self) -> Child:
        argv = [sys.executable, "-m", "shmring", "flush", self.name, self.log_dir]
        self.flusher = self._spawn("flusher", "flusher", argv, {})
        return self.flusher

    def start_reader(self, slot: str, after_seq) -> Child:
        base = self._next_base(slot)
        cfg = dict(name=self.name, kind=self.reader_kinds[slot], after_seq=after_seq, slow_us=self.args.slow_us,
                   result=base + ".json", base=base)
        child = self._spawn("reader", slot, self._child_argv("_reader", cfg), cfg)
        self.readers[slot] = child
        return child

    def start_member(self, slot: str) -> Child:
        base = self._next_base(slot)
        cfg = dict(name=self.name, kind=self.member_kinds[slot], records=base + ".rec", result=base + ".json",
                   base=base)
        child = self._spawn("member", slot, self._child_argv("_member", cfg), cfg)
        self.members[slot] = child
        return child

    def attached_children(self) -> list[Child]:
        """Everyone who takes from the ring: the flusher, the readers, the members."""
        return [c for c in (self.flusher, *self.readers.values(), *self.members.values()) if c is not None]

    def sample(self, child: Child) -> None:
        """psutil: CPU time so far and resident memory (peak of the samples)."""
        with self.lock:
            if child.reaped:
                return
            try:
                if child.ps is None:
                    child.ps = self.psutil.Process(child.pid)
                cpu = child.ps.cpu_times()
                child.cpu_s = max(child.cpu_s, cpu.user + cpu.system)
                child.peak_rss = max(child.peak_rss, child.ps.memory_info().rss)
            except self.psutil.Error:
                pass

    def _sample_loop(self) -> None:
        while self._sampling:
            for child in list(self.children):
                if not child.reaped:
                    self.sample(child)
            time.sleep(0.1)

    def try_reap(self, child: Child, timeout: float = 0.0) -> bool:
        """Reap `child` if it has exited (waiting up to `timeout`); record its rusage."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if child.reaped:
                    return True
                try:
                    pid, status, ru = os.wait4(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status, ru = child.pid, 0, None
                if pid != 0:
                    child.reaped = True
                    child.rc = os.waitstatus_to_exitcode(status)
                    child.popen.returncode = child.rc
                    if ru is not None:
                        child.cpu_s = max(child.cpu_s, ru.ru_utime + ru.ru_stime)
                        child.peak_rss = max(child.peak_rss, ru.ru_maxrss * 1024)
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def signal(self, child: Child, sig: int) -> None:
        if not child.reaped:
            os.kill(child.pid, sig)  # only ever a pid we started and have not reaped

    def kill(self, child: Child) -> None:
        """SIGCONT if stopped, sample, SIGKILL, reap."""
        if child.reaped:
            return
        if child.stopped:
            self.signal(child, signal.SIGCONT)
            child.stopped = False
        self.sample(child)
        child.killed = True
        self.signal(child, signal.SIGKILL)
        if not self.try_reap(child, 10.0):
            self.violation(f"{child.slot} pid {child.pid} did not die within 10 s of SIGKILL")

    def violation(self, text: str) -> None:
        self.violations.append(text)
        self.log(f"VIOLATION: {text}")

    # -- ring inspection --------------------------------------------------------------
    def ring_view(self):
        """(latest seq, {pid: registry entry} of live readers) or None if the ring is not there."""
        from shmring import ShmringError
        from shmring.stats import ring_stats

        try:
            st = ring_stats(self.name)
        except (ShmringError, OSError):
            return None
        return st["latest_seq"], {r["pid"]: r for r in st["readers"] if r["alive"]}

    def update_attached(self) -> dict | None:
        view = self.ring_view()
        if view is None:
            return None
        latest, entries = view
        now = time.monotonic()
        for child in self.attached_children():
            if child.attached_at is None and child.pid in entries:
                child.attached_at = now
                if child.role == "flusher":
                    self.flusher_attached(child, latest)
        return entries

    def wait_attached(self, children: list[Child], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.update_attached()
            waiting = [c for c in children if c.attached_at is None]
            if not waiting:
                return True
            for c in waiting:
                if self.try_reap(c):
                    self.violation(f"{c.slot} pid {c.pid} exited ({c.rc}) before attaching: {c.stderr_tail()}")
                    return False
            time.sleep(0.02)
        for c in children:
            if c.attached_at is None:
                self.violation(f"{c.slot} pid {c.pid} did not attach within {timeout:.0f} s")
        return False

    # -- faults -------------------------------------------------------------------------
    def running_readers(self, children: dict[str, Child] | None = None) -> list[str]:
        busy = {desc.split()[1] for _, desc, _ in self.pending if desc.startswith(("restart", "cont"))}
        return [slot for slot, c in (self.readers if children is None else children).items()
                if not c.reaped and not c.stopped and c.attached_at is not None and slot not in busy]

    def fault_kill_member(self) -> bool:
        slots = self.running_readers(self.members)
        if len(slots) < 2:  # one member at least keeps going, or the group would hold the writer back
            return False
        slot = self.rng.choice(slots)
        child = self.members[slot]
        self.kill(child)
        delay = self.rng.uniform(0.1, 0.5)
        self.faults["member_kills"] += 1
        self.log(f"SIGKILL member {slot} pid {child.pid}; restart in {delay:.2f} s")

        def restart():
            c = self.start_member(slot)
            self.log(f"restarted member {slot} as pid {c.pid}")

        self.pending.append((time.monotonic() + delay, f"restart {slot}", restart))
        return True

    def fault_stop_member(self) -> bool:
        slots = self.running_readers(self.members)
        if len(slots) < 2:
            return False
        return self._stop(self.members[self.rng.choice(slots)], "member_stops")

    def fault_kill_reader(self) -> bool:
        slots = self.running_readers()
        if not slots:
            return False
        slot = self.rng.choice(slots)
        child = self.readers[slot]
        entries = self.ring_view()
        cursor = entries[1].get(child.pid, {}).get("cursor") if entries else None
        self.kill(child)
        resume = self.resume_next[slot] and cursor is not None
        self.resume_next[slot] = not self.resume_next[slot]
        delay = self.rng.uniform(0.1, 0.5)
        self.faults["reader_kills"] += 1
        self.log(f"SIGKILL {slot} pid {child.pid}; restart in {delay:.2f} s "
                 + (f"resuming after seq {cursor}" if resume else "at the head"))

        def restart():
            c = self.start_reader(slot, cursor if resume else None)
            self.faults["reader_restarts_resuming" if resume else "reader_restarts_at_head"] += 1
            self.log(f"restarted {slot} as pid {c.pid}")

        self.pending.append((time.monotonic() + delay, f"restart {slot}", restart))
        return True

    def fault_stop_reader(self) -> bool:
        slots = self.running_readers()
        if not slots:
            return False
        return self._stop(self.readers[self.rng.choice(slots)], "reader_stops")

    def _stop(self, child: Child, counter: str) -> bool:
        """SIGSTOP `child` for 0.3-1.0 s (a SIGCONT is scheduled)."""
        slot = child.slot
        duration = self.rng.uniform(0.3, 1.0)
        self.signal(child, signal.SIGSTOP)
        child.stopped = True
        self.faults[counter] += 1
        if counter == "reader_stops":
            self.faults["reader_stopped_s"] += duration
        self.log(f"SIGSTOP {slot} pid {child.pid} for {duration:.2f} s")

        def cont():
            if child.stopped:
                self.signal(child, signal.SIGCONT)
                child.stopped = False
                self.log(f"SIGCONT {slot} pid {child.pid}")

        self.pending.append((time.monotonic() + duration, f"cont {slot}", cont))
        return True

    def fault_kill_flusher(self, long: bool = False) -> bool:
        child = self.flusher
        if child is None or child.reaped or child.attached_at is None:
            return False
        if any(desc == "restart flusher" for _, desc, _ in self.pending):
            return False
        view = self.ring_view()
        seq_at_kill = view[0] if view else None
        self.kill(child)
        delay = self.args.grace + 1.5 if long else self.rng.uniform(0.1, 0.6)
        self.faults["long_outages" if long else "flusher_kills"] += 1
        self.outages.append({"killed_at": time.monotonic(), "seq_at_kill": seq_at_kill, "planned_s": delay,
                             "long": long, "attached_at": None, "seq_at_attach": None})
        self.log(f"SIGKILL flusher pid {child.pid} at seq {seq_at_kill}; restart in {delay:.2f} s"
                 + (" (long outage)" if long else ""))

        def restart():
            c = self.start_flusher()
            self.log(f"restarted flusher as pid {c.pid}")

        self.pending.append((time.monotonic() + delay, "restart flusher", restart))
        return True

    def flusher_attached(self, child: Child, latest: int) -> None:
        if self.outages and self.outages[-1]["attached_at"] is None:
            o = self.outages[-1]
            o["attached_at"] = child.attached_at
            o["seq_at_attach"] = latest
            o["outage_s"] = o["attached_at"] - o["killed_at"]
            self.log(f"flusher pid {child.pid} attached at seq {latest}: outage {o['outage_s']:.2f} s")

    def fault_burst(self) -> bool:
        self.signal(self.writer, signal.SIGUSR1)
        self.faults["bursts"] += 1
        self.log(f"burst of {BURST_SLOTS * self.args.capacity} events")
        return True

    def run_due(self, force: bool = False) -> None:
        now = time.monotonic()
        due = [p for p in self.pending if force or p[0] <= now]
        for p in sorted(due, key=lambda p: p[0]):
            self.pending.remove(p)
            p[2]()

    def check_unexpected_exits(self) -> bool:
        """Reap children that exited on their own during the run; False if the writer did."""
        for child in list(self.children):
            if child.reaped or child.killed:
                continue
            if self.try_reap(child):
                self.violation(f"{child.slot} pid {child.pid} exited unexpectedly with {child.rc}: "
                               f"{child.stderr_tail()}")
                if child.role == "writer":
                    return False
                if child is self.flusher:
                    self.start_flusher()
                elif self.readers.get(child.slot) is child:
                    self.start_reader(child.slot, None)
                elif self.members.get(child.slot) is child:
                    self.start_member(child.slot)
        return True

    # -- the run --------------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        self.sampler.start()
        try:
            self.start_writer()
            deadline = time.monotonic() + 30
            while self.ring_view() is None:
                if self.try_reap(self.writer) or time.monotonic() > deadline:
                    self.violation(f"writer: did not create the ring: {self.writer.stderr_tail()}")
                    return self.finish()
                time.sleep(0.01)
            self.start_flusher()
            for slot in self.reader_kinds:
                self.start_reader(slot, 0)
            for slot in self.member_kinds:
                self.start_member(slot)
            if not self.wait_attached(self.attached_children(), 30):
                return self.finish()
            startup = time.monotonic() - self.t0
            window = max(2.0, a.seconds - startup - (2.0 + 0.1 * a.seconds))
            long_outage = (not a.no_long_outage) and window >= a.grace + 8
            with open(self.go_file, "w"):
                pass
            t_go = time.monotonic()
            fault_end = t_go + window
            self.log(f"writer going; faults for {window:.1f} s"
                     + (f", a long flusher outage at {0.45 * window:.1f} s" if long_outage else ""))
            # The first four faults cover every kind; then at random.
            plan = [self.fault_stop_reader, self.fault_kill_reader, self.fault_kill_flusher, self.fault_burst]
            choices = [self.fault_kill_reader, self.fault_stop_reader, self.fault_stop_reader,
                       self.fault_kill_flusher, self.fault_burst]
            if len(self.member_kinds) >= 2:  # one member keeps going through each fault
                plan += [self.fault_kill_member, self.fault_stop_member]
                choices += [self.fault_kill_member, self.fault_stop_member]
            self.rng.shuffle(plan)
            next_fault = t_go + 0.3
            long_at = t_go + 0.45 * window if long_outage else None
            while time.monotonic() < fault_end:
                self.run_due()
                if not self.check_unexpected_exits():
                    return self.finish()
                if any(c.attached_at is None and not c.reaped for c in self.attached_children()):
                    self.update_attached()
                now = time.monotonic()
                if long_at is not None and now >= long_at:
                    if self.fault_kill_flusher(long=True):
                        long_at = None
                        next_fault = max(next_fault, now + 0.3)
                elif now >= next_fault:
                    in_long = any(o["long"] and o["attached_at"] is None for o in self.outages)
                    planned = bool(plan)
                    fault = plan.pop(0) if planned else self.rng.choice(choices)
                    if in_long and fault == self.fault_kill_flusher:
                        fault = self.fault_stop_reader
                    if fault():
                        next_fault = now + self.rng.uniform(0.25, 0.75)
                    else:  # nothing to do it to just now (a restart pending): try again shortly
                        if planned:
                            plan.insert(0, fault)
                        next_fault = now + 0.05
                time.sleep(0.01)
            # Settle: continue, restart, and wait until everyone is attached again.
            self.log("faults over: continuing and restarting what is pending")
            self.run_due(force=True)
            if not self.check_unexpected_exits():
                return self.finish()
            if not self.wait_attached(self.attached_children(), 20):
                return self.finish()
            time.sleep(0.5)  # a little undisturbed flow
            self.signal(self.writer, signal.SIGUSR2)
            self.log("writer told to stop")
            if not self.try_reap(self.writer, a.grace + 30):
                self.violation("writer: did not finish within grace + 30 s of being told to stop")
                return self.finish()
            if self.writer.rc != 0:
                self.violation(f"writer: exited with {self.writer.rc}: {self.writer.stderr_tail()}")
            for child in self.attached_children():
                if not self.try_reap(child, 20):
                    self.violation(f"{child.slot} pid {child.pid} still running 20 s after the ring closed")
            self.log("all processes ended; verifying")
            return self.finish(verify=True)
        finally:
            self.cleanup()

    def finish(self, verify: bool = False) -> int:
        if verify:
            self.verify()
        return 1 if self.violations else 0

    def cleanup(self) -> None:
        from shmring.segment import unlink_ring_objects

        for child in self.children:
            if not child.reaped and child.stopped:
                self.signal(child, signal.SIGCONT)
                child.stopped = False
        for child in self.children:
            if not child.reaped:
                child.killed = True
                try:
                    self.signal(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.try_reap(child, 10)
        self._sampling = False
        self.sampler.join(1.0)
        left = [e for e in os.listdir("/dev/shm") if self.name in e]
        if left:
            self.violation(f"ring objects left in /dev/shm: {left}")
            unlink_ring_objects(self.name)

    # -- verification ---------------------------------------------------------------------
    def verify(self) -> None:
        """Run tools/stress_checks.py's checks on the writer's, every reader's and the flusher's results."""
        w = self.writer
        try:
            with open(w.cfg["result"]) as f:
                w.result = json.load(f)
        except (OSError, ValueError) as exc:
            self.violation(f"writer: no result: {exc}")
            return
        last = w.result["last_seq"]
        for p in check_writer(w.result):
            self.violation(f"writer: {p}")
        for child in self.children:
            if child.role == "reader" and not child.killed:
                self.verify_reader(child, last)
        if self.member_kinds:
            self.verify_group(last)

        def explained(lo: int, hi: int) -> bool:
            return gap_explained(lo, hi, self.outages, self.args.capacity, self.args.grace)

        self.flush_summary, problems = check_flusher_files(self.log_dir, last, w.result["capture_session_id"],
                                                           explained)
        final = self.flusher
        if final is not None and not final.killed and final.rc != 0:
            problems.append(f"the last flusher (pid {final.pid}) exited with {final.rc}: {final.stderr_tail()}")
        for p in problems:
            self.violation(f"flusher: {p}")

    def load_result(self, child: Child) -> list[str] | None:
        """A reader's or member's result into child.result, and its exit-status problem if any; None (a violation)
        when it left no result."""
        try:
            with open(child.cfg["result"]) as f:
                child.result = json.load(f)
        except (OSError, ValueError) as exc:
            self.violation(f"{child.slot} pid {child.pid}: no result ({exc}): {child.stderr_tail()}")
            return None
        return [f"exit status {child.rc}: {child.stderr_tail()}"] if child.rc != 0 else []

    def verify_reader(self, child: Child, last: int) -> None:
        exited = self.load_result(child)
        if exited is None:
            return
        r = child.result
        problems = check_reader(r, last) + exited
        for p in problems:
            self.violation(f"{child.slot} ({r['kind']}) pid {child.pid}: {p}"
                           + (f" (e.g. {r['examples']})" if r["examples"] else ""))

    def verify_group(self, last: int) -> None:
        members = [c for c in self.children if c.role == "member"]
        for child in members:
            if child.killed:
                continue
            exited = self.load_result(child)
            if exited is None:
                continue
            problems = check_member(child.result) + exited
            for p in problems:
                self.violation(f"{child.slot} ({child.result['kind']}) pid {child.pid}: {p}")
        self.group_summary, problems = check_group([c.cfg["records"] for c in members], last)
        for p in problems:
            self.violation(f"group {GROUP}: {p}")

    # -- report -------------------------------------------------------------------------------
    def report(self, rc: int, elapsed: float) -> dict:
        rows = []

        def row(role, children, counts, verdict, checks=None):
            pids = [c.pid for c in children]
            killed = sum(1 for c in children if c.killed)
            rows.append({"role": role, "pids": pids, "instances": len(children), "killed": killed,
                         "cpu_s": sum(c.cpu_s for c in children),
                         "peak_rss_mb": max((c.peak_rss for c in children), default=0) / 2**20,
                         "counts": counts, "verdict": verdict, "checks": checks})

        def verdict_of(prefixes):
            return "FAIL" if any(v.startswith(prefixes) for v in self.violations) else "OK"

        w = self.writer
        if w is not None:
            r = w.result or {}
            counts = (f"published {r.get('published', '?')} ({r.get('burst_events', 0)} in bursts); "
                      f"blocked {r.get('blocked_s', 0):.1f} s; max publish {1e3 * r.get('max_publish_s', 0):.0f} ms")
            row("writer", [w], counts, verdict_of(("writer",)))
        flushers = [c for c in self.children if c.role == "flusher"]
        if flushers:
            fs = getattr(self, "flush_summary", None)
            counts = (f"lines {fs['lines']}; gaps {len(fs['gaps'])} ({fs['gap_events']} events)" if fs else "?")
            checks = {k: fs[k] for k in ("lines", "corrupt", "out_of_order", "duplicates", "missing")} if fs else None
            row("flusher", flushers, counts, verdict_of(("flusher",)), checks)
        for slot, kind in self.reader_kinds.items():
            insts = [c for c in self.children if c.role == "reader" and c.slot == slot]
            done = [c.result for c in insts if c.result]
            counts = "/".join(str(sum(r[k] for r in done)) for k in ("delivered", "dropped", "filtered"))
            checks = {name: sum(r[key] for r in done) for name, key in READER_CHECKS}
            row(f"reader {slot} {kind}", insts, counts, verdict_of((f"{slot} ",)), checks)
        members = [c for c in self.children if c.role == "member"]
        if members:
            gs = getattr(self, "group_summary", None)
            counts = (f"{gs['deliveries']} deliveries, {gs['redelivered']} redelivered" if gs else "?")
            checks = ({k: gs[k] for k in ("seqs", "lost", "fresh_twice", "drops", "corrupt")} if gs else None)
            row(f"group {GROUP}", members, counts, verdict_of(("group", *(f"{s} " for s in self.members))),
                checks)
        me = self.psutil.Process()
        import resource

        cpu = me.cpu_times()
        rows.append({"role": "orchestrator", "pids": [os.getpid()], "instances": 1, "killed": 0,
                     "cpu_s": cpu.user + cpu.system,
                     "peak_rss_mb": max(me.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                        * 1024) / 2**20, "counts": "", "verdict": ""})
        return {"ring": self.name, "seed": self.args.seed, "rate": self.args.rate, "readers": self.args.readers,
                "capacity": self.args.capacity, "grace_s": self.args.grace, "elapsed_s": elapsed,
                "last_seq": (w.result or {}).get("last_seq") if w else None, "faults": self.faults,
                "outages": [{k: v for k, v in o.items() if k not in ("killed_at", "attached_at")}
                            for o in self.outages],
                "processes": rows, "violations": self.violations, "exit_status": rc,
                "flusher": getattr(self, "flush_summary", None), "writer": w.result if w else None,
                "reader_instances": [dict(slot=c.slot, pid=c.pid, killed=c.killed, rc=c.rc, cpu_s=c.cpu_s,
                                          peak_rss_mb=c.peak_rss / 2**20, result=c.result)
                                     for c in self.children if c.role == "reader"],
                "group": getattr(self, "group_summary", None), "member_kinds": self.member_kinds}


def print_report(rep: dict, out) -> None:
    f = rep["faults"]

    def p(*a):
        print(*a, file=out)

    rate = "flat out" if rep["rate"] <= 0 else f"{rep['rate']}/s"
    p(f"shmring stress: ring {rep['ring']}, seed {rep['seed']}, rate {rate}, "
      f"{rep['readers']} readers, capacity {rep['capacity']}, flusher grace {rep['grace_s']} s")
    p(f"faults: reader_kills={f['reader_kills']} reader_stops={f['reader_stops']} "
      f"flusher_kills={f['flusher_kills']} long_outages={f['long_outages']} bursts={f['bursts']} "
      f"member_kills={f['member_kills']} member_stops={f['member_stops']}")
    p(f"  readers restarted resuming after their cursor: {f['reader_restarts_resuming']}, at the head: "
      f"{f['reader_restarts_at_head']}; readers stopped {f['reader_stopped_s']:.1f} s in all")
    for o in rep["outages"]:
        if o.get("outage_s") is not None:
            p(f"  flusher outage {o['outage_s']:.2f} s{' (long)' if o['long'] else ''}: killed at seq "
              f"{o['seq_at_kill']}, back at seq {o['seq_at_attach']}")
    p(f"last seq {rep['last_seq']}")
    if rep.get("member_kinds"):
        p(f"group {GROUP}: members {', '.join(f'{slot} {kind}' for slot, kind in rep['member_kinds'].items())}")
    p("")
    header = (f"{'process':<27} {'pid(s)':<34} {'CPU s':>7} {'peak RSS MB':>11}  "
              f"{'delivered/dropped/filtered':<44} verdict")
    p(header)
    p("-" * len(header))
    for r in rep["processes"]:
        pids = ",".join(str(x) for x in r["pids"])
        if len(pids) > 33:
            pids = pids[:26] + f"..(+{len(r['pids']) - pids[:26].count(',') - 1})"
        role = r["role"] + (f" x{r['instances']}" if r["instances"] > 1 else "")
        p(f"{role:<27} {pids:<34} {r['cpu_s']:7.1f} {r['peak_rss_mb']:11.1f}  {r['counts']:<44} {r['verdict']}")
    p("")
    p("reader and flusher rows sum every instance; counts are those of the instances that read to the end "
      "(a killed instance reports nothing)")
    p("")
    p("checked:")
    for r in rep["processes"]:
        c = r.get("checks")
        if c is None:
            continue
        if r["role"] == "flusher":
            p(f"  {r['role']:<25} {c['lines']:>9} lines:  {c['corrupt']} corrupt, {c['out_of_order']} out of order, "
              f"{c['duplicates']} duplicated, {c['missing']} missing")
        elif r["role"].startswith("group"):
            p(f"  {r['role']:<25} {c['seqs']:>9} seqs:   {c['lost']} lost, {c['fresh_twice']} given fresh twice, "
              f"{c['drops']} dropped, {c['corrupt']} corrupt")
        else:
            p(f"  {r['role']:<25} {c['events']:>9} events: {c['corrupt']} corrupt, {c['out_of_order']} out of order, "
              f"{c['bad_steps']} bad cursor steps, {c['off_filter']} off filter")
    if rep["violations"]:
        p(f"\nVIOLATIONS ({len(rep['violations'])}):")
        for v in rep["violations"][:50]:
            p(f"  - {v}")
    p(f"\n{'FAIL' if rep['exit_status'] else 'PASS'}: {len(rep['violations'])} violations in "
      f"{rep['elapsed_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_writer", "_reader", "_member"):
        cfg = json.loads(argv[1])
        return {"_writer": writer_main, "_reader": reader_main, "_member": member_main}[argv[0]](cfg)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the whole run, start to verdict (default 60)")
    parser.add_argument("--rate", type=int, default=5000, help="events/s; 0 = flat out (default 5000)")
    parser.add_argument("--readers", type=int, default=4, help="readers (default 4: fast, slow, filtered, both)")
    parser.add_argument("--members", type=int, default=2,
                        help="members of one gating consumer group (default 2: a Reader and an AsyncReader; 0: none)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random)")
    parser.add_argument("--capacity", type=int, default=2048,
                        help="ring slots (default 2048: about what the 1 MiB data area holds, so either laps)")
    parser.add_argument("--data-bytes", type=int, default=1024 * 1024, help="ring data area (default 1 MiB)")
    parser.add_argument("--grace", type=float, default=3.0, help="writer's flusher grace period, s (default 3)")
    parser.add_argument("--slow-us", type=float, default=50.0, help="CPU a slow reader burns per event (µs)")
    parser.add_argument("--no-long-outage", action="store_true", help="never keep the flusher down past grace")
    parser.add_argument("--ring-name", default=None, help="name of the ring (default: stress-<pid>-<random>)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (flushed files, logs)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout (table on stderr)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each fault as it happens (stderr)")
    args = parser.parse_args(argv)
    if args.readers < 1 or args.readers > 32:
        parser.error("--readers must be between 1 and 32")
    if args.members < 0 or args.members > 16:
        parser.error("--members must be between 0 and 16")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through cleanup: children killed by pid, ring removed

    signal.signal(signal.SIGTERM, on_sigterm)
    t0 = time.monotonic()
    stress = Stress(args)
    try:
        rc = stress.run()
    finally:
        if args.keep:
            print(f"kept {stress.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(stress.tmp, ignore_errors=True)
    rep = stress.report(rc, time.monotonic() - t0)
    if args.json:
        print_report(rep, sys.stderr)
        print(json.dumps(rep, indent=2, default=str))
    else:
        print_report(rep, sys.stdout)
    return rc


if __name__ == "__main__":
    sys.exit(main())
