"""The demo: serve + a synthetic browser producer + two filtered readers + a flusher.

Rules:
- Everything runs as it would for a user: ``shmring serve`` as its own
  process (ring, ingest socket, supervised flusher), the producer talks to
  the socket with the Producer client, readers are separate processes.
- An existing log directory is reused; the summary counts only this run's
  capture session.
- Ctrl-C ends the run early, not abruptly: the reader processes ignore it
  (the ring's close ends them), everything shuts down in order and the
  shortened run is summarised.
- Nothing here prints: the caller gets progress and summary dicts.
"""

import contextlib
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .errors import DemoError, ProducerError
from .producer import Producer
from .reader import Filter, Reader
from .stats import ring_stats

__all__ = ["run_demo", "synthetic_event"]

_PAGES = ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/cart", "http://127.0.0.1:8000/checkout")
_CONSOLE = ("rendered product grid in {} ms", "cart total updated: {} items", "prefetch finished after {} ms")
READERS = {"console": ["console"], "network+page": ["network", "page"]}


def synthetic_event(i: int, rng: random.Random) -> dict:
    """A plausible browser event as the JSON object a producer sends."""
    url = rng.choice(_PAGES)
    meta = {"target_id": "8F2C1A7E", "cdp_session_id": "S-1", "frame_id": "F-MAIN"}
    roll = rng.random()
    if roll < 0.4:
        level = rng.choice(("log", "log", "info", "warn", "error"))
        return dict(type=f"console.{level}", category="console",
                    source=dict(kind="cdp", event="Runtime.consoleAPICalled", metadata=meta), url=url,
                    data={"level": level, "args": [rng.choice(_CONSOLE).format(rng.randint(1, 60))]})
    if roll < 0.75:
        request = f"{1000 + i}.{rng.randint(1, 9)}"
        if rng.random() < 0.5:
            return dict(type="network.request", category="network",
                        source=dict(kind="cdp", event="Network.requestWillBeSent", metadata=meta), url=url,
                        data={"request_id": request, "method": rng.choice(("GET", "GET", "POST")),
                              "url": f"{url}api/items?page={i % 9}"})
        return dict(type="network.response", category="network",
                    source=dict(kind="cdp", event="Network.responseReceived", metadata=meta), url=url,
                    data={"request_id": request, "status": rng.choice((200, 200, 200, 304, 404)),
                          "mime_type": "application/json", "encoded_data_length": rng.randint(200, 90000)})
    if roll < 0.85:
        kind = rng.choice(("page.navigation", "page.dom_content_loaded", "page.load"))
        event = {"page.navigation": "Page.frameNavigated", "page.dom_content_loaded": "Page.domContentEventFired",
                 "page.load": "Page.loadEventFired"}[kind]
        return dict(type=kind, category="page", source=dict(kind="cdp", event=event, metadata=meta), url=url)
    kind = rng.choice(("interaction.click", "interaction.scroll", "interaction.key"))
    return dict(type=kind, category="interaction", source=dict(kind="extension"), url=url,
                data={"selector": rng.choice(("button#buy", "a.next", "input#search")),
                      "x": rng.randint(0, 1280), "y": rng.randint(0, 800)})


def _consume(name: str, categories: list[str], ready, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the demo process, which closes the ring
    with Reader.attach(name, after_seq=0, filter=Filter(categories=categories)) as reader:
        ready.set()
        for _ in reader:
            pass
        results.put((",".join(categories), reader.delivered, reader.dropped, reader.filtered, reader.cursor))


def _produce(socket_path: str, rate: int, stop: threading.Event, counts: dict) -> None:
    rng = random.Random(7)
    batch = max(1, rate // 20)
    with Producer.connect(socket_path) as producer:
        started = time.monotonic()
        i = 0
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate)
            if i < due:
                n = min(batch, due - i)
                seqs = producer.publish_many([synthetic_event(i + k, rng) for k in range(n)])
                i += n
                counts["published"] = i
                counts["last_seq"] = seqs[-1]
            else:
                stop.wait(0.01)


def _wait_for_socket(path: str, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"shmring serve exited with status {proc.returncode} while starting",
                            status=proc.returncode)
        try:
            Producer.connect(path, timeout=1).close()
            return
        except ProducerError:
            time.sleep(0.05)
    raise DemoError(f"shmring serve did not open {path} within {timeout_s:.0f} s", path=path)


def _lines_per_file(directory: str, session_id: str) -> dict[str, int]:
    marker = re.compile(rb'^\{"capture_session_id":' + re.escape(json.dumps(session_id).encode()), re.M)
    counts = {}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".jsonl") and not entry.startswith("_"):
            with open(os.path.join(directory, entry), "rb") as f:
                counts[entry] = len(marker.findall(f.read()))
    return counts


