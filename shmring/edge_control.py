"""The HTTP edge's ``GET``/``PUT``/``PATCH /producers/{producer}``: the producer's config, through ``shmring.control``.

Rules:
- The route is the producer's control surface only: a stream's filter never
  reaches it, and it reaches nothing but the ring's control socket.
- ``GET`` gives the config; ``PUT`` sets the whole of it, ``PATCH`` some
  fields. The reply is the config in force; a target that could not apply
  a change is listed in its ``failed``.
- The control calls block (up to the edge's ``control_timeout_s``), so they
  run in worker threads of their own, at most ``CONTROL_THREADS`` at once:
  never on the loop, and never in the pool the other routes use.
- Errors: a body over ``CONTROL_BODY_BYTES`` 413, an unknown producer 404,
  ``ConfigError`` (a bad body, field, category or level) 400,
  ``ProducerNotRunning`` 503, ``ControlTimeout`` 504, any other
  ``ControlError`` 502; each ``{"error": "…"}``.
"""

import functools

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from .control import PRODUCERS, get_config, set_config
from .errors import ConfigError, ControlError, ControlTimeout, ProducerNotRunning

__all__ = ["CONTROL_BODY_BYTES", "CONTROL_THREADS", "producer_config_route"]

CONTROL_BODY_BYTES = 64 * 1024
CONTROL_THREADS = 4

_decode_json = msgspec.json.Decoder()


def _error(status: int, message: str) -> JSONResponse:
    """The edge's error reply, as edge_publish's (a module beside this one, so not imported from it)."""
    return JSONResponse({"error": message}, status_code=status)


def producer_config_route(name: str, control_timeout_s: float):
    """The route's handler for ring `name`'s producers."""
    control_threads = None

    async def control(call, *args, **kwargs):
        nonlocal control_threads
        if control_threads is None:
            control_threads = anyio.CapacityLimiter(CONTROL_THREADS)
        return await anyio.to_thread.run_sync(functools.partial(call, name, *args, timeout_s=control_timeout_s,
                                                                **kwargs), limiter=control_threads)

    async def producer_config(request: Request):
        producer = request.path_params["producer"]
        if producer not in PRODUCERS:
            return _error(404, f"unknown producer {producer!r}: the producers are {', '.join(PRODUCERS)}")
        try:
            if request.method in ("GET", "HEAD"):
                return JSONResponse((await control(get_config, producer)).to_dict())
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > CONTROL_BODY_BYTES:
                    return _error(413, f"a producer config is at most {CONTROL_BODY_BYTES} bytes")
            try:
                patch = _decode_json.decode(body)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"the body is not JSON ({exc}); send a JSON object with some of enabled, "
                                  "categories, detail_level (PUT: all of them)") from None
            change = await control(set_config, patch, producer, replace=request.method == "PUT")
        except ConfigError as exc:
            return _error(400, str(exc))
        except ProducerNotRunning as exc:
            return _error(503, str(exc))
        except ControlTimeout as exc:
            return _error(504, str(exc))
        except ControlError as exc:
            return _error(502, str(exc))
        reply = change.new.to_dict()
        if change.failed:
            reply["failed"] = change.failed
        return JSONResponse(reply)

    return producer_config
