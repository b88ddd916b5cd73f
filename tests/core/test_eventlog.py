"""The event log's replay edges (what the fanout plugin's replay ring used to answer):
capacity and age retention (injected clock), retain 0, floors, worker holes, huge
sequences, and the index arithmetic behind trimming.

Resumes go through a replaying distributor where that is the natural API: a resumed
subscription's first ``next()`` carries the gap.
"""

from __future__ import annotations

from typing import Any

import pytest

from sessiongate.core.streaming.events import MAX_HOLES, Distributor, EventLog, Gap, Subscription
from sessiongate.v1 import gateway_pb2
from sessiongate.v1.gateway_pb2 import Event

EVICTED = gateway_pb2.EVICTED
EXPIRED = gateway_pb2.EXPIRED
WORKER_DISCONNECTED = gateway_pb2.WORKER_DISCONNECTED
GATEWAY_RESTARTED = gateway_pb2.GATEWAY_RESTARTED


def events(first: int, last: int) -> list[Event]:
    return [Event(sequence=s) for s in range(first, last + 1)]


def seqs(items: list[Any]) -> list[int]:
    return [e.sequence for e in items]


def filled(retain: int, first: int, last: int, **kw: Any) -> EventLog:
    """A log holding ``first..last`` with nobody reading: trimmed to its retention."""
    log = EventLog(retain, **kw)
    log.append(events(first, last))
    log.trim(log.replay_start())
    return log


def with_a_hole(retain: int) -> EventLog:
    """Events 1..3, then a worker hole (4..7 lost), then 8 and 9; nothing trimmed yet."""
    log = EventLog(retain)
    log.append(events(1, 3))
    log.add_hole(Gap(3, 8, WORKER_DISCONNECTED))
    log.append(events(8, 9))
    return log


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replaying(Distributor):
    """Core's distributor with resume enabled and no subscriber cap (as fanout's)."""

    max_external = None
    supports_replay = True


def distributor(log: EventLog) -> Replaying:
    return Replaying(session_id="s", capacity=1000, policy="disconnect_subscriber",
                     fault_session=lambda reason: None, on_release=lambda sub, reason: None,
                     stall_timeout=0, log=log)


async def read(sub: Subscription, max_events: int = 1000) -> tuple[Gap | None, list[int]]:
    gap, got = await sub.next(max_events)
    return gap, seqs(got)


# -- EventLog directly ------------------------------------------------------------------


def test_empty_log_has_nothing_and_no_gap():
    log = EventLog(8)
    assert log.locate(0) == (0, None)
    assert len(log) == 0 and log.read(0, 10) == []


def test_everything_retained_replays_without_gap():
    log = filled(8, 1, 5)
    assert len(log) == 5 and (log.start, log.end) == (0, 5)
    assert log.locate(0) == (0, None)
    assert seqs(log.read(0, 100)) == [1, 2, 3, 4, 5]
    index, gap = log.locate(3)
    assert (index, gap) == (3, None) and seqs(log.read(index, 100)) == [4, 5]


@pytest.mark.parametrize("cursor", [5, 6, 2**64 - 1])
def test_cursor_at_or_past_newest_gets_nothing(cursor):
    log = filled(8, 1, 5)
    assert log.locate(cursor) == (5, None)
    assert log.read(5, 10) == []


def test_capacity_eviction_reports_evicted_gap_with_oldest_available():
    log = filled(4, 1, 10)
    assert len(log) == 4 and log.start == 6
    index, gap = log.locate(2)
    assert gap == Gap(2, 7, EVICTED)
    assert index == 6 and seqs(log.read(index, 100)) == [7, 8, 9, 10]


def test_cursor_just_below_oldest_has_no_gap_and_two_below_has_one():
    log = filled(4, 1, 10)
    assert log.locate(6) == (6, None)
    assert log.locate(5) == (6, Gap(5, 7, EVICTED))


def test_retain_zero_keeps_nothing_and_reports_a_gap_to_what_comes_next():
    log = filled(0, 1, 3)
    assert len(log) == 0 and log.end == 3
    assert log.locate(1) == (3, Gap(1, 4, EVICTED))
    assert log.locate(3) == (3, None)


