"""Benchmark shmring against its peers: the same workload over each transport (a benchmark, not a test).

The workload: one writer (this process) sends a ~300-byte event to 1, 2 and 4
reader processes, which decode every event. The event is the ``console.log``
envelope tools/bench.py uses; msgspec encode and decode are counted for every
transport:
- shmring: ``CaptureSession.publish(Event)`` (validates, msgspec-encodes the
  envelope) and ``Reader.read()`` (msgspec-decodes it);
- every peer: the writer msgspec-encodes ``Envelope(session, seq, event)``
  once per event and sends the bytes; each reader msgspec-decodes them into an
  ``Envelope``.

The transports (a peer whose package is not installed is skipped with a note;
``pip install -e '.[bench]'`` installs them all):
- shmring: the ring (65,536 slots, 64 MiB data area: the defaults); readers
  block on its semaphore;
- mp.Queue: ``multiprocessing.Queue(maxsize=8192)``, one per reader; the
  writer blocks when one is full;
- faster-fifo: ``faster_fifo.Queue`` of 8192 x 400 bytes, one per reader;
  the writer ``put``s each event, readers ``get_many``; the writer blocks when
  one is full;
- zmq: pyzmq PUB/SUB over ``ipc://``, default high-water marks (1000); the
  writer never blocks, a slow subscriber loses messages;
- iceoryx2: publish-subscribe through its Python bindings, payloads as byte
  slices (``Slice[c_uint8]``, copied in with ``memmove``), subscriber buffer
  8192, default overflow (the oldest unread sample is overwritten), and an
  event service: the writer notifies after each sample, an idle reader waits
  on its listener;
- redis: Redis Streams on a ``redis-server`` this tool starts on loopback (a
  free port, no persistence) and stops afterwards, if one is installed; the
  writer ``XADD``s (pipelined 64 at a time when flat out), each reader
  ``XREAD BLOCK``s from the start of the stream; no ``MAXLEN`` trimming, so
  nothing is lost.

zmq and iceoryx2 drop messages sent before a subscriber is connected: the
writer sends probe messages until every reader has seen one, then starts. The
end of the stream is a sentinel (zmq, iceoryx2, redis, the queues: repeated
until every reader has it) or ``close()`` (shmring).

What is measured, each figure the median of ``--runs`` (>= 3) runs:
1. delivered throughput: the writer sends flat out for ``--seconds``; each
   reader's delivered events / (its last event - its first); the table gives the
   mean over readers (per reader), and the writer's rate;
2. loss: events sent but not delivered, per reader, as a share of what was
   sent; for shmring also whether the reader was told (a drop count in the
   stream), for the others it never is;
3. latency at a fixed moderate rate (``--rate``, 5000/s by default, 1 reader,
   ``--latency-seconds``): the writer stamps ``time.monotonic_ns()`` into the
   event, the reader subtracts it after decoding; p50 and p99.

Output: ``peers.md`` (table, machine, per-run values), ``peers.png`` (three
plots) and ``peers.json``, in a new directory ``bench-peers-<timestamp>/`` under
the system's temporary directory (or ``--out DIR``). ``--publish`` writes them
to the tracked ``tools/bench_peers_results/`` instead, for the README.

    python tools/bench_peers.py            # ~3-4 min here
    python tools/bench_peers.py --publish  # the same, into tools/bench_peers_results/
    python tools/bench_peers.py --quick    # ~1 min (shorter phases)
    python tools/bench_peers.py --transports shmring,zmq --runs 5
"""

import argparse
import ctypes
import json
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import platform
import queue as queue_mod
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import msgspec

from common import (CAPTURE_SESSION_ID, BenchError, Stamp, choose_pad, cpu_snapshot, foreign_pct, make_data,
                    make_event, stamped)
from shmring import CaptureSession, Envelope, Reader, RingClosed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRANSPORTS = ("shmring", "mp.Queue", "faster-fifo", "zmq", "iceoryx2", "redis")
READER_COUNTS = (1, 2, 4)
CAPACITY = 65536
DATA_BYTES = 64 * 1024 * 1024
MPQ_MAXSIZE = 8192
FF_BYTES = 8192 * 400
IOX_BUFFER = 8192
IOX_MAX_SLICE = 512
REDIS_PIPELINE = 64
STALL_S = 10.0
"""A reader that gets nothing for this long gives up (and says so)."""
READY_TIMEOUT_S = 30.0
PROBE = b"P"
END = b"E"

_counter = 0


def unique(prefix: str) -> str:
    global _counter
    _counter += 1
    return f"{prefix}-{os.getpid()}-{_counter}"


# =============================================================================
# Readers (in the worker processes)
# =============================================================================

