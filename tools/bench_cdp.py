"""How much does capturing over CDP slow a page? A page logs N console lines, with and without the producer.

    python tools/bench_cdp.py [--lines 10000] [--rounds 5] [--detail standard] [--console-via-inspector]
                              [--control] [--json] [--chromium PATH]

Set-up, as in production: ``shmring.serve.serve`` (ring, ingest socket, a
flusher process writing JSONL) runs in this process for the whole benchmark;
headless Chromium (``--chromium``, else $SHMRING_CHROMIUM, else
/usr/bin/chromium) runs with the flags of the tests; the page is served from
loopback. Each round opens a fresh tab twice:

- baseline: no producer attached; the page runs alone;
- captured: a ``CdpCapture`` follows the browser (Runtime, Network and Page
  enabled, interaction script injected; console calls through the in-page
  hook, or through ``Runtime.consoleAPICalled`` with
  ``--console-via-inspector`` or ``--detail raw``) and publishes to the ring;
- with ``--control``, also: a do-nothing CDP client that only sends
  ``Runtime.enable`` to each tab and discards what it gets. It separates
  what Chromium's inspector costs the page from what this producer adds.

The page times its own loop of N ``console.log`` calls with
``performance.now()`` and reports, by POST to the page server, the loop time
and the time from navigation start to the end of the loop. The overhead is
the median captured time over the median baseline time, minus one. For the
captured runs it also reports how long after the page finished the last of
the N console events was acknowledged by the writer (the producer's lag),
and checks that all N arrived in the ring.

The rounds alternate baseline and captured, so drift (CPU frequency, other
load) hits both alike. On a 2-core machine the producer, the writer, the
flusher and Chromium's processes share the cores with the page, and other
load on the machine swings the wall-clock figures; so the CPU time the
browser's renderer processes used during each run is reported too (from
/proc, via psutil): it shows the work capturing adds to the page itself,
whatever else runs.
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import psutil

from shmring import ConfigError, Filter, Reader
from shmring.cdp.browser import BrowserControl, BrowserDemo, PageServer, resolve_chromium
from shmring.cdp.capture import CdpCapture
from shmring.serve import serve

PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>bench</title></head><body><script>
const n = Number(new URLSearchParams(location.search).get("n") || 10000);
const t0 = performance.now();
for (let i = 0; i < n; i++) console.log("bench line", i, "of", n);
const loop = performance.now() - t0;
const total = performance.now();
fetch("/result", {method: "POST", body: JSON.stringify({loop_ms: loop, total_ms: total, n: n})});
</script></body></html>"""


