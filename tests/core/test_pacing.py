"""Core's distributor: subscriptions as cursors, pacing the worker (grants), laggards,
memory, stalls, worker holes and close.

Grants are recorded raw (how many more events the worker may send, or None) and as
the worker's running credit; the harness plays a worker that sends what it may.

Timing: stall tests use a short ``stall_timeout`` and wait for the resulting event
(a release or a fault). Where a test shows that something does *not* happen, a
witness distributor with a longer ``stall_timeout``, armed after the condition under
test holds, marks when the tested timer has certainly had its chance: both run on the
same event-loop clock, so no sleep is involved.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sessiongate.core.errors import (
    OVERFLOW_MESSAGE,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
)
from sessiongate.core.streaming.events import (
    PACE_WINDOW_BYTES,
    PACE_WINDOW_EVENTS,
    Distributor,
    EventLog,
    Gap,
    Subscription,
)
from sessiongate.testing import DistributorHarness
from sessiongate.v1 import gateway_pb2
from sessiongate.v1.gateway_pb2 import Event

W = PACE_WINDOW_EVENTS
SLOW_SUBSCRIBER = gateway_pb2.SLOW_SUBSCRIBER
WORKER_DISCONNECTED = gateway_pb2.WORKER_DISCONNECTED
WORKER_OVERRUN = gateway_pb2.WORKER_OVERRUN


class Many(Distributor):
    """Core's distributor without the one-external cap, with resume (as fanout's)."""

    max_external = None
    supports_replay = True


class Harness(DistributorHarness):
    """Core's distributor (``many=False``) or :class:`Many`, with a ring of ``retain``."""

    def __init__(self, *, retain: int = 0, many: bool = True, **kw: Any) -> None:
        super().__init__(Many if many else Distributor, log=EventLog(retain), **kw)


async def witness(seconds: float) -> None:
    """Returns once a stall timer of ``seconds``, armed now, has fired."""
    w = Harness(stall_timeout=seconds, many=False)
    w.sub()
    w.publish_to_grant()
    await w.until(lambda: bool(w.released))


async def take(sub: Subscription, max_events: int = 100_000) -> tuple[Gap | None, list[int]]:
    gap, got = await sub.next(max_events)
    return gap, [e.sequence for e in got]


async def drain(sub: Subscription) -> list[int]:
    """Everything there is now (the subscription stays open)."""
    out: list[int] = []
    while sub.backlog or sub.pending_gap:
        _gap, got = await take(sub)
        out += got
    return out


# -- cursors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "paces"), [
    ({}, True), ({"skip": True}, False), ({"external": False}, False),
    ({"policy": "disconnect_subscriber"}, True)])
def test_external_subscriptions_that_do_not_skip_pace(kw, paces):
    assert Subscription(**kw).paces is paces


@pytest.mark.asyncio
async def test_a_batch_of_any_size_fits_a_subscriber_that_is_not_behind():
    h = Harness(capacity=200)
    subs = [h.sub(subscriber_id=f"c{i}") for i in range(3)]
    h.publish(1024)
    assert h.overflows == [] and not any(s.ended for s in subs)
    assert [s.backlog for s in subs] == [1024, 1024, 1024]
    got = [await subs[i].next(4096) for i in range(3)]
    for gap, events in got:
        assert gap is None and [e.sequence for e in events] == list(range(1, 1025))
    # cursors into one log: every subscriber is handed the very same event objects
    assert all(a is b is c for a, b, c in zip(*(events for _, events in got), strict=True))
    assert len(h.dist.log) == min(1024, h.dist.log.retain)  # read by all: only the ring


@pytest.mark.asyncio
async def test_a_waiting_reader_wakes_on_publish():
    h = Harness()
    sub = h.sub()
    reader = asyncio.create_task(take(sub))
    await asyncio.sleep(0)  # let it start waiting (a yield, not a timing guess)
    assert not reader.done()
    h.publish(3)
    assert await reader == (None, [1, 2, 3])


