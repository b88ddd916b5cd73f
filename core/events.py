"""Subscriptions and distributors: how a session's events reach its subscribers.

The session's worker reader is the *pump*: the only consumer of the worker's
event stream, and the only writer of every subscription's buffer. It calls
:meth:`Distributor.publish` with each batch; publishing never blocks and never
awaits. Each subscriber reads its own bounded buffer at its own pace; one that
falls too far behind is dealt with alone (disconnect, skip with a gap) unless
the deployer asked ``fail_fast`` and it is the session's only external one.

Core's :class:`Distributor` allows one external subscriber (a second one gets
``ALREADY_EXISTS``); the fanout plugin subclasses it for many, with a replay ring.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import operator
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
    from sessiongate.core.auth import Identity

__all__ = ["GRPC", "INTERNAL", "Distributor", "Event", "Gap", "Subscription"]

log = logging.getLogger("sessiongate.events")

Event = gateway_pb2.Event
GRPC = "grpc-event-stream"
INTERNAL = "internal"


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
    """``(sequence, data, event)``: an event with its encoding as field 1 of
    ``StreamEventsResponse``, made once.

    The pump turns each event into one of these; every subscriber's response is then
    a byte-join of the events it carries, so a batch is serialized once however many
    subscribers receive it. ``event`` is the parsed message for in-process consumers.
    A tuple, built by C-level ``map``/``zip``: this is on the per-event hot path.
    """

    __slots__ = ()
    sequence = property(operator.itemgetter(0))
    data = property(operator.itemgetter(1))
    event = property(operator.itemgetter(2))

    def __repr__(self) -> str:
        return f"<WireEvent {self.sequence} {len(self.data)} B>"


_serialize = gateway_pb2.Event.SerializeToString


def to_wire(events: Sequence[Any], sequences: list[int] | None = None) -> list[WireEvent]:
    """Encode a batch; ``sequences`` may be passed when the caller already has them."""
    prefixes = _EVENT_PREFIX
    datas = [(prefixes[len(body)] if len(body) < 4096 else _field_prefix(0x0A, len(body)))
             + body for body in map(_serialize, events)]
    if sequences is None:
        sequences = [e.sequence for e in events]
    return list(map(WireEvent, zip(sequences, datas, events, strict=True)))


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


class Subscription:
    """One subscriber's bounded backlog. One writer (the pump), one reader (its stream).

    :param capacity: events buffered at most (``events.queue_capacity``).
    :param kind: metric label (``grpc-event-stream``, ``internal``, a plugin's name).
    :param external: a client stream (counts toward caps and attachment) or gateway-owned.
    :param skip: on overflow jump ahead with a ``SLOW_SUBSCRIBER`` gap instead of failing.
    :param policy: ``disconnect_subscriber`` when the client asked DISCONNECT; None: the
        deployer's ``events.backpressure_policy``.
    :param keeps_alive: an attached stream of this subscriber keeps the session's lease
        alive and counts as attached for detach-grace (owner's and admins' streams).
    """

    def __init__(self, *, capacity: int, kind: str = GRPC, external: bool = True,
                 subscriber_id: str = "", identity: Identity | None = None,
                 skip: bool = False, keeps_alive: bool = True,
                 policy: str | None = None) -> None:
        self.capacity = capacity
        self.policy = policy  # overrides the deployer's policy (on_overflow = DISCONNECT)
        self.kind = kind
        self.external = external
        self.subscriber_id = subscriber_id
        self.identity = identity
        self.skip = skip
        self.keeps_alive = keeps_alive and external
        self.buffer: collections.deque[Any] = collections.deque()
        self.taken_upto = 0  # sequence of the last event handed to the reader
        self.pending_gap: Gap | None = None
        #: gaps to announce inside the backlog: first sequence after the hole → gap
        self.holes: dict[int, Gap] = {}
        self.ended = False
        self.error: GatewayError | None = None
        self.end_reason = ""
        self.skipped = 0
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return (f"<Subscription {self.kind} id={self.subscriber_id or '-'} "
                f"backlog={len(self.buffer)} ended={self.ended}>")

    # -- writer side (the pump) --------------------------------------------------------

    def offer(self, events: Sequence[Any]) -> bool:
        """Append a batch without blocking. ``False``: it does not fit (overflow)."""
        if self.ended:
            return True
        if len(self.buffer) + len(events) <= self.capacity:
            self.buffer.extend(events)
            self._wake.set()
            return True
        if not self.skip:
            return False
        # Jump ahead: drop the backlog, keep the newest that fit, name what was missed.
        after = self.pending_gap.requested_after if self.pending_gap else self.taken_upto
        self.buffer.extend(events)
        dropped = len(self.buffer) - self.capacity
        self.skipped += dropped
        for _ in range(dropped):
            self.buffer.popleft()
        kept = self.buffer
        self.pending_gap = Gap(after, kept[0].sequence, gateway_pb2.SLOW_SUBSCRIBER)
        self._wake.set()
        return True

    def preload(self, gap: Gap | None, events: Sequence[Any]) -> None:
        """Replayed history, before the subscription is registered (no pump race)."""
        self.pending_gap = gap
        self.buffer.extend(events)
        if gap or events:
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
        if not drain:
            self.buffer.clear()
            self.pending_gap = None
        self._wake.set()
        return True

    def mark_hole(self, before_sequence: int, gap: Gap) -> None:
        """Announce ``gap`` right before the event ``before_sequence`` (a worker-side jump)."""
        if not self.ended:
            self.holes[before_sequence] = gap

    def _hole_cut(self, gap: Gap | None, n: int) -> tuple[Gap | None, int]:
        """Stop a batch before the next hole; deliver the hole's gap first (rare path)."""
        buffer = self.buffer
        for before in sorted(self.holes):
            if buffer and buffer[0].sequence >= before:
                hole = self.holes.pop(before)
                if gap is None:
                    gap = hole
                else:  # two gaps meet: one notice spanning both
                    gap = Gap(gap.requested_after, hole.oldest_available, hole.reason)
                continue
            for i in range(n):
                if buffer[i].sequence >= before:
                    return gap, i
            break
        if not buffer:
            self.holes = {k: v for k, v in self.holes.items() if k > self.taken_upto}
        return gap, n

    # -- reader side -------------------------------------------------------------------

    async def next(self, max_events: int) -> tuple[Gap | None, list[Any]] | None:
        """The next gap and/or up to ``max_events`` events; ``None`` at a clean end.

        Raises the subscription's error once its backlog is gone.
        """
        while True:
            buffer = self.buffer
            if buffer or self.pending_gap:
                gap, self.pending_gap = self.pending_gap, None
                n = min(max_events, len(buffer))
                if self.holes:
                    gap, n = self._hole_cut(gap, n)
                if n == len(buffer):
                    events = list(buffer)
                    buffer.clear()
                else:
                    pop = buffer.popleft
                    events = [pop() for _ in range(n)]
                if events:
                    self.taken_upto = events[-1].sequence
                return gap, events
            if self.ended:
                if self.error is not None:
                    raise self.error
                return None
            self._wake.clear()
            await self._wake.wait()


class Distributor:
    """Delivers a session's events to its subscriptions; core allows one external.

    :param fault_session: called with a reason to fault the session (``fail_fast``).
    :param on_release: called once per subscription when it leaves for any reason.
    """

    max_external: int | None = 1
    supports_replay = False

    def __init__(self, *, session_id: str, capacity: int, policy: str,
                 fault_session: Callable[[str], None],
                 on_release: Callable[[Subscription, str], None],
                 count_overflow: Callable[[str], None] | None = None) -> None:
        self.session_id = session_id
        self.capacity = capacity
        self.policy = policy
        self._fault_session = fault_session
        self._on_release = on_release
        self._count_overflow = count_overflow or (lambda kind: None)
        self.subscriptions: list[Subscription] = []
        self.external_count = 0
        self.closed: GatewayError | bool | None = False
        self.last_sequence = 0

    # -- registration (no await anywhere: check and change in one step) -----------------

    def _check_admission(self, sub: Subscription) -> None:
        if sub.external and self.max_external is not None and \
                self.external_count >= self.max_external:
            raise AlreadyExists(
                f"session {self.session_id} already has an event subscriber "
                "(enable the fanout plugin for more than one)")

    def subscribe(self, sub: Subscription, *, after_sequence: int | None = None) -> Subscription:
        """Register ``sub``; with ``after_sequence``, preload what is retained after it."""
        if self.closed is not False:
            raise FailedPrecondition(f"session {self.session_id} has ended")
        if after_sequence is not None:
            if not self.supports_replay:
                raise FailedPrecondition(
                    "after_sequence needs a distributor with a replay ring "
                    "(plugins.fanout.enabled and plugins.reconnect.enabled)")
            self._preload(sub, after_sequence)
        self._check_admission(sub)
        self.subscriptions = [*self.subscriptions, sub]
        if sub.external:
            self.external_count += 1
        return sub

    def _preload(self, sub: Subscription, after_sequence: int) -> None:
        raise NotImplementedError

    def unsubscribe(self, sub: Subscription, reason: str = "detached") -> bool:
        """Remove ``sub`` (idempotent, safe while publishing). True if it was registered."""
        if sub not in self.subscriptions:
            return False
        self.subscriptions = [s for s in self.subscriptions if s is not sub]
        if sub.external:
            self.external_count -= 1
        sub.end(reason=reason)
        self._on_release(sub, reason)
        return True

    # -- the pump ----------------------------------------------------------------------

    def publish(self, events: Sequence[Any]) -> None:
        """Deliver a batch to every subscription, in order, without blocking."""
        self.last_sequence = events[-1].sequence
        for sub in self.subscriptions:  # a snapshot: lists are replaced, never mutated
            if not sub.offer(events):
                self._overflow(sub)

    def restore(self, events: Sequence[Any], *, floor: int | None, reason: int) -> None:
        """The session was re-adopted after a gateway restart (reattach).

        ``events`` are what the worker still holds (oldest first); nothing at or below
        ``floor`` will ever be available, for ``reason``. Core keeps no history, so it
        only learns the position; a distributor with a replay ring rebuilds it.
        """
        if events:
            self.last_sequence = max(self.last_sequence, events[-1].sequence)
        elif floor is not None:
            self.last_sequence = max(self.last_sequence, floor)

    def publish_hole(self, last_before: int, first_after: int, reason: int) -> None:
        """The worker's sequence jumps from ``last_before`` to ``first_after``: tell everyone."""
        for sub in self.subscriptions:
            sub.mark_hole(first_after, Gap(last_before, first_after, reason))

    def _overflow(self, sub: Subscription) -> None:
        self._count_overflow(sub.kind)
        only_external = sub.external and self.external_count == 1
        if sub.external and (sub.policy or self.policy) == "fail_fast" and only_external:
            log.warning("session %s: subscriber %s overflowed (%d buffered); fail_fast "
                        "faults the session", self.session_id, sub.subscriber_id or sub.kind,
                        len(sub.buffer))
            self._fault_session(OVERFLOW_MESSAGE)
            return
        log.info("session %s: subscriber %s overflowed (%d buffered); disconnected",
                 self.session_id, sub.subscriber_id or sub.kind, len(sub.buffer))
        sub.end(ResourceExhausted(f"{OVERFLOW_MESSAGE}: the subscriber fell more than "
                                  f"{sub.capacity} events behind"), reason="overflow")
        self.unsubscribe(sub, "overflow")

    def close(self, error: GatewayError | None = None) -> None:
        """The session ended: end every subscription (backlog first), idempotent."""
        if self.closed is not False:
            return
        self.closed = error if error is not None else True
        subs, self.subscriptions = self.subscriptions, []
        for sub in subs:
            sub.end(error, reason=error.message if error else "session closed", drain=True)
            if sub.external:
                self.external_count -= 1
            self._on_release(sub, "session ended")

