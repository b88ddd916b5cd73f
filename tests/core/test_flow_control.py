"""Flow control end to end: real gateway, real workers, real gRPC clients.

A healthy subscriber, however slow, never loses its session to a burst: the worker
is paced by the fastest subscriber that wants every event; only a laggard or a
stalled pacer meets its overflow policy, alone; replies and heartbeats never wait
behind events; a backend that never drains loses its oldest events as a typed gap.
"""

from __future__ import annotations

import asyncio
import os
import sys

import grpc
import pytest

from sessiongate.core.sdk.sim import Sim
from sessiongate.core.sdk.worker import MAX_UNSENT_EVENTS, WorkerRuntime
from sessiongate.testing import open_streaming, stream_end, wait_for
from sessiongate.v1 import gateway_pb2, worker_pb2

pytestmark = pytest.mark.asyncio



def shipped_defaults_only(test):
    """The heaviest tests run once, in the env with the shipped plugin defaults."""
    test = pytest.mark.requires_plugin("fanout", "reconnect", "acl")(test)
    return pytest.mark.requires_no_plugin("reattach")(test)

MILLION = 1_000_000


async def read_until(call, last: int, *, pause: float = 0.0) -> tuple[list[int], list]:
    """Sequences and gaps read until sequence ``last`` arrives. ``pause``: the client
    sleeps that long after every response (a healthy reader slower than the worker)."""
    seqs: list[int] = []
    gaps = []
    while not seqs or seqs[-1] < last:
        response = await call.read()
        assert response is not grpc.aio.EOF, f"stream ended after {seqs[-1:]}"
        if response.HasField("gap"):
            gaps.append(response.gap)
        seqs.extend(e.sequence for e in response.events)
        if pause:
            await asyncio.sleep(pause)
    return seqs, gaps


def stalled_session(gw, sid: str) -> bool:
    """The worker has used up its grant: it is waiting on the pacing subscriber."""
    dist = gw.gateway.sessions.live[sid].distributor
    return dist.granted is not None and dist.last_sequence >= dist.granted


# -- 1. any burst, healthy client, shipped defaults --------------------------------------


@shipped_defaults_only
async def test_cli_stream_prints_a_million_event_burst_whole(make_gateway, tmp_path):
    gw = await make_gateway()
    client = gw.client()
    sid = (await client.open(client_name="cli")).session_id
    env = {**os.environ, "SESSIONGATE_CLIENT_SERVER": gw.address,
           "SESSIONGATE_CLIENT_KEY": gw.admin_key}
    out_path = tmp_path / "out.jsonl"
    session = gw.gateway.sessions.live[sid]
    with out_path.open("wb") as out:
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sessiongate", "stream", sid, "--max-events", str(MILLION),
            "--config", str(gw.config), env=env, stdout=out, stderr=asyncio.subprocess.PIPE)
        await wait_for(lambda: session.distributor.external_count == 1, timeout=30)
        reply = await client.invoke_json(sid, "burst", {"count": MILLION, "size": 100})
        assert reply == {"emitted": MILLION}
        assert session.state == "READY", session.reason
        _out, err = await asyncio.wait_for(cli.communicate(), 100)
    assert cli.returncode == 0, err.decode()
    with out_path.open("rb") as lines:
        seqs = [int(line[13:line.index(b",")]) for line in lines]  # '{"sequence": N, …'
    assert len(seqs) == MILLION
    assert seqs == list(range(1, MILLION + 1))
    assert session.state in ("READY", "DETACHED") and "overflow" not in session.reason


@shipped_defaults_only
async def test_a_client_slower_than_the_worker_gets_a_million_events(make_gateway):
    gw = await make_gateway()
    client = gw.client()
    sid, call = await open_streaming(client, client_name="slow")
    burst = asyncio.ensure_future(
        client.invoke_json(sid, "burst", {"count": MILLION, "size": 100}))
    seqs, gaps = await read_until(call, MILLION, pause=0.002)
    assert gaps == [] and seqs == list(range(1, MILLION + 1))
    assert await burst == {"emitted": MILLION}
    assert (await client.get(sid)).state == gateway_pb2.READY
    call.cancel()


# -- 2. paced by the fastest complete subscriber, free without one --------------------------


async def test_without_a_complete_subscriber_the_worker_runs_free(make_gateway):
    """Only a SKIP subscriber that reads nothing: the burst is not held back by it (a
    pacing bug would hang the burst until the stall timeout of an hour)."""
    gw = await make_gateway(**{"events.stall_timeout_seconds": 3600})
    client = gw.client()
    sid = (await client.open()).session_id
    skipper = gw.client().stream(sid, on_overflow=gateway_pb2.SKIP)
    assert (await skipper.read()).caught_up
    assert gw.gateway.sessions.live[sid].distributor.granted is None
    count = 200_000
    reply = await asyncio.wait_for(
        client.invoke_json(sid, "burst", {"count": count, "size": 100}), 60)
    assert reply == {"emitted": count}
    seqs, gaps = await read_until(skipper, count)
    assert gaps and all(g.reason == gateway_pb2.SLOW_SUBSCRIBER for g in gaps)
    assert seqs[-1] == count and seqs == sorted(set(seqs))
    skipper.cancel()