def test_age_eviction_with_injected_clock():
    clock = Clock()
    log = EventLog(100, 10, clock)
    log.append(events(1, 3))
    clock.now += 6
    log.append(events(4, 5))
    assert log.replay_start() == 0
    clock.now += 5  # the first batch is now 11 s old, the second 5 s
    assert log.replay_start() == 3
    log.trim(log.replay_start())
    assert seqs(log.read(log.start, 100)) == [4, 5]
    assert log.locate(0) == (3, Gap(0, 4, EXPIRED))
    clock.now += 100
    log.trim(log.replay_start())
    assert len(log) == 0
    assert log.locate(3) == (5, Gap(3, 6, EXPIRED))


def test_age_bookkeeping_is_bounded_by_what_the_log_holds_not_by_the_rate():
    """One event per batch for far longer than the ring holds, all within max_age: the
    per-batch stamps of evicted events go with them (memory grew with the event rate)."""
    clock = Clock()
    log = EventLog(16, 300, clock)
    for sequence in range(1, 10_001):
        log.append(events(sequence, sequence))
        log.trim(log.replay_start())
        clock.now += 0.001
    assert seqs(log.read(log.start, 100)) == list(range(9985, 10_001))
    assert len(log._stamps) <= 16
    clock.now += 300  # and age eviction still works on what is left
    log.trim(log.replay_start())
    assert len(log) == 0


def test_an_event_exactly_max_age_old_has_expired():
    clock = Clock()
    log = EventLog(100, 10, clock)
    log.append(events(1, 2))
    clock.now += 9.5
    assert log.replay_start() == 0
    clock.now += 0.5
    assert log.replay_start() == 2


def test_count_eviction_wins_over_a_younger_age_limit():
    clock = Clock()
    log = EventLog(3, 60, clock)
    log.append(events(1, 10))
    clock.now += 1
    log.trim(log.replay_start())
    assert seqs(log.read(log.start, 100)) == [8, 9, 10]
    assert log.locate(1) == (7, Gap(1, 8, EVICTED))


def test_sequences_near_the_top_of_uint64_do_not_wrap():
    top = 2**64 - 1
    log = filled(4, top - 5, top)
    index, gap = log.locate(top - 3)
    assert gap is None and seqs(log.read(index, 10)) == [top - 2, top - 1, top]
    assert log.locate(top) == (log.end, None)
    assert log.locate(top - 10) == (log.start, Gap(top - 10, top - 3, EVICTED))
    assert log.sequence_at(log.end) == top + 1  # a Python int: no wrap to 0


def test_rebuilt_log_reports_its_floor_reason():
    log = EventLog(10)
    log.set_floor(20, GATEWAY_RESTARTED)
    assert log.newest == 20 and log.locate(5) == (0, Gap(5, 21, GATEWAY_RESTARTED))
    log.append(events(21, 22))
    index, gap = log.locate(5)
    assert gap == Gap(5, 21, GATEWAY_RESTARTED) and seqs(log.read(index, 10)) == [21, 22]
    assert log.locate(20) == (0, None)


def test_a_lower_floor_set_later_wins():
    log = EventLog(10)
    log.set_floor(20, GATEWAY_RESTARTED)
    log.set_floor(15, WORKER_DISCONNECTED)  # the worker's history (16..20) came after
    log.append(events(16, 20))
    assert log.newest == 20
    assert log.locate(3) == (0, Gap(3, 16, WORKER_DISCONNECTED))
    assert log.locate(15) == (0, None)


def test_worker_hole_inside_the_retained_range():
    log = with_a_hole(retain=20)
    assert log.holes == {3: Gap(3, 8, WORKER_DISCONNECTED)}
    assert log.locate(1) == (1, None)  # the reader meets the hole in place
    assert log.locate(3) == (3, Gap(3, 8, WORKER_DISCONNECTED))
    assert log.locate(5) == (3, Gap(5, 8, WORKER_DISCONNECTED))  # a cursor inside the hole
    assert log.locate(8) == (4, None)


def test_a_hole_at_the_oldest_retained_event_names_eviction_or_the_hole():
    log = with_a_hole(retain=2)
    log.trim(log.replay_start())
    assert seqs(log.read(log.start, 10)) == [8, 9] and log.holes == {
        3: Gap(3, 8, WORKER_DISCONNECTED)}
    assert log.locate(1) == (3, Gap(1, 8, EVICTED))  # 2 and 3 were evicted
    assert log.locate(3) == (3, Gap(3, 8, WORKER_DISCONNECTED))
    assert log.locate(5) == (3, Gap(5, 8, WORKER_DISCONNECTED))