def browser_cpu(leader_pid: int) -> dict:
    """CPU seconds used so far by each process of the browser (its process group), by pid and type."""
    out = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(proc.pid) != leader_pid:
                continue
            times = proc.cpu_times()
            kind = "renderer" if "--type=renderer" in (proc.info["cmdline"] or []) else "other"
            out[proc.pid] = (kind, times.user + times.system)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def cpu_delta(before: dict, after: dict) -> dict:
    used = {"renderer": 0.0, "other": 0.0}
    for pid, (kind, seconds) in after.items():
        used[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    return used


def run_page(control: BrowserControl, server: PageServer, lines: int, round_no: int, settle_s: float,
             leader_pid: int) -> dict:
    before = len(server.posts["/result"])
    cpu_before = browser_cpu(leader_pid)
    tab = control.open_tab(f"{server.base_url}/bench.html?n={lines}&round={round_no}", settle_s=settle_s)
    deadline = time.monotonic() + 120
    while len(server.posts["/result"]) == before:
        if time.monotonic() > deadline:
            raise SystemExit("the bench page did not report within 120 s")
        time.sleep(0.005)
    done_at = time.monotonic()
    used = cpu_delta(cpu_before, browser_cpu(leader_pid))
    result = json.loads(server.posts["/result"][-1])
    result["renderer_cpu_ms"] = used["renderer"] * 1000
    result["browser_other_cpu_ms"] = used["other"] * 1000
    result["done_at"] = done_at
    result["tab"] = tab
    return result


class RuntimeOnlyClient:
    """Attaches to every new tab, sends Runtime.enable, reads and discards everything."""

    def __init__(self, cdp_url: str):
        self.cdp_url = cdp_url
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.messages = 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from websockets.asyncio.client import connect

        from shmring.cdp import resolve_browser_ws

        async with connect(resolve_browser_ws(self.cdp_url), max_size=None, proxy=None, compression=None) as ws:
            next_id = 0

            async def send(method, params=None, session_id=None):
                nonlocal next_id
                next_id += 1
                message = {"id": next_id, "method": method, "params": params or {}}
                if session_id:
                    message["sessionId"] = session_id
                await ws.send(json.dumps(message))

            await send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True,
                                                "filter": [{"type": "page", "exclude": False}]})
            self.ready.set()
            while not self.stop.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(), 0.1)
                except TimeoutError:
                    continue
                self.messages += 1
                if raw.startswith('{"method":"Target.attachedToTarget"'):
                    session_id = json.loads(raw)["params"]["sessionId"]
                    await send("Runtime.enable", None, session_id)
                    await send("Runtime.runIfWaitingForDebugger", None, session_id)

    def __enter__(self):
        self.thread.start()
        if not self.ready.wait(20):
            raise SystemExit("the control client did not connect")
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--detail", default="standard", choices=["minimal", "standard", "verbose", "raw"])
    parser.add_argument("--console-via-inspector", action="store_true",
                        help="capture with CdpCapture(console_hook=False): console calls through "
                             "Runtime.consoleAPICalled (the default is the in-page hook, except at --detail raw)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the producer's threads at this niceness (the page's renderer keeps its own)")
    parser.add_argument("--control", action="store_true",
                        help="also measure a client that only enables Runtime (Chromium's own share)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--chromium", metavar="PATH",
                        help="the Chromium binary (default: $SHMRING_CHROMIUM, else /usr/bin/chromium)")
    args = parser.parse_args(argv)
    try:
        binary = resolve_chromium(args.chromium)
    except ConfigError as exc:
        print(f"bench_cdp: {exc}", file=sys.stderr)
        return 2

    name = f"bench-cdp-{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="shmring-bench-cdp-")
    sock, log_dir = os.path.join(tmp, "ingest.sock"), os.path.join(tmp, "logs")
    stop_writer, ready = threading.Event(), threading.Event()
    writer = threading.Thread(target=serve, args=(name,), daemon=True, kwargs={
        "stop": stop_writer, "socket_path": sock, "log_dir": log_dir, "on_ready": lambda s: ready.set()})
    writer.start()
    if not ready.wait(30):
        raise SystemExit("the writer did not start")
    browser = BrowserDemo(binary)
    browser.server = PageServer({"/bench.html": (200, "text/html; charset=utf-8", PAGE)})
    browser.start()
    baseline, captured, control_runs = [], [], []
    try:
        with BrowserControl(browser.cdp_url) as control, \
                Reader.attach(name, filter=Filter(categories=["console"])) as reader:
            # One warm-up page each way, not counted.
            for round_no in range(-1, args.rounds):
                base = run_page(control, browser.server, args.lines, round_no, settle_s=0.5,
                                leader_pid=browser.proc.pid)
                control.close_tab(base["tab"])
                if args.control:
                    with RuntimeOnlyClient(browser.cdp_url):
                        only = run_page(control, browser.server, args.lines, round_no, settle_s=0.5,
                                        leader_pid=browser.proc.pid)
                    control.close_tab(only["tab"])
                    if round_no >= 0:
                        control_runs.append(only)
                logs, stop = [], threading.Event()
                cap = CdpCapture(browser.cdp_url, sock, detail_level=args.detail, log=logs.append,
                                 console_hook=False if args.console_via_inspector else None)

                def run_capture(cap=cap, stop=stop):
                    if args.nice:  # inherited by its threads
                        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), args.nice)
                    cap.run(stop)

                thread = threading.Thread(target=run_capture, daemon=True)
                thread.start()
                if not cap.connected.wait(20):
                    raise SystemExit(f"the producer did not connect: {logs}")
                while cap.stats()["setup_tasks"] or not cap.stats()["following"]:
                    time.sleep(0.01)
                before = reader.delivered
                run = run_page(control, browser.server, args.lines, round_no, settle_s=0.5,
                               leader_pid=browser.proc.pid)
                while reader.delivered - before < args.lines:
                    if reader.read(timeout=30) is None:
                        raise SystemExit(f"only {reader.delivered - before} of {args.lines} console events "
                                         f"reached the ring")
                run["lag_ms"] = (time.monotonic() - run["done_at"]) * 1000
                run["stats"] = cap.stats()
                control.close_tab(run["tab"])
                stop.set()
                thread.join(30)
                while reader.try_read() is not None:
                    pass
                if round_no >= 0:
                    baseline.append(base)
                    captured.append(run)
                print(f"round {round_no}: loop {base['loop_ms']:.0f} ms alone, {run['loop_ms']:.0f} ms captured; "
                      f"renderer CPU {base['renderer_cpu_ms']:.0f} / {run['renderer_cpu_ms']:.0f} ms; producer lag "
                      f"{run['lag_ms']:.0f} ms", file=sys.stderr)
    finally:
        browser.stop()
        stop_writer.set()
        writer.join(60)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    summary = dict(
        lines=args.lines, rounds=args.rounds, detail_level=args.detail,
        console_via_inspector=args.console_via_inspector,
        baseline_loop_ms=med(baseline, "loop_ms"), captured_loop_ms=med(captured, "loop_ms"),
        baseline_page_ms=med(baseline, "total_ms"), captured_page_ms=med(captured, "total_ms"),
        producer_lag_ms=med(captured, "lag_ms"),
        baseline_renderer_cpu_ms=med(baseline, "renderer_cpu_ms"),
        captured_renderer_cpu_ms=med(captured, "renderer_cpu_ms"),
        baseline_browser_other_cpu_ms=med(baseline, "browser_other_cpu_ms"),
        captured_browser_other_cpu_ms=med(captured, "browser_other_cpu_ms"),
        load_average=os.getloadavg(),
        baseline_loop_all=[round(r["loop_ms"], 1) for r in baseline],
        captured_loop_all=[round(r["loop_ms"], 1) for r in captured],
    )
    summary["loop_overhead_pct"] = 100 * (summary["captured_loop_ms"] / summary["baseline_loop_ms"] - 1)
    summary["page_overhead_pct"] = 100 * (summary["captured_page_ms"] / summary["baseline_page_ms"] - 1)
    summary["renderer_cpu_overhead_pct"] = 100 * (summary["captured_renderer_cpu_ms"]
                                                  / summary["baseline_renderer_cpu_ms"] - 1)
    if control_runs:
        summary.update(runtime_only_loop_ms=med(control_runs, "loop_ms"),
                       runtime_only_renderer_cpu_ms=med(control_runs, "renderer_cpu_ms"),
                       runtime_only_loop_all=[round(r["loop_ms"], 1) for r in control_runs])
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        inspector = args.console_via_inspector or args.detail == "raw"
        how = "console through Runtime.consoleAPICalled" if inspector else "console through the in-page hook"
        print(f"{args.lines} console lines, {args.rounds} rounds, detail {args.detail}, {how} (medians)")
        print(f"  loop of console.log calls: {summary['baseline_loop_ms']:.1f} ms alone, "
              f"{summary['captured_loop_ms']:.1f} ms captured: {summary['loop_overhead_pct']:+.1f}%")
        print(f"  navigation start to end of loop: {summary['baseline_page_ms']:.1f} ms alone, "
              f"{summary['captured_page_ms']:.1f} ms captured: {summary['page_overhead_pct']:+.1f}%")
        if control_runs:
            print(f"  a client that only enables Runtime: loop {summary['runtime_only_loop_ms']:.1f} ms "
                  f"({100 * (summary['runtime_only_loop_ms'] / summary['baseline_loop_ms'] - 1):+.1f}%), renderer CPU "
                  f"{summary['runtime_only_renderer_cpu_ms']:.0f} ms")
        print(f"  renderer CPU per run: {summary['baseline_renderer_cpu_ms']:.0f} ms alone, "
              f"{summary['captured_renderer_cpu_ms']:.0f} ms captured: {summary['renderer_cpu_overhead_pct']:+.1f}%; "
              f"rest of the browser {summary['baseline_browser_other_cpu_ms']:.0f} / "
              f"{summary['captured_browser_other_cpu_ms']:.0f} ms")
        print(f"  all {args.lines} events acknowledged by the writer {summary['producer_lag_ms']:.0f} ms after the "
              f"page finished")
        print(f"  load average {', '.join(f'{x:.1f}' for x in summary['load_average'])} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
