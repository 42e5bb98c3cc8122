"""CDP capture: a producer that follows a live Chromium over the DevTools protocol.

Rules:
- One browser-level websocket with flattened sessions. ``Target.setAutoAttach``
  (``waitForDebuggerOnStart``, ``flatten``) at browser level follows every page,
  including tabs opened later; on each page session the same call follows its
  out-of-process iframes. A new target is resumed (``Runtime.runIfWaitingForDebugger``)
  only after Runtime, Network and Page are enabled and the interaction script
  and the console hook are installed, so its first requests and console calls
  are not lost. Targets of other types are resumed and detached.
- Events go out through serve's ingest socket with the Producer client; the
  writer stays the single write path. A publisher thread batches with
  ``publish_many`` so the asyncio loop never blocks on the socket.
- ``type`` is semantic (``console.log``, ``network.request``, ``page.load``,
  ``interaction.click``, ``system.cdp_connected`` …); the CDP method is the
  provenance in ``source.event``; ``source.metadata`` holds ``target_id``,
  ``cdp_session_id`` and ``frame_id`` where known. Browser-level events have no
  session. ``url`` is the URL of the document the event happened in; a
  request's own URL is ``data.url``. Keys in ``data`` are snake_case.
- ``ts`` is Unix microseconds from the browser's clock where CDP gives one;
  CDP's monotonic timestamps are converted with the wall-time anchor carried
  by ``Network.requestWillBeSent`` (before the first one, with this machine's
  monotonic-to-wall offset: the same clock on Linux). Events CDP gives no time
  for are stamped on receipt.
- The detail level is the producer's own setting, stamped on every event:
  ``minimal`` < ``standard`` < ``verbose`` (adds headers and stack traces)
  < ``raw`` (``data`` is the untouched CDP params). Readers filter on their
  side; nothing here is reconfigured by a subscriber.
- Size: an event whose JSON is over 1,000,000 bytes is sent with ``data``
  null and ``truncated`` true (the writer's rule, applied early so the line
  also passes ingest's 4 MiB limit); it is never dropped silently. A message
  that is not valid CDP, or that a mapping cannot read, is logged (rate
  limited) and skipped.
- Browser gone: one line through ``log`` when the connection is lost (not one
  per retry), reconnection with back-off capped at ``max_backoff_s``, a fresh
  websocket URL resolved from ``http://host:port/json/version`` each time, so
  a restarted browser on the same port is followed.
- All mapping from CDP to events is in ``CdpMapper`` (no I/O: testable with
  canned messages). Nothing here prints; messages go to the ``log`` callback.

What Chromium (156) imposes, measured:
- A tab that another client creates with a URL (``Target.createTarget``,
  ``/json/new``) loads its first document before an auto-attached debugger
  can hold it, so that document's request and navigation are missed; tabs a
  page opens (``window.open``) are held and complete, as is everything after.
  ``BrowserControl.open_tab`` opens ``about:blank`` first for that reason.
- On attaching to a page that is already open, ``Runtime.enable`` replays
  its earlier console messages; they keep their original ``ts`` and carry
  ``data.replayed: true``.
- Once Runtime is enabled, Chromium's inspector does work on every console
  call (serialising it, capturing a stack), on the page's own thread. Stack
  capture is switched off below ``verbose``; the rest is the price of
  ``Runtime.consoleAPICalled`` (tools/bench_cdp.py measures it: the page's
  console-heavy loop runs 2-3x slower).
- So by default (``console_hook``; below detail level ``raw``) the producer
  avoids that price: a script injected in every document's main world, before
  page scripts, replaces console.log/info/warn/error/debug. Each call is sent
  through the ``__shmringConsole`` binding, with its arguments as text
  previews close to DevTools' (accessors are shown, not called) and, at
  verbose, its stack; calls within a millisecond of the last one sent are
  batched until the end of the task (warn and error never wait). Those
  events have ``source.event`` ``Runtime.bindingCalled`` (the method that
  carried them) and their frame
  from the binding's execution context. What that costs, and changes:
  - The hooked calls no longer reach Chromium's console, so DevTools and other
    CDP clients do not see them, and a document keeps its hook after the
    producer stops: calls made while no producer runs are lost (the inspector
    path would replay them on attach). console.table/trace/assert/dir/count/
    group/time still go through the inspector.
  - The hook takes the built-ins it uses when it is installed and never
    throws into the page; a Proxy argument's traps do run (DevTools avoids them).
  - Page code that grabs the binding before the hook does (it deletes the
    global) could send forged lines; what the producer accepts through it is
    bounded and validated (``_console_batch``).
  ``console_hook=False`` (``capture-cdp --console-via-inspector``), and detail
  level ``raw``, use ``Runtime.consoleAPICalled`` instead, at the inspector's
  price.
"""

import asyncio
import collections
import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import msgspec

from .errors import ConfigError, ShmringError
from .layout import DETAIL_LEVELS, MAX_RECORD_BYTES
from .producer import Producer, PublishRejected

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

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")

BINDING = "__shmringInteraction"
CONSOLE_BINDING = "__shmringConsole"
WORLD = "shmring"
CONSOLE_HOOK_BATCH = 500
"""Most calls in one console payload (the hook sends at most this many at once)."""
MAX_CONSOLE_PAYLOAD = 64 * 1024 * 1024
"""Largest console payload accepted: a huge argument is cut to just over the size rule's limit
in the page (and ends as a truncated event), so a real one stays far below this."""
FOLLOWED_TYPES = frozenset({"page", "iframe"})
MAX_REQUESTS_PER_TARGET = 10_000
MAX_FRAMES_PER_TARGET = 1_000
BACKLOG_HIGH_WATER = 50_000
PUBLISH_BATCH = 512
COMMAND_TIMEOUT_S = 10.0

_decode_json = msgspec.json.decode
_encode_json = msgspec.json.Encoder().encode

INTERACTION_SCRIPT = r"""
(() => {
  const emit = globalThis.%(binding)s;
  if (typeof emit !== "function" || globalThis.__shmringInstalled) return;
  globalThis.__shmringInstalled = true;
  const now = () => performance.timeOrigin + performance.now();
  const describe = (el) => {
    if (el === document || el === window) return "document";
    if (!el || el.nodeType !== 1) return "";
    let s = el.localName;
    if (el.id) s += "#" + el.id;
    else if (el.classList && el.classList.length) s += "." + Array.from(el.classList).slice(0, 3).join(".");
    return s.slice(0, 200);
  };
  const send = (o) => { o.ts = now(); try { emit(JSON.stringify(o)); } catch (e) {} };
  const opts = {capture: true, passive: true};
  addEventListener("click", (e) => send({kind: "click", target: describe(e.target), x: Math.round(e.clientX),
    y: Math.round(e.clientY), button: e.button, trusted: e.isTrusted}), opts);
  addEventListener("keydown", (e) => send({kind: "key",
    key: typeof e.key === "string" && e.key.length > 1 ? e.key.slice(0, 32) : "character",
    alt: e.altKey, ctrl: e.ctrlKey, meta: e.metaKey, shift: e.shiftKey, repeat: e.repeat,
    target: describe(e.target), trusted: e.isTrusted}), opts);
  let timer = null, last = 0, scrolled = null;
  const flush = () => {
    timer = null; last = Date.now();
    const el = scrolled, doc = el === document || el === window || !el || el.nodeType !== 1;
    send({kind: "scroll", target: describe(el), x: Math.round(doc ? scrollX : el.scrollLeft),
      y: Math.round(doc ? scrollY : el.scrollTop)});
  };
  addEventListener("scroll", (e) => {
    scrolled = e.target;
    if (timer === null) timer = setTimeout(flush, Math.max(0, 200 - (Date.now() - last)));
  }, opts);
})();
""" % {"binding": BINDING}


