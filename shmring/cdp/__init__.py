"""CDP capture: a producer that follows a live Chromium over the DevTools protocol.

The package, bottom up (a module imports only the ones listed before it):
- ``scripts``: the scripts injected into every document (``js/*.js``, package
  data) and the binding names they share with the mapper;
- ``text``: CDP values (RemoteObjects, stack traces, keys) as text;
- ``mapper``: CDP messages -> Event dicts, with no I/O (tested with canned
  messages, no browser);
- ``connection``: one browser-level websocket: commands with futures, events
  to a callback;
- ``publisher``: the thread that sends events to serve's ingest socket;
- ``capture``: the capture loop over those, ``capture()`` and ``capture_command()``;
- ``browser``: launching Chromium, driving it and serving pages, for the demo,
  the tests and the tools; not the capture path.

Rules:
- Events reach the ring only through serve's ingest socket (the Producer
  client): the writer stays the single write path.
- Nothing here prints; messages go to the ``log`` callback.
- This package exports what ``shmring.cdp`` exported as one module.
"""

from .browser import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    DEMO_PAGE,
    BrowserControl,
    BrowserDemo,
    PageServer,
    chromium_available,
    close_tab,
    find_free_port,
    launch_chromium,
    open_tab,
    stop_process,
    wait_for_devtools,
)
from .capture import CdpCapture, capture, capture_command
from .connection import resolve_browser_ws
from .mapper import CdpMapper, encode_for_ingest

# Not in __all__, but imported from the single module before the split: still importable from here.
# New code imports them from their own module.
from ..errors import CdpError, MalformedCdp  # noqa: F401
from .connection import _Connection  # noqa: F401
from .mapper import MAX_REQUESTS_PER_TARGET  # noqa: F401
from .scripts import BINDING, CONSOLE_BINDING, CONSOLE_HOOK_BATCH, console_hook_script  # noqa: F401
from .text import remote_object_text, snake  # noqa: F401

__all__ = [
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "DEMO_PAGE",
    "BrowserControl",
    "BrowserDemo",
    "CdpCapture",
    "CdpMapper",
    "PageServer",
    "capture",
    "capture_command",
    "chromium_available",
    "close_tab",
    "encode_for_ingest",
    "find_free_port",
    "launch_chromium",
    "open_tab",
    "resolve_browser_ws",
    "stop_process",
    "wait_for_devtools",
]
