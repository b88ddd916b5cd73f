"""The fanout distributor in isolation: many subscribers, isolation, cap, replacement,
replay from the log's retention."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sessiongate.core.errors import OVERFLOW_MESSAGE, Aborted, FailedPrecondition, ResourceExhausted
from sessiongate.core.streaming.events import PACE_WINDOW_EVENTS, EventLog, Gap, Subscription
from sessiongate.plugins.fanout import FanoutDistributor
from sessiongate.testing import DistributorHarness
from sessiongate.v1 import gateway_pb2
from sessiongate.v1.gateway_pb2 import Event

pytestmark = pytest.mark.once  # a unit test: independent of the plugin set

W = PACE_WINDOW_EVENTS


class Harness(DistributorHarness):
    """The fanout distributor, with a replay ring of ``retain`` events."""

    def __init__(self, *, max_external: int = 8, retain: int = 1000, **kw: Any) -> None:
        super().__init__(FanoutDistributor, max_external=max_external,
                         log=EventLog(retain, 0), **kw)


async def drain(sub: Subscription) -> list[int]:
    """Everything there is now (the subscription stays open)."""
    out: list[int] = []
    while sub.backlog or sub.pending_gap:
        _gap, events = await sub.next(1000)
        out.extend(e.sequence for e in events)
    return out


async def take(sub: Subscription, max_events: int = 1000) -> tuple[Gap | None, list[int]]:
    gap, events = await sub.next(max_events)
    return gap, [e.sequence for e in events]


@pytest.mark.asyncio
async def test_every_subscriber_gets_every_event_in_order():
    h = Harness()
    subs = [h.sub(subscriber_id=f"c{i}") for i in range(5)]
    h.publish(10)
    h.publish(7)
    for sub in subs:
        assert await drain(sub) == list(range(1, 18))


@pytest.mark.asyncio
async def test_one_leaving_does_not_disturb_the_others():
    h = Harness()
    a, b, c = h.sub(), h.sub(), h.sub()
    h.publish(3)
    h.dist.unsubscribe(b, "client gone")
    h.publish(3)
    assert await drain(a) == await drain(c) == [1, 2, 3, 4, 5, 6]
    assert b.ended and h.released == [(b, "client gone")]
    assert await b.next(10) is None  # left cleanly: no error, and nothing more


@pytest.mark.asyncio
async def test_leaving_twice_concurrently_is_harmless():
    h = Harness()
    a, b = h.sub(), h.sub()

    async def leave() -> bool:
        await asyncio.sleep(0)
        return h.dist.unsubscribe(a, "client gone")

    results = await asyncio.gather(leave(), leave(), leave())
    assert sorted(results) == [False, False, True]
    assert h.dist.external_count == 1 and len(h.released) == 1
    h.publish(2)
    assert await drain(b) == [1, 2]


def test_register_after_close_fails_cleanly():
    h = Harness()
    h.dist.close(None)
    with pytest.raises(FailedPrecondition):
        h.sub()


@pytest.mark.asyncio
async def test_close_ends_every_subscriber_after_its_backlog():
    h = Harness()
    a, b = h.sub(), h.sub()
    h.publish(3)
    h.dist.close(None)
    assert a.ended and b.ended and h.dist.external_count == 0
    assert await drain(a) == [1, 2, 3] and await drain(b) == [1, 2, 3]
    assert await a.next(10) is None and await b.next(10) is None


@pytest.mark.asyncio
async def test_a_slow_subscriber_is_disconnected_alone_among_several():
    # published regardless of credit: the laggard rule alone (capacity behind the head)
    h = Harness(capacity=10, policy="fail_fast", retain=0)
    fast1, slow, fast2 = h.sub(subscriber_id="f1"), h.sub(subscriber_id="slow"), h.sub()
    for _ in range(4):
        h.publish(4)
        await drain(fast1)
        await drain(fast2)
    assert slow.ended and h.faults == []
    assert h.released == [(slow, "overflow")]
    with pytest.raises(ResourceExhausted, match=OVERFLOW_MESSAGE):
        await slow.next(10)
    assert h.overflows == ["grpc-event-stream"]
    h.publish(2)
    assert await drain(fast1) == [17, 18] and await drain(fast2) == [17, 18]
    assert h.dist.external_count == 2


@pytest.mark.asyncio
async def test_three_readers_get_everything_while_a_stalled_one_is_cut():
    # a well-behaved worker: it sends what its credit allows, and waits for more
    h = Harness(capacity=200, policy="fail_fast", stall_timeout=0.05)
    readers = [h.sub(subscriber_id=f"r{i}") for i in range(3)]
    stalled = h.sub(subscriber_id="stalled")
    seen: list[list[int]] = [[], [], []]
    waits = 0
    while h.published < 100_000:
        if h.credit == h.published:
            # only while the stalled reader still holds the worker back (briefly)
            waits += 1
            await h.until(lambda: h.credit > h.published)
        h.publish(min(1000, h.credit - h.published, 100_000 - h.published))
        assert len(h.dist.log) <= 1000 + 1000  # the retention and one unread batch
        for i, reader in enumerate(readers):
            seen[i] += await drain(reader)
    assert waits == 1
    for got in seen:
        assert got == list(range(1, 100_001))
    assert stalled.ended and h.faults == [] and h.overflows == ["grpc-event-stream"]
    assert h.released == [(stalled, "overflow")]
    with pytest.raises(ResourceExhausted) as raised:
        await stalled.next(10)
    assert raised.value.message.startswith(OVERFLOW_MESSAGE)
    assert "more than 200 events behind" in raised.value.message
    assert not any(r.ended for r in readers) and h.dist.external_count == 3
    h.dist.close()


@pytest.mark.asyncio
async def test_a_resumed_subscriber_reads_its_whole_replay_while_it_is_retained():
    h = Harness(capacity=200, retain=50_000)
    for _ in range(40):
        h.publish(1000)
    live = h.sub(subscriber_id="live")
    replaying = h.sub(subscriber_id="replaying", after_sequence=0)
    got: list[int] = []
    gaps: list[Gap] = []
    while len(got) < 40_000:
        gap, events = await take(replaying)
        if gap is not None:
            gaps.append(gap)
        got += events
        assert h.credit - h.published >= 10  # the replaying one holds nobody back
        h.publish(10)  # the session goes on meanwhile; the live pacer keeps up
        assert len(await drain(live)) == 10
        assert not replaying.ended
    got += await drain(replaying)
    assert gaps == [] and not replaying.ended and h.released == []
    assert got == list(range(1, h.dist.last_sequence + 1)) and len(got) > 40_000
    h.dist.close()


@pytest.mark.asyncio
async def test_fail_fast_faults_when_the_stalled_subscriber_is_the_only_external():
    h = Harness(policy="fail_fast", stall_timeout=0.05)
    only = h.sub()
    mirror = h.sub(external=False, kind="mirror")
    h.publish_to_grant()  # the worker waits on `only`, which takes nothing
    await h.until(lambda: bool(h.faults))
    assert len(h.faults) == 1 and h.faults[0].startswith(OVERFLOW_MESSAGE)
    assert not only.ended and not mirror.ended and h.released == []
    h.dist.close()  # what the session does on a fault


@pytest.mark.asyncio
async def test_fail_fast_with_another_external_only_disconnects_the_stalled_one():
    h = Harness(policy="fail_fast", stall_timeout=0.05, capacity=100_000)
    stalled, other = h.sub(subscriber_id="stalled"), h.sub(subscriber_id="other")
    h.publish(3000)
    assert len(await drain(stalled)) == 3000  # it leads: it is the one the worker waits on
    assert h.credits == [W, 3000 + W]
    h.publish_to_grant()
    await h.until(lambda: bool(h.released))
    assert h.faults == [] and h.released == [(stalled, "overflow")]
    assert isinstance(stalled.error, ResourceExhausted) and not other.ended
    # the other one paces now, from where it is (0 + W: below what was sent, so 0 more)
    assert h.dist.granted == W and h.grants[-1] == 0
    h.dist.close()


@pytest.mark.asyncio
async def test_disconnect_policy_never_faults_even_a_lone_subscriber():
    h = Harness(policy="disconnect_subscriber", stall_timeout=0.05)
    only = h.sub()
    h.publish_to_grant()
    await h.until(lambda: bool(h.released))
    assert h.faults == [] and only.ended and isinstance(only.error, ResourceExhausted)
    assert h.grants[-1] is None


def test_an_internal_subscriber_overflowing_never_faults_the_session():
    h = Harness(capacity=5, policy="fail_fast", retain=0)
    mirror = h.sub(external=False, kind="dashboard-mirror")
    h.publish(6)
    assert h.faults == [] and mirror.ended and h.overflows == ["dashboard-mirror"]


def test_the_cap_counts_external_subscribers_only():
    h = Harness(max_external=2)
    h.sub(external=False, kind="mirror")
    h.sub()
    h.sub()
    with pytest.raises(ResourceExhausted, match="max_subscribers_per_session"):
        h.sub()
    h.sub(external=False, kind="mirror2")  # internal ones still attach
    assert h.dist.external_count == 2 and len(h.dist.subscriptions) == 4


def test_a_resume_counts_toward_the_cap():
    h = Harness(max_external=1)
    h.publish(3)
    h.sub()
    with pytest.raises(ResourceExhausted, match="max_subscribers_per_session"):
        h.sub(after_sequence=0)


@pytest.mark.asyncio
async def test_same_subscriber_id_replaces_the_older_stream():
    h = Harness(max_external=1)
    old = h.sub(subscriber_id="phone")
    new = h.sub(subscriber_id="phone")
    assert old.ended and h.released == [(old, "replaced")]
    with pytest.raises(Aborted, match="replaced"):
        await old.next(10)
    h.publish(1)
    assert await drain(new) == [1]


@pytest.mark.asyncio
async def test_a_reconnect_replaces_the_old_stream_and_resumes_without_gap():
    h = Harness(max_external=1)
    old = h.sub(subscriber_id="phone")
    h.publish(5)
    assert await take(old, 3) == (None, [1, 2, 3])
    new = h.sub(subscriber_id="phone", after_sequence=3)
    assert old.ended and isinstance(old.error, Aborted)
    h.publish(2)
    assert await drain(new) == [4, 5, 6, 7]


@pytest.mark.asyncio
async def test_skip_policy_jumps_ahead_with_a_slow_subscriber_gap():
    h = Harness(capacity=4, retain=0)
    sub = h.sub(skip=True)
    h.publish(2)
    assert await drain(sub) == [1, 2]
    h.publish(3)
    h.publish(3)  # 6 behind the newest event > 4: skip ahead
    assert await take(sub) == (Gap(2, 5, gateway_pb2.SLOW_SUBSCRIBER), [5, 6, 7, 8])
    assert not sub.ended and sub.skipped == 2 and h.released == []
    h.publish(1)
    assert await take(sub) == (None, [9])


@pytest.mark.asyncio
async def test_resume_preloads_history_then_live_without_duplicate_or_hole():
    h = Harness(retain=5)
    h.publish(8)
    sub = h.sub(after_sequence=5)
    h.publish(2)
    assert await drain(sub) == [6, 7, 8, 9, 10]
    late = h.sub(after_sequence=1)
    assert await take(late) == (Gap(1, 6, gateway_pb2.EVICTED), [6, 7, 8, 9, 10])


@pytest.mark.asyncio
async def test_worker_hole_is_announced_live_and_on_replay():
    h = Harness()
    live = h.sub()
    h.publish(3)
    h.dist.publish_hole(3, 7, gateway_pb2.WORKER_DISCONNECTED)
    h.dist.publish([Event(sequence=7), Event(sequence=8)])
    assert await take(live) == (None, [1, 2, 3])
    assert await take(live) == (Gap(3, 7, gateway_pb2.WORKER_DISCONNECTED), [7, 8])
    replay = h.sub(after_sequence=0)
    assert await take(replay) == (None, [1, 2, 3])
    assert await take(replay) == (Gap(3, 7, gateway_pb2.WORKER_DISCONNECTED), [7, 8])
