"""Subscriptions, the event log and distributors: how a session's events reach its
subscribers, and how fast its worker may produce them.

* The session's worker reader is the *pump*: the only writer. It appends each batch
  to the session's :class:`EventLog` (one copy of every event, addressed by a
  contiguous index) and never awaits.
* A :class:`Subscription` is a *cursor* into that log: it holds no events of its own,
  so a subscriber's lag costs references, never copies, and a batch of any size fits.
* **Pacing.** Subscribers that want every event (external, overflow policy
  DISCONNECT or ``fail_fast``) *pace* the worker: it is granted credit to send at
  most a window of events past the newest one handed to the fastest of them
  (:class:`Distributor` tells the worker through ``grant``). With no pacing
  subscriber (none, or only SKIP and internal ones) the worker runs free.
* **Laggards.** A subscriber more than ``capacity`` (``events.queue_capacity``)
  events behind the head (the fastest pacer's position; the newest event when
  nobody paces), whose next event the replay retention no longer keeps either,
  meets its overflow policy alone: disconnected, skipped ahead with a
  ``SLOW_SUBSCRIBER`` gap, or - ``fail_fast`` and the only external one - the
  session faults.
* **Stalls.** The fastest pacer taking nothing for ``stall_timeout`` seconds while
  the worker waits on its credit meets its overflow policy the same way.

Core's :class:`Distributor` allows one external subscriber (a second one gets
``ALREADY_EXISTS``) and keeps no history; the fanout plugin subclasses it for many,
with a replay retention on the log.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import logging
import operator
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sessiongate.core.errors import (
    OVERFLOW_MESSAGE,
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    ResourceExhausted,
)
from sessiongate.v1 import gateway_pb2

if TYPE_CHECKING:
    from sessiongate.core.identity import Identity

__all__ = ["GRPC", "INTERNAL", "Distributor", "Event", "EventLog", "Gap", "Subscription"]

log = logging.getLogger("sessiongate.events")

Event = gateway_pb2.Event
GRPC = "grpc-event-stream"
INTERNAL = "internal"

#: The pacing window: the worker may run this many events past the fastest pacer at
#: most (fewer for large events, so the window stays near PACE_WINDOW_BYTES).
PACE_WINDOW_EVENTS = 8192
PACE_WINDOW_BYTES = 4 << 20
#: a slower pacing subscriber holds the others back while it took something this recently
HOLD_SECONDS = 1.0
#: holes (worker-side sequence jumps) remembered per log at most
MAX_HOLES = 1024
#: trimmed entries are compacted away once there are this many and half the list
_COMPACT_AT = 1024


def _field_prefix(tag: int, size: int) -> bytes:
    """A length-delimited field's key and length, as protobuf writes them."""
    out = bytearray((tag,))
    while size > 0x7F:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


_EVENT_PREFIX = [_field_prefix(0x0A, n) for n in range(4096)]  # field 1, small events


class WireEvent(tuple):
    """``(sequence, data)``: an event as field 1 of ``StreamEventsResponse``, made once.

    The pump turns each event into one of these; every subscriber's response is then
    a byte-join of the events it carries, so a batch is serialized once however many
    subscribers receive it. Events from a worker are never decoded on the way: their
    bytes pass through as the worker encoded them. ``event`` decodes one on demand,
    for in-process consumers. A tuple, built by C-level ``map``/``zip``: this is on
    the per-event hot path.
    """

    __slots__ = ()
    sequence = property(operator.itemgetter(0))
    data = property(operator.itemgetter(1))

    @property
    def event(self) -> Any:
        """The decoded ``Event`` (for in-process consumers; costs a parse each time)."""
        data = self[1]
        start = 1
        while data[start] & 0x80:  # past the field key and the length varint
            start += 1
        return gateway_pb2.Event.FromString(data[start + 1:])

    def __repr__(self) -> str:
        return f"<WireEvent {self.sequence} {len(self.data)} B>"


_serialize = gateway_pb2.Event.SerializeToString


def to_wire(events: Sequence[Any], sequences: list[int] | None = None) -> list[WireEvent]:
    """Encode a batch of ``Event`` messages; ``sequences`` when the caller has them."""
    if sequences is None:
        sequences = [e.sequence for e in events]
    return wire_from_bodies(list(map(_serialize, events)), sequences)


