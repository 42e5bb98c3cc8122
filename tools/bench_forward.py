"""Benchmark `shmring forward` into real Redis and NATS JetStream servers (a benchmark, not a test).

For each sink a fresh server is started on a free loopback port with a temporary directory (Redis: AOF off, no
snapshots; NATS: JetStream, file storage), and for each of ``--runs`` runs (the median is reported):

1. **flat out**: a ring is filled with ``--events`` 300-byte envelopes over 4 categories, then ``shmring forward``
   (a real subprocess) is started; the rate is events / the time from its attach (the registry shows it) until
   the sink holds the last seq (watched through the registry's cursor, then asked of the sink, so the watching
   costs the sink nothing). CPU per event is the forwarder's CPU time and the sink server's, each / events (from /proc).
2. **paced**: a writer publishes 10,000 events/s for ``--paced-s`` seconds with the forwarder attached; the
   forwarder's CPU over that window, as a share of one core.

Targets: Redis >= 150k events/s, NATS >= 100k events/s, forwarder <= 10% of a core at 10k/s. Everything it
starts is stopped by pid at the end. Run: .venv/bin/python tools/bench_forward.py [--only redis|nats]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from shmring import CaptureSession, Event, Source
from shmring.schema import encode_envelope
from shmring.segment import unlink_ring_objects
from shmring.stats import ring_stats

CATEGORIES = ("console", "network", "page", "interaction")
TICKS = os.sysconf("SC_CLK_TCK")


def binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                       None)
    if not found:
        sys.exit(f"bench_forward: {name} is missing (apt-get install redis-server nats-server)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_server(kind: str, directory: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if kind == "redis":
        args = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        url = f"redis://127.0.0.1:{port}/0"
    else:
        args = [binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", directory]
        url = f"nats://127.0.0.1:{port}"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"bench_forward: {kind} did not start")


def sink_holds(kind: str, url: str, name: str) -> int:
    """The highest seq the sink holds for ring `name` (0 if none)."""
    if kind == "redis":
        import redis

        top = redis.Redis.from_url(url).xrevrange(f"shmring:{name}", "+", "-", count=1)
        return int(top[0][0].decode().split("-")[1]) if top else 0
    import asyncio

    import nats

    async def last():
        nc = await nats.connect(url)
        try:
            msg = await nc.jetstream().get_last_msg(f"shmring-{name}", f"shmring.{name}")
            return int(msg.headers["Shmring-Seq"])
        except Exception:  # noqa: BLE001 - not there yet
            return 0
        finally:
            await nc.close()

    return asyncio.run(last())


def event(i: int) -> Event:
    return Event(type="console.log", category=CATEGORIES[i % 4], source=Source(kind="cdp"),
                 data={"i": i, "pad": "x" * 84})


def forwarder(name: str, url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shmring", "forward", name, "--to", url])


def flat_out(kind: str, url: str, server: subprocess.Popen, events: int) -> dict:
    name = f"bench-forward-{uuid.uuid4().hex[:8]}"
    try:
        with CaptureSession.create(name, capacity=1 << 18, data_bytes=1 << 27) as session:
            size = len(encode_envelope(session.publish(event(0))))
            for i in range(1, events):
                session.publish(event(i))
            proc = forwarder(name, url)
            try:
                while not any(r["role"] == "forwarder" for r in ring_stats(name)["readers"]):
                    time.sleep(0.001)  # from its attach on: its start-up (imports, connect) is not forwarding
                server_cpu, fwd_cpu, started = cpu_s(server.pid), cpu_s(proc.pid), time.monotonic()
                # Its registry cursor (free to read) until it has taken everything; only then ask the sink.
                while max(r["cursor"] for r in ring_stats(name)["readers"]) < events:
                    time.sleep(0.005)
                while sink_holds(kind, url, name) < events:
                    time.sleep(0.005)
                wall = time.monotonic() - started
                fwd_cpu = cpu_s(proc.pid) - fwd_cpu
                server_cpu = cpu_s(server.pid) - server_cpu
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        unlink_ring_objects(name)
    return dict(rate=events / wall, fwd_us=fwd_cpu / events * 1e6, server_us=server_cpu / events * 1e6, size=size)


def paced(kind: str, url: str, seconds: float, rate: int = 10_000) -> float:
    name = f"bench-forward-{uuid.uuid4().hex[:8]}"
    try:
        with CaptureSession.create(name) as session:
            proc = forwarder(name, url)
            try:
                while not any(r["role"] == "forwarder" for r in ring_stats(name)["readers"]):
                    time.sleep(0.02)
                time.sleep(1.0)  # connected and idle: measure only the steady state
                before, started = cpu_s(proc.pid), time.monotonic()
                i = 0
                while (elapsed := time.monotonic() - started) < seconds:
                    due = int(elapsed * rate)
                    while i < due:
                        session.publish(event(i))
                        i += 1
                    time.sleep(0.001)
                share = (cpu_s(proc.pid) - before) / (time.monotonic() - started)
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        unlink_ring_objects(name)
    return share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("redis", "nats"), help="one sink only")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--paced-s", type=float, default=5.0)
    args = p.parse_args()
    targets = {"redis": 150_000, "nats": 100_000}
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (the machine is shared: figures vary)")
    for kind in ("redis", "nats"):
        if args.only and kind != args.only:
            continue
        directory = tempfile.mkdtemp(prefix=f"bench-forward-{kind}-")
        server, url = start_server(kind, directory)
        try:
            runs = [flat_out(kind, url, server, args.events) for _ in range(args.runs)]
            shares = [paced(kind, url, args.paced_s) for _ in range(args.runs)]
        finally:
            server.terminate()
            server.wait(30)
            shutil.rmtree(directory, ignore_errors=True)
        rates = [r["rate"] for r in runs]
        print(f"{kind}: ~{runs[0]['size']}-byte envelopes, {args.events} events, medians of {args.runs}")
        runs_text = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"  forwarded   {statistics.median(rates):>10,.0f} events/s  (runs {runs_text})"
              f"  target >= {targets[kind]:,}: {'pass' if statistics.median(rates) >= targets[kind] else 'FAIL'}")
        print(f"  CPU/event   forwarder {statistics.median(r['fwd_us'] for r in runs):.2f} us, "
              f"{kind}-server {statistics.median(r['server_us'] for r in runs):.2f} us")
        share = statistics.median(shares)
        print(f"  at 10k/s    forwarder {share * 100:.1f}% of a core (runs "
              f"{', '.join(f'{s * 100:.1f}%' for s in shares)})  target <= 10%: {'pass' if share <= 0.10 else 'FAIL'}")


if __name__ == "__main__":
    main()