CONSOLE_HOOK_SCRIPT = r"""
(() => {
  // Everything the hook uses is taken now, before page code can replace it,
  // and a hooked call never throws into the page.
  const G = globalThis, O = Object, A = Array, S = String;
  const emit = G.%(binding)s;
  if (typeof emit !== "function" || G.__shmringConsoleHooked) return;
  O.defineProperty(G, "__shmringConsoleHooked", {value: true});  // not enumerable
  try { delete G.%(binding)s; } catch (e) {}
  const withStack = %(stack)s, MAX_TEXT = %(max_text)d, MAX_BATCH = %(batch)d;
  const stringify = JSON.stringify, keysOf = O.keys, describeKey = O.getOwnPropertyDescriptor;
  const isArray = A.isArray, isView = ArrayBuffer.isView, brand = O.prototype.toString;
  const call = Function.prototype.call.bind(Function.prototype.call);
  const later = G.queueMicrotask.bind(G), perf = G.performance, perfNow = perf.now.bind(perf);
  const origin = perf.timeOrigin, ErrorCtor = G.Error, MapCtor = G.Map, SetCtor = G.Set;
  const getter = (proto, name) => { const d = proto && describeKey(proto, name); return d && d.get; };
  const E = G.Element && G.Element.prototype, N = G.Node && G.Node.prototype;
  const nodeTypeOf = getter(N, "nodeType"), nodeNameOf = getter(N, "nodeName");
  const localNameOf = getter(E, "localName"), idOf = getter(E, "id"), classNameOf = getter(E, "className");
  const cap = (t) => (t.length > MAX_TEXT ? t.slice(0, MAX_TEXT) : t);
  const isNode = (v) => { try { return nodeTypeOf !== undefined && typeof call(nodeTypeOf, v) === "number"; }
                          catch (e) { return false; } };
  const nodeText = (v) => {
    if (call(nodeTypeOf, v) !== 1) return S(call(nodeNameOf, v));
    const id = call(idOf, v), cls = S(call(classNameOf, v) || "").trim();
    return call(localNameOf, v) + (id ? "#" + id : "") + (cls ? "." + cls.split(/\s+/).join(".") : "");
  };
  // Text previews close to what the DevTools console shows; accessors are
  // never called (as DevTools doesn't), so previewing has no side effects.
  const inner = (v) => {
    if (typeof v === "string") return "'" + v + "'";
    if (v === null) return "null";
    if (typeof v === "function") return "ƒ";
    if (typeof v === "bigint") return v + "n";
    if (typeof v !== "object") return S(v);
    if (isArray(v)) return "Array(" + v.length + ")";
    const b = call(brand, v);
    return b.slice(8, -1);
  };
  const text = (v) => {
    if (typeof v === "string") return cap(v);
    if (v === null) return "null";
    if (typeof v === "bigint") return v + "n";
    if (typeof v === "symbol") return S(v);
    if (typeof v !== "object") return cap(S(v));
    try {
      const b = call(brand, v);
      if (b === "[object Error]") return cap(S(v.stack || v));
      if (b === "[object RegExp]" || b === "[object Date]") return cap(S(v));
      if (b === "[object String]") return cap("String {'" + v.valueOf() + "'}");
      if (v instanceof MapCtor || v instanceof SetCtor) return (v instanceof MapCtor ? "Map(" : "Set(") + v.size + ")";
      if (isNode(v)) return cap(nodeText(v));
      if (isArray(v) || isView(v)) {
        let out = "[", n = v.length, i = 0;
        for (; i < n && i < 100; i++) {
          if (i) out += ", ";
          const d = describeKey(v, i);
          out += d === undefined ? "" : ("get" in d ? "accessor" : inner(d.value));
        }
        return cap(out + (n > 100 ? ", …]" : "]"));
      }
      const keys = keysOf(v);
      let out = "{", i = 0;
      for (; i < keys.length && i < 5; i++) {
        let part;
        try { const d = describeKey(v, keys[i]); part = d && "get" in d ? "accessor" : inner(d && d.value); }
        catch (e) { part = "?"; }
        out += (i ? ", " : "") + keys[i] + ": " + part;
      }
      return cap(out + (keys.length > 5 ? ", …}" : "}"));
    } catch (e) {
      return "?";
    }
  };
  const stackHere = () => {
    const limit = ErrorCtor.stackTraceLimit, prepare = ErrorCtor.prepareStackTrace;
    try {
      ErrorCtor.stackTraceLimit = 203;  // this function, record() and the hooked method, then the caller's 200
      ErrorCtor.prepareStackTrace = undefined;
      const lines = S(new ErrorCtor().stack || "").split("\n"), out = [];
      for (let i = 4; i < lines.length; i++) {
        const line = lines[i].trim().replace(/^at /, "");
        out.push(line.endsWith(")") ? line : "(anonymous) (" + line + ")");
      }
      return out;
    } finally {
      ErrorCtor.stackTraceLimit = limit;
      ErrorCtor.prepareStackTrace = prepare;
    }
  };
  // JSON by hand: only strings go through stringify, which never consults a
  // page's toJSON for a primitive.
  const strings = (list) => {
    let out = "[";
    for (let i = 0; i < list.length; i++) out += (i ? "," : "") + stringify(list[i]);
    return out + "]";
  };
  // A call goes out at once (synchronously) unless one went out less than
  // 1 ms before: then it waits for the end of the task, or for 1 ms more of
  // calls, or for a warn or error. So a page that hangs, blocks in an alert
  // or crashes loses at most its last millisecond of log/info/debug calls,
  // and a burst of thousands of calls costs a few dozen binding calls (each
  // costs the page about what a native console call does).
  let batch = "", count = 0, scheduled = false, sentAt = -1e9;
  const send = () => {
    scheduled = false;
    if (!count) return;
    const out = "[" + batch + "]";
    batch = "";
    count = 0;
    try { emit(out); } catch (e) {}
  };
  const record = (level, args) => {
    try {
      const texts = [];
      for (let i = 0; i < args.length; i++) texts.push(text(args[i]));
      const now = perfNow(), time = origin + now;
      batch += (count ? "," : "") + '["' + level + '",' + (time === time ? time : 0) + "," + strings(texts) +
               (withStack ? "," + strings(stackHere()) : "") + "]";
      count++;
      if (level === "warn" || level === "error" || count >= MAX_BATCH || now - sentAt >= 1) {
        sentAt = now;
        send();
      } else if (!scheduled) {
        scheduled = true;
        later(send);
      }
    } catch (e) {}
  };
  const hooks = {
    log(...args) { record("log", args); }, info(...args) { record("info", args); },
    warn(...args) { record("warn", args); }, error(...args) { record("error", args); },
    debug(...args) { record("debug", args); },
  };
  for (const level of ["log", "info", "warn", "error", "debug"]) {
    try { O.defineProperty(console, level, {value: hooks[level], writable: true, configurable: true}); } catch (e) {}
  }
})();
"""


def console_hook_script(verbose: bool) -> str:
    """The console hook for one capture: with a stack per call at verbose.

    Each argument's text is cut at one byte over the size rule's limit, so a
    huge one still ends as a truncated event, and a payload stays bounded.
    """
    return CONSOLE_HOOK_SCRIPT % {"binding": CONSOLE_BINDING, "stack": "true" if verbose else "false",
                                  "max_text": MAX_RECORD_BYTES + 1, "batch": CONSOLE_HOOK_BATCH}


# -- mapping: CDP messages -> Event dicts (no I/O) -----------------------------


def _now_us() -> int:
    return time.time_ns() // 1000


_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")


def snake(name: str) -> str:
    """``requestTime`` -> ``request_time``; ``remoteIPAddress`` -> ``remote_ipaddress``."""
    return _CAMEL.sub(r"_\1", name).lower()


