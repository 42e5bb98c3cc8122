"""A real Chromium for the integration tests: whether there is one (``needs_chromium``), and ``Browser``.

``Browser`` starts at construction and removes its directory at stop; ``stop(kill=True)`` is a crash (SIGKILL to its
process group, no clean shutdown). The ``shared_browser`` and ``browser`` fixtures in conftest.py hold one per
test module, reset to one blank tab for each test.
"""

import os
import signal

import pytest

from shmring import ConfigError
from shmring.cdp.browser import BrowserControl, Chromium, resolve_chromium


def _chromium_missing() -> str:
    try:
        resolve_chromium()
    except ConfigError as exc:
        return f"the browser tests need it: {exc}"
    return ""


needs_chromium = pytest.mark.skipif(bool(_chromium_missing()), reason=_chromium_missing())


class Browser(Chromium):
    """A started Chromium (its directory goes at stop) with the tests' helpers."""

    def __init__(self, port=None):
        super().__init__(port=port)
        self.start()

    def reset(self):
        """Leave one blank tab: no page of an earlier test replays its console into the next."""
        with BrowserControl(self.cdp_url) as control:
            control.call("Target.createTarget", {"url": "about:blank"})
            for info in control.call("Target.getTargets")["targetInfos"]:
                if info["type"] == "page" and info["url"] != "about:blank":
                    control.close_tab(info["targetId"])

    def stop(self, *, kill=False):
        if kill and self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a crash: no clean shutdown
        super().stop()
