"""The gRPC server interceptor: which calls are tracked, what their handler sees, and
what is measured.

A call is tracked when its metadata has ``x-session-track: true`` (exactly) and a
non-empty ``x-session-context``. Its ``x-session-track`` and ``x-session-operation``
headers are consumed here: the handler's context (and the call details any later
interceptor gets) no longer holds them, so nothing the gateway forwards (Invoke's
metadata to the worker) carries them on and no later hop emits the event again.
``x-session-context`` stays. Any other call passes through untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

__all__ = ["CONSUMED", "CONTEXT", "OPERATION", "TRACK", "ActivityInterceptor", "TrackedCall"]

log = logging.getLogger("sessiongate.plugins.activity")

TRACK = "x-session-track"
CONTEXT = "x-session-context"
OPERATION = "x-session-operation"
#: the headers a tracked call consumes: its handler never sees them
CONSUMED = frozenset({TRACK, OPERATION})
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclasses.dataclass(slots=True)
class TrackedCall:
    """What the interceptor measured of one tracked call; the event is built from it
    later, by the publishing task, so the call itself pays for as little as possible."""

    method: str
    operation: str | None
    context: str
    peer: str
    ended: float  # time.time() when the call ended
    duration: float  # seconds
    status: str
    session_id: str | None
    key_id: str | None


def tracking_headers(metadata: Any) -> tuple[str | None, str] | None:
    """``(operation, context)`` if the call opted in, else None (the first value of
    each header counts)."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in (TRACK, CONTEXT, OPERATION) and key not in found:
            found[key] = value
    context = found.get(CONTEXT)
    if found.get(TRACK) != "true" or not context:
        return None
    return found.get(OPERATION) or None, context


class StrippedContext:
    """The servicer context a tracked call's handler gets: the call's own, but its
    ``invocation_metadata()`` leaves out the consumed headers. Everything else is the
    call's context itself."""

    __slots__ = ("_context", "_metadata")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self._metadata: tuple[Any, ...] | None = None

    def invocation_metadata(self) -> tuple[Any, ...]:
        if self._metadata is None:
            self._metadata = tuple(item for item in self._context.invocation_metadata() or ()
                                   if item[0] not in CONSUMED)
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def call_status(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The gRPC code name a call ended with, as its client sees it."""
    code = context.code()
    if code is not None:
        return code.name if isinstance(code, grpc.StatusCode) else _CODE_NAMES.get(
            code, "UNKNOWN")
    if error is None:
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"  # what gRPC answers for an exception it did not expect


class _Tracking:
    """One tracked call: wraps its handler's behaviour, measures it, offers the result."""

    __slots__ = ("context", "interceptor", "method", "operation")

    def __init__(self, interceptor: ActivityInterceptor, method: str, operation: str | None,
                 context: str) -> None:
        self.interceptor = interceptor
        self.method = method
        self.operation = operation
        self.context = context

    def _finish(self, context: grpc.aio.ServicerContext, started: float, peer: str,
                error: BaseException | None, response: Any) -> None:
        """Offer the measured call; never raises (it runs as the call ends, and must not
        change how it ends)."""
        try:
            ids = self.interceptor.call_ids()
            session_id = ids.get("session_id") or getattr(response, "session_id", None)
            self.interceptor.offer(TrackedCall(
                method=self.method, operation=self.operation, context=self.context,
                peer=peer, ended=time.time(), duration=time.perf_counter() - started,
                status=call_status(context, error),
                session_id=session_id if isinstance(session_id, str) and session_id else None,
                key_id=ids.get("key_id") or None))
        except Exception:
            self.interceptor.failed()

    def unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A coroutine behaviour: a unary response, or a stream written with
        ``context.write``."""

        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, peer = time.perf_counter(), context.peer()
            error: BaseException | None = None
            response = None
            try:
                response = await behavior(request, StrippedContext(context))
                return response
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(context, started, peer, error, response)

        return tracked

    def wrap(self, behavior: Callable[..., Any], *, streaming: bool) -> Callable[..., Any] | None:
        """``behavior`` measured; None for a synchronous one (gRPC runs those on its
        threads): such a call goes untracked. None of the gateway's services has one."""
        if streaming and inspect.isasyncgenfunction(behavior):
            return self.streaming(behavior)
        return self.unary(behavior) if inspect.iscoroutinefunction(behavior) else None

    def streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """An async generator's responses, passed on: the duration is the stream's life,
        the status its end (a coroutine that writes with ``context.write``, as
        StreamEvents does, is measured by :meth:`unary`)."""

        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, peer = time.perf_counter(), context.peer()
            error: BaseException | None = None
            try:
                async for response in behavior(request, StrippedContext(context)):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._finish(context, started, peer, error, None)

        return tracked


class ActivityInterceptor(grpc.aio.ServerInterceptor):
    """Tracks the calls that opt in; hands each one's :class:`TrackedCall` to ``offer``
    (which must not block). ``call_ids`` reads the ids core's handler bound to the call
    (``GatewayAPI.call_ids``)."""

    def __init__(self, offer: Callable[[TrackedCall], None],
                 call_ids: Callable[[], Mapping[str, str]]) -> None:
        self.offer = offer
        self.call_ids = call_ids
        self._failed_before = False

    def failed(self) -> None:
        """Measuring a call failed (a bug): logged once, with its traceback; the call
        ends as its handler made it end, untracked."""
        if not self._failed_before:
            self._failed_before = True
            log.exception("activity: could not track a call (further failures are not "
                          "logged); the call itself is unaffected")

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> Any:
        metadata = handler_call_details.invocation_metadata
        headers = tracking_headers(metadata)
        if headers is None:
            return await continuation(handler_call_details)
        method = handler_call_details.method
        # later interceptors see the call without the consumed headers too (the details
        # are grpc's own type, which its continuation insists on)
        stripped = tuple(item for item in metadata if item[0] not in CONSUMED)
        handler = await continuation(type(handler_call_details)(method, stripped))
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED, nothing to track
            return None
        tracking = _Tracking(self, method, *headers)
        for kind in ("unary_unary", "stream_unary", "unary_stream", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                wrapped = tracking.wrap(behavior, streaming=kind.endswith("_stream"))
                return handler if wrapped is None else handler._replace(**{kind: wrapped})
        return handler
