"""What the benchmark scripts share: the benchmark event, CPU accounting, the error they stop on.

Rules: nothing here starts a process or touches shared memory; the scripts
import it as a sibling (``python tools/bench.py`` puts ``tools/`` first on
``sys.path``), and shmring itself comes from the installed package
(``pip install -e .``), never from a ``sys.path`` edit.
"""

import os
import resource
import time

import msgspec

from shmring import Envelope, Event, Source

__all__ = ["CAPTURE_SESSION_ID", "TARGET_ENVELOPE_BYTES", "BenchError", "Stamp", "choose_pad", "cpu_snapshot",
           "foreign_pct", "make_data", "make_event", "process_cpu_ns", "stamped"]

TARGET_ENVELOPE_BYTES = 300
CAPTURE_SESSION_ID = "0b9d2c1e-5f7a-4c3b-9e8d-7a6b5c4d3e2f"


class BenchError(RuntimeError):
    """A benchmark run that cannot give a figure (a child failed or timed out, a bad option)."""


class Stamp(msgspec.Struct):
    """The part of the event's data the latency readers look at."""

    t: int


def make_data(stamp_ns: int, pad: str) -> msgspec.Raw:
    return msgspec.Raw(b'{"level":"log","args":["%s"],"t":%d}' % (pad.encode(), stamp_ns))


def make_event(pad: str, stamp_ns: int | None = None) -> Event:
    return Event(
        type="console.log",
        category="console",
        source=Source(kind="cdp", event="Runtime.consoleAPICalled"),
        url="http://localhost/",
        data=make_data(time.monotonic_ns() if stamp_ns is None else stamp_ns, pad),
    )


def stamped(event: Event) -> Event:
    """The event as publish stamps it (ts, detail level), for transports that skip publish."""
    return msgspec.structs.replace(event, ts=time.time_ns() // 1000, detail_level="standard")


def choose_pad() -> tuple[str, int]:
    """Pad the console message so the encoded envelope (with a 6-digit seq, as in a busy stream) is ~300 bytes."""
    encode = msgspec.json.Encoder(order="deterministic").encode

    def size(pad: str) -> int:
        return len(encode(Envelope(CAPTURE_SESSION_ID, 123456, stamped(make_event(pad)))))

    filler = "ok: user clicked checkout; cart=" + "x" * TARGET_ENVELOPE_BYTES
    pad = filler[: max(2, TARGET_ENVELOPE_BYTES - size(""))]
    return pad, size(pad)


def process_cpu_ns(pid: int) -> int | None:
    """CPU time of every thread of process `pid` in ns (/proc/PID/task/*/schedstat), or None.

    /proc/PID/schedstat alone counts only the main thread; a child also runs
    multiprocessing's queue feeder thread.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that just ended
    return total


def cpu_snapshot() -> tuple[float, float, float, float]:
    """(wall s, machine busy CPU s, steal s, CPU s of this process and its reaped children), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / ticks  # user nice system irq softirq
    steal = fields[7] / ticks if len(fields) > 7 else 0.0
    own = sum(ru.ru_utime + ru.ru_stime for ru in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))
    return time.monotonic(), busy, steal, own


def foreign_pct(a, b) -> float:
    """% of all cores busy with processes other than ours between snapshots a and b (the noise of a run)."""
    return max(0.0, 100.0 * ((b[1] - a[1]) - (b[3] - a[3])) / ((b[0] - a[0]) * (os.cpu_count() or 1)))