def _js_number(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def _preview_text(preview: dict) -> str:
    props = preview.get("properties") or []
    if preview.get("subtype") == "array":
        items = [p.get("value", "") if p.get("type") != "string" else repr(p.get("value", "")) for p in props]
        body = ", ".join(str(i) for i in items)
        return f"[{body}{', …' if preview.get('overflow') else ''}]"
    parts = []
    for p in props:
        value = p.get("value", p.get("type", ""))
        if p.get("type") == "string":
            value = repr(value)
        parts.append(f"{p.get('name', '')}: {value}")
    body = ", ".join(parts)
    return "{" + body + (", …" if preview.get("overflow") else "") + "}"


def remote_object_text(obj) -> str:
    """A text preview of a CDP RemoteObject, close to what the DevTools console shows."""
    if not isinstance(obj, dict):
        return str(obj)
    if "unserializableValue" in obj:
        return str(obj["unserializableValue"])
    kind = obj.get("type")
    if kind == "string":
        return str(obj.get("value", ""))
    if kind in ("number", "boolean"):
        return _js_number(obj.get("value"))
    if kind == "undefined":
        return "undefined"
    if kind == "object" and obj.get("subtype") == "null":
        return "null"
    preview = obj.get("preview")
    if kind == "object" and isinstance(preview, dict) and obj.get("subtype") not in ("error", "node", "regexp", "date"):
        return _preview_text(preview)
    if "description" in obj:
        return str(obj["description"])
    if "value" in obj:
        return json.dumps(obj["value"])
    return str(obj.get("className") or kind or "")


def format_stack(stack) -> list[str]:
    """CDP StackTrace -> ["fn (url:line:col)", …], 1-based lines and columns."""
    if not isinstance(stack, dict):
        return []
    out = []
    for frame in stack.get("callFrames") or []:
        if not isinstance(frame, dict):
            continue
        fn = frame.get("functionName") or "(anonymous)"
        out.append(f"{fn} ({frame.get('url', '')}:{int(frame.get('lineNumber', 0)) + 1}:"
                   f"{int(frame.get('columnNumber', 0)) + 1})")
    return out


class _Target:
    """What the mapper knows about one attached session."""

    __slots__ = (
        "attached_us",
        "contexts",
        "frames",
        "main_frame",
        "requests",
        "session_id",
        "target_id",
        "type",
        "url",
    )

    def __init__(self, session_id: str, target_id: str, type_: str, url: str, attached_us: int = 0):
        self.attached_us = attached_us  # console messages older than this are Chromium's replay
        self.session_id = session_id
        self.target_id = target_id
        self.type = type_
        self.url = url
        self.main_frame = target_id  # a page target's main frame has the target's id
        self.contexts: dict[int, str] = {}  # execution context id -> frame id
        self.frames: dict[str, str] = {}  # frame id -> document url
        self.requests: dict[str, tuple] = {}  # request id -> (url, method, document url, frame id, start ts)

    def frame_url(self, frame_id: str | None) -> str:
        if frame_id and frame_id in self.frames:
            return self.frames[frame_id]
        return self.url


_CONSOLE_LEVELS = {"log": "log", "info": "info", "warning": "warn", "error": "error", "debug": "debug",
                   "assert": "error"}
_HOOK_LEVELS = frozenset({"log", "info", "warn", "error", "debug"})
_NETWORK_CATEGORY = "network"


class MalformedCdp(ValueError):
    """A CDP message the mapper cannot read."""


class CdpMapper:
    """CDP messages -> Event dicts, ready for ``Producer.publish_many``.

    Pure apart from the state it keeps about targets (sessions, frames,
    execution contexts, requests in flight, the clock anchor); it does no I/O.
    ``map(method, params, session_id)`` returns a list of events; it raises
    ``MalformedCdp`` for a message it cannot read (the caller logs and skips).
    """

    def __init__(self, detail_level: str = "standard", *, now_us=_now_us):
        if detail_level not in DETAIL_LEVELS:
            raise ConfigError(f"invalid detail level {detail_level!r}: use one of {', '.join(DETAIL_LEVELS)}")
        self.detail = detail_level
        self.raw = detail_level == "raw"
        self.verbose = detail_level in ("verbose", "raw")
        self.minimal = detail_level == "minimal"
        self.now_us = now_us
        self.sessions: dict[str, _Target] = {}
        self.pages: dict[str, str] = {}  # page target id -> last known url
        self.anchor_s: float | None = None  # browser wall time minus monotonic time, in seconds
        self._handlers = {
            "Runtime.consoleAPICalled": self._console,
            "Runtime.exceptionThrown": self._exception,
            "Runtime.bindingCalled": self._binding,
            "Runtime.executionContextCreated": self._context_created,
            "Runtime.executionContextDestroyed": self._context_destroyed,
            "Runtime.executionContextsCleared": self._contexts_cleared,
            "Network.requestWillBeSent": self._request,
            "Network.responseReceived": self._response,
            "Network.loadingFailed": self._failed,
            "Network.loadingFinished": self._finished,
            "Page.frameNavigated": self._navigated,
            "Page.navigatedWithinDocument": self._navigated_within,
            "Page.frameDetached": self._frame_detached,
            "Page.domContentEventFired": self._dom_content,
            "Page.loadEventFired": self._load,
            "Page.lifecycleEvent": self._lifecycle,
            "Target.targetCreated": self._target_created,
            "Target.targetInfoChanged": self._target_changed,
            "Target.targetDestroyed": self._target_destroyed,
            "Target.targetCrashed": self._target_crashed,
            "Target.attachedToTarget": self._attached,
            "Target.detachedFromTarget": self._detached,
        }

    # -- entry points --------------------------------------------------------

    def map(self, method: str, params: dict, session_id: str | None = None) -> list[dict]:
        handler = self._handlers.get(method)
        if handler is None:
            return []
        if not isinstance(params, dict):
            raise MalformedCdp(f"{method}: params is not an object")
        target = None
        if session_id is not None and not method.startswith("Target."):
            target = self.sessions.get(session_id)
            if target is None:
                return []  # a session we do not follow (or already detached)
        try:
            return handler(method, params, target)
        except MalformedCdp:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a message makes a mapping raise, it is that message's fault
            raise MalformedCdp(f"{method}: {type(exc).__name__}: {exc}") from None

    def system_event(self, type_: str, data: dict) -> dict:
        """A producer lifecycle event (system.cdp_connected, system.cdp_disconnected)."""
        return {"ts": self.now_us(), "type": type_, "category": "system", "source": {"kind": "cdp"},
                "detail_level": self.detail, "data": data}

    def reset(self) -> None:
        """Forget every target (the connection to the browser ended)."""
        self.sessions.clear()
        self.pages.clear()
        self.anchor_s = None

    # -- helpers -------------------------------------------------------------

    def _event(self, type_: str, category: str, method: str, target: _Target | None, frame_id: str | None,
               url: str, ts: int, data, params: dict, target_id: str | None = None) -> dict:
        metadata = {}
        if target is not None:
            metadata["target_id"] = target.target_id
            metadata["cdp_session_id"] = target.session_id
        elif target_id:
            metadata["target_id"] = target_id
        if frame_id and type(frame_id) is str:
            metadata["frame_id"] = frame_id
        event = {"ts": ts, "type": type_, "category": category,
                 "source": {"kind": "cdp", "event": method, "metadata": metadata},
                 "detail_level": self.detail, "data": params if self.raw else data}
        if url and type(url) is str:
            event["url"] = url
        return event

    def mono_to_us(self, mono) -> int:
        """A CDP MonotonicTime (seconds) -> Unix microseconds."""
        if not isinstance(mono, (int, float)) or mono <= 0:
            return self.now_us()
        anchor = self.anchor_s
        if anchor is None:
            anchor = time.time() - time.monotonic()
        return int((mono + anchor) * 1_000_000)

    def _epoch_ms_to_us(self, ms) -> int:
        if isinstance(ms, (int, float)) and ms > 0:
            return int(ms * 1000)
        return self.now_us()

    def _timing(self, timing) -> dict | None:
        if not isinstance(timing, dict):
            return None
        out = {}
        for key, value in timing.items():
            if key == "requestTime":
                out["request_ts"] = self.mono_to_us(value)
            elif isinstance(value, (int, float)) and value >= 0:
                out[snake(key)] = value
        return out

    # -- Runtime -------------------------------------------------------------

    def _context_created(self, method, params, target):
        context = params["context"]
        frame_id = (context.get("auxData") or {}).get("frameId")
        if frame_id and type(frame_id) is str:
            target.contexts[int(context["id"])] = frame_id
        return []

    def _context_destroyed(self, method, params, target):
        target.contexts.pop(params.get("executionContextId"), None)
        return []

    def _contexts_cleared(self, method, params, target):
        target.contexts.clear()
        return []

    def _console(self, method, params, target):
        cdp_type = params["type"]
        if not isinstance(cdp_type, str):
            raise MalformedCdp(f"{method}: type is not a string")
        level = _CONSOLE_LEVELS.get(cdp_type, cdp_type)
        type_ = f"console.{level}" if level in ("log", "info", "warn", "error", "debug") else "console.log"
        frame_id = target.contexts.get(params.get("executionContextId"))
        ts = self._epoch_ms_to_us(params.get("timestamp"))
        data = None
        if not self.raw:
            args = params.get("args") or []
            if not isinstance(args, list):
                raise MalformedCdp(f"{method}: args is not a list")
            data = {"level": level, "args": [remote_object_text(a) for a in args]}
            if self.verbose and params.get("stackTrace"):
                data["stack"] = format_stack(params["stackTrace"])
            if ts < target.attached_us:
                data["replayed"] = True
        return [self._event(type_, "console", method, target, frame_id, target.frame_url(frame_id), ts, data, params)]

    def _exception(self, method, params, target):
        details = params["exceptionDetails"]
        frame_id = target.contexts.get(details.get("executionContextId"))
        ts = self._epoch_ms_to_us(params.get("timestamp"))
        data = None
        if not self.raw:
            exception = details.get("exception")
            if isinstance(exception, dict):
                message = remote_object_text(exception).split("\n", 1)[0]
            else:
                message = str(details.get("text", ""))
            data = {"level": "error", "args": [message]}
            if not self.minimal:
                data["text"] = str(details.get("text", ""))
                stack = format_stack(details.get("stackTrace"))
                if not stack and isinstance(exception, dict):
                    # Below verbose the inspector captures no stacks (it is cheaper);
                    # the error's own stack, as its description shows it, remains.
                    stack = [line.strip()[3:] for line in str(exception.get("description", "")).split("\n")[1:]
                             if line.strip().startswith("at ")]
                if not stack and details.get("url"):
                    stack = [(f"(anonymous) ({details['url']}:{int(details.get('lineNumber', 0)) + 1}:"
                              f"{int(details.get('columnNumber', 0)) + 1})")]
                data["stack"] = stack
            if ts < target.attached_us:
                data["replayed"] = True
        return [self._event("console.exception", "console", method, target, frame_id, target.frame_url(frame_id),
                            ts, data, params)]

    def _console_batch(self, method, params, target):
        """A payload from the console hook: one console.* event per call in it.

        The binding is in the page's main world, so page code could call it with
        anything: the payload is bounded before it is decoded.
        """
        payload = params["payload"]
        if not isinstance(payload, str) or len(payload) > MAX_CONSOLE_PAYLOAD:
            raise MalformedCdp(f"{method}: console payload is not a string of at most {MAX_CONSOLE_PAYLOAD} characters")
        try:
            entries = json.loads(payload)
        except (TypeError, ValueError, RecursionError):
            raise MalformedCdp(f"{method}: console payload is not JSON") from None
        if not isinstance(entries, list) or len(entries) > CONSOLE_HOOK_BATCH:
            raise MalformedCdp(f"{method}: console payload is not a list of at most {CONSOLE_HOOK_BATCH} calls")
        context = params.get("executionContextId")
        frame_id = target.contexts.get(context)
        url = target.frame_url(frame_id)
        events = []
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) >= 3 and entry[0] in _HOOK_LEVELS
                    and isinstance(entry[2], list)):
                raise MalformedCdp(f"{method}: unexpected console entry")
            level, ts, args = entry[0], entry[1], entry[2]
            ts = int(ts * 1000) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and 0 < ts < 1e13 \
                else self.now_us()  # 1e13 ms: the year 2286
            data = {"level": level, "args": [a if isinstance(a, str) else str(a) for a in args]}
            if self.verbose and len(entry) > 3 and isinstance(entry[3], list):
                data["stack"] = [str(line) for line in entry[3]]
            raw = {"name": CONSOLE_BINDING, "executionContextId": context, "entry": entry}
            events.append(self._event(f"console.{level}", "console", method, target, frame_id, url, ts, data, raw))
        return events

    def _binding(self, method, params, target):
        if params.get("name") == CONSOLE_BINDING:
            return self._console_batch(method, params, target)
        if params.get("name") != BINDING:
            return []
        try:
            payload = json.loads(params["payload"])
        except (TypeError, ValueError):
            raise MalformedCdp(f"{method}: interaction payload is not JSON") from None
        if not isinstance(payload, dict) or payload.get("kind") not in ("click", "key", "scroll"):
            raise MalformedCdp(f"{method}: unexpected interaction payload")
        kind = payload["kind"]
        frame_id = target.contexts.get(params.get("executionContextId"))
        ts = payload.get("ts")
        ts = int(ts * 1000) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts > 0 else self.now_us()

        def num(key):
            value = payload.get(key)
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

        def text(key, limit):
            value = payload.get(key)
            return value[:limit] if isinstance(value, str) else ""

        data = None
        if not self.raw:
            if kind == "click":
                data = {"target": text("target", 200), "x": num("x"), "y": num("y")}
                if not self.minimal:
                    data.update(button=num("button"), trusted=payload.get("trusted") is True)
            elif kind == "key":
                data = {"key": text("key", 32) or "character"}
                if not self.minimal:
                    data.update({m: payload.get(m) is True for m in ("alt", "ctrl", "meta", "shift", "repeat")})
                    data.update(target=text("target", 200), trusted=payload.get("trusted") is True)
            else:
                data = {"x": num("x"), "y": num("y")}
                if not self.minimal:
                    data["target"] = text("target", 200)
        return [self._event(f"interaction.{kind}", "interaction", method, target, frame_id,
                            target.frame_url(frame_id), ts, data, params)]

    # -- Network -------------------------------------------------------------

    def _remember(self, target: _Target, request_id: str, entry: tuple) -> None:
        requests = target.requests
        requests.pop(request_id, None)
        if len(requests) >= MAX_REQUESTS_PER_TARGET:
            requests.pop(next(iter(requests)))  # never completed: forget the oldest
        requests[request_id] = entry

    def _response_data(self, request_id, response: dict, resource_type, entry) -> dict:
        data = {"request_id": request_id, "url": response.get("url", entry[0] if entry else ""),
                "status": response.get("status"), "mime_type": response.get("mimeType", "")}
        if not self.minimal:
            data.update(method=entry[1] if entry else "", status_text=response.get("statusText", ""),
                        resource_type=resource_type or "", protocol=response.get("protocol", ""),
                        remote_ip=response.get("remoteIPAddress", ""),
                        from_cache=bool(response.get("fromDiskCache") or response.get("fromPrefetchCache")),
                        from_service_worker=bool(response.get("fromServiceWorker")),
                        encoded_data_length=response.get("encodedDataLength", 0))
            timing = self._timing(response.get("timing"))
            if timing is not None:
                data["timing"] = timing
        if self.verbose:
            data["headers"] = response.get("headers") or {}
        return data

    def _request(self, method, params, target):
        request_id = params["requestId"]
        request = params["request"]
        wall, mono = params.get("wallTime"), params.get("timestamp")
        if isinstance(wall, (int, float)) and isinstance(mono, (int, float)) and wall > 0 and mono > 0:
            self.anchor_s = wall - mono
            ts = int(wall * 1_000_000)
        else:
            ts = self.mono_to_us(mono)
        frame_id = params.get("frameId")
        document_url = params.get("documentURL") or target.frame_url(frame_id)
        events = []
        previous = target.requests.get(request_id)
        redirect = params.get("redirectResponse")
        if isinstance(redirect, dict):
            data = None if self.raw else self._response_data(request_id, redirect, params.get("type"), previous)
            events.append(self._event("network.response", _NETWORK_CATEGORY, method, target, frame_id,
                                      previous[2] if previous else document_url, ts, data, params))
        url, http_method = request["url"], request.get("method", "")
        self._remember(target, request_id, (url, http_method, document_url, frame_id, ts))
        data = None
        if not self.raw:
            data = {"request_id": request_id, "method": http_method, "url": url}
            if not self.minimal:
                initiator = params.get("initiator") or {}
                data.update(resource_type=params.get("type", ""), initiator_type=initiator.get("type", ""),
                            has_post_data=bool(request.get("hasPostData")))
                if isinstance(redirect, dict):
                    data["redirected_from"] = redirect.get("url", "")
            if self.verbose:
                data["headers"] = request.get("headers") or {}
                if params.get("initiator", {}).get("stack"):
                    data["initiator_stack"] = format_stack(params["initiator"]["stack"])
        events.append(self._event("network.request", _NETWORK_CATEGORY, method, target, frame_id, document_url,
                                  ts, data, params))
        return events

    def _response(self, method, params, target):
        request_id = params["requestId"]
        response = params["response"]
        if not isinstance(response, dict):
            raise MalformedCdp(f"{method}: response is not an object")
        entry = target.requests.get(request_id)
        frame_id = params.get("frameId") or (entry[3] if entry else None)
        url = entry[2] if entry else target.frame_url(frame_id)
        data = None if self.raw else self._response_data(request_id, response, params.get("type"), entry)
        return [self._event("network.response", _NETWORK_CATEGORY, method, target, frame_id, url,
                            self.mono_to_us(params.get("timestamp")), data, params)]

    def _ended(self, params, target):
        request_id = params["requestId"]
        entry = target.requests.pop(request_id, None)
        ts = self.mono_to_us(params.get("timestamp"))
        frame_id = entry[3] if entry else None
        url = entry[2] if entry else target.url
        return request_id, entry, ts, frame_id, url

    def _failed(self, method, params, target):
        request_id, entry, ts, frame_id, url = self._ended(params, target)
        data = None
        if not self.raw:
            data = {"request_id": request_id, "url": entry[0] if entry else "",
                    "error_text": params.get("errorText", "")}
            if not self.minimal:
                data.update(method=entry[1] if entry else "", resource_type=params.get("type", ""),
                            canceled=bool(params.get("canceled")))
                if params.get("blockedReason"):
                    data["blocked_reason"] = params["blockedReason"]
                if entry:
                    data["duration_ms"] = round((ts - entry[4]) / 1000, 3)
        return [self._event("network.failed", _NETWORK_CATEGORY, method, target, frame_id, url, ts, data, params)]

    def _finished(self, method, params, target):
        request_id, entry, ts, frame_id, url = self._ended(params, target)
        data = None
        if not self.raw:
            data = {"request_id": request_id, "encoded_data_length": params.get("encodedDataLength", 0)}
            if not self.minimal:
                data.update(url=entry[0] if entry else "", method=entry[1] if entry else "")
                if entry:
                    data["duration_ms"] = round((ts - entry[4]) / 1000, 3)
        return [self._event("network.finished", _NETWORK_CATEGORY, method, target, frame_id, url, ts, data, params)]

    # -- Page ----------------------------------------------------------------

    def _set_frame_url(self, target: _Target, frame_id: str, url: str) -> None:
        frames = target.frames
        if frame_id not in frames and len(frames) >= MAX_FRAMES_PER_TARGET:
            frames.pop(next(iter(frames)))
        frames[frame_id] = url

    def _navigated(self, method, params, target):
        frame = params["frame"]
        frame_id, url = frame["id"], frame.get("url", "") + frame.get("urlFragment", "")
        parent = frame.get("parentId")
        if not parent:
            target.main_frame = frame_id
            target.url = url
        self._set_frame_url(target, frame_id, url)
        data = None
        if not self.raw:
            data = {"url": url, "main_frame": not parent}
            if not self.minimal:
                data.update(mime_type=frame.get("mimeType", ""), navigation_type=params.get("type", ""),
                            same_document=False)
                if parent:
                    data["parent_frame_id"] = parent
        return [self._event("page.navigation", "page", method, target, frame_id, url, self.now_us(), data, params)]

    def _navigated_within(self, method, params, target):
        frame_id, url = params["frameId"], params["url"]
        if frame_id == target.main_frame:
            target.url = url
        self._set_frame_url(target, frame_id, url)
        data = None
        if not self.raw:
            data = {"url": url, "main_frame": frame_id == target.main_frame}
            if not self.minimal:
                data.update(navigation_type=params.get("navigationType", ""), same_document=True)
        return [self._event("page.navigation", "page", method, target, frame_id, url, self.now_us(), data, params)]

    def _frame_detached(self, method, params, target):
        target.frames.pop(params.get("frameId"), None)
        return []

    def _page_event(self, type_, method, params, target, frame_id):
        url = target.frame_url(frame_id)
        data = None if self.raw else {"url": url}
        return [self._event(type_, "page", method, target, frame_id, url, self.mono_to_us(params.get("timestamp")),
                            data, params)]

    def _dom_content(self, method, params, target):
        return self._page_event("page.dom_content_loaded", method, params, target, target.main_frame)

    def _load(self, method, params, target):
        return self._page_event("page.load", method, params, target, target.main_frame)

    def _lifecycle(self, method, params, target):
        # The main frame's DOM-ready and load come from Page.domContentEventFired
        # and Page.loadEventFired; lifecycle events add them for subframes.
        frame_id = params.get("frameId")
        name = params.get("name")
        if frame_id == target.main_frame or name not in ("DOMContentLoaded", "load"):
            return []
        type_ = "page.dom_content_loaded" if name == "DOMContentLoaded" else "page.load"
        return self._page_event(type_, method, params, target, frame_id)

    # -- Target (browser level) ----------------------------------------------

    def _target_event(self, type_, method, params, target_id, url, data):
        return [self._event(type_, "page", method, None, None, url, self.now_us(), data, params, target_id=target_id)]

    def _target_created(self, method, params, target):
        info = params["targetInfo"]
        if info.get("type") != "page":
            return []
        target_id, url = info["targetId"], info.get("url", "")
        self.pages[target_id] = url
        data = None
        if not self.raw:
            data = {"type": "page", "url": url}
            if not self.minimal and info.get("openerId"):
                data["opener_id"] = info["openerId"]
        return self._target_event("page.target_created", method, params, target_id, url, data)

    def _target_changed(self, method, params, target):
        info = params["targetInfo"]
        target_id = info["targetId"]
        if target_id in self.pages:
            self.pages[target_id] = info.get("url", "")
        return []

    def _target_destroyed(self, method, params, target):
        target_id = params["targetId"]
        if target_id not in self.pages:
            return []
        url = self.pages.pop(target_id)
        data = None if self.raw else {"type": "page", "url": url}
        return self._target_event("page.target_closed", method, params, target_id, url, data)

    def _target_crashed(self, method, params, target):
        target_id = params["targetId"]
        if target_id not in self.pages:
            return []
        url = self.pages[target_id]
        data = None if self.raw else {"type": "page", "url": url, "status": params.get("status", ""),
                                      "error_code": params.get("errorCode", 0)}
        return self._target_event("page.target_crashed", method, params, target_id, url, data)

    def _attached(self, method, params, target):
        info = params["targetInfo"]
        session_id = params["sessionId"]
        if not isinstance(session_id, str) or not isinstance(info, dict):
            raise MalformedCdp(f"{method}: no session id or target info")
        if info.get("type") in FOLLOWED_TYPES:
            self.sessions[session_id] = _Target(session_id, info["targetId"], info["type"], info.get("url", ""),
                                                self.now_us())
        return []

    def _detached(self, method, params, target):
        self.sessions.pop(params.get("sessionId"), None)
        return []


