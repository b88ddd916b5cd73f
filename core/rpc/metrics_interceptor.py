"""Counts every gRPC call by method and status code, and times the unary ones.

Core's outermost interceptor (before the plugins', ``sg_grpc_interceptors``): it sees
each call as its client does, whatever a later interceptor or the handler does. The
method label is the full method name of a service the gateway serves (bounded by the
code: gRPC answers a name it does not serve UNIMPLEMENTED before any handler runs, and
those calls are counted under ``method="other"``). Streams are counted when they end;
their duration is their subscriber's, so only unary calls are timed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from sessiongate.core.metrics import Metrics

__all__ = ["MetricsInterceptor", "call_code"]

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def call_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The gRPC code name a call ended with, as its client sees it."""
    code = context.code()
    if code is not None:
        return code.name if isinstance(code, grpc.StatusCode) else _CODE_NAMES.get(
            code, "UNKNOWN")
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"  # what gRPC answers for an exception no handler turned into a status


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """``rpcs_total{method, code}`` and ``rpc_seconds{method}`` (unary calls)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def _count(self, method: str, context: grpc.aio.ServicerContext,
               error: BaseException | None, started: float | None) -> None:
        self.metrics.inc("rpcs", method=method, code=call_code(context, error))
        if started is not None:
            self.metrics.observe("rpc_seconds", time.perf_counter() - started, method=method)

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]],
               timed: bool) -> Callable[..., Awaitable[Any]]:
        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._count(method, context, error, started if timed else None)

        return counted

    def _streaming(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """A streaming response: an async generator, or a coroutine that writes."""
        if not inspect.isasyncgenfunction(behavior):
            return self._unary(method, behavior, timed=False)

        async def counted(request: Any, context: grpc.aio.ServicerContext,
                          ) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._count(method, context, error, None)

        return counted

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler]],
            handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # a method nobody serves: gRPC answers UNIMPLEMENTED
            self.metrics.inc("rpcs", method="other", code="UNIMPLEMENTED")
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(method, handler.unary_unary,
                                                            timed=True))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._unary(method, handler.stream_unary,
                                                             timed=False))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streaming(method,
                                                                 handler.unary_stream))
        return handler._replace(stream_stream=self._streaming(method, handler.stream_stream))