def test_trimming_forgets_holes_below_the_oldest_event():
    log = EventLog(0)
    log.append(events(1, 2))
    log.add_hole(Gap(2, 5, WORKER_DISCONNECTED))
    log.append(events(5, 6))
    log.add_hole(Gap(6, 9, WORKER_DISCONNECTED))
    log.append(events(9, 9))
    log.trim(2)
    assert log.holes == {2: Gap(2, 5, WORKER_DISCONNECTED), 4: Gap(6, 9, WORKER_DISCONNECTED)}
    log.trim(3)
    assert log.holes == {4: Gap(6, 9, WORKER_DISCONNECTED)}


def test_holes_are_bounded():
    log = EventLog(0)
    for i in range(MAX_HOLES + 1):
        log.append(events(3 * i + 1, 3 * i + 1))
        log.add_hole(Gap(3 * i + 1, 3 * i + 4, WORKER_DISCONNECTED))
    assert len(log.holes) == MAX_HOLES
    assert min(log.holes) == 2 and max(log.holes) == MAX_HOLES + 1


def test_trim_clamps_to_what_it_holds_and_never_goes_back():
    log = EventLog(0)
    log.append(events(1, 5))
    log.trim(2)
    assert (log.start, log.end, len(log)) == (2, 5, 3)
    log.trim(1)  # below start: nothing happens
    assert (log.start, len(log)) == (2, 3)
    log.trim(99)  # past the end: everything goes, the end stays
    assert (log.start, log.end, len(log)) == (5, 5, 0)
    log.append(events(6, 7))
    assert seqs(log.read(5, 10)) == [6, 7] and log.locate(5) == (5, None)


def test_indexes_survive_compaction():
    log = EventLog(0)
    log.append(events(1, 3000))
    log.trim(2000)  # enough dead entries to compact the list
    assert (log.start, log.end, len(log)) == (2000, 3000, 1000)
    assert seqs(log.read(2000, 3)) == [2001, 2002, 2003]
    assert log.sequence_at(2999) == 3000 and log.sequence_at(3000) == 3001
    assert log.locate(2500) == (2500, None)
    assert log.locate(10) == (2000, Gap(10, 2001, EVICTED))
    log.append(events(3001, 3002))
    log.trim(2999)
    assert seqs(log.read(2999, 10)) == [3000, 3001, 3002]
    assert log.locate(3000) == (3000, None)


def test_removed_reason_follows_what_trimmed_last():
    clock = Clock()
    log = EventLog(2, 10, clock)
    log.append(events(1, 5))
    log.trim(log.replay_start())  # by count
    assert log.removed_reason == EVICTED
    clock.now += 10
    log.trim(log.replay_start())  # by age
    assert log.removed_reason == EXPIRED and len(log) == 0


# -- resumed subscriptions (the gap comes first) --------------------------------------


@pytest.mark.asyncio
async def test_resume_after_capacity_eviction_starts_with_the_evicted_gap():
    dist = distributor(EventLog(4))
    dist.publish(events(1, 10))
    sub = dist.subscribe(Subscription(external=False), after_sequence=2)
    assert await read(sub) == (Gap(2, 7, EVICTED), [7, 8, 9, 10])
    dist.publish(events(11, 11))
    assert await read(sub) == (None, [11])


@pytest.mark.asyncio
async def test_resume_after_age_expiry_starts_with_the_expired_gap():
    clock = Clock()
    dist = distributor(EventLog(100, 10, clock))
    dist.publish(events(1, 3))
    clock.now += 6
    dist.publish(events(4, 5))
    clock.now += 5
    sub = dist.subscribe(Subscription(external=False), after_sequence=0)
    assert await read(sub, 1) == (Gap(0, 4, EXPIRED), [4])
    clock.now += 100
    late = dist.subscribe(Subscription(external=False), after_sequence=4)
    assert await read(late) == (None, [5])  # expired, but pinned by sub (not read yet)
    dist.unsubscribe(sub)
    dist.unsubscribe(late)
    again = dist.subscribe(Subscription(external=False), after_sequence=3)
    assert await read(again) == (Gap(3, 6, EXPIRED), [])


