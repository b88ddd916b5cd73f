"""Fan-out over real gRPC: several StreamEvents clients on one real session."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sessiongate.testing import stream_end, wait_for
from sessiongate.v1 import gateway_pb2

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("fanout")]


async def read_sequences(call, count: int) -> list[int]:
    """Exactly ``count`` events (the producer is paced, so batches end on the boundary)."""
    seen: list[int] = []
    while len(seen) < count:
        response = await call.read()
        assert response is not grpc.aio.EOF, f"stream ended after {len(seen)} events"
        seen.extend(e.sequence for e in response.events)
    return seen


async def attached(call) -> None:
    first = await call.read()
    assert first.caught_up and not first.events


async def test_two_readers_get_everything_while_a_stalled_one_is_disconnected(make_gateway):
    gw = await make_gateway(**{"events.queue_capacity": 2000,
                               "events.backpressure_policy": "fail_fast"})
    client = gw.client()
    sid = (await client.open(client_name="fanout")).session_id
    readers = [client.stream(sid, subscriber_id=f"reader-{i}") for i in range(2)]
    stalled = client.stream(sid, subscriber_id="stalled")
    for call in [*readers, stalled]:
        await attached(call)
    # 20 x 1000 events of 1 kB: far beyond what HTTP/2 windows absorb for the stalled
    # client. The readers catch up after each chunk, so only the stalled one overflows.
    chunk, chunks = 1000, 20
    seen: list[list[int]] = [[], []]
    for _ in range(chunks):
        reply = await client.invoke_json(sid, "burst", {"count": chunk, "size": 1000})
        assert reply == {"emitted": chunk}
        for i, call in enumerate(readers):
            seen[i] += await read_sequences(call, chunk)
    for got in seen:
        assert got == list(range(1, chunk * chunks + 1))
    code, details = await stream_end(stalled)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "event queue overflow" in details
    info = await client.get(sid)
    assert info.state == gateway_pb2.READY and info.subscriber_count == 2
    assert gw.gateway.metrics.get("queue_overflows", kind="grpc-event-stream") == 1
    for call in readers:
        call.cancel()


async def test_subscriber_cap_refuses_one_more(make_gateway):
    gw = await make_gateway(**{"plugins.fanout.max_subscribers_per_session": 2})
    client = gw.client()
    sid = (await client.open()).session_id
    calls = [client.stream(sid) for _ in range(2)]
    for call in calls:
        await attached(call)
    extra = client.stream(sid)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await extra.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_subscribers_per_session" in err.value.details()
    for call in calls:
        call.cancel()


async def test_same_subscriber_id_replaces_the_live_stream(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open()).session_id
    old = client.stream(sid, subscriber_id="tablet")
    await attached(old)
    new = client.stream(sid, subscriber_id="tablet")
    await attached(new)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await old.read()
    assert err.value.code() == grpc.StatusCode.ABORTED and "replaced" in err.value.details()
    await client.invoke_json(sid, "write", {"tag": "t", "value": 1})
    assert await read_sequences(new, 1) == [1]
    new.cancel()


async def test_internal_subscriber_receives_events_with_no_client_streaming(make_gateway):
    from sessiongate.core import hookimpl

    received: list[int] = []
    decoded: list[tuple[int, str, bytes]] = []
    done = asyncio.Event()

    class Mirror:
        @hookimpl
        def sg_internal_subscribers(self, session):
            async def dashboard_mirror(session, subscription):
                while (item := await subscription.next(100)) is not None:
                    received.extend(e.sequence for e in item[1])
                    decoded.extend((e.event.sequence, e.event.kind, e.event.payload)
                                   for e in item[1])  # the worker's bytes, decoded here
                    if len(received) >= 50:
                        done.set()
            return [dashboard_mirror]

    gw = await make_gateway(extra_plugins=(Mirror(),))
    client = gw.client()
    sid = (await client.open()).session_id
    await client.invoke_json(sid, "burst", {"count": 50, "size": 10})
    await asyncio.wait_for(done.wait(), 10)
    assert received == list(range(1, 51))
    assert decoded == [(i, "burst", b"x" * 10) for i in range(1, 51)]
    session = gw.gateway.sessions.live[sid]
    assert session.distributor.external_count == 0  # internal ones never count
    await client.close(sid)
    await wait_for(lambda: not session.distributor.subscriptions)
