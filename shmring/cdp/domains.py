"""What a producer config means for one target: the CDP commands that set it up and that change it.

Rules (no I/O; the capture loop sends these in order, before or after the
target resumes):
- network: the Network domain is enabled only while network is captured:
  ``Network.disable`` when it is turned off, so the browser stops sending
  (and paying for) Network events, ``Network.enable`` when it is back.
- console, through the in-page hook: the hook's binding is added only while
  console is captured; ``Runtime.removeBinding`` stops the hooked calls from
  leaving the page, ``Runtime.addBinding`` resumes them. A document made
  while console is off keeps its native console; its calls, once console is
  on again, come through ``Runtime.consoleAPICalled``. Through the
  inspector (``--console-via-inspector``) console calls cannot be stopped
  without disabling Runtime, which carries the bindings, exceptions and frame
  attribution: the producer drops them.
- interaction: its binding is added only while interaction is captured; the
  injected script looks it up at each report.
- page: ``Page.setLifecycleEventsEnabled`` follows it. The Page domain itself
  stays enabled: it carries the injected scripts and the frame URLs every
  other category's events are attributed with.
- detail level: stack capture (``Runtime.setMaxCallStackSizeToCapture``) only
  at verbose and raw, while console is captured; the hook's own stacks are
  switched in each document's main world (``console_hook_stacks``).
- The mapper drops every event of a category that is off, whatever the
  browser still sends, so nothing of it follows a config change in the ring.
"""

from ..producer_config import ProducerConfig
from .scripts import BINDING, CONSOLE_BINDING, INTERACTION_SCRIPT, WORLD, console_hook_script

STACK_FRAMES = 200


def verbose(config: ProducerConfig) -> bool:
    return config.detail_level in ("verbose", "raw")


def _stack_size(config: ProducerConfig) -> int:
    return STACK_FRAMES if verbose(config) and "console" in config.active() else 0


def _interaction_binding(on: bool) -> tuple[str, dict]:
    if on:
        return "Runtime.addBinding", {"name": BINDING, "executionContextName": WORLD}
    return "Runtime.removeBinding", {"name": BINDING}


def _console_binding(on: bool) -> tuple[str, dict]:
    return ("Runtime.addBinding" if on else "Runtime.removeBinding"), {"name": CONSOLE_BINDING}


def setup_commands(config: ProducerConfig, *, console_hook: bool) -> list[tuple[str, dict]]:
    """The commands that set a new target up for `config` (sent before it resumes)."""
    active = config.active()
    commands = [
        ("Runtime.enable", {}),
        # Console stack traces cost the page on every console call; only verbose reports them.
        ("Runtime.setMaxCallStackSizeToCapture", {"size": _stack_size(config)}),
    ]
    if "network" in active:
        commands.append(("Network.enable", {}))
    commands += [
        ("Page.enable", {}),
        ("Page.setLifecycleEventsEnabled", {"enabled": "page" in active}),
    ]
    if "interaction" in active:
        commands.append(_interaction_binding(True))
    commands.append(("Page.addScriptToEvaluateOnNewDocument",
                     {"source": INTERACTION_SCRIPT, "worldName": WORLD, "runImmediately": True}))
    if console_hook:  # before the target resumes: its first console call is hooked
        if "console" in active:
            commands.append(_console_binding(True))
        commands.append(("Page.addScriptToEvaluateOnNewDocument",
                         {"source": console_hook_script(verbose(config)), "runImmediately": True}))
    commands.append(("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True,
                                              "filter": [{"type": "iframe", "exclude": False}]}))
    return commands


def change_commands(old: ProducerConfig, new: ProducerConfig, *, console_hook: bool) -> list[tuple[str, dict]]:
    """The commands that take a target set up for `old` to `new` (empty when nothing in the browser changes)."""
    before, after = old.active(), new.active()
    commands = []
    if ("network" in before) != ("network" in after):
        commands.append(("Network.enable" if "network" in after else "Network.disable", {}))
    if ("page" in before) != ("page" in after):
        commands.append(("Page.setLifecycleEventsEnabled", {"enabled": "page" in after}))
    if ("interaction" in before) != ("interaction" in after):
        commands.append(_interaction_binding("interaction" in after))
    if console_hook and ("console" in before) != ("console" in after):
        commands.append(_console_binding("console" in after))
    if _stack_size(old) != _stack_size(new):
        commands.append(("Runtime.setMaxCallStackSizeToCapture", {"size": _stack_size(new)}))
    return commands


def console_hook_stacks(old: ProducerConfig, new: ProducerConfig, *, console_hook: bool) -> bool | None:
    """True/False when the hooked documents must turn their stacks on/off; None when they keep them."""
    if not console_hook or verbose(old) == verbose(new):
        return None
    return verbose(new)


def hook_stacks_expression(on: bool) -> str:
    """Evaluated in a document's main world: the hook's stacks on or off (see js/console_hook.js)."""
    hooked = "globalThis.__shmringConsoleHooked"
    return f"typeof {hooked} === 'function' && {hooked}({'true' if on else 'false'})"


def hook_script_params(config: ProducerConfig) -> dict:
    """``Page.addScriptToEvaluateOnNewDocument`` params of the hook for `config` (documents made later)."""
    return {"source": console_hook_script(verbose(config)), "runImmediately": True}
