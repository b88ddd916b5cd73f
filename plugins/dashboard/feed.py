"""Live pages' plumbing: bounded per-browser queues, and one mirror per session.

* A :class:`Listener` is one open Server-Sent Events response: a bounded queue of
  frames. Producers never wait on it: when it is full, the listener alone is *dropped*
  (its queue is emptied and it is told to end), so a slow browser never holds back
  the session, the mirror or the other browsers. The browser's ``EventSource``
  reconnects and resumes from its ``Last-Event-ID``, or sees a gap row.
* A :class:`SessionMirror` is fed by the session's one internal subscription (attached
  when the session becomes Ready, in skip mode: it never paces the worker, never
  faults the session; if it ever falls behind it skips ahead and says so with a gap).
  It keeps the session's newest events in a ring bounded in count and bytes, counts
  events per second for the overview's sparkline, and hands every new item to the
  listeners of that session, however many pages are open.

Everything here runs on the event loop with no await between a check and a change,
so nothing needs a lock.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from sessiongate.core.errors import GatewayError
from sessiongate.v1 import gateway_pb2

if TYPE_CHECKING:
    from sessiongate.core import Session, Subscription

    from .auth import SignedIn

__all__ = ["FeedItem", "FeedRenderer", "Listener", "RateHistory", "SessionMirror", "item_key",
           "parse_key"]

log = logging.getLogger("sessiongate.plugins.dashboard")

#: frames, and their characters, a browser may have waiting before it is dropped (the
#: frames are shared by every page of a session: a page's own cost is the references)
LISTENER_FRAMES = 1024
LISTENER_CHARS = 4 << 20
#: the newest items a mirror keeps for pages that (re)connect, in count and bytes
RING_ITEMS = 500
RING_BYTES = 1 << 20
#: events taken from the subscription at once (well below a page's queue)
BATCH = 64
#: seconds of event-rate history (the sparkline)
RATE_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class Ended:
    """What ends a listener: the frame it sends last (may be empty), and why."""

    reason: str
    frame: str = ""


def item_key(sequence: int, is_gap: bool) -> tuple[int, int]:
    """The order of feed items: an event is ``(sequence, 0)``; a gap after event ``n``
    is ``(n, 1)``, between that event and the next one."""
    return (sequence, 1 if is_gap else 0)


def parse_key(text: str | None) -> tuple[int, int] | None:
    """A ``Last-Event-ID`` (``"42"`` or ``"42.1"``) back to a key; None if unusable."""
    if not text or len(text) > 40:
        return None
    head, _, tail = text.strip().partition(".")
    if not head.isdigit() or (tail and tail not in ("0", "1")):
        return None
    return (int(head), int(tail or 0))


class FeedRenderer(Protocol):
    """How feed rows become SSE frames (:mod:`.render`)."""

    def item(self, item: FeedItem) -> str: ...

    def missed(self, after: int, oldest: int) -> str: ...

    def ended(self) -> str: ...


@dataclasses.dataclass
class FeedItem:
    """One row of a session's feed: an event (``wire``) or a gap (``gap``)."""

    key: tuple[int, int]
    wire: Any = None  # the event as the distributor hands it (a WireEvent)
    gap: Any = None  # a Gap
    size: int = 0
    frame: str | None = None  # its SSE frame, rendered once when first needed


class Listener:
    """One browser's open event stream: a bounded queue it alone reads.

    :param viewer: who is watching (the access re-check replaces it with a fresh one).
    :param session_id: the session it watches ("" for the overview).
    :param on_drop: told when it is dropped for being slow (a metric).
    """

    def __init__(self, viewer: SignedIn, session_id: str = "",
                 capacity: int = LISTENER_FRAMES,
                 on_drop: Callable[[Listener], None] | None = None) -> None:
        self.viewer = viewer
        self.session_id = session_id
        self.queue: asyncio.Queue[str | Ended] = asyncio.Queue(capacity)
        self.queued_chars = 0
        self.ended: Ended | None = None
        #: the newest alarm id it was sent (the overview's alarms strip)
        self.alarms_sent = 0
        self._on_drop = on_drop

    def offer(self, frame: str) -> bool:
        """Queue ``frame`` without waiting; a full queue drops this listener. True if
        queued."""
        if self.ended is not None:
            return False
        if self.queue.full() or self.queued_chars + len(frame) > LISTENER_CHARS:
            self.end("slow browser", "")
            if self._on_drop is not None:
                self._on_drop(self)
            return False
        self.queue.put_nowait(frame)
        self.queued_chars += len(frame)
        return True

    def end(self, reason: str, frame: str = "") -> None:
        """End it (idempotent): what is queued is discarded, ``frame`` is sent last."""
        if self.ended is not None:
            return
        self.ended = Ended(reason, frame)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_chars = 0
        self.queue.put_nowait(self.ended)

    def _taken(self, item: str | Ended) -> str | Ended:
        if isinstance(item, str):
            self.queued_chars -= len(item)
        return item

    async def next(self, timeout: float) -> str | Ended | None:
        """The next frame, the :class:`Ended` marker, or None after ``timeout`` idle."""
        try:
            return self._taken(await asyncio.wait_for(self.queue.get(), timeout))
        except TimeoutError:
            return None

    def next_nowait(self) -> str | Ended | None:
        """The next frame or marker if one is waiting, else None."""
        return None if self.queue.empty() else self._taken(self.queue.get_nowait())