class Counter:
    """What a reader counts: delivered events, order, first/last times, latencies."""

    def __init__(self, conn, mode: str):
        self.conn = conn
        self.latency = mode == "latency"
        self.delivered = 0
        self.reported_lost = 0
        self.last_seq = 0
        self.out_of_order = 0
        self.t_first = None
        self.t_last = None
        self.lat: list[int] = []
        self.stalled = False
        self.decode_stamp = msgspec.json.Decoder(Stamp).decode

    def got(self, env: Envelope) -> None:
        now = time.monotonic_ns()
        if self.t_first is None:
            self.t_first = now
        self.t_last = now
        self.delivered += 1
        if env.seq <= self.last_seq:
            self.out_of_order += 1
        self.last_seq = env.seq
        if self.latency:
            self.lat.append(now - self.decode_stamp(env.event.data).t)

    def result(self) -> dict:
        out = {"delivered": self.delivered, "reported_lost": self.reported_lost, "last_seq": self.last_seq,
               "out_of_order": self.out_of_order, "stalled": self.stalled,
               "elapsed": (self.t_last - self.t_first) / 1e9 if self.t_first is not None else 0.0}
        if self.latency:
            lat = sorted(self.lat)
            n = len(lat)
            out.update(n=n, p50_us=lat[n // 2] / 1e3 if n else None,
                       p99_us=lat[min(n - 1, int(0.99 * n))] / 1e3 if n else None,
                       max_us=lat[-1] / 1e3 if n else None)
        return out


def read_shmring(conn, mode, params, mpq, ffq) -> dict:
    c = Counter(conn, mode)
    reader = Reader.attach(params["name"])
    read = reader.read
    conn.send(("ready",))
    try:
        while True:
            res = read(STALL_S)
            if res is None:
                c.stalled = True
                break
            if res.envelope is not None:
                c.got(res.envelope)
            else:
                c.reported_lost += res.dropped
    except RingClosed:
        pass
    finally:
        reader.close()
    return c.result()


def read_mpq(conn, mode, params, mpq, ffq) -> dict:
    c = Counter(conn, mode)
    decode = msgspec.json.Decoder(Envelope).decode
    get = mpq.get
    conn.send(("ready",))
    try:
        while True:
            item = get(True, STALL_S)
            if item is None:
                break
            c.got(decode(item))
    except queue_mod.Empty:
        c.stalled = True
    return c.result()


def read_ff(conn, mode, params, mpq, ffq) -> dict:
    c = Counter(conn, mode)
    decode = msgspec.json.Decoder(Envelope).decode
    get_many = ffq.get_many
    conn.send(("ready",))
    try:
        done = False
        while not done:
            for item in get_many(block=True, timeout=STALL_S, max_messages_to_get=1024):
                if item is None:
                    done = True
                    break
                c.got(decode(item))
    except queue_mod.Empty:
        c.stalled = True
    return c.result()


def read_zmq(conn, mode, params, mpq, ffq) -> dict:
    import zmq

    c = Counter(conn, mode)
    decode = msgspec.json.Decoder(Envelope).decode
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVTIMEO, int(STALL_S * 1000))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(params["address"])
    recv = sock.recv
    conn.send(("ready",))
    synced = False
    try:
        while True:
            msg = recv()
            if len(msg) == 1:
                if msg == PROBE:
                    if not synced:
                        synced = True
                        conn.send(("synced",))
                    continue
                if msg == END:
                    break
            c.got(decode(msg))
    except zmq.Again:
        c.stalled = True
    finally:
        sock.close(0)
        ctx.term()
    return c.result()


def _iox_service(node, name: str):
    import iceoryx2 as iox2

    pubsub = (node.service_builder(iox2.ServiceName.new(name))
              .publish_subscribe(iox2.Slice[ctypes.c_uint8])
              .subscriber_max_buffer_size(IOX_BUFFER)
              .max_subscribers(8)
              .history_size(0)
              .open_or_create())
    event = node.service_builder(iox2.ServiceName.new(name + "/event")).event().open_or_create()
    return pubsub, event


def read_iox(conn, mode, params, mpq, ffq) -> dict:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    c = Counter(conn, mode)
    decode = msgspec.json.Decoder(Envelope).decode
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    pubsub, event = _iox_service(node, params["service"])
    sub = pubsub.subscriber_builder().buffer_size(IOX_BUFFER).create()
    listener = event.listener_builder().create()
    receive = sub.receive
    wait = listener.timed_wait
    tick = iox2.Duration.from_millis(100)
    conn.send(("ready",))
    synced = False
    idle_since = None
    try:
        while True:
            sample = receive()
            if sample is None:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since > STALL_S:
                    c.stalled = True
                    break
                wait(tick)
                continue
            idle_since = None
            view = sample.payload().as_memory_view()
            if len(view) == 1:
                msg = bytes(view)
                del view, sample
                if msg == PROBE:
                    if not synced:
                        synced = True
                        conn.send(("synced",))
                    continue
                if msg == END:
                    break
                continue
            # Decoded straight from the sample's shared memory. msgspec's Raw
            # (the event's data) is a view into that memory, so use it before
            # the sample is released, not after.
            c.got(decode(view))
            del view, sample
    finally:
        del receive, wait, listener, sub, pubsub, event, node
    return c.result()


def read_redis(conn, mode, params, mpq, ffq) -> dict:
    import redis

    c = Counter(conn, mode)
    decode = msgspec.json.Decoder(Envelope).decode
    r = redis.Redis(host="127.0.0.1", port=params["port"])
    key = params["key"]
    last_id = b"0-0"
    conn.send(("ready",))
    done = False
    try:
        while not done:
            reply = r.xread({key: last_id}, count=512, block=int(STALL_S * 1000))
            if not reply:
                c.stalled = True
                break
            for entry_id, fields in reply[0][1]:
                last_id = entry_id
                payload = fields.get(b"d")
                if payload is None:
                    done = True
                    break
                c.got(decode(payload))
    finally:
        r.close()
    return c.result()


