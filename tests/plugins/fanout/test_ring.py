"""Replay ring edges: capacity, age (injected clock), floor, holes, huge sequences."""

from __future__ import annotations

import pytest

from sessiongate.plugins.fanout.ring import ReplayRing
from sessiongate.v1 import gateway_pb2
from sessiongate.v1.gateway_pb2 import Event


def events(first: int, last: int) -> list[Event]:
    return [Event(sequence=s) for s in range(first, last + 1)]


def seqs(items) -> list[int]:
    return [e.sequence for e in items]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_empty_ring_has_nothing_and_no_gap():
    ring = ReplayRing(8, 0)
    assert ring.after(0) == (None, [], [])


def test_everything_retained_replays_without_gap():
    ring = ReplayRing(8, 0)
    ring.extend(events(1, 5))
    gap, out, holes = ring.after(0)
    assert gap is None and seqs(out) == [1, 2, 3, 4, 5] and holes == []
    assert seqs(ring.after(3)[1]) == [4, 5]


@pytest.mark.parametrize("cursor", [5, 6, 2**64 - 1])
def test_cursor_at_or_past_newest_gets_nothing(cursor):
    ring = ReplayRing(8, 0)
    ring.extend(events(1, 5))
    assert ring.after(cursor) == (None, [], [])


def test_capacity_eviction_reports_evicted_gap_with_oldest_available():
    ring = ReplayRing(4, 0)
    ring.extend(events(1, 10))
    gap, out, _ = ring.after(2)
    assert (gap.requested_after, gap.oldest_available, gap.reason) == (2, 7, gateway_pb2.EVICTED)
    assert seqs(out) == [7, 8, 9, 10]


def test_cursor_just_below_oldest_has_no_gap_and_two_below_has_one():
    ring = ReplayRing(4, 0)
    ring.extend(events(1, 10))
    assert ring.after(6)[0] is None
    gap = ring.after(5)[0]
    assert gap is not None and gap.oldest_available == 7 and gap.requested_after == 5


def test_capacity_zero_keeps_nothing_and_reports_a_gap_to_what_comes_next():
    ring = ReplayRing(0, 0)
    ring.extend(events(1, 3))
    gap, out, _ = ring.after(1)
    assert out == []
    assert (gap.requested_after, gap.oldest_available, gap.reason) == (1, 4, gateway_pb2.EVICTED)


def test_age_eviction_with_injected_clock():
    clock = Clock()
    ring = ReplayRing(100, 10, clock=clock)
    ring.extend(events(1, 3))
    clock.now += 6
    ring.extend(events(4, 5))
    clock.now += 5  # the first batch is now 11 s old, the second 5 s
    gap, out, _ = ring.after(0)
    assert seqs(out) == [4, 5]
    assert (gap.oldest_available, gap.reason) == (4, gateway_pb2.EXPIRED)
    clock.now += 100
    gap, out, _ = ring.after(3)
    assert out == [] and gap.reason == gateway_pb2.EXPIRED and gap.oldest_available == 6


def test_sequences_near_the_top_of_uint64_do_not_wrap():
    top = 2**64 - 1
    ring = ReplayRing(4, 0)
    ring.extend(events(top - 5, top))
    gap, out, _ = ring.after(top - 3)
    assert gap is None and seqs(out) == [top - 2, top - 1, top]
    assert ring.after(top) == (None, [], [])
    gap, out, _ = ring.after(top - 10)
    assert gap.oldest_available == top - 3


def test_rebuilt_ring_reports_its_floor_reason():
    ring = ReplayRing(10, 0)
    ring.start_at(20, gateway_pb2.GATEWAY_RESTARTED)
    ring.extend(events(21, 22))
    gap, out, _ = ring.after(5)
    assert (gap.oldest_available, gap.reason) == (21, gateway_pb2.GATEWAY_RESTARTED)
    assert seqs(out) == [21, 22]
    gap, out, _ = ring.after(20)
    assert gap is None and seqs(out) == [21, 22]


def test_worker_hole_inside_the_retained_range_is_announced_in_place():
    ring = ReplayRing(20, 0)
    ring.extend(events(1, 3))
    ring.add_hole(3, 8, gateway_pb2.WORKER_DISCONNECTED)
    ring.extend(events(8, 9))
    gap, out, holes = ring.after(1)
    assert gap is None and seqs(out) == [2, 3, 8, 9]
    assert [(f, g.requested_after, g.oldest_available, g.reason) for f, g in holes] == [
        (8, 3, 8, gateway_pb2.WORKER_DISCONNECTED)]
    gap, out, holes = ring.after(5)  # a cursor inside the hole
    assert (gap.oldest_available, gap.reason) == (8, gateway_pb2.WORKER_DISCONNECTED)
    assert seqs(out) == [8, 9] and holes == []