def encode_for_ingest(event: dict) -> tuple[bytes, bool]:
    """One ingest line (without newline) for `event`, and whether the size rule cut its data.

    An event over ``MAX_RECORD_BYTES`` could never be stored whole: its data
    becomes null and ``truncated`` true, as the writer would do, so the line
    also stays under ingest's line limit.
    """
    line = _encode_json(event)
    if len(line) <= MAX_RECORD_BYTES:
        return line, False
    event = dict(event, data=None, truncated=True)
    return _encode_json(event), True


# -- the publisher thread ------------------------------------------------------


class _Publisher:
    """Sends events to the ingest socket from its own thread, in batches."""

    def __init__(self, socket_path: str, log, counts: dict, *, drain_timeout_s: float = 10.0):
        self.socket_path = socket_path
        self.log = log
        self.counts = counts
        self.drain_timeout_s = drain_timeout_s
        self.connected = False
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="cdp-publisher", daemon=True)
        self._rejections_logged = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, events: list[dict]) -> None:
        with self._cond:
            self._items.extend(events)
            self._cond.notify()

    def backlog(self) -> int:
        return len(self._items)

    def idle(self) -> bool:
        return not self._items and not self._busy

    _busy = False

    def discard_oldest(self, keep: int) -> int:
        with self._cond:
            n = max(0, len(self._items) - keep)
            for _ in range(n):
                self._items.popleft()
        return n

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(self.drain_timeout_s + 15)

    def _take(self) -> list | None:
        with self._cond:
            while not self._items and not self._closing:
                self._cond.wait(0.5)
            if not self._items:
                return None
            n = min(len(self._items), PUBLISH_BATCH)
            self._busy = True
            return [self._items.popleft() for _ in range(n)]

    def _run(self) -> None:
        producer = None
        down_since = None
        backoff = 0.05
        deadline = None
        while (batch := self._take()) is not None:
            lines = []
            for event in batch:
                line, cut = encode_for_ingest(event)
                if cut:
                    self.counts["truncated"] += 1
                lines.append(line)
            while True:
                if self._closing and deadline is None:
                    deadline = time.monotonic() + self.drain_timeout_s
                if producer is None:
                    try:
                        # A long timeout: a writer held by its flusher (gating) is slow, not gone.
                        producer = Producer.connect(self.socket_path, timeout=60.0)
                    except ShmringError as exc:
                        if down_since is None:
                            down_since = time.monotonic()
                            self.log(f"capture-cdp: cannot publish: {exc}; holding events and retrying")
                        if deadline is not None and time.monotonic() > deadline:
                            lost = len(batch) + self.discard_oldest(0)
                            self.counts["lost"] += lost
                            self.log(f"capture-cdp: {lost} events were not delivered: the ingest socket "
                                     f"{self.socket_path} stayed unreachable while stopping")
                            self._busy = False
                            return
                        time.sleep(backoff)
                        backoff = min(backoff * 2, 1.0)
                        continue
                    self.connected = True
                    backoff = 0.05
                    if down_since is not None:
                        self.log(f"capture-cdp: publishing to {self.socket_path} again")
                        down_since = None
                try:
                    producer.publish_many(lines)
                    self.counts["published"] += len(lines)
                except PublishRejected as exc:
                    self.counts["published"] += len(lines) - len(exc.rejected)
                    self.counts["rejected"] += len(exc.rejected)
                    for index, message in exc.rejected:
                        self._log_rejection(batch[index], message)
                except Exception as exc:  # noqa: BLE001 - a broken connection, whatever the error
                    # The batch's fate is unknown; the server that took it is gone
                    # (a restarted one has a new ring), so it is sent again.
                    with contextlib.suppress(OSError):
                        producer.close()
                    producer = None
                    self.connected = False
                    if down_since is None:
                        down_since = time.monotonic()
                        self.log(f"capture-cdp: the ingest connection broke ({exc}); reconnecting")
                    continue
                break
            self._busy = False
        if producer is not None:
            producer.close()

    def _log_rejection(self, event: dict, message: str) -> None:
        self._rejections_logged += 1
        n = self._rejections_logged
        if n <= 5 or n % 1000 == 0:
            source = event.get("source", {}).get("event", "")
            self.log(f"capture-cdp: the writer rejected a {event.get('type')} event ({source}): {message}"
                     + (f" [{n} rejected so far]" if n > 5 else ""))