def wire_from_bodies(bodies: Sequence[bytes], sequences: Sequence[int]) -> list[WireEvent]:
    """A batch of already encoded ``Event`` bodies (a worker's, passed through)."""
    prefixes = _EVENT_PREFIX
    datas = [(prefixes[len(body)] if len(body) < 4096 else _field_prefix(0x0A, len(body)))
             + body for body in bodies]
    return list(map(WireEvent, zip(sequences, datas, strict=True)))


_CAUGHT_UP = b"\x18\x01"  # field 3 (caught_up) = true


def encode_response(events: Sequence[WireEvent], gap: Gap | None = None,
                    caught_up: bool = False) -> bytes:
    """A serialized ``StreamEventsResponse``: the events' bytes joined, then gap, flag."""
    data = b"".join([e.data for e in events])
    if gap is not None:
        body = gap.to_proto().SerializeToString()
        data += _field_prefix(0x12, len(body)) + body
    if caught_up:
        data += _CAUGHT_UP
    return data


@dataclasses.dataclass(frozen=True)
class Gap:
    """Events after ``requested_after`` and before ``oldest_available`` are not delivered."""

    requested_after: int
    oldest_available: int
    reason: int  # gateway_pb2.GapReason

    def to_proto(self) -> gateway_pb2.ReplayGap:
        return gateway_pb2.ReplayGap(requested_after=self.requested_after,
                                     oldest_available=self.oldest_available,
                                     reason=self.reason)


_sequence_of = operator.attrgetter("sequence")
_cursor_of = operator.attrgetter("cursor")


def _uncounted(*values: Any) -> None:
    """A distributor's counter that nobody reads (one built without them: unit tests)."""


