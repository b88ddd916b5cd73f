"""Small helpers shared by the acl tests (imported relatively: no conftest magic)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import grpc

from sessiongate import testing

TIMEOUT = 15.0


async def rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error an RPC ends with (fails the test if it succeeds), within TIMEOUT."""
    return await testing.rpc_error(asyncio.wait_for(awaitable, TIMEOUT))


async def attached(call: Any) -> Any:
    """Read a stream's first response: the subscription is registered once it arrives."""
    response = await asyncio.wait_for(call.read(), TIMEOUT)
    assert response is not grpc.aio.EOF
    assert response.caught_up
    return response


async def stream_end(call: Any) -> grpc.StatusCode:
    """Read a stream until it ends; its final status code."""
    while True:
        try:
            response = await asyncio.wait_for(call.read(), TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        if response is grpc.aio.EOF:
            return await call.code()