# -- the CDP connection --------------------------------------------------------


class CdpError(ShmringError):
    """A CDP command failed."""


def _http_base(url: str) -> str:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    if scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"cannot use {url!r} as a CDP URL: give ws://HOST:PORT/devtools/browser/ID "
                          "or http://HOST:PORT")
    return f"{scheme}://{parsed.netloc}"


_no_proxy_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def resolve_browser_ws(cdp_url: str, timeout_s: float = 2.0) -> str:
    """The browser-level websocket URL for `cdp_url` (ws:// as is, else from /json/version).

    A ws:// URL names one browser run; when the browser restarts on the same
    port its id changes, so the current one is looked up first. Raises
    OSError when nothing answers.
    """
    base = _http_base(cdp_url)
    is_ws = cdp_url.startswith(("ws://", "wss://"))
    try:
        with _no_proxy_opener.open(f"{base}/json/version", timeout=timeout_s) as resp:
            info = json.loads(resp.read())
        ws = info["webSocketDebuggerUrl"]
        if not isinstance(ws, str) or not ws.startswith(("ws://", "wss://")):
            raise ValueError("no webSocketDebuggerUrl")
        return ws
    except urllib.error.HTTPError as exc:
        if is_ws:
            return cdp_url
        raise OSError(f"{base}/json/version answered HTTP {exc.code}; is this a Chromium debugging port?") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise OSError(f"nothing answers at {base} ({getattr(reason, 'strerror', None) or reason})") from None
    except (ValueError, KeyError, TypeError, http.client.HTTPException):
        if is_ws:
            return cdp_url
        raise OSError(f"{base}/json/version did not give a browser websocket URL") from None


