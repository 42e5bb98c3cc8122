"""CDP messages -> Event dicts: the whole mapping, with no I/O (testable with canned messages).

Rules:
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
  < ``raw`` (``data`` is the untouched CDP params).
- ``configure`` applies a producer config at once: events of a category that
  is off (all of them while the producer is disabled) are dropped after the
  state they carry (frames, requests, contexts) is kept, so attribution stays
  right when the category is back. System events are never dropped.
- On attaching to a page that is already open, ``Runtime.enable`` replays
  its earlier console messages (Chromium 156); they keep their original
  ``ts`` and carry ``data.replayed: true``.
- A message the mapper cannot read raises ``MalformedCdp`` (the caller logs
  and skips it). State per target is bounded (requests, frames).
- Size: ``encode_for_ingest`` applies the writer's rule early, so the line
  also passes ingest's 4 MiB limit: an event whose JSON is over 1,000,000
  bytes is sent with ``data`` null and ``truncated`` true, never dropped
  silently.
- Length: about 620 lines, over the project's ~600, for one concept: one
  dispatch table (``CdpMapper._handlers``) whose handlers share the state
  kept per target (frames, requests in flight, execution contexts) and the
  clock anchor; split, a handler would be read apart from the state it keeps.
"""

import json
import time

import msgspec

from ..errors import ConfigError, MalformedCdp
from ..layout import DETAIL_LEVELS, MAX_RECORD_BYTES
from ..producer_config import CATEGORIES
from .scripts import BINDING, CONSOLE_BINDING, CONSOLE_HOOK_BATCH
from .text import format_stack, remote_object_text, snake

MAX_CONSOLE_PAYLOAD = 64 * 1024 * 1024
"""Largest console payload accepted: a huge argument is cut to just over the size rule's limit
in the page (and ends as a truncated event), so a real one stays far below this."""
FOLLOWED_TYPES = frozenset({"page", "iframe"})
MAX_REQUESTS_PER_TARGET = 10_000
MAX_FRAMES_PER_TARGET = 1_000

_encode_json = msgspec.json.Encoder().encode


def _now_us() -> int:
    return time.time_ns() // 1000



class _Target:
    """What the mapper knows about one attached session."""

    __slots__ = (
        "attached_us",
        "contexts",
        "frames",
        "main_frame",
        "main_worlds",
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
        self.main_worlds: set[int] = set()  # the execution contexts that are a document's main world
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


class CdpMapper:
    """CDP messages -> Event dicts, ready for ``Producer.publish_many``.

    Pure apart from the state it keeps about targets (sessions, frames,
    execution contexts, requests in flight, the clock anchor); it does no I/O.
    ``map(method, params, session_id)`` returns a list of events; it raises
    ``MalformedCdp`` for a message it cannot read (the caller logs and skips).
    """

    def __init__(self, detail_level: str = "standard", *, now_us=_now_us):
        self._set_detail(detail_level)
        self.active = frozenset(CATEGORIES)  # the categories whose events are kept
        self._gated = False
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

    def _set_detail(self, detail_level: str) -> None:
        if detail_level not in DETAIL_LEVELS:
            raise ConfigError(f"invalid detail level {detail_level!r}: use one of {', '.join(DETAIL_LEVELS)}")
        self.detail = detail_level
        self.raw = detail_level == "raw"
        self.verbose = detail_level in ("verbose", "raw")
        self.minimal = detail_level == "minimal"

    def configure(self, config) -> None:
        """Apply a ``ProducerConfig``: its detail level, and only its active categories from now on."""
        self._set_detail(config.detail_level)
        self.active = config.active()
        self._gated = self.active != frozenset(CATEGORIES)

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
            events = handler(method, params, target)
            if self._gated and events:
                events = [e for e in events if e["category"] in self.active]
            return events
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
            if (context.get("auxData") or {}).get("isDefault") is True:
                target.main_worlds.add(int(context["id"]))
        return []

    def _context_destroyed(self, method, params, target):
        target.contexts.pop(params.get("executionContextId"), None)
        target.main_worlds.discard(params.get("executionContextId"))
        return []

    def _contexts_cleared(self, method, params, target):
        target.contexts.clear()
        target.main_worlds.clear()
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