# -- grants -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_first_pacer_is_granted_a_window_past_the_newest_event():
    h = Harness(capacity=100_000)
    h.publish(5)
    assert h.grants == [] and h.dist.granted is None
    h.sub()
    assert h.grants == [W] and h.credits == [5 + W]  # a window past the newest event
    h.sub()  # a second live pacer at the same head changes nothing (capacity >= window)
    assert h.grants == [W]


@pytest.mark.asyncio
async def test_a_resumed_pacer_is_granted_a_window_past_its_resume_point():
    h = Harness(retain=100, capacity=100_000)
    h.publish(50)
    sub = h.sub(after_sequence=10)
    assert h.grants == [W - 40] and h.credits == [10 + W]
    assert await take(sub) == (None, list(range(11, 51)))
    assert h.credits == [10 + W]  # 40 more is less than a quarter window


@pytest.mark.asyncio
async def test_the_grant_grows_by_a_quarter_window_or_when_used_up():
    h = Harness(capacity=100_000)
    sub = h.sub()
    h.publish(3000)
    assert await take(sub, W // 4 - 1) == (None, list(range(1, W // 4)))
    assert h.credits == [W]  # grew by less than a quarter window: not worth a frame
    await take(sub, 1)
    assert h.credits == [W, W // 4 + W] and h.grants == [W, W // 4 + W - 3000]
    h.publish_to_grant()  # the worker uses up its credit
    assert h.dist.last_sequence == W // 4 + W
    await take(sub, 1)  # now even one event is worth a grant
    assert h.credits == [W, W // 4 + W, W // 4 + 1 + W] and h.grants[-1] == 1


@pytest.mark.asyncio
async def test_a_small_window_grows_by_one_event():
    h = Harness()
    h.publish(1, event_bytes=PACE_WINDOW_BYTES // 8)
    assert h.dist.window == 8
    sub = h.sub()
    assert h.credits == [1 + 8]
    h.publish_to_grant(PACE_WINDOW_BYTES // 8)
    await take(sub, 1)  # used up: grows by one
    assert h.credits == [9, 10]
    h.publish_to_grant(PACE_WINDOW_BYTES // 8)
    await take(sub, 1)  # and again
    assert h.credits == [9, 10, 11]
    await take(sub, 3)
    assert h.credits == [9, 10, 11, 6 + 8] and h.grants == [8, 1, 1, 4]


@pytest.mark.asyncio
async def test_only_the_fastest_pacer_moves_the_grant():
    h = Harness(capacity=100_000)
    a, b = h.sub(), h.sub()
    assert h.credits == [W]
    h.publish(4000)
    await take(a, 3000)
    assert h.credits == [W, 3000 + W]
    await take(b, 3000)  # catching up with the head moves nothing
    assert h.credits == [W, 3000 + W]
    h.publish(3000)
    await take(b, 4000)  # b leads now
    assert h.credits == [W, 3000 + W, 7000 + W]


@pytest.mark.asyncio
async def test_a_pacer_attaching_ahead_raises_the_grant_and_one_resuming_behind_does_not():
    h = Harness(capacity=100_000, retain=100_000)
    h.sub()
    h.publish(3000)  # nobody has read any of it
    assert h.credits == [W]
    h.sub()  # live at 3000: the fastest pacer now
    assert h.credits == [W, 3000 + W] and h.grants == [W, W]
    h.sub(after_sequence=0)
    assert h.credits == [W, 3000 + W]


@pytest.mark.asyncio
async def test_pacers_leaving_recompute_the_grant_and_the_last_one_frees_the_worker():
    h = Harness(capacity=100_000)
    a, b = h.sub(), h.sub()
    h.publish(3000)
    await take(a, 3000)
    assert h.credits == [W, 3000 + W]
    h.dist.unsubscribe(a)  # b is the head now, still at 0
    assert h.credits == [W, 3000 + W, W]
    h.dist.unsubscribe(b)
    assert h.credits == [W, 3000 + W, W, None] and h.dist.granted is None
    h.sub()
    assert h.credits[-1] == 3000 + W and h.grants[-1] == W


@pytest.mark.asyncio
async def test_a_slower_pacer_that_keeps_up_holds_the_worker_to_capacity_past_itself():
    h = Harness(capacity=100)
    fast = h.sub()
    assert h.credits == [W]
    slower = h.sub()
    assert h.credits == [W, 100]  # not a window: capacity past the slower one
    h.publish_to_grant()
    assert len(await drain(fast)) == 100
    assert h.credits == [W, 100]  # fast is a window ahead, but slower holds the worker
    assert await take(slower, 50) == (None, list(range(1, 51)))
    assert h.credits == [W, 100, 150]
    h.publish_to_grant()
    assert not slower.ended and h.released == [] and h.overflows == []


@pytest.mark.asyncio
async def test_a_slower_pacer_that_stops_taking_stops_holding_then_falls_behind_alone():
    h = Harness(capacity=100, stall_timeout=0.05)
    fast, stopped = h.sub(subscriber_id="fast"), h.sub(subscriber_id="stopped")
    h.publish_to_grant()
    assert h.credits == [W, 100]
    assert len(await drain(fast)) == 100
    await h.until(lambda: len(h.credits) > 2)  # stopped took nothing for a while
    assert h.credits == [W, 100, 100 + W] and not stopped.ended
    h.publish(1)
    assert len(await drain(fast)) == 1
    h.publish(1)  # stopped is capacity + 1 behind the head now: cut alone
    assert h.released == [(stopped, "overflow")] and not fast.ended and h.faults == []
    assert "more than 100 events behind" in stopped.error.message


@pytest.mark.asyncio
async def test_a_pacer_that_had_nothing_to_take_is_not_idle_when_events_come():
    h = Harness(capacity=100, stall_timeout=0.05)
    fast, caught_up = h.sub(), h.sub()
    await witness(0.15)  # both have had nothing to take for three stall timeouts
    h.publish_to_grant()
    assert len(await drain(fast)) == 100
    assert h.credits == [W, 100]  # caught_up holds the worker from the publish on
    assert await take(caught_up, 40) == (None, list(range(1, 41)))
    assert h.credits == [W, 100, 140]


@pytest.mark.asyncio
async def test_a_pacer_already_more_than_capacity_behind_does_not_hold_the_worker():
    h = Harness(capacity=100, retain=100_000)
    h.publish(1000)
    h.sub()
    replaying = h.sub(after_sequence=0)
    assert h.credits == [1000 + W]
    assert len((await take(replaying, 10))[1]) == 10
    assert h.credits == [1000 + W] and not replaying.ended


@pytest.mark.asyncio
async def test_skip_and_internal_subscribers_never_pace():
    h = Harness(capacity=100_000)
    subs = [h.sub(skip=True), h.sub(external=False, kind="mirror"),
            h.sub(skip=True, external=False, kind="sampler")]
    for _ in range(4):
        h.publish(5000)
        for sub in subs:
            assert len(await drain(sub)) == 5000
    for sub in subs:
        h.dist.unsubscribe(sub)
    assert h.grants == [] and h.dist.granted is None


def test_large_events_shrink_the_window():
    h = Harness()
    h.publish(10, event_bytes=100)
    assert h.dist.window == W  # small events: clamped to the event count
    h = Harness()
    h.publish(10, event_bytes=1 << 20)
    assert h.dist.window == PACE_WINDOW_BYTES // (1 << 20) == 4
    h.publish(10, event_bytes=9 << 20)  # moving average: 1 MiB + (9 - 1) / 8 MiB
    assert h.dist.window == 2
    h.publish(1, event_bytes=1 << 40)
    assert h.dist.window == 1  # never below one event


@pytest.mark.asyncio
async def test_a_pacer_attaching_after_large_events_gets_the_smaller_window():
    h = Harness()
    h.publish(3, event_bytes=PACE_WINDOW_BYTES // 16)
    h.sub()
    assert h.credits == [3 + 16]


# -- laggards -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_laggard_more_than_capacity_behind_the_head_is_disconnected():
    h = Harness(capacity=10)
    head, slow = h.sub(subscriber_id="head"), h.sub(subscriber_id="slow")
    h.publish(10)
    await drain(head)
    h.publish(1)  # slow is exactly capacity behind the head: kept
    assert not slow.ended
    await drain(head)
    h.publish(1)  # capacity + 1 behind: out
    assert slow.ended and h.released == [(slow, "overflow")]
    assert h.overflows == ["grpc-event-stream"] and h.faults == []
    with pytest.raises(ResourceExhausted) as raised:
        await slow.next(10)
    assert raised.value.message.startswith(OVERFLOW_MESSAGE)
    assert "more than 10 events behind" in raised.value.message
    assert await drain(head) == [12] and not head.ended


@pytest.mark.asyncio
async def test_fail_fast_laggard_with_another_external_subscriber_is_only_disconnected():
    h = Harness(capacity=10, policy="fail_fast")
    head, slow = h.sub(), h.sub()
    h.publish(20)
    await drain(head)
    h.publish(1)
    assert slow.ended and isinstance(slow.error, ResourceExhausted)
    assert h.faults == [] and not head.ended


@pytest.mark.asyncio
async def test_a_skipping_laggard_gets_a_slow_gap_then_the_newest_capacity_events():
    h = Harness(capacity=4)
    head, skipper = h.sub(), h.sub(skip=True)
    h.publish(10)
    await drain(head)
    h.publish(1)  # skipper is 10 behind the head (index 10)
    assert not skipper.ended and skipper.skipped == 6
    assert h.overflows == ["grpc-event-stream"] and h.released == []
    assert await take(skipper) == (Gap(0, 7, SLOW_SUBSCRIBER), [7, 8, 9, 10, 11])
    h.publish(1)
    assert await take(skipper) == (None, [12])


@pytest.mark.parametrize("policy", ["fail_fast", "disconnect_subscriber"])
@pytest.mark.asyncio
async def test_a_lone_pacer_is_the_head_so_capacity_never_cuts_it(policy):
    h = Harness(capacity=5, policy=policy)
    only = h.sub()
    h.publish(1000)
    assert not only.ended and h.faults == [] and h.overflows == []
    assert await drain(only) == list(range(1, 1001))


@pytest.mark.asyncio
async def test_an_internal_subscriber_is_cut_alone_behind_the_newest_event():
    h = Harness(capacity=5, policy="fail_fast")
    mirror = h.sub(external=False, kind="mirror")
    h.publish(6)  # no pacer: the head is the newest event
    assert mirror.ended and h.faults == [] and h.overflows == ["mirror"]
    assert h.released == [(mirror, "overflow")]


@pytest.mark.asyncio
async def test_a_laggard_is_kept_while_the_retention_still_holds_its_next_event():
    h = Harness(capacity=10, retain=100)
    h.publish(100)
    head = h.sub()
    replaying = h.sub(after_sequence=0)
    assert await take(replaying, 50) == (None, list(range(1, 51)))
    h.publish(50)  # replaying is 50 behind the head, but event 51 is still retained
    assert not replaying.ended
    await drain(head)
    h.publish(1)  # now event 51 falls out of the retention
    assert replaying.ended and h.released == [(replaying, "overflow")]
    assert await drain(head) == [151]


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_after_everyone_has_read_the_log_keeps_only_the_retention():
    h = Harness(retain=10)
    subs = [h.sub(), h.sub(external=False, kind="mirror")]
    h.publish(100)
    for sub in subs:
        assert await drain(sub) == list(range(1, 101))
    assert len(h.dist.log) <= 10


@pytest.mark.asyncio
async def test_the_log_holds_only_the_unread_batch_and_the_retention_while_publishing():
    h = Harness(retain=10)
    subs = [h.sub(), h.sub(external=False, kind="mirror")]
    for _ in range(50):
        h.publish(1000)
        assert len(h.dist.log) == 1000  # the batch nobody has read yet (retain < batch)
        for sub in subs:
            assert len(await drain(sub)) == 1000
    h.publish(1)
    assert len(h.dist.log) == 10 and h.dist.log.end == 50_001


@pytest.mark.asyncio
async def test_a_stalled_subscriber_pins_at_most_capacity_plus_the_unread_head():
    h = Harness(capacity=300)
    head, stalled = h.sub(), h.sub()
    pinned: list[int] = []
    for _ in range(100):
        h.publish(100)
        log_ = h.dist.log
        assert len(log_) <= h.dist.capacity + (log_.end - head.cursor)
        pinned.append(len(log_))
        if stalled.ended:
            break
        assert len(await drain(head)) == 100
    assert stalled.ended and pinned == [100, 200, 300, 400, 100]  # cut at the 5th


# -- stalls ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_stalled_lone_pacer_is_disconnected_after_the_timeout():
    h = Harness(stall_timeout=0.05, many=False)
    sub = h.sub()
    h.publish_to_grant()  # the worker waits on sub now
    await h.until(lambda: bool(h.released))
    assert h.released == [(sub, "overflow")] and h.faults == []
    assert h.overflows == ["grpc-event-stream"]
    assert h.grants == [W, None]  # nobody paces: the worker runs free
    with pytest.raises(ResourceExhausted) as raised:
        await sub.next(10)
    assert raised.value.message.startswith(OVERFLOW_MESSAGE)
    assert "took no event for 0.05 s" in raised.value.message


@pytest.mark.asyncio
async def test_a_stalled_lone_fail_fast_pacer_faults_the_session():
    h = Harness(stall_timeout=0.05, policy="fail_fast", many=False)
    sub = h.sub()
    mirror = h.sub(external=False, kind="mirror")  # internal: does not count
    h.publish_to_grant()
    await h.until(lambda: bool(h.faults))
    assert len(h.faults) == 1 and h.faults[0].startswith(OVERFLOW_MESSAGE)
    assert "took no event" in h.faults[0]
    assert not sub.ended and not mirror.ended and h.released == []


@pytest.mark.asyncio
async def test_a_stalled_pacer_that_asked_for_disconnect_is_not_a_fail_fast_fault():
    h = Harness(stall_timeout=0.05, policy="fail_fast", many=False)
    sub = h.sub(policy="disconnect_subscriber")
    h.publish_to_grant()
    await h.until(lambda: bool(h.released))
    assert h.faults == [] and isinstance(sub.error, ResourceExhausted)


@pytest.mark.asyncio
async def test_a_pacer_is_not_judged_while_the_worker_has_credit_left():
    h = Harness(stall_timeout=0.05)
    sub = h.sub()
    h.publish(W - 1)  # one event of credit left: the worker is not waiting
    await witness(0.25)
    assert not sub.ended and h.released == [] and h.faults == []


@pytest.mark.asyncio
async def test_a_pacer_that_keeps_taking_is_never_cut_and_only_the_fastest_is_judged():
    big = PACE_WINDOW_BYTES // 4  # a window of 4 events: one take, one grant
    h = Harness(stall_timeout=0.05, capacity=10**7)
    h.publish(1, event_bytes=big)
    fast, slow = h.sub(subscriber_id="fast"), h.sub(subscriber_id="slow")
    h.publish_to_grant(big)
    done = asyncio.create_task(witness(0.25))
    rounds = 0
    while not done.done():
        # the worker sits at its grant at every yield; fast takes one event a round
        assert h.published == h.credit
        assert len((await take(fast, 1))[1]) == 1
        h.publish_to_grant(big)
        rounds += 1
        await asyncio.sleep(0)
    await done
    assert rounds > 10 and h.released == [] and h.faults == []
    assert not fast.ended and not slow.ended  # slow took nothing, but it is not the head
    # fast stops taking: it is the one judged (slow is cut after, once it leads)
    await h.until(lambda: len(h.released) == 2)
    assert h.released == [(fast, "overflow"), (slow, "overflow")]
    # slow's grant, its position + the window, is below what was sent: nothing more
    assert h.grants[-2:] == [0, None] and h.credits[-2] == h.published


@pytest.mark.asyncio
async def test_after_the_stalled_head_is_cut_the_next_pacer_is_granted_then_none():
    size = PACE_WINDOW_BYTES // 8  # window 8
    h = Harness(stall_timeout=0.05, capacity=1000)
    h.publish(1, event_bytes=size)
    a, b = h.sub(subscriber_id="a"), h.sub(subscriber_id="b")
    assert h.credits == [9]
    h.publish_to_grant(size)
    assert await take(a, 4) == (None, [2, 3, 4, 5])
    h.publish_to_grant(size)
    assert await take(b, 2) == (None, [2, 3])
    assert h.credits == [9, 13] and h.dist.last_sequence == 13
    await h.until(lambda: len(h.released) == 1)
    # recomputed from b's position: 3 + 8 = 11, below the 13 already sent: 0 more
    assert h.released == [(a, "overflow")] and h.grants == [8, 4, 0]
    assert h.dist.granted == 3 + 8 and not b.ended
    await h.until(lambda: len(h.released) == 2)  # b leads now, and takes nothing either
    assert h.released[1] == (b, "overflow") and h.grants == [8, 4, 0, None]


# -- holes ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_hole_is_announced_in_place_before_the_first_event_after_it():
    h = Harness()
    early = h.sub()
    h.publish(5)
    assert await take(early, 2) == (None, [1, 2])
    late = h.sub()  # live at 5
    h.dist.publish_hole(5, 9, WORKER_OVERRUN)
    h.dist.publish([Event(sequence=9), Event(sequence=10)])
    assert await take(early) == (None, [3, 4, 5])  # the batch stops at the hole
    assert await take(early) == (Gap(5, 9, WORKER_OVERRUN), [9, 10])
    assert await take(late) == (Gap(5, 9, WORKER_OVERRUN), [9, 10])
    assert early.backlog == late.backlog == 0 and early.pending_gap is None


@pytest.mark.asyncio
async def test_a_batch_is_cut_at_every_hole():
    h = Harness()
    sub = h.sub()
    h.publish(2)
    h.dist.publish_hole(2, 5, WORKER_DISCONNECTED)
    h.dist.publish([Event(sequence=5), Event(sequence=6)])
    h.dist.publish_hole(6, 9, WORKER_DISCONNECTED)
    h.dist.publish([Event(sequence=9)])
    assert await take(sub) == (None, [1, 2])
    assert await take(sub) == (Gap(2, 5, WORKER_DISCONNECTED), [5, 6])
    assert await take(sub) == (Gap(6, 9, WORKER_DISCONNECTED), [9])
    assert sub.backlog == 0 and sub.pending_gap is None


# -- close ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_drains_every_backlog_then_ends_cleanly():
    h = Harness(many=False)
    stream, mirror = h.sub(), h.sub(external=False, kind="mirror")
    h.publish(2)
    h.dist.publish_hole(2, 5, WORKER_DISCONNECTED)
    h.dist.publish([Event(sequence=5)])
    h.dist.close()
    assert stream.ended and mirror.ended and h.dist.external_count == 0
    assert h.released == [(stream, "session ended"), (mirror, "session ended")]
    for sub in (stream, mirror):
        assert await take(sub) == (None, [1, 2])
        assert await take(sub) == (Gap(2, 5, WORKER_DISCONNECTED), [5])
        assert await sub.next(10) is None
        assert await sub.next(10) is None


@pytest.mark.asyncio
async def test_no_grant_after_close_while_the_backlog_drains():
    h = Harness(many=False)
    sub = h.sub()
    h.publish_to_grant()  # the worker used up its credit
    h.dist.close()
    assert len(await drain(sub)) == W and await sub.next(10) is None
    assert h.grants == [W]


@pytest.mark.asyncio
async def test_close_with_an_error_raises_it_after_the_backlog():
    h = Harness(many=False)
    sub = h.sub()
    h.publish(3)
    error = Unavailable("session s1 faulted: test")
    h.dist.close(error)
    assert await take(sub) == (None, [1, 2, 3])
    with pytest.raises(Unavailable) as raised:
        await sub.next(10)
    assert raised.value is error


@pytest.mark.asyncio
async def test_close_wakes_a_waiting_reader():
    h = Harness(many=False)
    sub = h.sub()
    reader = asyncio.create_task(sub.next(10))
    await asyncio.sleep(0)  # let it start waiting (a yield, not a timing guess)
    h.dist.close()
    assert await reader is None


@pytest.mark.asyncio
async def test_after_close_publish_is_ignored_and_subscribe_fails():
    h = Harness(many=False)
    h.publish(2)
    h.dist.close()
    h.dist.close()  # idempotent
    h.publish(2)
    assert h.dist.log.end == 2 and h.dist.last_sequence == 2
    with pytest.raises(FailedPrecondition, match="has ended"):
        h.sub()
