"""The fanout distributor in isolation: many subscribers, isolation, cap, replacement."""

from __future__ import annotations

import asyncio

import pytest

from sessiongate.core.errors import OVERFLOW_MESSAGE, Aborted, FailedPrecondition, ResourceExhausted
from sessiongate.core.events import Subscription
from sessiongate.plugins.fanout import FanoutDistributor, ReplayRing
from sessiongate.v1 import gateway_pb2
from sessiongate.v1.gateway_pb2 import Event


class Harness:
    def __init__(self, *, capacity: int = 100, policy: str = "disconnect_subscriber",
                 max_external: int = 8, ring: int = 1000) -> None:
        self.faults: list[str] = []
        self.released: list[tuple[Subscription, str]] = []
        self.overflows: list[str] = []
        self.dist = FanoutDistributor(
            max_external=max_external, ring=ReplayRing(ring, 0), session_id="s1",
            capacity=capacity, policy=policy, fault_session=self.faults.append,
            on_release=lambda sub, reason: self.released.append((sub, reason)),
            count_overflow=self.overflows.append)
        self.next_seq = 1

    def publish(self, n: int) -> None:
        batch = [Event(sequence=s) for s in range(self.next_seq, self.next_seq + n)]
        self.next_seq += n
        self.dist.publish(batch)

    def sub(self, **kw) -> Subscription:
        kw.setdefault("capacity", self.dist.capacity)
        return self.dist.subscribe(Subscription(**kw))


async def drain(sub: Subscription) -> list[int]:
    """Everything buffered now (the subscription stays open)."""
    out: list[int] = []
    while sub.buffer or sub.pending_gap:
        _gap, events = await sub.next(1000)
        out.extend(e.sequence for e in events)
    return out


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
    assert await drain(a) == [1, 2, 3]
    assert await a.next(10) is None and b.ended


@pytest.mark.asyncio
async def test_a_slow_subscriber_is_disconnected_alone_among_several():
    h = Harness(capacity=10, policy="fail_fast")
    fast1, slow, fast2 = h.sub(subscriber_id="f1"), h.sub(subscriber_id="slow"), h.sub()
    for _ in range(4):
        h.publish(4)
        await drain(fast1)
        await drain(fast2)
    assert slow.ended and h.faults == []
    with pytest.raises(ResourceExhausted, match=OVERFLOW_MESSAGE):
        await slow.next(10)
    assert h.overflows == ["grpc-event-stream"]
    h.publish(2)
    assert await drain(fast1) == [17, 18] and await drain(fast2) == [17, 18]
    assert h.dist.external_count == 2


def test_fail_fast_faults_only_when_the_overflowing_subscriber_is_the_only_external():
    h = Harness(capacity=5, policy="fail_fast")
    h.sub()
    h.sub(external=False, kind="mirror")
    h.publish(6)
    assert h.faults == [OVERFLOW_MESSAGE]


def test_disconnect_policy_never_faults_even_a_lone_subscriber():
    h = Harness(capacity=5, policy="disconnect_subscriber")
    only = h.sub()
    h.publish(6)
    assert h.faults == [] and only.ended and isinstance(only.error, ResourceExhausted)


def test_an_internal_subscriber_overflowing_never_faults_the_session():
    h = Harness(capacity=5, policy="fail_fast")
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


@pytest.mark.asyncio
async def test_same_subscriber_id_replaces_the_older_stream():
    h = Harness(max_external=1)
    old = h.sub(subscriber_id="phone")
    new = h.sub(subscriber_id="phone")
    assert old.ended
    with pytest.raises(Aborted, match="replaced"):
        await old.next(10)
    h.publish(1)
    assert await drain(new) == [1]


@pytest.mark.asyncio
async def test_skip_policy_jumps_ahead_with_a_slow_subscriber_gap():
    h = Harness(capacity=4)
    sub = h.sub(skip=True)
    h.publish(2)
    assert await drain(sub) == [1, 2]
    h.publish(3)
    h.publish(3)  # 6 pending > 4: skip ahead
    gap, events = await sub.next(100)
    assert (gap.requested_after, gap.oldest_available, gap.reason) == (
        2, 5, gateway_pb2.SLOW_SUBSCRIBER)
    assert [e.sequence for e in events] == [5, 6, 7, 8]
    assert not sub.ended


@pytest.mark.asyncio
async def test_resume_preloads_history_then_live_without_duplicate_or_hole():
    h = Harness(ring=5)
    h.publish(8)
    sub = h.dist.subscribe(Subscription(capacity=100), after_sequence=5)
    h.publish(2)
    assert await drain(sub) == [6, 7, 8, 9, 10]
    late = h.dist.subscribe(Subscription(capacity=100), after_sequence=1)
    gap, events = await late.next(100)
    assert (gap.oldest_available, gap.reason) == (6, gateway_pb2.EVICTED)
    assert [e.sequence for e in events] == [6, 7, 8, 9, 10]


@pytest.mark.asyncio
async def test_worker_hole_is_announced_live_and_on_replay():
    h = Harness()
    live = h.sub()
    h.publish(3)
    h.dist.publish_hole(3, 7, gateway_pb2.WORKER_DISCONNECTED)
    h.dist.publish([Event(sequence=7), Event(sequence=8)])
    first_gap, first = await live.next(100)
    assert first_gap is None and [e.sequence for e in first] == [1, 2, 3]
    gap, rest = await live.next(100)
    assert (gap.requested_after, gap.oldest_available) == (3, 7)
    assert [e.sequence for e in rest] == [7, 8]
    replay = h.dist.subscribe(Subscription(capacity=100), after_sequence=0)
    gap, events = await replay.next(100)
    assert gap is None and [e.sequence for e in events] == [1, 2, 3]
    gap, events = await replay.next(100)
    assert gap.reason == gateway_pb2.WORKER_DISCONNECTED and [e.sequence for e in events] == [7, 8]
