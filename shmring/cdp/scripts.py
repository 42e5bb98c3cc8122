"""The scripts injected into every document (``js/``), and the names they share with the mapper.

Rules:
- The scripts are package data, read once at import; placeholders are
  filled here, never in the page.
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

from importlib import resources

from ..layout import MAX_RECORD_BYTES

BINDING = "__shmringInteraction"
CONSOLE_BINDING = "__shmringConsole"
WORLD = "shmring"
CONSOLE_HOOK_BATCH = 500
"""Most calls in one console payload (the hook sends at most this many at once)."""


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("js", name).read_text(encoding="utf-8")


INTERACTION_SCRIPT = _read("interaction.js") % {"binding": BINDING}
CONSOLE_HOOK_SCRIPT = _read("console_hook.js")


def console_hook_script(verbose: bool) -> str:
    """The console hook for one capture: with a stack per call at verbose.

    Each argument's text is cut at one byte over the size rule's limit, so a
    huge one still ends as a truncated event, and a payload stays bounded.
    """
    return CONSOLE_HOOK_SCRIPT % {"binding": CONSOLE_BINDING, "stack": "true" if verbose else "false",
                                  "max_text": MAX_RECORD_BYTES + 1, "batch": CONSOLE_HOOK_BATCH}
