"""The scripts injected into every document (``js/``), and the names they share with the mapper.

Rules:
- The scripts are package data (``js/*.js``), read once at import. Each
  file is one JavaScript function expression taking its settings; the
  injected source is that function called with them (``_with_settings``),
  so the files stay plain JavaScript and nothing is substituted into them.
- ``interaction.js`` runs in the isolated world ``WORLD`` and reports clicks,
  keys and scrolls through the ``BINDING`` binding.
- ``console_hook.js`` (the default below detail level ``raw``) runs in each
  document's main world, before page scripts, and replaces
  console.log/info/warn/error/debug. Each call is sent through the
  ``CONSOLE_BINDING`` binding, with its arguments as text previews close to
  DevTools' (accessors are shown, not called) and, at verbose, its stack;
  calls within a millisecond of the last one sent are batched until the end
  of the task (warn and error never wait). Those events have
  ``source.event`` ``Runtime.bindingCalled`` (the method that carried them)
  and their frame from the binding's execution context.

Why the hook, measured on Chromium 156: once Runtime is enabled, Chromium's
inspector does work on every console call (serialising it, capturing a
stack), on the page's own thread. Stack capture is switched off below
``verbose``; the rest is the price of ``Runtime.consoleAPICalled``
(tools/bench_cdp.py measures it: the page's console-heavy loop runs 2-3x
slower). What the hook costs, and changes:
- The hooked calls no longer reach Chromium's console, so DevTools and other
  CDP clients do not see them, and a document keeps its hook after the
  producer stops: calls made while no producer runs are lost (the inspector
  path would replay them on attach). console.table/trace/assert/dir/count/
  group/time still go through the inspector.
- The hook takes the built-ins it uses when it is installed and never
  throws into the page; a Proxy argument's traps do run (DevTools avoids them).
- Page code that grabs the binding before the hook does (it deletes the
  global) could send forged lines; what the producer accepts through it is
  bounded and validated (``CdpMapper._console_batch``).
``console_hook=False`` (``capture-cdp --console-via-inspector``), and detail
level ``raw``, use ``Runtime.consoleAPICalled`` instead, at the inspector's
price.
"""

import json
from importlib import resources

from ..layout import MAX_RECORD_BYTES

BINDING = "__shmringInteraction"
CONSOLE_BINDING = "__shmringConsole"
WORLD = "shmring"
CONSOLE_HOOK_BATCH = 500
"""Most calls in one console payload (the hook sends at most this many at once)."""


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("js", name).read_text(encoding="utf-8")


def _with_settings(function_source: str, settings: dict) -> str:
    # The newline ends a comment the file may close with.
    return f"({function_source}\n)({json.dumps(settings)});\n"


_INTERACTION_JS = _read("interaction.js")
_CONSOLE_HOOK_JS = _read("console_hook.js")

INTERACTION_SCRIPT = _with_settings(_INTERACTION_JS, {"binding": BINDING})


def console_hook_script(verbose: bool) -> str:
    """The console hook for one capture: with a stack per call at verbose.

    Each argument's text is cut at one byte over the size rule's limit, so a
    huge one still ends as a truncated event, and a payload stays bounded.
    """
    return _with_settings(_CONSOLE_HOOK_JS, {"binding": CONSOLE_BINDING, "withStack": verbose,
                                             "maxText": MAX_RECORD_BYTES + 1, "maxBatch": CONSOLE_HOOK_BATCH})