async def test_replies_and_heartbeats_never_wait_behind_held_back_events(make_gateway):
    gw = await make_gateway(**{
        "events.stall_timeout_seconds": 3,
        "events.backpressure_policy": "disconnect_subscriber",
        "workers.heartbeat_interval_seconds": 0.2,
        "workers.heartbeat_timeout_seconds": 1,
    })
    client = gw.client()
    sid = (await client.open()).session_id
    stalled = gw.client().stream(sid)
    assert (await stalled.read()).caught_up
    burst = asyncio.ensure_future(
        client.invoke_json(sid, "burst", {"count": 300_000, "size": 100}))
    await wait_for(lambda: stalled_session(gw, sid), timeout=30)
    # the worker is held back: commands still answer at once
    assert await client.invoke_json(sid, "echo", {"ping": 1}) == {"ping": 1}
    assert await client.invoke_json(sid, "write", {"tag": "t", "value": 2}) == {}
    assert await client.invoke_json(sid, "read", {"tag": "t"}) == {"tag": "t", "value": 2}
    assert await client.invoke_json(sid, "unsubscribe", {"tag": "t"}) == {}
    assert not burst.done()
    # it stays held back for the stall timeout, three times the heartbeat timeout:
    # heartbeats kept flowing, or the session would have faulted "worker silent"
    assert await burst == {"emitted": 300_000}
    code, details = await stream_end(stalled)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "stall_timeout_seconds" in details
    info = await client.get(sid)
    assert info.state in (gateway_pb2.READY, gateway_pb2.DETACHED), info.reason


# -- 3. only a laggard is dealt with, alone ---------------------------------------------------


@pytest.mark.requires_plugin("fanout")
@pytest.mark.parametrize("policy", ["fail_fast", "disconnect_subscriber"])
async def test_three_healthy_readers_keep_everything_while_a_stalled_one_is_cut(
        make_gateway, policy):
    gw = await make_gateway(**{"events.queue_capacity": 200,
                               "events.backpressure_policy": policy})
    client = gw.client()
    sid = (await client.open()).session_id
    calls = [gw.client().stream(sid, subscriber_id=name)
             for name in ("fast1", "fast2", "slow", "stalled")]
    for call in calls:
        assert (await call.read()).caught_up
    count = 100_000
    burst = asyncio.ensure_future(
        client.invoke_json(sid, "burst", {"count": count, "size": 100}))
    results = await asyncio.gather(read_until(calls[0], count), read_until(calls[1], count),
                                   read_until(calls[2], count, pause=0.002))
    for seqs, gaps in results:
        assert gaps == [] and seqs == list(range(1, count + 1))
    assert await burst == {"emitted": count}
    code, details = await stream_end(calls[3])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "event queue overflow" in details and "200 events behind" in details
    assert (await client.get(sid)).state == gateway_pb2.READY
    for call in calls[:3]:
        call.cancel()


# -- 5. a backend that never drains ------------------------------------------------------------


async def test_a_backend_that_never_drains_loses_its_oldest_events_as_a_typed_gap(
        make_gateway):
    gw = await make_gateway(**{"events.stall_timeout_seconds": 3600})
    client = gw.client()
    sid = (await client.open()).session_id
    call = client.stream(sid)
    assert (await call.read()).caught_up
    count = 3 * MAX_UNSENT_EVENTS
    # emitted in one go, no drain(): the reply does not wait for credit
    assert await client.invoke_json(
        sid, "burst", {"count": count, "size": 10, "drain": False}) == {"emitted": count}
    seqs, gaps = await read_until(call, count)
    assert [g.reason for g in gaps] == [gateway_pb2.WORKER_OVERRUN]
    gap = gaps[0]
    before = seqs[:seqs.index(gap.oldest_available)]
    after = seqs[len(before):]
    assert before == list(range(1, gap.requested_after + 1))
    assert after == list(range(gap.oldest_available, count + 1))
    assert len(after) == MAX_UNSENT_EVENTS  # the newest the worker could hold
    assert (await client.get(sid)).state == gateway_pb2.READY
    call.cancel()


# -- 6. subscribers are cursors: ring and per-subscriber bound are independent -------------


@pytest.mark.requires_plugin("fanout", "reconnect")
async def test_a_resume_reads_a_ring_far_larger_than_the_subscriber_bound(make_gateway):
    gw = await make_gateway(**{"events.queue_capacity": 200,
                               "plugins.fanout.replay_buffer_capacity": 50_000})
    client = gw.client()
    sid = (await client.open()).session_id
    count = 40_000
    assert await client.invoke_json(sid, "burst", {"count": count, "size": 20}) == \
        {"emitted": count}
    live = gw.client().stream(sid)  # another subscriber at the head meanwhile
    assert (await live.read()).caught_up
    resumed = client.stream(sid, after_sequence=0)
    seqs, gaps = await read_until(resumed, count)
    assert gaps == [] and seqs == list(range(1, count + 1))
    for call in (live, resumed):
        call.cancel()


class _Writer:
    """A connection that takes every frame (the gateway's pacing is the credit)."""

    def __init__(self) -> None:
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.frames += 1

    def is_closing(self) -> bool:
        return False

    async def drain(self) -> None:
        return None


@pytest.mark.asyncio
async def test_a_clocked_source_waits_for_credit_instead_of_piling_events_up():
    """Backend.credit() - what sim's subscribe timer awaits before each tick - returns
    while the gateway takes events and waits, without spinning, while it holds back."""
    runtime = WorkerRuntime(socket_path="unused", session_id="s", nonce=b"",
                            backend_cls=Sim, backend_name="sim", max_frame=1 << 22)
    runtime._writer = _Writer()
    backend = runtime.backend
    await backend.credit()  # unpaced: at once
    runtime._set_credit(worker_pb2.Credit(paced=True, through_count=2))
    for _ in range(3):
        backend.emit("tick", 1)
    waiting = asyncio.ensure_future(backend.credit())
    await asyncio.sleep(0)
    assert not waiting.done()  # two sent, the third waits on the gateway
    runtime._set_credit(worker_pb2.Credit(paced=True, through_count=3))
    await asyncio.wait_for(waiting, 5)
    assert runtime._writer.frames >= 2 and not runtime._unsent
