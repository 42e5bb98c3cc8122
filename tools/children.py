"""The benchmarks' child processes: start them, collect what they report, reap them.

Rules: a child reports over a queue as (kind, index, payload): "ready" once
it has attached, "done" with its figures, "error" with what went wrong (the
parent then stops waiting at once). The parent only ever stops children it
started, by their own process objects, and closes every ring and queue it
made, also after a failure.
"""

import queue as queue_mod
import sys
import time

from common import BenchError

__all__ = ["spawn", "await_msgs", "reap", "cleanup"]


def spawn(ctx, target, args_list: list[tuple]) -> list:
    procs = []
    for args in args_list:
        p = ctx.Process(target=target, args=args, daemon=True)
        p.start()
        procs.append(p)
    return procs


def await_msgs(results, kind: str, n: int, timeout: float) -> dict[int, object]:
    """Collect `n` messages of `kind` ("ready" or "done"), keyed by child index."""
    got: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"timed out waiting for {n - len(got)} child(ren) to report {kind!r}")
        try:
            msg_kind, idx, payload = results.get(True, left)
        except queue_mod.Empty:
            continue
        if msg_kind == "error":
            raise BenchError(f"child {idx} failed: {payload}")
        if msg_kind != kind:
            raise BenchError(f"child {idx} sent {msg_kind!r} while waiting for {kind!r}")
        got[idx] = payload
    return got


def reap(procs, timeout: float = 10.0) -> None:
    """Join our children; terminate (then kill) any that overrun, by their own pid."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            print(f"  warning: child pid {p.pid} overran; terminating it", file=sys.stderr)
            p.terminate()
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)


def cleanup(session, procs, queues, ok: bool) -> None:
    """Close the ring (removing its /dev/shm objects), reap our children, close our queues.

    After a failure or an interrupt the children get 1 s, not 10, before we
    terminate them, and queues do not wait for their feeder threads (whose
    reader may be gone).
    """
    try:
        if session is not None:
            session.close()
    finally:
        reap(procs, 10.0 if ok else 1.0)
        for q in queues:
            if not ok:
                q.cancel_join_thread()
            q.close()
            if ok:
                q.join_thread()
