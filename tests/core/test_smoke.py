"""End-to-end smoke: open, invoke, stream, close against a real gateway and worker."""

from __future__ import annotations

import grpc
import pytest

from sessiongate.testing import open_streaming
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


@pytest.mark.asyncio
async def test_large_events_reach_the_client(make_gateway):
    """4.8 MiB of 16 KiB events: no response may exceed what a gRPC client accepts."""
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client, client_name="big")
    await client.invoke_json(sid, "burst", {"count": 300, "size": 16384})
    seen = []
    while len(seen) < 300:
        response = await call.read()
        assert all(len(e.payload) == 16384 for e in response.events)
        seen.extend(e.sequence for e in response.events)
    assert seen == list(range(1, 301))
    call.cancel()


@pytest.mark.asyncio
async def test_an_oversized_batch_is_cut_into_responses_near_the_size_limit():
    from sessiongate.core.rpc.server import MAX_RESPONSE_BYTES, GatewayService
    from sessiongate.core.streaming.events import Distributor, EventLog, Subscription, to_wire

    class Replaying(Distributor):
        supports_replay = True

    events = [gateway_pb2.Event(sequence=i, kind="big", payload=b"x" * 16384)
              for i in range(1, 301)]
    dist = Replaying(session_id="s", capacity=1000, policy="fail_fast",
                     fault_session=print, on_release=lambda sub, reason: None,
                     log=EventLog(retain=1000))
    dist.publish(to_wire(events))  # one batch of about 4.8 MiB
    sub = dist.subscribe(Subscription(), after_sequence=0)
    dist.close()
    responses = [gateway_pb2.StreamEventsResponse.FromString(data) async for data in
                 GatewayService._responses(sub, max_batch=1024, replaying=True)]
    assert len(responses) >= 5
    assert all(r.ByteSize() <= MAX_RESPONSE_BYTES + 16500 for r in responses)
    assert [e.sequence for r in responses for e in r.events] == list(range(1, 301))
    assert [r.caught_up for r in responses].count(True) == 1 and responses[-1].caught_up
