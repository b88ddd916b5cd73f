"""Sessions: the state machine as clients see it, leases and the sweeper, the session cap."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from sessiongate.testing import open_streaming, wait_for
from sessiongate.v1 import gateway_pb2

ENDED = 30


class SweepCounter:
    """Counts the sweeper's passes (wraps ``SessionManager.sweep_once``)."""

    def __init__(self, manager) -> None:
        self.manager = manager
        self.passes = 0
        self._sweep = manager.sweep_once
        manager.sweep_once = self

    def __call__(self) -> None:
        self._sweep()
        self.passes += 1


@pytest.mark.asyncio
async def test_session_info_and_lifecycle(make_gateway, caplog):
    caplog.set_level("INFO", logger="sessiongate")
    gw = await make_gateway()
    key_id, key = await gw.create_key("owner")
    client = gw.client(key=key)
    before = time.time()
    info = await client.open(client_name="lifecycle", tag="line-1", lease_seconds=120)
    sid = info.session_id
    assert len(sid) == 32
    assert info.state == gateway_pb2.READY
    assert info.owner_key_id == key_id
    assert (info.client_name, info.tag, info.backend) == ("lifecycle", "line-1", "sim")
    assert info.last_sequence == 0 and info.subscriber_count == 0
    assert before - 1 <= info.opened_at.ToSeconds() <= time.time() + 1
    lease = info.lease_expires_at.ToSeconds() - info.opened_at.ToSeconds()
    assert 110 <= lease <= 121

    await client.invoke_json(sid, "write", {"tag": "a", "value": 1})
    await client.invoke_json(sid, "write", {"tag": "a", "value": 2})
    assert (await client.get(sid)).last_sequence == 2
    assert [s.session_id for s in await gw.client().list()] == [sid]

    closed = await client.close(sid)
    assert closed.state == gateway_pb2.CLOSED
    # idempotent, and remembered after the end
    assert (await client.close(sid)).state == gateway_pb2.CLOSED
    assert (await client.get(sid)).state == gateway_pb2.CLOSED
    assert await client.list() == []
    lines = [r.getMessage() for r in caplog.records if sid in r.getMessage()]
    assert any("OPENING -> READY" in m for m in lines), lines
    assert any("READY -> CLOSING" in m for m in lines), lines
    assert any("CLOSING -> CLOSED" in m for m in lines), lines
    assert any("worker started" in m for m in lines), lines
    assert any("worker exited" in m for m in lines), lines


@pytest.mark.asyncio
async def test_close_ends_the_stream_ok_after_its_backlog(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client)
    for value in range(3):
        await client.invoke_json(sid, "write", {"tag": "t", "value": value})
    await client.close(sid)
    seen = []
    while (response := await call.read()) is not grpc.aio.EOF:
        seen.extend((e.sequence, e.kind) for e in response.events)
    assert seen == [(1, "data_change"), (2, "data_change"), (3, "data_change")]
    assert await call.code() == grpc.StatusCode.OK
    # a stream on a closed session ends OK at once
    late = client.stream(sid)
    assert await late.read() is grpc.aio.EOF
    assert await late.code() == grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_default_lease_comes_from_settings(make_gateway):
    gw = await make_gateway(**{"sessions.default_lease_seconds": 4321})
    info = await gw.client().open(client_name="x")
    lease = info.lease_expires_at.ToSeconds() - info.opened_at.ToSeconds()
    assert 4310 <= lease <= 4322


@pytest.mark.asyncio
async def test_lease_expiry_closes_the_session(make_gateway, caplog):
    caplog.set_level("INFO", logger="sessiongate")
    gw = await make_gateway(**{"sessions.lease_sweep_interval_seconds": 0.05})
    client = gw.client()
    short = (await client.open(client_name="short", lease_seconds=1)).session_id
    long = (await client.open(client_name="long", lease_seconds=3600)).session_id
    session = gw.gateway.sessions.get(short)  # (maybe already closed, on a loaded machine)
    worker = session.worker
    await asyncio.wait_for(session.ended.wait(), ENDED)
    assert session.state == "CLOSED"
    assert session.reason == "lease expired"
    assert worker.returncode is not None
    assert (await client.get(short)).state == gateway_pb2.CLOSED
    assert any(short in r.getMessage() and "lease expired" in r.getMessage()
               for r in caplog.records)
    assert (await client.get(long)).state == gateway_pb2.READY