class RateHistory:
    """Events per second over the last :data:`RATE_SECONDS` seconds (whole seconds of
    the monotonic clock; injectable for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._counts: collections.deque[tuple[int, int]] = collections.deque()

    def add(self, count: int) -> None:
        second = int(self.clock())
        counts = self._counts
        if counts and counts[-1][0] == second:
            counts[-1] = (second, counts[-1][1] + count)
        else:
            counts.append((second, count))
        while counts and counts[0][0] < second - RATE_SECONDS:
            counts.popleft()

    def series(self) -> list[int]:
        """One count per whole second, oldest first, the last complete second last."""
        now = int(self.clock())
        by_second = dict(self._counts)
        return [by_second.get(s, 0) for s in range(now - RATE_SECONDS, now)]


class SessionMirror:
    """The dashboard's copy of one session's recent events, and its live listeners.

    :param render: turns rows into SSE frames (each item's once).
    """

    def __init__(self, session_id: str, render: FeedRenderer) -> None:
        self.session_id = session_id
        self.render = render
        self.ring: collections.deque[FeedItem] = collections.deque()
        self.ring_bytes = 0
        #: the newest key pushed out of the ring (a page resuming before it missed items)
        self.evicted_upto: tuple[int, int] | None = None
        self.rate = RateHistory()
        self.listeners: set[Listener] = set()
        self.done = False

    # -- the subscription's side -------------------------------------------------------

    async def consume(self, session: Session, subscription: Subscription) -> None:
        """The internal subscriber: read until the session ends (then end the pages)."""
        try:
            while (batch := await subscription.next(BATCH)) is not None:
                gap, events = batch
                self.take(gap, events)
        except GatewayError as exc:  # the session faulted, or the mirror was cut off
            log.debug("session %s: dashboard mirror ended: %s", self.session_id, exc.message)
        finally:
            self.finish()

    def take(self, gap: Any, events: Iterable[Any]) -> None:
        """A batch from the subscription: keep it, count it, hand it to every listener."""
        items = []
        if gap is not None:
            items.append(FeedItem(item_key(gap.requested_after, True), gap=gap, size=64))
            if gap.reason == gateway_pb2.SLOW_SUBSCRIBER:  # skipped: they happened all the same
                self.rate.add(max(0, gap.oldest_available - gap.requested_after - 1))
        count = 0
        for wire in events:
            items.append(FeedItem(item_key(wire.sequence, False), wire=wire,
                                  size=len(wire.data)))
            count += 1
        if count:
            self.rate.add(count)
        for item in items:
            self._keep(item)
        if self.listeners and items:
            frames = [self.frame(item) for item in items]
            for listener in list(self.listeners):
                for frame in frames:
                    if not listener.offer(frame):
                        self.listeners.discard(listener)
                        break

    def _keep(self, item: FeedItem) -> None:
        ring = self.ring
        ring.append(item)
        self.ring_bytes += item.size
        while len(ring) > 1 and (len(ring) > RING_ITEMS or self.ring_bytes > RING_BYTES):
            old = ring.popleft()
            self.ring_bytes -= old.size
            self.evicted_upto = old.key

    def finish(self) -> None:
        """The session has ended: its pages are told, then closed."""
        self.done = True
        for listener in list(self.listeners):
            listener.end("session ended", self.render.ended())
        self.listeners.clear()

    # -- the pages' side ---------------------------------------------------------------

    def frame(self, item: FeedItem) -> str:
        if item.frame is None:
            item.frame = self.render.item(item)
        return item.frame

    def attach(self, listener: Listener, after: tuple[int, int] | None,
               backlog: int) -> list[str]:
        """Register ``listener`` and return what it is sent first: the items after
        ``after`` (a reconnecting page's ``Last-Event-ID``) or, for a new page, the
        newest ``backlog`` items; a resuming page that missed items evicted meanwhile
        gets a gap row naming them first."""
        ring = list(self.ring)
        if after is None:
            first = ring[-backlog:] if backlog else []
            frames = [self.frame(item) for item in first]
        else:
            later = [item for item in ring if item.key > after]
            frames = []
            if self.evicted_upto is not None and self.evicted_upto > after:
                oldest = later[0].key[0] if later else self.evicted_upto[0] + 1
                frames.append(self.render.missed(after[0], oldest))
            frames.extend(self.frame(item) for item in later)
        if self.done:
            frames.append(self.render.ended())
            listener.end("session ended")
        else:
            self.listeners.add(listener)
        return frames

    def detach(self, listener: Listener) -> None:
        self.listeners.discard(listener)