def _wait_for_capture(name: str, timeout_s: float = 30.0) -> None:
    """Until the CDP producer announces it is connected (a system.cdp_connected event in the ring)."""
    deadline = time.monotonic() + timeout_s
    with Reader.attach(name, after_seq=0, filter=Filter(categories=["system"])) as reader:
        while (left := deadline - time.monotonic()) > 0:
            result = reader.read(timeout=left)
            if result is not None and result.envelope and result.envelope.event.type == "system.cdp_connected":
                return
    raise DemoError(f"the CDP producer did not connect to the browser within {timeout_s:.0f} s")


def run_demo(seconds: float = 10.0, rate: int = 2000, directory: str = "shmring-demo", progress=lambda p: None,
             browser: bool = False, chromium: str | None = None) -> dict:
    """Run the whole demo; return a summary. Raises ShmringError if a part fails to start.

    browser=True: real events from a headless Chromium on a local page (via
    ``serve --cdp``) instead of the synthetic producer. `chromium`: its
    binary, else ``$SHMRING_CHROMIUM``, else /usr/bin/chromium (ConfigError
    if missing).
    """
    name = f"demo-{os.getpid()}"
    directory = os.path.abspath(directory)
    ctx = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="shmring-demo-"))
        socket_path = os.path.join(tmp, "ingest.sock")
        command = [sys.executable, "-m", "shmring", "serve", name, "--socket", socket_path, "--log-dir", directory]
        if browser:
            from .cdp import BrowserDemo

            page_browser = stack.enter_context(BrowserDemo(chromium))
            command += ["--cdp", page_browser.cdp_url]
        serve = subprocess.Popen(command, start_new_session=True)
        readers, stop, counts = [], threading.Event(), {"published": 0, "last_seq": 0}
        try:
            _wait_for_socket(socket_path, serve)
            session_id = ring_stats(name)["capture_session_id"]
            results = ctx.Queue()
            for categories in READERS.values():
                ready = ctx.Event()
                proc = ctx.Process(target=_consume, args=(name, categories, ready, results), daemon=True)
                proc.start()
                if not ready.wait(20):
                    raise DemoError("a demo reader did not start")
                readers.append(proc)
            if browser:
                _wait_for_capture(name)
                page_browser.open_page()
                producer = threading.Thread(target=stop.wait, daemon=True)  # the browser is the producer
            else:
                producer = threading.Thread(target=_produce, args=(socket_path, rate, stop, counts), daemon=True)
            started = time.monotonic()
            producer.start()
            try:
                while (elapsed := time.monotonic() - started) < seconds and producer.is_alive():
                    time.sleep(0.5)
                    stats = ring_stats(name)
                    progress(dict(elapsed=elapsed, published=stats["latest_seq"], readers=stats["readers"]))
            except KeyboardInterrupt:
                pass  # Ctrl-C: end the run here, shut down in order, summarise what ran
            stop.set()
            producer.join(10)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            if serve.poll() is None:
                serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        delivered = {}
        published = 0
        for _ in readers:
            categories, got, dropped, filtered, cursor = results.get(timeout=30)
            delivered[categories] = dict(delivered=got, dropped=dropped, filtered=filtered)
            published = max(published, cursor)  # read from seq 0 to the end: the ring's last seq
        for proc in readers:
            proc.join(10)
    return dict(
        ring=name,
        capture_session_id=session_id,
        seconds=elapsed,
        published=published,
        rate=published / elapsed if elapsed else 0.0,
        readers=delivered,
        files=_lines_per_file(directory, session_id),
        directory=directory,
        serve_status=serve.returncode,
    )