@pytest.mark.asyncio
async def test_invoke_refreshes_the_lease(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x", lease_seconds=600)).session_id
    session = gw.gateway.sessions.live[sid]
    session.lease_deadline = time.monotonic() + 1  # about to expire
    await client.invoke_json(sid, "echo", {})
    assert session.lease_deadline > time.monotonic() + 500
    info = await client.get(sid)
    assert info.lease_expires_at.ToSeconds() > time.time() + 500


@pytest.mark.asyncio
async def test_a_stream_keeps_the_session_alive_and_its_lease_restarts_when_it_leaves(
        make_gateway):
    gw = await make_gateway(**{"sessions.lease_sweep_interval_seconds": 0.05})
    client = gw.client()
    sid = (await client.open(client_name="x", lease_seconds=600)).session_id
    manager = gw.gateway.sessions
    session = manager.live[sid]
    call = client.stream(sid)
    assert (await call.read()).caught_up
    sweeps = SweepCounter(manager)
    session.lease_deadline = time.monotonic() - 1  # expired, but a stream is attached
    start = sweeps.passes
    await wait_for(lambda: sweeps.passes >= start + 5)
    assert session.state == "READY"
    assert not session.ended.is_set()
    assert await client.invoke_json(sid, "echo", 1) == 1  # works (and refreshes)

    # streamed past its lease, then the stream goes away: the lease restarts in full
    # (a dashboard that streamed for hours is not closed at the next sweep)
    session.lease_deadline = time.monotonic() - 1
    call.cancel()
    await wait_for(lambda: not session.kept_alive())
    assert session.lease_deadline > time.monotonic() + 590
    start = sweeps.passes
    await wait_for(lambda: sweeps.passes >= start + 5)
    assert session.live and not session.ended.is_set()


@pytest.mark.asyncio
async def test_concurrent_opens_respect_max_sessions(make_gateway):
    gw = await make_gateway(**{"sessions.max_sessions": 2})
    client = gw.client()
    results = await asyncio.gather(*(client.open(client_name=f"c{i}") for i in range(5)),
                                   return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(opened) == 2
    assert all(isinstance(r, grpc.aio.AioRpcError)
               and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused), refused
    assert len(gw.gateway.sessions.live) == 2
    assert {s.session_id for s in await client.list()} == {i.session_id for i in opened}


@pytest.mark.asyncio
async def test_sequences_are_contiguous_across_batches(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client, max_batch=7)
    await client.invoke_json(sid, "burst", {"count": 3000, "size": 3})
    await client.invoke_json(sid, "write", {"tag": "last", "value": True})
    seen: list[int] = []
    while len(seen) < 3001:
        response = await call.read()
        assert len(response.events) <= 7
        seen.extend(e.sequence for e in response.events)
    assert seen == list(range(1, 3002))
    assert (await client.get(sid)).last_sequence == 3001
    call.cancel()


@pytest.mark.asyncio
async def test_sim_commands(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="x")).session_id
    assert await client.invoke(sid, "echo", b"\x00raw bytes") == b"\x00raw bytes"
    assert await client.invoke_json(sid, "read", {"tag": "nope"}) == {"tag": "nope", "value": None}
    assert await client.invoke_json(sid, "write", {"tag": "t", "value": [1, 2]}) == {}
    assert await client.invoke_json(sid, "read", {"tag": "t"}) == {"tag": "t", "value": [1, 2]}
    call = client.stream(sid)
    assert (await call.read()).caught_up
    assert await client.invoke_json(sid, "subscribe", {"tag": "tick", "interval_ms": 10}) == {}
    ticks = []
    while len(ticks) < 3:
        response = await call.read()
        ticks.extend(e for e in response.events if e.kind == "data_change")
    assert await client.invoke_json(sid, "unsubscribe", {"tag": "tick"}) == {}
    assert all(b'"tick"' in e.payload for e in ticks)
    assert await client.invoke_json(sid, "sleep", {"ms": 1}) == {}
    call.cancel()
