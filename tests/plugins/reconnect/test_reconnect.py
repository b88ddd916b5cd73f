"""Detach-grace and resume with real gateway, worker and clients."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import grpc
import psutil
import pytest

from sessiongate.testing import stream_end, wait_for
from sessiongate.v1 import gateway_pb2

pytestmark = [pytest.mark.asyncio, pytest.mark.requires_plugin("fanout", "reconnect")]


async def collect(call, until: int) -> tuple[list[int], list]:
    """Sequences (and gaps) read until sequence ``until`` arrives."""
    seqs: list[int] = []
    gaps = []
    while not seqs or seqs[-1] < until:
        response = await call.read()
        assert response is not grpc.aio.EOF
        if response.HasField("gap"):
            gaps.append(response.gap)
        seqs.extend(e.sequence for e in response.events)
    return seqs, gaps


async def test_resume_mid_stream_while_producing_gets_every_event_once(make_gateway):
    # queues as large as the burst: this test is about the seam, not backpressure
    gw = await make_gateway(**{"plugins.fanout.replay_buffer_capacity": 100_000,
                               "events.queue_capacity": 100_000,
                               "plugins.reconnect.detach_grace_seconds": 30})
    client = gw.client()
    sid = (await client.open()).session_id
    call = client.stream(sid)
    assert (await call.read()).caught_up
    total = 30_000
    burst = asyncio.create_task(client.invoke_json(sid, "burst", {"count": total, "size": 50}))
    seen, _ = await collect(call, 1)
    call.cancel()  # the client's connection drops mid-stream
    session = gw.gateway.sessions.live[sid]
    await wait_for(lambda: session.state == "DETACHED")
    resumed = client.stream(sid, after_sequence=seen[-1])
    rest, gaps = await collect(resumed, total)
    await burst
    assert gaps == []
    assert seen + rest == list(range(1, total + 1))  # no duplicate, no hole at the seam
    assert session.state == "READY"
    resumed.cancel()


async def test_first_response_marks_the_seam_between_history_and_live(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open()).session_id
    await client.invoke_json(sid, "burst", {"count": 10, "size": 1})
    call = client.stream(sid, after_sequence=4, max_batch=4)
    replayed = []
    while True:
        response = await call.read()
        replayed += [e.sequence for e in response.events]
        if response.caught_up:
            break
    assert replayed == [5, 6, 7, 8, 9, 10]
    await client.invoke_json(sid, "burst", {"count": 1, "size": 1})
    live = await call.read()
    assert [e.sequence for e in live.events] == [11] and not live.caught_up
    call.cancel()


async def test_resume_after_the_ring_overflowed_gets_a_gap_then_events(make_gateway):
    gw = await make_gateway(**{"plugins.fanout.replay_buffer_capacity": 100})
    client = gw.client()
    sid = (await client.open()).session_id
    await client.invoke_json(sid, "burst", {"count": 500, "size": 1})
    call = client.stream(sid, after_sequence=10)
    first = await call.read()
    assert first.HasField("gap")
    assert (first.gap.requested_after, first.gap.oldest_available, first.gap.reason) == (
        10, 401, gateway_pb2.EVICTED)
    seqs = [e.sequence for e in first.events]
    if seqs[-1:] != [500]:
        more, _ = await collect(call, 500)
        seqs += more
    assert seqs == list(range(401, 501))
    call.cancel()


async def test_cursor_from_the_future_is_out_of_range(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open()).session_id
    await client.invoke_json(sid, "burst", {"count": 3, "size": 1})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.stream(sid, after_sequence=4).read()
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_grace_expiry_closes_the_session_and_stops_its_worker(make_gateway):
    gw = await make_gateway(**{"plugins.reconnect.detach_grace_seconds": 0.3})
    client = gw.client()
    sid = (await client.open()).session_id
    session = gw.gateway.sessions.live[sid]
    pid = session.worker.pid
    call = client.stream(sid)
    await call.read()
    call.cancel()
    await asyncio.wait_for(session.ended.wait(), 10)
    info = await client.get(sid)
    assert info.state == gateway_pb2.CLOSED and "detach grace expired" in info.reason
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # resuming after the window: the stream ends at once, OK, and GetSession says CLOSED
    late = client.stream(sid, after_sequence=0)
    assert await late.read() is grpc.aio.EOF
    assert await late.code() == grpc.StatusCode.OK


async def detached_session(make_gateway):
    """A session whose only subscriber attached and dropped (grace 60 s)."""
    gw = await make_gateway(**{"plugins.reconnect.detach_grace_seconds": 60})
    client = gw.client()
    sid = (await client.open()).session_id
    session = gw.gateway.sessions.live[sid]
    call = client.stream(sid)
    await call.read()
    call.cancel()
    await wait_for(lambda: session.state == "DETACHED")
    return client, sid, session


async def test_a_resume_within_the_window_keeps_the_session(make_gateway):
    client, sid, session = await detached_session(make_gateway)
    assert (await client.get(sid)).state == gateway_pb2.DETACHED
    back = client.stream(sid, after_sequence=0)
    await back.read()
    assert session.state == "READY"
    await client.invoke_json(sid, "write", {"tag": "a", "value": 2})  # works while back
    back.cancel()


async def test_explicit_close_while_detached_closes_at_once(make_gateway):
    client, sid, _session = await detached_session(make_gateway)
    assert (await client.close(sid)).state == gateway_pb2.CLOSED


@pytest.mark.requires_plugin("acl")
async def test_another_key_cannot_resume(make_gateway):
    gw = await make_gateway()
    _owner_id, owner_key = await gw.create_key("owner")
    _other_id, other_key = await gw.create_key("other")
    owner, other = gw.client(owner_key), gw.client(other_key)
    sid = (await owner.open()).session_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.stream(sid, after_sequence=0).read()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.requires_no_plugin("acl")
async def test_without_acl_any_key_may_resume(make_gateway):
    gw = await make_gateway()
    _id, other_key = await gw.create_key("other")
    sid = (await gw.client().open()).session_id
    call = gw.client(other_key).stream(sid, after_sequence=0)
    assert (await call.read()).caught_up
    call.cancel()


async def test_cli_stream_survives_a_gateway_side_cut(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open()).session_id
    env = {**os.environ, "SESSIONGATE_CLIENT_SERVER": gw.address,
           "SESSIONGATE_CLIENT_KEY": gw.admin_key}
    total = 400
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sessiongate", "stream", sid, "--subscriber-id", "cli",
        "--max-events", str(total), "--config", str(gw.config), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    session = gw.gateway.sessions.live[sid]
    await wait_for(lambda: session.distributor.external_count == 1, timeout=30)
    await client.invoke_json(sid, "burst", {"count": total // 2, "size": 5})
    # the gateway cuts the CLI's stream: another stream takes its subscriber id
    thief = client.stream(sid, subscriber_id="cli")
    await thief.read()
    code, _details = await stream_end(thief)  # the CLI takes it back when it resumes
    assert code == grpc.StatusCode.ABORTED
    await client.invoke_json(sid, "burst", {"count": total // 2, "size": 5})
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, err.decode()
    import json

    seqs = [json.loads(line)["sequence"] for line in out.decode().splitlines()]
    assert seqs == list(range(1, total + 1))
    assert "reconnecting" in err.decode()
