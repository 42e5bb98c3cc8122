"""Benchmark the HTTP edge (issue 15's targets); a benchmark, not a test: it asserts nothing.

Each measure starts its own ``shmring serve NAME --http 127.0.0.1:PORT`` (a ring of 2^18 slots), runs
``--runs`` times (default 3) and reports the median with the min-max. CPU is the scheduler's count for
a whole process, all threads (/proc/PID/task/*/schedstat).

1. idle: 1,000 SSE clients connected (asyncio sockets in one client process), nothing published, for
   ``--idle-s`` (10 s): the edge's and the writer's CPU as % of a core (target: together <= 2%), and the
   edge's RSS (target <= 200 MB).
2. live: 100 SSE clients (4 client processes of 25) on a stream published at 5k events/s through the
   ingest socket for ``--live-s`` (10 s): whether each client got every event (ids contiguous), and the
   latency from the writer's ``ts`` stamp to the client parsing the frame, p50/p99 (target p99 <= 50 ms).
3. catch-up: 200k events in the ring, then one client with ``?from=start`` reads them all (counting
   frames as they arrive): events/s (target >= 100k/s).
4. publishing: NDJSON bodies of 5,000 events, back to back for 5 s: events/s (target >= 100k/s); and
   single-event JSON POSTs over one keep-alive connection for 5 s: requests/s (target >= 3k/s).
5. AsyncReaders: 1,000 idle ``AsyncReader`` s in one process, waiting in ``read()`` for ``--idle-s``:
   that process's CPU as % of a core (target <= 1%).
6. a stalled client: measure 2 with 20 clients, one more client that stops reading for ``--stall-s``
   (60 s): the others' p99 and the publish rate reached, against a run without it (target: unchanged).

    .venv/bin/python tools/bench_http.py [--runs 3] [--only idle,live,catchup,publish,aio,stall] [--quick]
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx
import psutil

from shmring import AsyncReader, Producer
from shmring.cdp.browser import find_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EVENT = {"type": "console.log", "category": "console", "source": {"kind": "cdp", "event": "Runtime.consoleAPICalled"},
         "url": "http://127.0.0.1:8000/", "data": {"level": "log", "args": ["hello from the bench"]}}


def cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


class Serve:
    def __init__(self, *extra):
        self.name = f"bench-http-{uuid.uuid4().hex[:8]}"
        self.port = find_free_port()
        self.dir = tempfile.mkdtemp(prefix="shmring-bench-http-")
        self.socket = f"{self.dir}/ingest.sock"
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "shmring", "serve", self.name, "--capacity", str(1 << 18),
                                      "--socket", self.socket, "--http", f"127.0.0.1:{self.port}", *extra],
                                     stderr=subprocess.PIPE, cwd=ROOT)
        line = self.proc.stderr.readline().decode()
        if "serving ring" not in line:
            raise SystemExit(f"serve did not start: {line}")
        self.edge_pid = next(c.pid for c in psutil.Process(self.proc.pid).children() if "edge" in c.cmdline())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        subprocess.run(["rm", "-rf", self.dir])


def publish_bulk(socket_path: str, count: int) -> None:
    with Producer.connect(socket_path) as producer:
        for start in range(0, count, 5000):
            producer.publish_many([EVENT] * min(5000, count - start))


def publish_paced(socket_path: str, rate: int, seconds: float) -> int:
    """Publish at `rate` events/s in 5 ms batches; return how many were published."""
    sent = 0
    with Producer.connect(socket_path) as producer:
        t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < seconds:
            due = int((now - t0) * rate) - sent
            if due > 0:
                producer.publish_many([EVENT] * due)
                sent += due
            time.sleep(0.005)
    return sent


_IDS = re.compile(rb"\nid: (\d+)")  # (an alternation with ^ here costs 40x: a scan per position)


# -- SSE clients (asyncio, raw sockets: the client must not be the bottleneck) -----------------------------
async def sse_client(port: int, path: str, stats: dict, *, stop: asyncio.Event, latency: bool, stall_s: float = 0,
                     target=None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    buffer = b""
    last = None
    stats.setdefault("gaps", 0)
    stats.setdefault("events", 0)
    lat = stats.setdefault("latency_ms", [])
    try:
        if stall_s:
            await asyncio.sleep(stall_s)
        while not stop.is_set() and not (target is not None and 0 < target.value <= (last or 0)):
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            now_us = time.time() * 1e6
            buffer += chunk
            cut = buffer.rfind(b"\n\n") + 2
            if cut < 2:
                continue
            whole, buffer = buffer[:cut], buffer[cut:]
            # Only the frames' ids are read (at C speed), and the writer's ts of the last event of each read:
            # a Python parse of every frame would make the clients, not the edge, what is measured.
            ids = _IDS.findall(b"\n" + whole)  # every frame's id line follows a newline
            if ids:
                first, final = int(ids[0]), int(ids[-1])
                if (last is not None and first != last + 1) or final - first + 1 != len(ids):
                    stats["gaps"] += 1
                stats.setdefault("first", first)
                last = final
                stats["events"] += len(ids)
                if latency:
                    tail = whole[whole.rindex(b'"ts":') + 5:]
                    lat.append((now_us - int(tail[:tail.index(b",")])) / 1000)
            if b"event: dropped" in whole:
                stats["gaps"] += 1
    finally:
        writer.close()


def client_process(port, path, n, seconds, latency, queue, stall_s=0.0, target=None):
    """n SSE clients for at most `seconds`; they stop early once they have seq `target.value` (set > 0)."""
    async def main():
        stop = asyncio.Event()
        stats = [dict() for _ in range(n)]
        tasks = [asyncio.ensure_future(sse_client(port, path, s, stop=stop, latency=latency, stall_s=stall_s,
                                                  target=target)) for s in stats]
        queue.put("connected")
        await asyncio.wait(tasks, timeout=seconds)
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        queue.put(stats)

    asyncio.run(main())


def wait_clients(base: str, n: int, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"shmring_sse_clients {float(n)}" in httpx.get(f"{base}/metrics").text:
            return
        time.sleep(0.1)
    raise SystemExit(f"{n} SSE clients did not connect")


# -- measures ----------------------------------------------------------------------------------------------
def measure_idle(args):
    serve = Serve()
    try:
        q = multiprocessing.Queue()
        p = multiprocessing.Process(target=client_process, args=(serve.port, "/events/stream", 1000,
                                                                 args.idle_s + 30, False, q))
        p.start()
        q.get(timeout=60)
        wait_clients(serve.base, 1000)
        time.sleep(1)
        e0, w0, t0 = cpu_ns(serve.edge_pid), cpu_ns(serve.proc.pid), time.monotonic()
        time.sleep(args.idle_s)
        e1, w1, t1 = cpu_ns(serve.edge_pid), cpu_ns(serve.proc.pid), time.monotonic()
        rss = psutil.Process(serve.edge_pid).memory_info().rss
        p.terminate()
        p.join()
        wall = (t1 - t0) * 1e9
        return dict(edge_cpu_pct=100 * (e1 - e0) / wall, writer_cpu_pct=100 * (w1 - w0) / wall,
                    total_cpu_pct=100 * (e1 - e0 + w1 - w0) / wall, edge_rss_mb=rss / 2**20)
    finally:
        serve.stop()


def live_run(args, clients: int, stalled: bool):
    serve = Serve()
    try:
        q = multiprocessing.Queue()
        target = multiprocessing.Value("q", 0)
        procs = []
        per = 25 if clients >= 25 else clients
        for _ in range(clients // per):
            procs.append(multiprocessing.Process(target=client_process, args=(
                serve.port, "/events/stream", per, args.live_s + 60, True, q, 0.0, target)))
        stalled_q = multiprocessing.Queue()  # its own queue: results arrive in any order
        stalled_procs = [multiprocessing.Process(target=client_process, args=(
            serve.port, "/events/stream", 1, args.live_s + 5, False, stalled_q, args.stall_s))] if stalled else []
        for p in procs + stalled_procs:
            p.start()
        for _ in procs:
            q.get(timeout=60)
        for _ in stalled_procs:
            stalled_q.get(timeout=60)
        wait_clients(serve.base, clients + stalled)
        t0, e0 = time.monotonic(), cpu_ns(serve.edge_pid)
        sent = publish_paced(serve.socket, args.rate, args.live_s)
        rate = sent / (time.monotonic() - t0)
        edge_cpu = 100 * (cpu_ns(serve.edge_pid) - e0) / ((time.monotonic() - t0) * 1e9)
        target.value = sent
        results = [q.get(timeout=120) for _ in procs]
        for _ in stalled_procs:
            stalled_q.get(timeout=120)
        for p in procs + stalled_procs:
            p.join()
        live = [s for r in results for s in r]
        lat = sorted(x for s in live for x in s["latency_ms"])
        return dict(sent=sent, publish_rate=rate, edge_cpu_pct=edge_cpu, every_event=all(s["events"] == sent and s["gaps"] == 0 for s in live),
                    min_events=min(s["events"] for s in live), gaps=sum(s["gaps"] for s in live),
                    first_seq=max(s.get("first", 0) for s in live), p50_ms=lat[len(lat) // 2],
                    p99_ms=lat[int(len(lat) * 0.99)])
    finally:
        serve.stop()


def measure_live(args):
    return live_run(args, args.clients, stalled=False)


def measure_stall(args):
    stall_args = argparse.Namespace(**{**vars(args), "live_s": args.stall_s})
    base = live_run(stall_args, 20, stalled=False)
    with_stall = live_run(stall_args, 20, stalled=True)
    return dict(p99_ms_without=base["p99_ms"], p99_ms_with=with_stall["p99_ms"],
                rate_without=base["publish_rate"], rate_with=with_stall["publish_rate"],
                every_event_with=with_stall["every_event"])


def measure_catchup(args):
    serve = Serve()
    try:
        n = args.catchup_events
        publish_bulk(serve.socket, n)
        t0 = time.monotonic()
        got = 0
        with httpx.Client(timeout=None) as client, client.stream("GET", f"{serve.base}/events/stream",
                                                                 params={"from": "start"}) as r:
            tail = b""
            for chunk in r.iter_raw():  # no chunk size: httpx would hold bytes back until it had one
                data = tail + chunk
                got += data.count(b"\n\nid: ")  # a frame's start, each counted once across chunk ends
                tail = data[-7:]
                got -= tail.count(b"\n\nid: ")
                if got >= n:
                    break
        return dict(events=n, events_per_s=n / (time.monotonic() - t0))
    finally:
        serve.stop()


def measure_publish(args):
    serve = Serve()
    try:
        body = (json.dumps(EVENT) + "\n").encode() * 5000
        with httpx.Client(timeout=60) as client:
            n, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < args.publish_s:
                r = client.post(f"{serve.base}/events/publish", content=body,
                                headers={"Content-Type": "application/x-ndjson"})
                n += r.text.count('{"seq"')
            ndjson = n / (time.monotonic() - t0)
        single = single_posts(serve.port, args.publish_s)
        return dict(ndjson_events_per_s=ndjson, single_posts_per_s=single)
    finally:
        serve.stop()


def single_posts(port: int, seconds: float) -> float:
    """JSON POSTs of one event, one after another on one keep-alive connection (a raw socket client:
    httpx's own cost per request would be most of what is measured); requests answered 200 per second."""
    import socket

    body = json.dumps(EVENT).encode()
    request = (b"POST /events/publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    n = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            sock.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(rest) < length:
                rest += sock.recv(65536)
            n += head.startswith(b"HTTP/1.1 200")
        return n / (time.monotonic() - t0)


def aio_process(name, seconds, queue):
    async def main():
        readers = [await AsyncReader.attach(name) for _ in range(1000)]
        waits = [asyncio.ensure_future(r.read(timeout=seconds + 30)) for r in readers]
        queue.put("ready")
        await asyncio.sleep(seconds + 5)
        for w in waits:
            w.cancel()
        for r in readers:
            r.close()

    asyncio.run(main())


def measure_aio(args):
    from shmring import CaptureSession

    name = f"bench-aio-{uuid.uuid4().hex[:8]}"
    with CaptureSession.create(name, capacity=1024):
        q = multiprocessing.Queue()
        p = multiprocessing.Process(target=aio_process, args=(name, args.idle_s, q))
        p.start()
        q.get(timeout=60)
        time.sleep(1)
        c0, t0 = cpu_ns(p.pid), time.monotonic()
        time.sleep(args.idle_s)
        c1, t1 = cpu_ns(p.pid), time.monotonic()
        p.join(60)
        return dict(cpu_pct=100 * (c1 - c0) / ((t1 - t0) * 1e9))


MEASURES = {"idle": measure_idle, "live": measure_live, "catchup": measure_catchup, "publish": measure_publish,
            "aio": measure_aio, "stall": measure_stall}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default=",".join(MEASURES))
    p.add_argument("--quick", action="store_true", help="shorter windows (idle 5 s, live 5 s, stall 15 s)")
    p.add_argument("--idle-s", type=float, default=10.0)
    p.add_argument("--live-s", type=float, default=10.0)
    p.add_argument("--stall-s", type=float, default=60.0)
    p.add_argument("--publish-s", type=float, default=5.0)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--catchup-events", type=int, default=200_000)
    args = p.parse_args()
    if args.quick:
        args.idle_s, args.live_s, args.stall_s, args.publish_s = 5.0, 5.0, 15.0, 3.0
    for key in args.only.split(","):
        runs = [MEASURES[key](args) for _ in range(args.runs)]
        print(f"{key}:", flush=True)
        for field in runs[0]:
            values = [r[field] for r in runs]
            if isinstance(values[0], bool):
                print(f"  {field}: {values}")
            else:
                print(f"  {field}: median {statistics.median(values):.4g} (min {min(values):.4g}, "
                      f"max {max(values):.4g})", flush=True)


if __name__ == "__main__":
    main()
