"""One browser-level CDP websocket: commands with futures, events to a callback.

Rules:
- Commands go out in call order; each reply resolves its future, a CDP error
  becomes ``CdpError``, and a command with no reply expires after its timeout.
- A session's pending commands fail when it detaches (Chromium never answers them).
- A message that is not valid CDP is reported through ``on_malformed``, never raised.
- ``resolve_browser_ws`` finds the current browser websocket URL from
  ``http://host:port/json/version``, so a restarted browser on the same port is followed.
"""

import asyncio
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

import msgspec

from ..errors import CdpError, ConfigError

COMMAND_TIMEOUT_S = 10.0

_decode_json = msgspec.json.decode
_encode_json = msgspec.json.Encoder().encode


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
