"""CDP values as text: RemoteObject previews close to what the DevTools console shows, stack traces, snake_case.

Rules: pure functions with no state; a missing key reads as empty, and what
they raise on a malformed value the mapper reports as ``MalformedCdp``.
"""

import json
import re

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