class _Connection:
    """One browser-level CDP websocket: commands with futures, events to a callback."""

    def __init__(self, ws, on_message, on_malformed):
        self.ws = ws
        self._on_message = on_message
        self._on_malformed = on_malformed
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._session_pending: dict[str, set[int]] = {}

    def abandon_session(self, session_id: str) -> None:
        """Fail the commands still waiting on a session that is gone: Chromium never answers them."""
        for msg_id in self._session_pending.pop(session_id, ()):
            future = self._pending.get(msg_id)
            if future is not None and not future.done():
                future.set_exception(ConnectionError(f"session {session_id} detached"))

    async def send(self, method: str, params: dict | None = None, session_id: str | None = None,
                   timeout: float = COMMAND_TIMEOUT_S) -> dict:
        """Send a command and wait for its result (CdpError if it failed)."""
        return await (await self.request(method, params, session_id, timeout))

    @staticmethod
    def discard(futures) -> None:
        """Futures nobody will await: cancel them, or mark their exception as seen."""
        for future in futures:
            if not future.cancel() and not future.cancelled():
                future.exception()

    async def request(self, method: str, params: dict | None = None, session_id: str | None = None,
                      timeout: float = COMMAND_TIMEOUT_S):
        """Send a command now; return an awaitable of its result. Commands go out in call order."""
        self._next_id += 1
        msg_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        message = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
            self._session_pending.setdefault(session_id, set()).add(msg_id)
        try:
            await self.ws.send(_encode_json(message).decode())
        except BaseException:
            self._forget(msg_id, session_id)
            future.cancel()
            raise

        def expire():
            if not future.done():
                future.set_exception(TimeoutError(f"{method}: no reply within {timeout:g} s"))

        timer = asyncio.get_running_loop().call_later(timeout, expire)

        def done(_):
            timer.cancel()
            self._forget(msg_id, session_id)

        future.add_done_callback(done)
        return future

    def _forget(self, msg_id: int, session_id: str | None) -> None:
        self._pending.pop(msg_id, None)
        if session_id:
            waiting = self._session_pending.get(session_id)
            if waiting is not None:
                waiting.discard(msg_id)
                if not waiting:
                    del self._session_pending[session_id]

    async def run(self) -> str:
        """Read until the connection ends; return why it ended."""
        import websockets

        try:
            async for raw in self.ws:
                await self._dispatch(raw)
            return "the browser closed the connection"
        except websockets.ConnectionClosed as exc:
            return f"the connection closed ({exc})"
        except OSError as exc:
            return f"the connection failed ({exc})"
        finally:
            for future in list(self._pending.values()):
                if not future.done():
                    future.set_exception(ConnectionError("the CDP connection closed"))

    async def _dispatch(self, raw) -> None:
        try:
            msg = _decode_json(raw)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            self._on_malformed(f"not JSON ({exc})")
            return
        if type(msg) is not dict:
            self._on_malformed("not a JSON object")
            return
        msg_id = msg.get("id")
        if msg_id is not None:
            future = self._pending.get(msg_id)
            if future is not None and not future.done():
                error = msg.get("error")
                if error is not None:
                    message = error.get("message", error) if isinstance(error, dict) else error
                    future.set_exception(CdpError(f"{message}"))
                else:
                    result = msg.get("result")
                    future.set_result(result if isinstance(result, dict) else {})
            return
        method, params, session_id = msg.get("method"), msg.get("params", {}), msg.get("sessionId")
        if (type(method) is not str or type(params) is not dict
                or (session_id is not None and type(session_id) is not str)):
            self._on_malformed("an event without a method name, params object or string session id")
            return
        await self._on_message(method, params, session_id)


# -- the capture loop ----------------------------------------------------------


