"""How fast does a running CDP producer take a config change? Network off and on, over and over, on live tabs.

    python tools/bench_producer_config.py [--tabs 3] [--changes 20] [--json] [--chromium PATH]

Set-up, as users run it: ``shmring serve NAME --socket S --cdp URL`` as a
subprocess (it supervises ``capture-cdp``), headless Chromium with the tests'
flags, and `--tabs` tabs on a loopback page that logs and fetches every
100 ms. Then `--changes` times, alternately, ``set_config(NAME,
{"categories": ["console"]})`` and back to every category, each timed from
the call to its return (serve validated it, the producer applied it to every
tab: ``Network.disable`` / ``Network.enable`` answered). After each "off" it
also checks, through the producer's own counters, that the browser sent no
``Network.*`` message in the 0.3 s that followed. Medians and p90 of the
round trips, per direction.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from shmring.cdp.browser import BrowserControl, Chromium, PageServer
from shmring.control import producer_stats, set_config
from shmring.errors import ProducerNotRunning
from shmring.producer_config import CATEGORIES

LOOP = (b"<!doctype html><script>let i = 0; setInterval(() => { i++; console.log('tick', i);"
        b" fetch('/api/tick?i=' + i).then(r => r.text()).catch(() => {}); }, 100);</script>")


def wait_until(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except ProducerNotRunning:
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench_producer_config: timed out waiting for {what}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tabs", type=int, default=3, help="tabs on the loop page")
    p.add_argument("--changes", type=int, default=20, help="config changes (half off, half on)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--chromium", help="the Chromium binary (default: $SHMRING_CHROMIUM, else /usr/bin/chromium)")
    args = p.parse_args()
    name = f"bench-producer-config-{os.getpid()}"
    site = PageServer({"/loop.html": (200, "text/html", LOOP), "/api/tick": (200, "application/json", b"{}")})
    site.start()
    times = {"off": [], "on": []}
    leaks = 0
    with tempfile.TemporaryDirectory() as tmp, Chromium(args.chromium) as browser:
        serve = subprocess.Popen([sys.executable, "-m", "shmring", "serve", name, "--socket",
                                  os.path.join(tmp, "s.sock"), "--cdp", browser.cdp_url],
                                 stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: producer_stats(name)["connected"], "the producer to connect")
            with BrowserControl(browser.cdp_url) as control:
                for _ in range(args.tabs):
                    tab = control.call("Target.createTarget", {"url": "about:blank"})["targetId"]
                    wait_until(lambda: tab in producer_stats(name)["targets"], "the producer to follow a tab")
                    control.navigate(tab, site.base_url + "/loop.html")
            wait_until(lambda: producer_stats(name)["received"].get("Network", 0) > 10 * args.tabs, "network traffic")
            for i in range(args.changes):
                off = i % 2 == 0
                started = time.perf_counter()
                change = set_config(name, {"categories": ["console"] if off else list(CATEGORIES)})
                times["off" if off else "on"].append((time.perf_counter() - started) * 1000)
                assert change.changed and not change.failed, change
                if off:
                    before = producer_stats(name)["received"]["Network"]
                    time.sleep(0.3)
                    leaks += producer_stats(name)["received"]["Network"] - before
                else:
                    time.sleep(0.3)
        finally:
            serve.terminate()
            serve.wait(60)
    site.stop()

    def summary(values):
        values = sorted(values)
        return {"median_ms": round(statistics.median(values), 2),
                "p90_ms": round(values[int(0.9 * (len(values) - 1))], 2), "n": len(values)}

    result = {"tabs": args.tabs, "off": summary(times["off"]), "on": summary(times["on"]),
              "network_messages_after_off": leaks}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.tabs} tabs: network off in {result['off']['median_ms']} ms (p90 {result['off']['p90_ms']}), "
              f"on in {result['on']['median_ms']} ms (p90 {result['on']['p90_ms']}); "
              f"Network messages received after an off: {leaks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
