"""End-to-end smoke: open, invoke, stream, close against a real gateway and worker."""

from __future__ import annotations

import grpc
import pytest

from sessiongate.v1 import gateway_pb2


@pytest.mark.asyncio
async def test_open_invoke_stream_close(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    info = await client.open(client_name="smoke")
    assert info.state == gateway_pb2.READY
    assert await client.invoke_json(info.session_id, "echo", {"a": 1}) == {"a": 1}
    call = client.stream(info.session_id)
    first = await call.read()
    assert first.caught_up and not first.events
    reply = await client.invoke_json(info.session_id, "burst", {"count": 1000, "size": 10})
    assert reply == {"emitted": 1000}
    seen = []
    while len(seen) < 1000:
        response = await call.read()
        seen.extend(e.sequence for e in response.events)
    assert seen == list(range(1, 1001))
    closed = await client.close(info.session_id)
    assert closed.state == gateway_pb2.CLOSED
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