class EventLog:
    """A session's retained events, oldest first, addressed by a contiguous index.

    It keeps what some subscriber has not read yet and, for resuming subscribers,
    the newest ``retain`` events that are not older than ``max_age`` seconds (the
    fanout plugin's replay ring; core keeps none). The clock is injectable so age
    retention is testable without sleeping. Touched only from the event loop, with
    no await in between, so it needs no lock.

    :param retain: newest events kept for replay whoever has read them (0: none).
    :param max_age: their maximum age in seconds (0: no age limit).
    """

    def __init__(self, retain: int = 0, max_age: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retain = retain
        self.max_age = max_age
        self.clock = clock
        self._items: list[Any] = []
        self._dead = 0  # leading entries of _items already trimmed, compacted lazily
        self.start = 0  # index of the oldest retained event
        self.newest = 0  # the newest sequence ever appended or announced
        self.floor = 0  # sequences <= floor were never seen by this log
        self.floor_reason: int = gateway_pb2.GATEWAY_RESTARTED
        self.removed_reason: int = gateway_pb2.EVICTED  # why the event below start went
        #: worker-side jumps: index of the first event after the jump -> its gap
        self.holes: dict[int, Gap] = {}
        self._stamps: collections.deque[tuple[float, int]] = collections.deque()
        self._expired = 0  # events below this index are older than max_age
        #: (clock() when appended, the log's end after it) of each retained batch: the
        #: age of the oldest retained event (a metric), at one entry per batch
        self._batches: collections.deque[tuple[float, int]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items) - self._dead

    def __repr__(self) -> str:
        return f"<EventLog [{self.start}, {self.end}) newest={self.newest}>"

    @property
    def end(self) -> int:
        """The index the next appended event gets."""
        return self.start + len(self._items) - self._dead

    def append(self, events: Sequence[Any]) -> None:
        self._items.extend(events)
        self.newest = max(self.newest, events[-1].sequence)
        stamp = (self.clock(), self.end)
        self._batches.append(stamp)
        if self.max_age:
            self._stamps.append(stamp)

    def oldest_age(self, now: float) -> float:
        """Seconds since the oldest retained event was appended (0.0 with none)."""
        batches = self._batches
        return max(0.0, now - batches[0][0]) if batches and len(self) else 0.0

    def add_hole(self, gap: Gap) -> None:
        """The worker's sequence jumps right before the next event appended."""
        holes = self.holes
        holes[self.end] = gap
        if len(holes) > MAX_HOLES:
            del holes[next(iter(holes))]

    def set_floor(self, sequence: int, reason: int) -> None:
        """A log rebuilt mid-session: nothing at or below ``sequence`` will come.

        Called again with a lower floor when older retained events turn up (the
        worker's history arrives after its position): the latest call wins.
        """
        self.floor = sequence
        self.floor_reason = reason
        self.newest = max(self.newest, sequence)

    def read(self, index: int, count: int) -> list[Any]:
        i = index - self.start + self._dead
        return self._items[i:i + count]

    def sequence_at(self, index: int) -> int:
        """The sequence of the event at ``index``; past the end, the next one to come."""
        if index >= self.end:
            return self.newest + 1
        return self._items[index - self.start + self._dead].sequence

    def replay_start(self) -> int:
        """The oldest index the replay retention still keeps (count and age)."""
        keep = self.end - self.retain
        if self.max_age:
            cutoff = self.clock() - self.max_age
            stamps = self._stamps
            while stamps and stamps[0][0] <= cutoff:
                self._expired = stamps.popleft()[1]
            keep = max(keep, self._expired)
        return keep

    def trim(self, keep_from: int) -> None:
        """Forget the events below index ``keep_from``."""
        count = min(keep_from, self.end) - self.start
        if count <= 0:
            return
        self.removed_reason = (gateway_pb2.EVICTED if keep_from <= self.end - self.retain
                               else gateway_pb2.EXPIRED)
        self.start += count
        self._dead += count
        # one stamp per batch, kept no longer than its events: bounded by what the log
        # holds, not by the event rate over max_age
        for stamps in (self._batches, self._stamps):
            while stamps and stamps[0][1] <= self.start:
                stamps.popleft()
        if self._dead >= _COMPACT_AT and self._dead * 2 >= len(self._items):
            del self._items[:self._dead]
            self._dead = 0
        if self.holes and next(iter(self.holes)) < self.start:
            self.holes = {i: g for i, g in self.holes.items() if i >= self.start}

    def locate(self, after_sequence: int) -> tuple[int, Gap | None]:
        """Where a subscriber resuming after ``after_sequence`` starts, and the gap it is
        told about first (``None``: nothing it asked for is missing)."""
        if after_sequence >= self.newest:
            return self.end, None
        i = bisect.bisect_right(self._items, after_sequence, lo=self._dead, key=_sequence_of)
        index = i - self._dead + self.start
        first = self.sequence_at(index)
        if first == after_sequence + 1:
            return index, None
        hole = self.holes.get(index)
        if index > self.start:  # the cursor points into a worker-side jump
            reason = hole.reason if hole else gateway_pb2.WORKER_DISCONNECTED
        elif first - 1 <= self.floor:  # never seen: below where a rebuilt log starts
            reason = self.floor_reason
        elif hole is not None and hole.requested_after <= after_sequence:
            reason = hole.reason
        else:
            reason = self.removed_reason
        return index, Gap(after_sequence, first, reason)


class Subscription:
    """One subscriber: a cursor into its session's :class:`EventLog`. One reader.

    :param kind: metric label (``grpc-event-stream``, ``internal``, a plugin's name).
    :param external: a client stream (counts toward caps and attachment) or gateway-owned.
    :param skip: on overflow jump ahead with a ``SLOW_SUBSCRIBER`` gap instead of failing.
    :param policy: ``disconnect_subscriber`` when the client asked DISCONNECT; None: the
        deployer's ``events.backpressure_policy``.
    :param keeps_alive: an attached stream of this subscriber keeps the session's lease
        alive and counts as attached for detach-grace (owner's and admins' streams).
    """

    def __init__(self, *, kind: str = GRPC, external: bool = True, subscriber_id: str = "",
                 identity: Identity | None = None, skip: bool = False,
                 keeps_alive: bool = True, policy: str | None = None) -> None:
        self.policy = policy  # overrides the deployer's policy (on_overflow = DISCONNECT)
        self.kind = kind
        self.external = external
        self.subscriber_id = subscriber_id
        self.identity = identity
        self.skip = skip
        self.keeps_alive = keeps_alive and external
        self.distributor: Distributor | None = None
        self.cursor = 0  # index of the next event to hand out
        self.taken_upto = 0  # sequence of the last event handed out (or the resume point)
        self.replay_end = 0  # the log's end when it attached: where history meets live
        #: time.monotonic() of its last take, or of the publish that ended its having
        #: nothing to take (stall detection: how long it has left events waiting)
        self.last_take = 0.0
        self.pending_gap: Gap | None = None
        self.ended = False
        self._stop_at: int | None = None  # once ended: the index it reads up to
        self.error: GatewayError | None = None
        self.end_reason = ""
        self.skipped = 0
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return (f"<Subscription {self.kind} id={self.subscriber_id or '-'} "
                f"backlog={self.backlog} ended={self.ended}>")

    @property
    def paces(self) -> bool:
        """It wants every event (an external stream, not SKIP): the worker waits for it."""
        return self.external and not self.skip

    @property
    def backlog(self) -> int:
        """Events published and not yet handed to the reader."""
        dist = self.distributor
        if dist is None:
            return 0
        end = dist.log.end if self._stop_at is None else self._stop_at
        return max(0, end - self.cursor)

    def attach(self, distributor: Distributor, cursor: int, taken_upto: int,
               gap: Gap | None) -> None:
        """Called by the distributor that registers it (no await in between)."""
        self.distributor = distributor
        self.cursor = cursor
        self.taken_upto = taken_upto
        self.replay_end = distributor.log.end
        self.pending_gap = gap
        self.last_take = time.monotonic()
        if gap is not None or cursor < self.replay_end:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def end(self, error: GatewayError | None = None, *, reason: str = "",
            drain: bool = False) -> bool:
        """End the subscription (idempotent). ``drain``: deliver the backlog first.

        :returns: True if this call ended it.
        """
        if self.ended:
            return False
        self.ended = True
        self.error = error
        self.end_reason = reason or (error.message if error else "ended")
        dist = self.distributor
        if drain and dist is not None:
            self._stop_at = dist.log.end
        else:
            self._stop_at = self.cursor
            self.pending_gap = None
        self._wake.set()
        return True

    # -- reader side -------------------------------------------------------------------

    async def next(self, max_events: int) -> tuple[Gap | None, list[Any]] | None:
        """The next gap and/or up to ``max_events`` events; ``None`` at a clean end.

        Raises the subscription's error once its backlog is gone.
        """
        while True:
            dist = self.distributor
            if dist is not None:
                log_ = dist.log
                end = log_.end if self._stop_at is None else self._stop_at
                cursor = self.cursor
                if cursor < end or self.pending_gap is not None:
                    return self._take(dist, log_, cursor, min(max_events, end - cursor))
            if self.ended:
                if self.error is not None:
                    raise self.error
                return None
            self._wake.clear()
            await self._wake.wait()

    def _take(self, dist: Distributor, log_: EventLog, cursor: int,
              count: int) -> tuple[Gap | None, list[Any]]:
        gap, self.pending_gap = self.pending_gap, None
        if log_.holes and count > 0:
            gap, count = self._around_holes(log_, gap, cursor, count)
        if gap is not None:
            dist.count_gap(gap.reason)
        if count <= 0:
            return gap, []
        events = log_.read(cursor, count)
        dist.count_delivered(count)
        self.cursor = cursor + count
        self.taken_upto = events[-1].sequence
        if self.paces:
            dist.advanced(self)
        if cursor == log_.start:  # it may have been what kept the oldest events
            dist.trim()
        return gap, events

    def _around_holes(self, log_: EventLog, gap: Gap | None, cursor: int,
                      count: int) -> tuple[Gap | None, int]:
        """Announce a worker-side jump right before the event after it (rare path)."""
        hole = log_.holes.get(cursor)
        if hole is not None and gap is None:
            gap = Gap(self.taken_upto, hole.oldest_available, hole.reason)
        for index in log_.holes:
            if cursor < index < cursor + count:
                count = index - cursor
        return gap, count


class Distributor:
    """Delivers a session's events to its subscriptions and paces its worker; core
    allows one external subscriber.

    :param capacity: how far a subscriber may fall behind the head
        (``events.queue_capacity``).
    :param fault_session: called with a reason to fault the session (``fail_fast``).
    :param on_release: called once per subscription when it leaves for any reason.
    :param count_overflow: called with a laggard's kind and the policy applied to it
        (``skip``, ``disconnect_subscriber`` or ``fail_fast``).
    :param count_delivered: called with the number of events each take hands out.
    :param count_gap: called with the reason of each gap a subscriber is told about.
    :param grant: called with how many more events the worker may send beyond those
        published so far, or ``None`` when it may run free; only when that changes.
    :param stall_timeout: seconds the fastest pacer may take nothing while the worker
        waits on it (``events.stall_timeout_seconds``).
    :param log: the event log (the fanout plugin passes one with replay retention).
    """

    max_external: int | None = 1
    supports_replay = False

    def __init__(self, *, session_id: str, capacity: int, policy: str,
                 fault_session: Callable[[str], None],
                 on_release: Callable[[Subscription, str], None],
                 count_overflow: Callable[[str, str], None] | None = None,
                 count_delivered: Callable[[int], None] | None = None,
                 count_gap: Callable[[int], None] | None = None,
                 grant: Callable[[int | None], None] | None = None,
                 stall_timeout: float = 30.0, log: EventLog | None = None) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.policy = policy
        self._fault_session = fault_session
        self._on_release = on_release
        self._count_overflow = count_overflow or _uncounted
        self.count_delivered = count_delivered or _uncounted
        self.count_gap = count_gap or _uncounted
        self._grant = grant or (lambda through: None)
        self.stall_timeout = stall_timeout
        self.log = log if log is not None else EventLog()
        self.subscriptions: list[Subscription] = []
        self.external_count = 0
        self.closed: GatewayError | bool | None = False
        self.last_sequence = 0
        #: the log index the worker may fill the log up to; None: it runs free
        self.granted: int | None = None
        self.window = PACE_WINDOW_EVENTS
        self._event_bytes = 0.0  # moving average of an event's size on the wire
        self._stall: asyncio.TimerHandle | None = None
        self._admitting = False
        self._pacers: list[Subscription] = []  # the subscriptions that pace, kept current

    # -- registration (no await anywhere: check and change in one step) -----------------

    def _check_admission(self, sub: Subscription) -> None:
        if sub.external and self.max_external is not None and \
                self.external_count >= self.max_external:
            raise AlreadyExists(
                f"session {self.session_id} already has an event subscriber "
                "(this gateway's distributor takes one; see the deployer's guide)")

    def subscribe(self, sub: Subscription, *, after_sequence: int | None = None) -> Subscription:
        """Register ``sub`` at the head; with ``after_sequence``, at the retained event
        after it (replay is read where it lies in the log)."""
        if self.closed is not False:
            raise FailedPrecondition(f"session {self.session_id} has ended")
        if after_sequence is not None:
            if not self.supports_replay:
                raise FailedPrecondition(
                    "after_sequence: this session's distributor keeps no replay ring")
            self.trim()
            cursor, gap = self.log.locate(after_sequence)
            taken = after_sequence
        else:
            cursor, gap, taken = self.log.end, None, self.last_sequence
        self._admitting = True  # a replaced pacer must not set the worker free meanwhile
        try:
            self._check_admission(sub)
        finally:
            self._admitting = False
        sub.attach(self, cursor, taken, gap)
        self.subscriptions = [*self.subscriptions, sub]
        if sub.external:
            self.external_count += 1
        self._pacers = [s for s in self.subscriptions if s.paces]
        self._repace()
        return sub

    def unsubscribe(self, sub: Subscription, reason: str = "detached") -> bool:
        """Remove ``sub`` (idempotent, safe while publishing). True if it was registered."""
        if sub not in self.subscriptions:
            return False
        self.subscriptions = [s for s in self.subscriptions if s is not sub]
        self._pacers = [s for s in self.subscriptions if s.paces]
        if sub.external:
            self.external_count -= 1
        sub.end(reason=reason)
        self._on_release(sub, reason)
        if sub.paces:
            self._repace()
        self.trim()
        return True

    # -- the pump ----------------------------------------------------------------------

    def publish(self, events: Sequence[Any], nbytes: int = 0) -> None:
        """Append a batch for every subscription, in order, without blocking.

        :param nbytes: the batch's size on the wire, when known (sizes the window).
        """
        if self.closed is not False or not events:
            return
        log_ = self.log
        was_end = log_.end
        log_.append(events)
        self.last_sequence = events[-1].sequence
        if nbytes and self._resize_window(nbytes / len(events)):
            self._repace()  # larger events: a smaller window, told at once
        now = time.monotonic()
        for sub in self.subscriptions:  # a snapshot: lists are replaced, never mutated
            if sub.cursor >= was_end:
                sub.last_take = now  # it had nothing to take until now: not idle
            sub._wake.set()
        self._enforce()

    def restore(self, events: Sequence[Any], *, floor: int | None, reason: int) -> None:
        """The session was re-adopted after a gateway restart (reattach).

        ``events`` are what the worker still holds (oldest first); nothing at or below
        ``floor`` will ever be available, for ``reason``. The log keeps what its replay
        retention allows (core's: nothing) and learns the position.
        """
        if floor is not None:
            self.log.set_floor(floor, reason)
            self.last_sequence = max(self.last_sequence, floor)
        if events:
            self.log.append(events)
            self.last_sequence = max(self.last_sequence, events[-1].sequence)
        self.trim()

    def publish_hole(self, last_before: int, first_after: int, reason: int) -> None:
        """The worker's sequence jumps from ``last_before`` to ``first_after``: every
        subscriber is told in place, live and on replay."""
        self.log.add_hole(Gap(last_before, first_after, reason))

    def _enforce(self) -> None:
        """Deal with laggards, forget what nobody needs, watch for a stalled pacer."""
        log_ = self.log
        replay_start = log_.replay_start()
        subs = self.subscriptions
        if subs:
            head = max([s.cursor for s in self._pacers], default=log_.end)
            lowest = min(head - self.capacity, replay_start)
            for sub in subs:
                if sub.cursor < lowest:
                    self._overflow(sub, head)
                    if self.closed is not False:
                        return
            subs = self.subscriptions
        log_.trim(min([replay_start, *[s.cursor for s in subs]]))
        if self.granted is not None and log_.end >= self.granted:
            self._arm_stall()

    def trim(self) -> None:
        """Forget what no subscriber and no replay retention needs any more."""
        if self.closed is not False:
            return  # ended subscriptions drain what is left
        subs = self.subscriptions
        self.log.trim(min([self.log.replay_start(), *[s.cursor for s in subs]]))

    # -- pacing --------------------------------------------------------------------------

    def _resize_window(self, event_bytes: float) -> bool:
        """Keep the window near PACE_WINDOW_BYTES. True: it shrank by half or more."""
        average = self._event_bytes
        average = event_bytes if not average else average + (event_bytes - average) / 8
        self._event_bytes = average
        old = self.window
        self.window = max(1, min(PACE_WINDOW_EVENTS, int(PACE_WINDOW_BYTES // average)))
        return self.window * 2 <= old

    def _limit(self, pacers: list[Subscription]) -> int:
        """The log index the worker may fill the log up to, with ``pacers`` attached.

        At most a window past the fastest; and never more than ``capacity`` past a
        slower pacer that is keeping up (took something within ``HOLD_SECONDS``, or has
        nothing to take) and is not already a laggard: a healthy subscriber slower
        than the others slows them down instead of being cut. One that stops taking
        stops holding the others back; it then falls behind alone.
        """
        end = self.log.end
        fastest = max(pacers, key=_cursor_of)
        head = fastest.cursor
        limit = head + self.window
        if len(pacers) > 1:
            lowest = head - self.capacity
            since = time.monotonic() - min(HOLD_SECONDS, self.stall_timeout)
            for sub in pacers:
                if sub is not fastest and sub.cursor >= lowest and (
                        sub.last_take >= since or sub.cursor >= end):
                    limit = min(limit, sub.cursor + self.capacity)
        return limit

    def advanced(self, sub: Subscription) -> None:
        """A pacing subscriber took events (its reader calls this, no await).

        The grant is recomputed (O(pacers)) only when the worker is within a step
        (a quarter window) of it or this pacer has moved a step past it; otherwise a
        take costs O(1), so K readers at the head cost O(K) per step, not per take.
        """
        sub.last_take = time.monotonic()
        granted = self.granted
        if granted is None or self.closed is not False:
            return
        step = max(1, min(self.window, self.capacity) // 4)
        near = self.log.end + step >= granted
        if not near and sub.cursor + self.window < granted + step:
            return  # neither is the worker short of room nor has the head moved a step
        limit = self._limit(self._pacers)
        if limit > granted and (near or limit - granted >= step):
            self._send_grant(limit)

    def _repace(self) -> None:
        """The set of pacing subscribers changed: recompute the grant."""
        if self.closed is not False or self._admitting:
            return
        pacers = self._pacers
        if not pacers:
            self._cancel_stall()
            if self.granted is not None:
                self._send_grant(None)
            return
        limit = self._limit(pacers)
        if limit != self.granted:
            self._send_grant(limit)
        if self.log.end >= limit:
            self._arm_stall()

    def _send_grant(self, limit: int | None) -> None:
        """Counted in events, not sequences: a worker that dropped events (overrun)
        jumps ahead in sequence but not in what it sent."""
        self.granted = limit
        self._grant(None if limit is None else max(0, limit - self.log.end))

    def _arm_stall(self) -> None:
        """The worker waits on its grant: look again every so often while it does."""
        if self._stall is None:
            self._stall = asyncio.get_running_loop().call_later(
                min(HOLD_SECONDS, self.stall_timeout), self._check_stall)

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _check_stall(self) -> None:
        """While the worker waits: release it from pacers that stopped taking; deal
        with the fastest pacer when it has taken nothing for ``stall_timeout``."""
        self._stall = None
        if self.closed is not False or self.granted is None or self.log.end < self.granted:
            return  # nobody paces, or the worker is not held back any more
        pacers = [s for s in self.subscriptions if s.paces]
        if not pacers:
            return
        limit = self._limit(pacers)
        if limit > self.granted:
            self._send_grant(limit)
            return
        lead = max(pacers, key=_cursor_of)
        if time.monotonic() - lead.last_take >= self.stall_timeout:
            if self._overflow(lead, lead.cursor, stalled=True):
                return  # the session faults: its teardown closes this distributor
            if self.closed is not False or self._stall is not None:
                return
        self._arm_stall()

    # -- overflow ------------------------------------------------------------------------

    def _overflow(self, sub: Subscription, head: int, *, stalled: bool = False) -> bool:
        """Apply ``sub``'s overflow policy. True: the session was faulted."""
        who = sub.subscriber_id or sub.kind
        if stalled:
            detail = (f"the subscriber took no event for {self.stall_timeout:g} s while the "
                      "worker waited for it (events.stall_timeout_seconds)")
        else:
            detail = (f"the subscriber fell more than {self.capacity} events behind "
                      "(events.queue_capacity)")
        if sub.skip:
            self._count_overflow(sub.kind, "skip")
            self._skip_ahead(sub, head)
            return False
        only_external = sub.external and self.external_count == 1
        if sub.external and (sub.policy or self.policy) == "fail_fast" and only_external:
            self._count_overflow(sub.kind, "fail_fast")
            log.warning("session %s: subscriber %s overflowed (%d behind): %s; fail_fast "
                        "faults the session", self.session_id, who, sub.backlog, detail)
            self._fault_session(f"{OVERFLOW_MESSAGE}: {detail}")
            return True
        self._count_overflow(sub.kind, "disconnect_subscriber")
        log.info("session %s: subscriber %s overflowed (%d behind): %s; disconnected",
                 self.session_id, who, sub.backlog, detail)
        sub.end(ResourceExhausted(f"{OVERFLOW_MESSAGE}: {detail}"), reason="overflow")
        self.unsubscribe(sub, "overflow")
        return False

    def _skip_ahead(self, sub: Subscription, head: int) -> None:
        """SKIP: keep the newest ``capacity`` events behind the head, name what was missed."""
        log_ = self.log
        target = max(head - self.capacity, log_.start, sub.cursor)
        after = sub.pending_gap.requested_after if sub.pending_gap else sub.taken_upto
        sub.skipped += target - sub.cursor
        sub.cursor = target
        sub.pending_gap = Gap(after, log_.sequence_at(target), gateway_pb2.SLOW_SUBSCRIBER)
        sub.wake()

    def close(self, error: GatewayError | None = None) -> None:
        """The session ended: end every subscription (backlog first), idempotent."""
        if self.closed is not False:
            return
        self.closed = error if error is not None else True
        self._cancel_stall()
        subs, self.subscriptions = self.subscriptions, []
        self._pacers = []
        for sub in subs:
            sub.end(error, reason=error.message if error else "session closed", drain=True)
            if sub.external:
                self.external_count -= 1
            self._on_release(sub, "session ended")