class CdpCapture:
    """Follows the browser at `cdp_url` and publishes its events to `socket_path`.

    ``run(stop)`` blocks until `stop` is set; ``connected`` is set while a
    browser connection is up; ``stats()`` is safe to call from any thread.
    """

    def __init__(self, cdp_url: str, socket_path: str, *, detail_level: str = "standard", log=lambda msg: None,
                 max_backoff_s: float = 3.0, name: str | None = None, console_hook: bool | None = None):
        _http_base(cdp_url)  # reject a bad URL now
        self.cdp_url = cdp_url
        # By default console calls go through the in-page hook; at detail level
        # raw (the untouched CDP params) through Runtime.consoleAPICalled.
        self.console_hook = detail_level != "raw" if console_hook is None else bool(console_hook)
        self.socket_path = socket_path
        self.name = name
        self.log = log
        self.max_backoff_s = max_backoff_s
        self.mapper = CdpMapper(detail_level)
        self.connected = threading.Event()
        self.counts = collections.Counter(published=0, rejected=0, truncated=0, lost=0, malformed=0,
                                          connections=0, disconnects=0, targets_attached=0, events=0,
                                          setup_failures=0, dropped_backlog=0)
        self._publisher = _Publisher(socket_path, log, self.counts)
        self._tasks: set[asyncio.Task] = set()
        self._conn: _Connection | None = None
        self._malformed_logged = 0
        self._dropping = False
        self._following: set[str] = set()  # target ids whose set-up is complete

    def stats(self) -> dict:
        out = dict(self.counts)
        out.update(sessions=len(self.mapper.sessions), pages=len(self.mapper.pages),
                   requests_in_flight=sum(len(t.requests) for t in list(self.mapper.sessions.values())),
                   setup_tasks=len(self._tasks), following=len(self._following),
                   backlog=self._publisher.backlog(), connected=self.connected.is_set())
        return out

    def is_following(self, target_id: str) -> bool:
        """True once `target_id` is set up (domains enabled, script installed) and resumed."""
        return target_id in self._following

    def idle(self) -> bool:
        """True when every event mapped so far has been answered by the writer."""
        return self._publisher.idle()

    def run(self, stop: threading.Event) -> dict:
        self._publisher.start()
        try:
            asyncio.run(self._main(stop))
        finally:
            self._publisher.close()
        return self.stats()

    # -- internals -----------------------------------------------------------

    def _emit(self, events: list[dict]) -> None:
        if events:
            self.counts["events"] += len(events)
            self._publisher.submit(events)

    def _malformed(self, what: str) -> None:
        self.counts["malformed"] += 1
        self._malformed_logged += 1
        n = self._malformed_logged
        if n <= 5 or n % 1000 == 0:
            self.log(f"capture-cdp: skipped a malformed CDP message: {what}"
                     + (f" [{n} skipped so far]" if n > 5 else ""))

    async def _on_message(self, method: str, params: dict, session_id: str | None) -> None:
        try:
            events = self.mapper.map(method, params, session_id)
        except MalformedCdp as exc:
            self._malformed(str(exc))
            return
        except RecursionError:
            self._malformed(f"{method}: nested too deeply")
            return
        self._emit(events)
        if method == "Target.detachedFromTarget":
            self._following.discard(params.get("targetId"))
            if self._conn is not None and isinstance(params.get("sessionId"), str):
                self._conn.abandon_session(params["sessionId"])
        elif method == "Target.attachedToTarget":
            task = asyncio.create_task(self._set_up(params, session_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._publisher.backlog() > BACKLOG_HIGH_WATER:
            await self._relieve()

    async def _relieve(self) -> None:
        """Too many events wait for the ingest socket: wait for it, or drop (counted) if it is gone."""
        while self._publisher.backlog() > BACKLOG_HIGH_WATER // 2:
            if self._publisher.connected:
                await asyncio.sleep(0.005)
                continue
            dropped = self._publisher.discard_oldest(BACKLOG_HIGH_WATER // 2)
            self.counts["dropped_backlog"] += dropped
            if not self._dropping:
                self._dropping = True
                self.log(f"capture-cdp: the ingest socket is unreachable and {BACKLOG_HIGH_WATER} events are "
                         f"waiting; dropping the oldest (counted in dropped_backlog)")
            return
        self._dropping = False

    async def _set_up(self, params: dict, parent_session: str | None) -> None:
        conn = self._conn
        session_id = params.get("sessionId")
        info = params.get("targetInfo") or {}
        followed = session_id in self.mapper.sessions
        try:
            if followed:
                self.counts["targets_attached"] += 1
                commands = [
                    ("Runtime.enable", {}),
                    # Console stack traces cost the page on every console call; only verbose reports them.
                    ("Runtime.setMaxCallStackSizeToCapture", {"size": 200 if self.mapper.verbose else 0}),
                    ("Network.enable", {}),
                    ("Page.enable", {}),
                    ("Page.setLifecycleEventsEnabled", {"enabled": True}),
                    ("Runtime.addBinding", {"name": BINDING, "executionContextName": WORLD}),
                    ("Page.addScriptToEvaluateOnNewDocument",
                     {"source": INTERACTION_SCRIPT, "worldName": WORLD, "runImmediately": True}),
                    ("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True,
                                              "filter": [{"type": "iframe", "exclude": False}]}),
                ]
                if self.console_hook:  # before the target resumes: its first console call is hooked
                    commands[-1:-1] = [
                        ("Runtime.addBinding", {"name": CONSOLE_BINDING}),
                        ("Page.addScriptToEvaluateOnNewDocument", {"source": console_hook_script(self.mapper.verbose),
                                                                   "runImmediately": True}),
                    ]
                # Sent in order, answered in any order; all before the target is resumed.
                replies = []
                try:
                    for m, p in commands:
                        replies.append(await conn.request(m, p, session_id))
                except BaseException:
                    conn.discard(replies)
                    raise
                results = await asyncio.gather(*replies, return_exceptions=True)
                failed = [(m, r) for (m, _), r in zip(commands, results) if isinstance(r, BaseException)]
                if failed and session_id in self.mapper.sessions:
                    self.counts["setup_failures"] += 1
                    method, error = failed[0]
                    n = self.counts["setup_failures"]
                    if n <= 3 or n % 100 == 0:
                        self.log(f"capture-cdp: setting up {info.get('type')} {info.get('targetId')} partly failed "
                                 f"({method}: {error}); following it anyway [{n} so far]")
            await conn.send("Runtime.runIfWaitingForDebugger", {}, session_id)
            if followed and session_id in self.mapper.sessions:
                self._following.add(info.get("targetId"))
            if not followed:
                await conn.send("Target.detachFromTarget", {"sessionId": session_id}, parent_session)
        except (TimeoutError, CdpError, ConnectionError, OSError):
            pass  # the target went away while it was being set up
        except Exception as exc:  # noqa: BLE001 - one target must not end the capture
            import websockets

            if not isinstance(exc, websockets.ConnectionClosed):
                self.log(f"capture-cdp: setting up target {info.get('targetId')} failed: {type(exc).__name__}: {exc}")

    async def _main(self, stop: threading.Event) -> None:
        from websockets.asyncio.client import connect

        stopping = asyncio.Event()

        async def watch():
            while not stop.is_set():
                await asyncio.sleep(0.05)
            stopping.set()
            conn = self._conn
            if conn is not None:
                await conn.ws.close()

        watcher = asyncio.create_task(watch())
        loop = asyncio.get_running_loop()
        backoff = 0.1
        reported_down = False
        try:
            while not stopping.is_set():
                try:
                    ws_url = await loop.run_in_executor(None, resolve_browser_ws, self.cdp_url, 2.0)
                    ws = await connect(ws_url, max_size=None, ping_interval=None, compression=None, proxy=None,
                                       open_timeout=5, close_timeout=1, max_queue=None)
                except Exception as exc:  # noqa: BLE001 - refused, reset, not CDP, timed out: all "no browser"
                    if not reported_down:
                        reported_down = True
                        self.log(f"capture-cdp: no browser at {self.cdp_url} ({exc}); retrying with back-off "
                                 f"up to {self.max_backoff_s:g} s until one is up")
                    await _wait(stopping, backoff)
                    backoff = min(backoff * 2, self.max_backoff_s)
                    continue
                connections = self.counts["connections"]
                try:
                    reason = await self._follow(ws, ws_url, stopping)
                except Exception as exc:  # noqa: BLE001 - a bug must not end a long-running producer
                    reason = f"internal error {type(exc).__name__}: {exc}"
                    with contextlib.suppress(Exception):
                        await ws.close()
                if stopping.is_set():
                    break
                if self.counts["connections"] > connections:  # it was up: say once that it is gone
                    backoff = 0.1
                    reported_down = True
                    self.log(f"capture-cdp: lost the browser at {self.cdp_url}: {reason}; retrying with back-off "
                             f"up to {self.max_backoff_s:g} s until it is back")
                elif not reported_down:
                    reported_down = True
                    self.log(f"capture-cdp: the browser at {self.cdp_url} does not answer CDP ({reason}); retrying "
                             f"with back-off up to {self.max_backoff_s:g} s")
                await _wait(stopping, backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _follow(self, ws, ws_url: str, stopping: asyncio.Event) -> str:
        conn = _Connection(ws, self._on_message, self._malformed)
        self._conn = conn
        reader = asyncio.create_task(conn.run())
        reason = "the connection closed"
        try:
            if stopping.is_set():
                return "stopping"
            try:
                version = await conn.send("Browser.getVersion")
            except (TimeoutError, CdpError, ConnectionError) as exc:
                return f"Browser.getVersion failed ({exc})"
            self.counts["connections"] += 1
            self.connected.set()
            product = version.get("product", "")
            self.log(f"capture-cdp: following {product or 'the browser'} at {ws_url}"
                     + (f" into ring {self.name}" if self.name else ""))
            self._emit([self.mapper.system_event("system.cdp_connected", {
                "browser": product, "protocol_version": version.get("protocolVersion", ""),
                "websocket_url": ws_url, "detail_level": self.mapper.detail})])
            pages_only = {"filter": [{"type": "page", "exclude": False}]}
            auto_attach = {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True}
            try:
                for method, params in (("Target.setDiscoverTargets", {"discover": True}),
                                       ("Target.setAutoAttach", auto_attach)):
                    try:
                        await conn.send(method, {**params, **pages_only})
                    except CdpError:  # a browser without target filters: other types are detached on attach
                        await conn.send(method, params)
            except (TimeoutError, CdpError, ConnectionError) as exc:
                if not reader.done():
                    self.log(f"capture-cdp: could not ask the browser to report targets ({exc})")
            reason = await reader
            return reason
        finally:
            if not reader.done():
                await ws.close()
                reason = await reader
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._conn = None
            self._following.clear()
            if self.connected.is_set():
                self.connected.clear()
                self.counts["disconnects"] += 1
                self._emit([self.mapper.system_event("system.cdp_disconnected", {
                    "reason": "producer stopping" if stopping.is_set() else reason, "websocket_url": ws_url})])
            self.mapper.reset()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def capture(cdp_url: str, socket_path: str, *, stop: threading.Event, detail_level: str = "standard",
            log=lambda msg: None, name: str | None = None, max_backoff_s: float = 3.0,
            console_hook: bool | None = None) -> dict:
    """Capture the browser at `cdp_url` into serve's ingest socket until `stop` is set; return counts.

    `cdp_url`: ``http://127.0.0.1:PORT`` or the browser's ``ws://…/devtools/browser/…`` URL.
    Raises ConfigError for a bad URL or detail level; everything else (no
    browser yet, browser gone, ingest socket down) is retried and reported
    through `log`, one line per change of state.
    `console_hook`: console calls through the in-page hook (True) or through
    ``Runtime.consoleAPICalled`` (False); None: the hook, except at detail
    level raw. See the module docstring.
    """
    return CdpCapture(cdp_url, socket_path, detail_level=detail_level, log=log, name=name,
                      max_backoff_s=max_backoff_s, console_hook=console_hook).run(stop)


def capture_command(name: str, cdp_url: str, socket_path: str, detail_level: str = "standard",
                    console_hook: bool | None = None) -> list[str]:
    """The argv of a ``shmring capture-cdp`` child process (for ``serve --cdp``)."""
    flag = {None: [], True: ["--console-hook"], False: ["--console-via-inspector"]}[console_hook]
    return [sys.executable, "-m", "shmring", "capture-cdp", name, "--cdp", cdp_url, "--socket", socket_path,
            "--detail-level", detail_level, *flag]


# -- a real browser: launching Chromium and serving a page --------------------


def chromium_available(binary: str = CHROMIUM) -> bool:
    return os.path.isfile(binary) and os.access(binary, os.X_OK)


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_chromium(port: int, user_data_dir: str, *, binary: str = CHROMIUM, url: str = "about:blank",
                    extra_args: tuple = ()) -> subprocess.Popen:
    """Start headless Chromium with a debugging port on 127.0.0.1, in its own process group.

    Stop it with ``stop_process(proc)``. Raises ShmringError if the binary is missing.
    """
    if not chromium_available(binary):
        raise ShmringError(f"Chromium not found at {binary}: install it (Debian: apt-get install -y chromium)")
    args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1", *extra_args, url]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_for_devtools(port: int, *, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> str:
    """Until the browser on `port` answers; return its websocket URL."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ShmringError(f"Chromium exited with status {proc.returncode} while starting")
        try:
            return resolve_browser_ws(f"http://127.0.0.1:{port}", timeout_s=1.0)
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise ShmringError(f"Chromium did not open its debugging port {port} within {timeout_s:.0f} s ({last})")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM the process group `proc` leads (by pid), then SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children that outlived the leader (renderers) are in the same group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


class BrowserControl:
    """A short synchronous CDP connection for driving a browser (tests, the demo); not the capture path.

    A tab that another client creates with a URL (``Target.createTarget``,
    ``/json/new``) loads its first document before an auto-attached debugger
    can hold it (Chromium 156), so its first request and navigation would be
    missed. ``open_tab`` therefore opens ``about:blank``, gives the capture
    ``settle_s`` to follow it, and then navigates. Popups (``window.open``) are
    held by Chromium and need none of this.
    """

    def __init__(self, cdp_url: str, timeout_s: float = 10.0):
        from websockets.sync.client import connect

        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()  # websockets >= 17.1 wants connect() used as a context manager
        self._ws = self._stack.enter_context(connect(resolve_browser_ws(cdp_url), max_size=None, proxy=None,
                                                     compression=None, open_timeout=timeout_s, ping_interval=None,
                                                     close_timeout=1))
        self._next_id = 0

    def call(self, method: str, params: dict | None = None, session_id: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})

    def open_tab(self, url: str, settle_s: float = 0.5) -> str:
        target_id = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        if url != "about:blank":
            time.sleep(settle_s)
            self.navigate(target_id, url)
        return target_id

    def navigate(self, target_id: str, url: str) -> None:
        session_id = self.attach(target_id)
        try:
            self.call("Page.navigate", {"url": url}, session_id)
        finally:
            self.call("Target.detachFromTarget", {"sessionId": session_id})

    def close_tab(self, target_id: str) -> None:
        self.call("Target.closeTarget", {"targetId": target_id})

    def attach(self, target_id: str) -> str:
        return self.call("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]

    def evaluate(self, session_id: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session_id)
        if "exceptionDetails" in result:
            raise CdpError(f"evaluating {expression!r} failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def click(self, session_id: str, x: float, y: float) -> None:
        """A real (trusted) left click at (x, y), as a user's mouse would make."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params = {"type": kind, "x": x, "y": y, "button": "left" if kind != "mouseMoved" else "none",
                      "clickCount": 1 if kind != "mouseMoved" else 0}
            self.call("Input.dispatchMouseEvent", params, session_id)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "BrowserControl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_tab(cdp_url: str, url: str, settle_s: float = 0.5) -> str:
    """Open a new tab on `url` (see ``BrowserControl.open_tab``); return its target id."""
    with BrowserControl(cdp_url) as control:
        return control.open_tab(url, settle_s)


def close_tab(cdp_url: str, target_id: str) -> None:
    with BrowserControl(cdp_url) as control:
        control.close_tab(target_id)


class _QuietHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a browser that goes away mid-connection is not worth a traceback on stderr


class PageServer:
    """A loopback HTTP server in a thread, serving fixed pages.

    `pages` maps a path to ``(status, content_type, body)``; other paths get
    404. ``hits`` counts requests per path; ``posts`` keeps POST bodies per path.
    """

    def __init__(self, pages: dict[str, tuple[int, str, bytes]] | None = None):
        self.pages = dict(DEMO_PAGES if pages is None else pages)
        self.hits: collections.Counter = collections.Counter()
        self.posts: dict[str, list[bytes]] = collections.defaultdict(list)
        self._httpd = None
        self._thread = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self, body_allowed=True):
                path = self.path.split("?", 1)[0]
                owner.hits[path] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST":
                    owner.posts[path].append(body)
                status, ctype, body = owner.pages.get(path, (404, "text/plain", b"not found\n"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body_allowed:
                    self.wfile.write(body)

            def do_GET(self):
                self._serve()

            def do_POST(self):
                self._serve()

            def do_HEAD(self):
                self._serve(body_allowed=False)

            def log_message(self, *args):
                pass

        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="page-server", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> "PageServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


DEMO_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>shmring demo shop</title></head>
<body style="height: 3000px">
<h1>shmring demo shop</h1>
<button id="buy">Buy</button> <input id="search" placeholder="search">
<ul id="items"></ul>
<script>
let round = 0;
console.log("demo page loaded", {version: 1});
async function tick() {
  round += 1;
  const started = performance.now();
  try {
    const res = await fetch("/api/items.json?round=" + round);
    const items = await res.json();
    console.info("fetched", items.length, "items in", Math.round(performance.now() - started), "ms");
  } catch (err) {
    console.error("fetch failed", String(err));
  }
  if (round % 3 === 0) fetch("/api/missing").then(r => console.warn("missing endpoint answered", r.status));
  document.getElementById("buy").click();
  document.getElementById("search").dispatchEvent(new KeyboardEvent("keydown", {key: "a", bubbles: true}));
  window.scrollTo(0, (round * 150) % 2000);
}
document.getElementById("buy").addEventListener("click", () => console.log("buy clicked, round", round));
setInterval(tick, 500);
</script>
</body></html>
"""

DEMO_PAGES = {
    "/": (200, "text/html; charset=utf-8", DEMO_PAGE),
    "/api/items.json": (200, "application/json", b'[{"id":1,"name":"tea"},{"id":2,"name":"mug"}]'),
}


class BrowserDemo:
    """For ``shmring demo --browser``: the demo page server plus a headless Chromium.

    ``start()`` serves the page and launches Chromium on a free port with a
    fresh profile (``cdp_url`` is ready for ``capture``); ``open_page()``
    opens the page in a new tab: call it once the producer is connected, so
    the tab is followed from its first request. ``stop()`` stops Chromium
    (by pid) and the server, and removes the profile.
    """

    def __init__(self, binary: str = CHROMIUM):
        self.binary = binary
        self.server = PageServer()
        self.port = None
        self.proc = None
        self.profile = None

    @property
    def cdp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def page_url(self) -> str:
        return self.server.base_url + "/"

    def start(self) -> "BrowserDemo":
        self.server.start()
        self.profile = tempfile.mkdtemp(prefix="shmring-chromium-")
        self.port = find_free_port()
        try:
            self.proc = launch_chromium(self.port, self.profile, binary=self.binary)
            wait_for_devtools(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def open_page(self) -> str:
        """Open the demo page in a new tab; return its target id."""
        return open_tab(self.cdp_url, self.page_url)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        self.server.stop()
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    def __enter__(self) -> "BrowserDemo":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
