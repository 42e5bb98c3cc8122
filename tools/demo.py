"""A ten-second demonstration of the core: one writer, two filtered reader processes.

    python tools/demo.py [--seconds S] [--rate EVENTS_PER_S]

The writer publishes synthetic browser events (console, network, page and
interaction) at a steady rate; one reader takes console events only, the
other network and page events; each reports what it delivered and dropped.
"""

import argparse
import multiprocessing
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shmring import CaptureSession, Event, Filter, Reader, Source  # noqa: E402

PAGES = ["http://127.0.0.1:8000/", "http://127.0.0.1:8000/cart", "http://127.0.0.1:8000/checkout"]


def synthetic_event(i: int, rng: random.Random) -> Event:
    url = rng.choice(PAGES)
    meta = {"target_id": "T-1", "frame_id": "F-1"}
    kind = rng.random()
    if kind < 0.4:
        return Event(type=rng.choice(["console.log", "console.warn", "console.error"]), category="console",
                     source=Source("cdp", "Runtime.consoleAPICalled", meta), url=url,
                     data={"level": "log", "args": [f"render #{i} took {rng.randint(1, 40)} ms"]})
    if kind < 0.8:
        return Event(type=rng.choice(["network.request", "network.response"]), category="network",
                     source=Source("cdp", "Network.requestWillBeSent", meta), url=url,
                     data={"request_id": f"R{i}", "method": "GET", "url": f"{url}api/items?page={i % 7}",
                           "status": 200, "mime_type": "application/json"})
    if kind < 0.9:
        return Event(type="page.load", category="page", source=Source("cdp", "Page.loadEventFired", meta), url=url)
    return Event(type="interaction.click", category="interaction", source=Source("extension"), url=url,
                 data={"selector": "button#buy", "x": rng.randint(0, 800), "y": rng.randint(0, 600)})


def consume(name, categories, ready, results):
    with Reader.attach(name, filter=Filter(categories=categories)) as r:
        ready.set()
        for _ in r:
            pass
        results.put((",".join(categories), r.delivered, r.dropped, r.filtered))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=20_000)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    name = f"demo-{os.getpid()}"
    rng = random.Random(1)
    with CaptureSession.create(name) as session:
        results = ctx.Queue()
        procs = []
        for categories in (["console"], ["network", "page"]):
            ready = ctx.Event()
            p = ctx.Process(target=consume, args=(name, categories, ready, results))
            p.start()
            ready.wait(30)
            procs.append(p)
        print(f"ring {name!r}: publishing at {args.rate}/s for {args.seconds:.0f} s to 2 filtered readers")
        start = time.monotonic()
        i = 0
        while (elapsed := time.monotonic() - start) < args.seconds:
            due = int(elapsed * args.rate)
            while i < due:
                i += 1
                session.publish(synthetic_event(i, rng))
            time.sleep(0.001)
    print(f"published {i} events ({i / args.seconds:,.0f}/s)")
    for _ in procs:
        categories, delivered, dropped, filtered = results.get(timeout=30)
        print(f"reader [{categories}]: delivered {delivered}, dropped {dropped}, filtered out {filtered}")
    for p in procs:
        p.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
