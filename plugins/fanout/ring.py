"""The replay ring: a session's newest events, bounded by count and by age.

Asked "everything after sequence S", it answers with the retained events and,
when some of them are gone, a gap naming the oldest sequence still available
and why the rest went (``EVICTED`` by capacity, ``EXPIRED`` by age, or the
floor a rebuilt ring starts at, e.g. ``GATEWAY_RESTARTED``). Worker-side jumps
inside the retained range come back as holes to announce in place.

Sequences are Python ints (no wrap-around near 2**64-1). The clock is
injectable so age eviction is testable without sleeping. The ring is touched
only from the event loop (the pump writes, attaching streams read, no await in
between), so it needs no lock.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from sessiongate.core.events import Gap
from sessiongate.v1 import gateway_pb2

__all__ = ["ReplayRing"]

EVICTED = gateway_pb2.EVICTED
EXPIRED = gateway_pb2.EXPIRED
MAX_HOLES = 1024


class ReplayRing:
    """:param capacity: events kept at most (0: keep none).
    :param retention: seconds an event is kept at most (0: no age limit).
    """

    def __init__(self, capacity: int, retention: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.retention = retention
        self.clock = clock
        self.events: collections.deque[Any] = collections.deque(maxlen=capacity or None)
        self._batches: collections.deque[tuple[float, int]] = collections.deque()
        self.newest = 0  # the newest sequence ever appended (retained or not)
        self.floor = 0  # sequences <= floor were never seen by this ring
        self.floor_reason: int = gateway_pb2.GATEWAY_RESTARTED
        self.removed_reason: int = EVICTED  # why the event just below the oldest went
        self.holes: list[tuple[int, int, int]] = []  # (last before, first after, reason)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def oldest(self) -> int | None:
        return self.events[0].sequence if self.events else None

    def start_at(self, sequence: int, reason: int) -> None:
        """A ring rebuilt mid-session: nothing at or below ``sequence`` will ever be here.

        Called again with a lower floor when older retained events turn up (the
        worker's buffer arrives after its position): the latest call wins.
        """
        self.floor = sequence
        self.newest = max(self.newest, sequence)
        self.floor_reason = reason

    def extend(self, events: Sequence[Any]) -> None:
        """Append a batch (the pump; ordered by sequence)."""
        if not events:
            return
        self.newest = events[-1].sequence
        if not self.capacity:
            return
        if len(self.events) + len(events) > self.capacity:
            self.removed_reason = EVICTED
        self.events.extend(events)
        if self.retention:
            self._batches.append((self.clock(), self.newest))
            self.expire()

    def add_hole(self, last_before: int, first_after: int, reason: int) -> None:
        self.holes.append((last_before, first_after, reason))
        if len(self.holes) > MAX_HOLES:
            del self.holes[0]

    def expire(self) -> None:
        """Drop what is older than the retention (called on append and on query)."""
        if not self.retention:
            return
        cutoff = self.clock() - self.retention
        batches, events = self._batches, self.events
        while batches and batches[0][0] <= cutoff:
            _t, last = batches.popleft()
            while events and events[0].sequence <= last:
                events.popleft()
                self.removed_reason = EXPIRED

    def after(self, sequence: int) -> tuple[Gap | None, list[Any], list[tuple[int, Gap]]]:
        """What a subscriber resuming after ``sequence`` gets.

        :returns: ``(gap, events, holes)``: a gap to announce first (or None), the
            retained events after ``sequence`` in order, and ``(first_after, gap)``
            pairs for worker-side jumps inside them, to announce in place.
        """
        self.expire()
        if sequence >= self.newest:
            return None, [], []
        events = self.events
        oldest = events[0].sequence if events else self.newest + 1
        gap = None
        if sequence + 1 < oldest:
            # Why is oldest-1 missing? Never seen (below the floor), a worker-side jump,
            # or removed from the ring (removal is oldest-first, so the latest reason).
            if oldest - 1 <= self.floor:
                reason = self.floor_reason
            else:
                reason = self.removed_reason
                for last_before, first_after, hole_reason in self.holes:
                    if first_after == oldest and last_before <= sequence:
                        reason = hole_reason
            gap = Gap(sequence, oldest, reason)
            out = list(events)
        else:
            out = list(itertools.islice(events, self._index_after(sequence), None))
        holes = []
        for last_before, first_after, hole_reason in self.holes:
            if first_after <= oldest or first_after <= sequence + 1:
                continue  # before what is retained, or behind the cursor
            if sequence <= last_before:
                holes.append((first_after, Gap(last_before, first_after, hole_reason)))
            elif gap is None:  # the cursor points into the hole
                gap = Gap(sequence, first_after, hole_reason)
        return gap, out, holes

    def _index_after(self, sequence: int) -> int:
        events = self.events
        lo, hi = 0, len(events)
        while lo < hi:  # binary search: deque indexing is O(n) at worst, fine for rings
            mid = (lo + hi) // 2
            if events[mid].sequence <= sequence:
                lo = mid + 1
            else:
                hi = mid
        return lo