@pytest.mark.asyncio
async def test_resume_with_retain_zero_gets_a_gap_to_the_next_event():
    dist = distributor(EventLog(0))
    dist.publish(events(1, 3))
    assert len(dist.log) == 0
    sub = dist.subscribe(Subscription(external=False), after_sequence=1)
    assert await read(sub) == (Gap(1, 4, EVICTED), [])
    dist.publish(events(4, 5))
    assert await read(sub) == (None, [4, 5])


@pytest.mark.asyncio
async def test_resume_at_the_newest_gets_nothing_until_the_next_event():
    dist = distributor(EventLog(8))
    dist.publish(events(1, 5))
    sub = dist.subscribe(Subscription(external=False), after_sequence=5)
    assert sub.backlog == 0 and sub.pending_gap is None
    dist.publish(events(6, 6))
    assert await read(sub) == (None, [6])


@pytest.mark.asyncio
async def test_resume_near_the_top_of_uint64():
    top = 2**64 - 1
    dist = distributor(EventLog(4))
    dist.publish(events(top - 5, top))
    sub = dist.subscribe(Subscription(external=False), after_sequence=top - 10)
    assert await read(sub) == (Gap(top - 10, top - 3, EVICTED), [top - 3, top - 2, top - 1, top])
    done = dist.subscribe(Subscription(external=False), after_sequence=top)
    assert done.backlog == 0 and done.pending_gap is None


@pytest.mark.asyncio
async def test_resume_below_a_restored_floor_names_the_floor_reason():
    dist = distributor(EventLog(10))
    dist.restore([], floor=20, reason=GATEWAY_RESTARTED)
    assert dist.last_sequence == 20
    dist.publish(events(21, 22))
    sub = dist.subscribe(Subscription(external=False), after_sequence=5)
    assert await read(sub) == (Gap(5, 21, GATEWAY_RESTARTED), [21, 22])
    at_floor = dist.subscribe(Subscription(external=False), after_sequence=20)
    assert await read(at_floor) == (None, [21, 22])


@pytest.mark.asyncio
async def test_restored_history_lowers_the_floor():
    dist = distributor(EventLog(10))
    dist.restore([], floor=20, reason=GATEWAY_RESTARTED)
    dist.restore(events(16, 20), floor=15, reason=WORKER_DISCONNECTED)
    assert dist.last_sequence == 20
    sub = dist.subscribe(Subscription(external=False), after_sequence=2)
    assert await read(sub) == (Gap(2, 16, WORKER_DISCONNECTED), [16, 17, 18, 19, 20])


@pytest.mark.asyncio
async def test_resume_reads_a_worker_hole_in_place_and_a_cursor_inside_it_gets_its_gap():
    dist = distributor(EventLog(20))
    dist.publish(events(1, 3))
    dist.publish_hole(3, 8, WORKER_DISCONNECTED)
    dist.publish(events(8, 9))
    sub = dist.subscribe(Subscription(external=False), after_sequence=1)
    assert await read(sub) == (None, [2, 3])  # the batch ends at the hole
    assert await read(sub) == (Gap(3, 8, WORKER_DISCONNECTED), [8, 9])
    inside = dist.subscribe(Subscription(external=False), after_sequence=5)
    assert await read(inside) == (Gap(5, 8, WORKER_DISCONNECTED), [8, 9])


@pytest.mark.parametrize("sequence", [1, 127, 128, 300, 2**32, 2**63, 2**64 - 1])
def test_a_passed_through_event_keeps_its_sequence_and_bytes(sequence):
    """The gateway reads an encoded event's sequence without decoding it, and hands
    subscribers the worker's bytes unchanged."""
    from sessiongate.core.protocol import sequence_of
    from sessiongate.core.streaming.events import wire_from_bodies

    event = Event(sequence=sequence, kind="k", payload=b"p" * 5000)
    body = event.SerializeToString()
    assert sequence_of(body) == sequence
    [wire] = wire_from_bodies([body], [sequence])
    response = gateway_pb2.StreamEventsResponse.FromString(wire.data)
    assert list(response.events) == [event] and wire.event == event


@pytest.mark.parametrize("body", [b"", b"\x10\x01", b"\x08", b"\x08\xff\xff"])
def test_an_event_without_a_readable_sequence_reads_as_zero(body):
    """Zero is below every valid sequence: the session faults it as a protocol error."""
    from sessiongate.core.protocol import sequence_of

    assert sequence_of(body) == 0
