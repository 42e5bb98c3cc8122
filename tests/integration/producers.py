"""A CDP producer at work, as the producer-config tests watch it: the loop page, the producer, the ring.

The loop page logs and fetches every 100 ms (the ``site`` fixture in conftest.py serves it); ``open_loop_tab``
returns once the producer follows the new tab; ``Events`` reads the ring from its start and waits, with a
deadline, for what the producer published. Every wait has a deadline.
"""

import json
import time

from shmring import Reader
from shmring.cdp.browser import BrowserControl
from shmring.control import producer_stats
from shmring.errors import ProducerNotRunning

TIMEOUT_S = 20

LOOP = b"""<!doctype html><title>loop</title><script>
let i = 0;
setInterval(() => {
  i++;
  console.log("tick", i);
  fetch("/api/tick?i=" + i).then(r => r.text()).catch(() => {});
}, 100);
</script>"""


def wait_until(predicate, what, timeout=TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stats_when_ready(name):
    """The producer's stats once it is connected (ProducerNotRunning until serve's child runs)."""
    def ready():
        try:
            stats = producer_stats(name)
        except ProducerNotRunning:
            return None
        return stats if stats["connected"] else None
    return wait_until(ready, "the producer to connect")


def open_loop_tab(cdp_url, name, site, host="127.0.0.1"):
    """A new tab the producer follows, then navigated to the loop page (on `host`)."""
    with BrowserControl(cdp_url) as control:
        tab = control.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        wait_until(lambda: tab in producer_stats(name)["targets"], f"the producer to follow {tab}")
        control.navigate(tab, site.base_url.replace("127.0.0.1", host) + "/loop.html")
    return tab


class Events:
    """Reads ring `name` from its start, keeping every envelope."""

    def __init__(self, name, **kwargs):
        self.reader = Reader.attach(name, after_seq=0, **kwargs)
        self.envelopes = []

    def read_for(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = self.reader.read(timeout=0.05)
            if result is not None:
                assert not result.dropped
                self.envelopes.append(result.envelope)

    def until(self, predicate, what, timeout=TIMEOUT_S):
        deadline = time.monotonic() + timeout
        while not predicate(self.envelopes):
            if time.monotonic() > deadline:
                seen = sorted({e.event.type for e in self.envelopes})
                raise AssertionError(f"timed out waiting for {what}; saw {seen}")
            self.read_for(0.1)

    def after(self, seq, tab=None):
        return [e for e in self.envelopes if e.seq > seq
                and (tab is None or e.event.source.metadata.get("target_id") == tab)]

    def close(self):
        self.reader.close()


def data(envelope):
    return json.loads(bytes(envelope.event.data))


def config_events(envelopes):
    return [e for e in envelopes if e.event.type == "system.producer_config"]


def flowing(tab, *categories):
    def check(envelopes):
        seen = {e.event.category for e in envelopes if e.event.source.metadata.get("target_id") == tab}
        return set(categories) <= seen
    return check