READERS = {"shmring": read_shmring, "mp.Queue": read_mpq, "faster-fifo": read_ff, "zmq": read_zmq,
           "iceoryx2": read_iox, "redis": read_redis}


def worker_main(idx: int, conn, mpq, ffq) -> None:
    """A reader process reused across runs: takes a command, reads one stream, reports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        if cmd[0] == "quit":
            return
        _, transport, mode, params = cmd
        try:
            out = READERS[transport](conn, mode, params, mpq, ffq)
            conn.send(("done", out))
        except BaseException as exc:  # report, so the parent need not wait for a timeout
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))


# =============================================================================
# The writer side (this process)
# =============================================================================

class Pool:
    """Four reader processes, each with its own mp.Queue and faster-fifo queue, reused for every run."""

    def __init__(self, size: int, have_ff: bool):
        self.ctx = mp.get_context("spawn")
        self.size = size
        self.have_ff = have_ff
        self.procs, self.conns, self.mpqs, self.ffqs = [], [], [], []
        for i in range(size):
            mpq = self.ctx.Queue(maxsize=MPQ_MAXSIZE)
            ffq = None
            if have_ff:
                import faster_fifo

                ffq = faster_fifo.Queue(max_size_bytes=FF_BYTES)
            parent, child = self.ctx.Pipe()
            p = self.ctx.Process(target=worker_main, args=(i, child, mpq, ffq), daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
            self.mpqs.append(mpq)
            self.ffqs.append(ffq)

    def start(self, n: int, transport: str, mode: str, params: dict) -> list:
        conns = self.conns[:n]
        for c in conns:
            c.send(("run", transport, mode, params))
        self.expect(conns, "ready", READY_TIMEOUT_S)
        return conns

    @staticmethod
    def expect(conns, kind: str, timeout: float, while_waiting=None) -> list:
        """One message of `kind` from each of `conns`, in their order."""
        got = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(conns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out waiting for {len(conns) - len(got)} reader(s) to say {kind!r}")
            if while_waiting is not None:
                while_waiting()
            for c in mpc.wait([c for c in conns if id(c) not in got], min(left, 0.005 if while_waiting else left)):
                msg = c.recv()
                if msg[0] == "error":
                    raise BenchError(f"reader failed: {msg[1]}")
                if msg[0] != kind:
                    raise BenchError(f"reader said {msg[0]!r} while we waited for {kind!r}")
                got[id(c)] = msg[1] if len(msg) > 1 else None
        return [got[id(c)] for c in conns]

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(("quit",))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)
        for q in self.mpqs:
            q.cancel_join_thread()
            q.close()


def flat_out(step, duration: float) -> tuple[int, float]:
    """Call step(seq) for seq = 1, 2, ... as fast as it goes for `duration` s."""
    clock = time.monotonic
    n = 0
    t0 = clock()
    end = t0 + duration
    batch = range(256)
    while True:
        for _ in batch:
            n += 1
            step(n)
        if clock() >= end:
            break
    return n, clock() - t0


def paced(step, rate: int, duration: float) -> tuple[int, float]:
    """Call step(seq) at `rate` per second for `duration` s, catching up after a late wake-up.

    Between events it sleeps, never spins: a spinning writer holds the GIL,
    which starves a helper thread (mp.Queue's feeder) for the 5 ms switch
    interval and would charge that to the transport.
    """
    now_ns = time.monotonic_ns
    sleep = time.sleep
    period = 1e9 / rate
    total = int(rate * duration)
    t0 = now_ns()
    n = 0
    while n < total:
        now = now_ns()
        due = min(int((now - t0) // period) + 1, total)
        if n < due:
            for _ in range(min(due - n, 64)):
                n += 1
                step(n)
        else:
            sleep((t0 + n * period - now) / 1e9)
    return n, (now_ns() - t0) / 1e9


class Bench:
    def __init__(self, args, pad: str):
        self.args = args
        self.pad = pad
        self.event = make_event(pad)
        self.peer_event = stamped(self.event)
        self.encode = msgspec.json.Encoder(order="deterministic").encode
        self.pool = None
        self.redis_proc = None
        self.redis_port = None
        self.redis_dir = None
        self.iox_node = None

    # -- one run of one transport -------------------------------------------------------
    def run(self, transport: str, n: int, mode: str) -> dict:
        """mode "count": flat out for --seconds; "latency": paced at --rate for --latency-seconds."""
        return getattr(self, "run_" + transport.replace(".", "_").replace("-", "_"))(n, mode)

    def _steps(self, send) -> tuple:
        """(count step, latency step) that encode an envelope and hand it to send(payload)."""
        encode, ev = self.encode, self.peer_event
        replace, pad, now_ns = msgspec.structs.replace, self.pad, time.monotonic_ns

        def step(seq):
            send(encode(Envelope(CAPTURE_SESSION_ID, seq, ev)))

        def lat_step(seq):
            send(encode(Envelope(CAPTURE_SESSION_ID, seq, replace(ev, data=make_data(now_ns(), pad)))))

        return step, lat_step

    def _drive(self, step, lat_step, mode: str) -> tuple[int, float]:
        if mode == "count":
            return flat_out(step, self.args.seconds)
        return paced(lat_step, self.args.rate, self.args.latency_seconds)

    def _timeout(self) -> float:
        return self.args.seconds + self.args.latency_seconds + 60.0

    def run_shmring(self, n: int, mode: str) -> dict:
        name = unique("benchpeers")
        session = CaptureSession.create(name, capture_session_id=CAPTURE_SESSION_ID, capacity=CAPACITY,
                                        data_bytes=DATA_BYTES)
        try:
            conns = self.pool.start(n, "shmring", mode, {"name": name})
            publish, ev = session.publish, self.event
            replace, pad, now_ns = msgspec.structs.replace, self.pad, time.monotonic_ns

            def step(seq):
                publish(ev)

            def lat_step(seq):
                publish(replace(ev, data=make_data(now_ns(), pad)))

            sent, elapsed = self._drive(step, lat_step, mode)
            session.close()
            readers = self.pool.expect(conns, "done", self._timeout())
        finally:
            session.close()
        return {"sent": sent, "writer_elapsed": elapsed, "readers": readers}

    def _run_queues(self, n: int, mode: str, transport: str, queues) -> dict:
        conns = self.pool.start(n, transport, mode, {})
        puts = [q.put for q in queues[:n]]
        timeout = STALL_S

        def send(payload):
            for put in puts:
                put(payload, True, timeout)

        step, lat_step = self._steps(send)
        sent, elapsed = self._drive(step, lat_step, mode)
        for put in puts:
            put(None, True, timeout)
        readers = self.pool.expect(conns, "done", self._timeout())
        return {"sent": sent, "writer_elapsed": elapsed, "readers": readers}

    def run_mp_Queue(self, n: int, mode: str) -> dict:
        return self._run_queues(n, mode, "mp.Queue", self.pool.mpqs)

    def run_faster_fifo(self, n: int, mode: str) -> dict:
        return self._run_queues(n, mode, "faster-fifo", self.pool.ffqs)

    def run_zmq(self, n: int, mode: str) -> dict:
        import zmq

        path = os.path.join(tempfile.gettempdir(), unique("shmring-bench-zmq") + ".ipc")
        address = "ipc://" + path
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(address)
        try:
            conns = self.pool.start(n, "zmq", mode, {"address": address})
            send = sock.send
            self.pool.expect(conns, "synced", READY_TIMEOUT_S, while_waiting=lambda: send(PROBE))
            step, lat_step = self._steps(send)
            sent, elapsed = self._drive(step, lat_step, mode)
            readers = self.pool.expect(conns, "done", self._timeout(), while_waiting=lambda: send(END))
        finally:
            sock.close(0)
            ctx.term()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return {"sent": sent, "writer_elapsed": elapsed, "readers": readers}

    def run_iceoryx2(self, n: int, mode: str) -> dict:
        import iceoryx2 as iox2

        if self.iox_node is None:
            iox2.set_log_level(iox2.LogLevel.Error)
            self.iox_node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        service = unique("shmring-bench/iox")
        pubsub, event = _iox_service(self.iox_node, service)
        pub = (pubsub.publisher_builder().initial_max_slice_len(IOX_MAX_SLICE)
               .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo).create())
        notifier = event.notifier_builder().create()
        loan, notify, memmove = pub.loan_slice_uninit, notifier.notify, ctypes.memmove

        def send(payload):
            sample = loan(len(payload))
            memmove(sample.payload_ptr, payload, len(payload))
            sample.assume_init().send()
            notify()

        conns = self.pool.start(n, "iceoryx2", mode, {"service": service})
        self.pool.expect(conns, "synced", READY_TIMEOUT_S, while_waiting=lambda: send(PROBE))
        step, lat_step = self._steps(send)
        sent, elapsed = self._drive(step, lat_step, mode)
        readers = self.pool.expect(conns, "done", self._timeout(), while_waiting=lambda: send(END))
        return {"sent": sent, "writer_elapsed": elapsed, "readers": readers}

    def run_redis(self, n: int, mode: str) -> dict:
        import redis

        r = redis.Redis(host="127.0.0.1", port=self.redis_port)
        key = unique("shmring-bench")
        try:
            conns = self.pool.start(n, "redis", mode, {"port": self.redis_port, "key": key})
            if mode == "count":
                pipe = r.pipeline(transaction=False)
                xadd, execute = pipe.xadd, pipe.execute
                pending = [0]

                def send(payload):
                    xadd(key, {"d": payload})
                    pending[0] += 1
                    if pending[0] >= REDIS_PIPELINE:
                        execute()
                        pending[0] = 0
            else:
                xadd_now = r.xadd

                def send(payload):
                    xadd_now(key, {"d": payload})

            step, lat_step = self._steps(send)
            sent, elapsed = self._drive(step, lat_step, mode)
            if mode == "count":
                execute()
            r.xadd(key, {"e": b"1"})
            readers = self.pool.expect(conns, "done", self._timeout())
        finally:
            r.delete(key)
            r.close()
        return {"sent": sent, "writer_elapsed": elapsed, "readers": readers}

    # -- redis-server ---------------------------------------------------------------------
    def start_redis(self) -> str | None:
        """Start a private redis-server on a free loopback port; None if it can't (then redis is skipped)."""
        binary = shutil.which("redis-server")
        if binary is None:
            return "redis-server is not installed (apt-get install redis-server)"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.redis_dir = tempfile.mkdtemp(prefix="shmring-bench-redis-")
        self.redis_proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.redis_dir, "--logfile", "", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping():
                    self.redis_port = port
                    return None
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        self.stop_redis()
        return "redis-server did not answer within 10 s"

    def stop_redis(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.terminate()  # our own child, by its pid
            try:
                self.redis_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
                self.redis_proc.wait(5)
            self.redis_proc = None
        if self.redis_dir:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            self.redis_dir = None


# =============================================================================
# Summaries, the table, the plot
# =============================================================================

def summarise_count(run: dict, n: int) -> dict:
    sent = run["sent"]
    readers = run["readers"]
    rates = [r["delivered"] / r["elapsed"] if r["elapsed"] > 0 else 0.0 for r in readers]
    lost = [sent - r["delivered"] for r in readers]
    return {"reader_rate": statistics.fmean(rates), "reader_rate_min": min(rates),
            "writer_rate": sent / run["writer_elapsed"], "sent": sent,
            "lost_pct": 100.0 * sum(lost) / (sent * n), "lost": sum(lost),
            "told": sum(r["reported_lost"] for r in readers),
            "silent": sum(lost) - sum(r["reported_lost"] for r in readers),
            "out_of_order": sum(r["out_of_order"] for r in readers),
            "stalled": any(r["stalled"] for r in readers)}


def summarise_latency(run: dict) -> dict:
    r = run["readers"][0]
    sent = run["sent"]
    return {"p50_us": r["p50_us"], "p99_us": r["p99_us"], "max_us": r["max_us"], "n": r["n"],
            "lost": sent - r["delivered"], "silent": sent - r["delivered"] - r["reported_lost"],
            "achieved_rate": sent / run["writer_elapsed"], "stalled": r["stalled"]}


def median_of(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_rate(v) -> str:
    if v is None:
        return "—"
    return f"{v / 1000:.1f}k" if v < 1e6 else f"{v / 1e6:.2f}M"


def fmt_pct(v) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    return f"{v:.2f}%" if v < 1 else f"{v:.1f}%"


def fmt_us(v) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def machine_description() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_gb = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        mem_gb = None
    versions = {"python": platform.python_version(), "msgspec": msgspec.__version__}
    for label, module, attr in (("pyzmq", "zmq", "__version__"), ("faster-fifo", "faster_fifo", None),
                                ("iceoryx2", "iceoryx2", None), ("redis-py", "redis", "__version__")):
        try:
            mod = __import__(module)
            if attr:
                versions[label] = getattr(mod, attr)
            else:
                from importlib.metadata import version

                versions[label] = version(label)
            if module == "zmq":
                versions["libzmq"] = mod.zmq_version()
        except Exception:  # noqa: BLE001 (not installed)
            pass
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5, check=False)
        versions["redis-server"] = out.stdout.split("v=")[1].split()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "kernel": platform.release(),
            "os": platform.platform(terse=True), "versions": versions}


def build_results(raw: dict, transports: list[str], args) -> dict:
    table = {}
    for t in transports:
        row = {"count": {}, "latency": None}
        for n in READER_COUNTS:
            runs = raw.get(t, {}).get(f"count{n}", [])
            sums = [summarise_count(r, n) for r in runs if "error" not in r]
            if sums:
                row["count"][n] = {k: median_of([s[k] for s in sums]) for k in
                                   ("reader_rate", "reader_rate_min", "writer_rate", "lost_pct", "silent", "told")}
                row["count"][n]["runs"] = [s["reader_rate"] for s in sums]
                row["count"][n]["silent_max"] = max(s["silent"] for s in sums)
                row["count"][n]["lost_pct_runs"] = [s["lost_pct"] for s in sums]
                row["count"][n]["stalled"] = any(s["stalled"] for s in sums)
        lruns = [summarise_latency(r) for r in raw.get(t, {}).get("latency", []) if "error" not in r]
        if lruns:
            row["latency"] = {k: median_of([s[k] for s in lruns]) for k in
                              ("p50_us", "p99_us", "max_us", "lost", "achieved_rate")}
            row["latency"]["silent_max"] = max(s["silent"] for s in lruns)
        table[t] = row
    return table


def markdown(results: dict, machine: dict, args, notes: list[str], env_bytes: int, elapsed: float) -> str:
    table = results["table"]
    L = []
    L.append("# shmring and its peers")
    L.append("")
    L.append(f"One writer sends a {env_bytes}-byte event (msgspec JSON envelope; encode and decode counted for "
             f"every transport) to N reader processes that decode every event. Medians of {args.runs} runs; "
             f"throughput phases {args.seconds:g} s flat out, latency {args.latency_seconds:g} s at "
             f"{args.rate}/s with 1 reader.")
    L.append("")
    L.append("| transport | delivered/s per reader, 1 reader | 2 readers | 4 readers | lost, 1 / 2 / 4 readers "
             "| reader told of its loss? | latency p50 / p99 @ "
             f"{args.rate // 1000}k/s (µs) |")
    L.append("|---|---:|---:|---:|---|---|---|")
    for t, row in table.items():
        cells = []
        for n in READER_COUNTS:
            c = row["count"].get(n)
            cells.append(fmt_rate(c["reader_rate"]) if c else "—")
        loss = " / ".join(fmt_pct(row["count"][n]["lost_pct"]) if n in row["count"] else "—" for n in READER_COUNTS)
        lost_any = any(row["count"][n]["lost_pct"] for n in row["count"])
        silent_any = any(row["count"][n]["silent_max"] for n in row["count"]) or (
            row["latency"] is not None and row["latency"]["silent_max"])
        if t == "shmring":
            told = "yes: exact drop count in the stream" + ("; silent loss 0" if not silent_any else
                                                             "; SILENT LOSS SEEN")
        elif t in ("mp.Queue", "faster-fifo"):
            told = "never loses: the writer blocks"
        elif t == "redis":
            told = "never loses here: no MAXLEN (trimming would be silent)"
        elif lost_any:
            told = "no: silent"
        else:
            told = "none lost in these runs; a loss would be silent"
        lat = row["latency"]
        lat_cell = f"{fmt_us(lat['p50_us'])} / {fmt_us(lat['p99_us'])}" if lat else "—"
        L.append(f"| {t} | {' | '.join(cells)} | {loss} | {told} | {lat_cell} |")
    L.append("")
    L.append("Writer's send rate, flat out (events/s, median), 1 / 2 / 4 readers:")
    L.append("")
    for t, row in table.items():
        L.append(f"- {t}: " + " / ".join(fmt_rate(row["count"][n]["writer_rate"]) if n in row["count"] else "—"
                                         for n in READER_COUNTS))
    L.append("")
    L.append("Delivered per reader, every run (events/s):")
    L.append("")
    for t, row in table.items():
        parts = []
        for n in READER_COUNTS:
            if n in row["count"]:
                parts.append(f"{n}: " + ", ".join(fmt_rate(v) for v in row["count"][n]["runs"]))
        L.append(f"- {t}: " + "; ".join(parts))
    L.append("")
    if results.get("verdict"):
        L.append(results["verdict"])
        L.append("")
    L.append("Plot: `peers.png`, beside this file.")
    L.append("")
    L.append("## Machine")
    L.append("")
    v = machine["versions"]
    L.append(f"{machine['cpu']}, {machine['cores']} cores, "
             f"{machine['memory_gb']:.0f} GB RAM, Linux {machine['kernel']}; a shared, noisy VM. "
             + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")
    L.append("")
    L.append("## Settings")
    L.append("")
    settings = {
        "shmring": f"ring of {CAPACITY} slots, {DATA_BYTES >> 20} MiB data area (the defaults); readers block on "
                   "a semaphore.",
        "mp.Queue": f"`maxsize={MPQ_MAXSIZE}` per reader; the writer blocks when one is full.",
        "faster-fifo": f"`max_size_bytes={FF_BYTES}` per reader; `put` per event, `get_many` on the reader; the "
                       "writer blocks when one is full.",
        "zmq": "PUB/SUB over `ipc://`, default high-water marks (1000 messages each side).",
        "iceoryx2": f"`Slice[c_uint8]` payloads, subscriber buffer {IOX_BUFFER}, safe overflow (the default: the "
                    "oldest unread sample is overwritten); an event service wakes idle readers (the writer "
                    "notifies after each sample).",
        "redis": f"Redis Streams, `XADD` pipelined {REDIS_PIPELINE} at a time when flat out (one at a time for "
                 "latency), `XREAD BLOCK` COUNT 512 per reader, no `MAXLEN`.",
    }
    for t in table:
        L.append(f"- {t}: {settings[t]}")
    L.append("")
    if notes:
        L.append("## Notes")
        L.append("")
        for n in notes:
            L.append(f"- {n}")
        L.append("")
    L.append(f"Generated by `python tools/bench_peers.py{' --quick' if args.quick else ''}` in {elapsed:.0f} s.")
    return "\n".join(L) + "\n"


def plot(results: dict, path: str, args) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    table = results["table"]
    transports = list(table)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    width = 0.8 / max(1, len(transports))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, t in enumerate(transports):
        xs = [j + (i - (len(transports) - 1) / 2) * width for j in range(len(READER_COUNTS))]
        rates = [(table[t]["count"].get(n) or {}).get("reader_rate") or 0 for n in READER_COUNTS]
        axes[0].bar(xs, [r / 1000 for r in rates], width, label=t, color=colors[i % len(colors)])
        losses = [(table[t]["count"].get(n) or {}).get("lost_pct") or 0 for n in READER_COUNTS]
        axes[1].bar(xs, losses, width, label=t, color=colors[i % len(colors)])
    for ax, title, ylabel in ((axes[0], "Delivered throughput per reader (flat out)", "thousand events/s"),
                              (axes[1], "Loss (share of events sent)", "% lost")):
        ax.set_xticks(range(len(READER_COUNTS)))
        ax.set_xticklabels([f"{n} reader{'s' if n > 1 else ''}" for n in READER_COUNTS])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(transports), fontsize=9, frameon=False)
    if "shmring" in table:
        axes[1].set_xlabel("shmring tells its reader every loss (exact count); zmq's and iceoryx2's are silent",
                           fontsize=8)
    lat_t = [t for t in transports if table[t]["latency"]]
    xs = range(len(lat_t))
    p50 = [table[t]["latency"]["p50_us"] for t in lat_t]
    p99 = [table[t]["latency"]["p99_us"] for t in lat_t]
    axes[2].bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    axes[2].bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    axes[2].set_xticks(list(xs))
    axes[2].set_xticklabels(lat_t, rotation=20, fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("µs (log scale)")
    axes[2].set_title(f"Latency at {args.rate}/s, 1 reader")
    axes[2].legend(fontsize=8)
    axes[2].grid(axis="y", alpha=0.3, which="both")
    fig.suptitle(f"shmring vs peers, ~300-byte events, median of {args.runs} runs", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def verdict(table: dict) -> str:
    """The issue's target: shmring leads every peer on delivered throughput at 1 and 2 readers, no silent loss."""
    if "shmring" not in table:
        return ""
    lines = []
    ok = True
    for n in (1, 2):
        mine = (table["shmring"]["count"].get(n) or {}).get("reader_rate")
        others = {t: (row["count"].get(n) or {}).get("reader_rate") for t, row in table.items() if t != "shmring"}
        others = {t: v for t, v in others.items() if v}
        if mine is None or not others:
            continue
        best_t = max(others, key=others.get)
        lead = mine / others[best_t]
        ok &= lead > 1
        lines.append(f"{n} reader{'s' if n > 1 else ''}: shmring {fmt_rate(mine)}/s vs best peer {best_t} "
                     f"{fmt_rate(others[best_t])}/s ({lead:.2f}×)")
    silent = any(c["silent_max"] for c in table["shmring"]["count"].values())
    lat = table["shmring"]["latency"]
    silent |= bool(lat and lat["silent_max"])
    ok &= not silent
    head = "**Target met**" if ok else "**Target not met**"
    text = (f"{head} (shmring leads every peer on delivered throughput at 1 and 2 readers, with zero silent "
            f"loss): " + "; ".join(lines) + f"; shmring silent loss: {'SOME' if silent else '0'}.")
    # The same comparison among the peers that lost nothing silently in any run.
    lossless = []
    for n in (1, 2):
        mine = (table["shmring"]["count"].get(n) or {}).get("reader_rate")
        others = {t: (row["count"].get(n) or {}).get("reader_rate") for t, row in table.items()
                  if t != "shmring" and all(c["silent_max"] == 0 for c in row["count"].values())}
        others = {t: v for t, v in others.items() if v}
        if mine and others:
            best_t = max(others, key=others.get)
            lossless.append(f"{n} reader{'s' if n > 1 else ''}: {mine / others[best_t]:.2f}× the best "
                            f"({best_t} {fmt_rate(others[best_t])}/s)")
    if lossless:
        text += (" Against the peers that lost nothing silently in any run: " + "; ".join(lossless) + ".")
    return text


# =============================================================================
# main
# =============================================================================

def _iox_leftovers() -> set[str]:
    """iceoryx2's machine-wide files (its global management segment, its /tmp/iceoryx2 folders)."""
    found = {os.path.join("/dev/shm", e) for e in os.listdir("/dev/shm") if e.startswith("iox2_")}
    if os.path.isdir("/tmp/iceoryx2"):
        found.add("/tmp/iceoryx2")
    return found


def _remove_iox_leftovers(before: set[str]) -> None:
    """Remove what iceoryx2 created during our run and keeps after its last node is gone."""
    for path in sorted(_iox_leftovers() - before):
        if path == "/tmp/iceoryx2":
            for sub in ("nodes", "services"):
                try:
                    os.rmdir(os.path.join(path, sub))  # only when empty: nothing of a live user is touched
                except OSError:
                    pass
            try:
                os.rmdir(path)
            except OSError:
                pass
        elif path.endswith("global_mgmt"):
            try:
                os.unlink(path)
            except OSError:
                pass


def available(transports: list[str]) -> tuple[list[str], list[str]]:
    ok, notes = [], []
    for t in transports:
        module = {"zmq": "zmq", "faster-fifo": "faster_fifo", "iceoryx2": "iceoryx2", "redis": "redis"}.get(t)
        if module:
            try:
                __import__(module)
            except ImportError:
                notes.append(f"{t} skipped: its Python package is not installed (pip install -e '.[bench]')")
                continue
        ok.append(t)
    return ok, notes


PUBLISHED_DIR = os.path.join(ROOT, "tools", "bench_peers_results")
"""The tracked results the README quotes; written only with --publish."""


def results_dir(out: str | None, publish: bool) -> str:
    """Where this run writes, created now: the tracked directory only if `publish`, else a new one."""
    if publish:
        os.makedirs(PUBLISHED_DIR, exist_ok=True)
        return PUBLISHED_DIR
    if out is None:
        return tempfile.mkdtemp(prefix=time.strftime("bench-peers-%Y%m%d-%H%M%S-"))
    os.makedirs(out)  # a new directory: an earlier run's results are never overwritten
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases (~1 min in all)")
    parser.add_argument("--runs", type=int, default=3, help="runs of every measure (>= 3; default 3)")
    parser.add_argument("--seconds", type=float, default=None, help="flat-out phase length (default 2; quick 0.4)")
    parser.add_argument("--latency-seconds", type=float, default=None, help="latency phase (default 2; quick 0.6)")
    parser.add_argument("--rate", type=int, default=5000, help="events/s of the latency phase (default 5000)")
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        help=f"comma-separated subset of {','.join(TRANSPORTS)}")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR",
                       help="a new directory for peers.md, peers.png, peers.json (default: a new "
                            "bench-peers-<timestamp>/ under the temporary directory)")
    where.add_argument("--publish", action="store_true",
                       help=f"write them to the tracked {os.path.relpath(PUBLISHED_DIR, ROOT)}/ (for the README)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    if args.seconds is None:
        args.seconds = 0.4 if args.quick else 2.0
    if args.latency_seconds is None:
        args.latency_seconds = 0.6 if args.quick else 2.0
    wanted = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TRANSPORTS]
    if unknown:
        parser.error(f"unknown transports {unknown}; choose from {', '.join(TRANSPORTS)}")
    try:
        args.out = results_dir(args.out, args.publish)
    except FileExistsError:
        parser.error(f"{args.out} exists; give --out a new directory")
    except OSError as exc:
        parser.error(f"cannot create {args.out}: {exc.strerror}")
    print(f"results will be in {args.out}/", file=sys.stderr)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    t_start = time.monotonic()
    cpu_start = cpu_snapshot()
    iox_before = _iox_leftovers()
    transports, notes = available(wanted)
    pad, env_bytes = choose_pad()
    bench = Bench(args, pad)
    raw: dict = {t: {} for t in transports}
    try:
        if "redis" in transports:
            why = bench.start_redis()
            if why:
                notes.append(f"redis skipped: {why}")
                transports.remove("redis")
        bench.pool = Pool(max(READER_COUNTS), have_ff="faster-fifo" in transports)
        print(f"envelope {env_bytes} bytes; transports: {', '.join(transports)}; {args.runs} runs", file=sys.stderr)
        for run in range(args.runs):
            for t in transports:
                for key, n, mode in [(f"count{n}", n, "count") for n in READER_COUNTS] + [("latency", 1, "latency")]:
                    t0 = time.monotonic()
                    try:
                        out = bench.run(t, n, mode)
                    except BenchError as exc:
                        out = {"error": str(exc)}
                        notes.append(f"run {run + 1}, {t}, {key}: {str(exc).splitlines()[0]}")
                        print(f"  run {run + 1} {t} {key} failed: {exc}", file=sys.stderr)
                        # a failed run can leave readers busy: start the pool afresh
                        bench.pool.close()
                        bench.pool = Pool(max(READER_COUNTS), have_ff="faster-fifo" in transports)
                    raw[t].setdefault(key, []).append(out)
                    if "error" in out:
                        brief = "error"
                    elif mode == "count":
                        s = summarise_count(out, n)
                        brief = (f"{fmt_rate(s['reader_rate'])}/s per reader, writer {fmt_rate(s['writer_rate'])}/s, "
                                 f"lost {fmt_pct(s['lost_pct'])}")
                    else:
                        s = summarise_latency(out)
                        brief = f"p50 {fmt_us(s['p50_us'])} µs, p99 {fmt_us(s['p99_us'])} µs, lost {s['lost']}"
                    print(f"  run {run + 1} {t:<12} {key:<8} {time.monotonic() - t0:5.1f} s  {brief}",
                          file=sys.stderr)
    finally:
        if bench.pool is not None:
            bench.pool.close()
        bench.stop_redis()
        bench.iox_node = None
        _remove_iox_leftovers(iox_before)
    noise = foreign_pct(cpu_start, cpu_snapshot())
    notes.append(f"other processes on the machine used {noise:.0f}% of its CPU during the run "
                 "(the figures are only as steady as that allows)")
    for t in transports:
        for key, runs in raw[t].items():
            for r in runs:
                if "error" not in r:
                    for x in r["readers"]:
                        if x.get("stalled"):
                            notes.append(f"{t} {key}: a reader stalled ({STALL_S:g} s without an event)")
                        if x.get("out_of_order"):
                            notes.append(f"{t} {key}: {x['out_of_order']} events out of order")
    table = build_results(raw, transports, args)
    results = {"table": table}
    results["verdict"] = verdict(table)
    machine = machine_description()
    elapsed = time.monotonic() - t_start
    why = plot(results, os.path.join(args.out, "peers.png"), args)
    if why:
        notes.append(why)
    md = markdown(results, machine, args, sorted(set(notes), key=notes.index), env_bytes, elapsed)
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump({"machine": machine, "envelope_bytes": env_bytes, "args": vars(args), "table": table,
                   "raw": raw, "notes": notes}, f, indent=1, default=str)
    print(md)
    print(f"wrote {args.out}/peers.md, peers.png, peers.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
