"""Many subscribers per session: one pump, a bounded backlog each, a replay ring.

Builds on core's :class:`~sessiongate.core.events.Distributor` (which already
isolates an overflowing subscriber, and faults the session under ``fail_fast``
only when that subscriber was its only external one) and adds the subscriber
cap, replacement by ``subscriber_id`` and resume from the replay ring.

Each subscriber's backlog holds references to the same event objects the ring
holds: an event is stored once, whatever the number of subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sessiongate.core.errors import Aborted, ResourceExhausted
from sessiongate.core.events import Distributor, Subscription

from .ring import ReplayRing

__all__ = ["FanoutDistributor"]

log = logging.getLogger("sessiongate.plugins.fanout")


class FanoutDistributor(Distributor):
    supports_replay = True

    def __init__(self, *, max_external: int, ring: ReplayRing, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_external = max_external
        self.ring = ring

    def _check_admission(self, sub: Subscription) -> None:
        if not sub.external:
            return  # internal subscribers never count toward the cap
        if sub.subscriber_id:
            for old in self.subscriptions:
                if old.external and old.subscriber_id == sub.subscriber_id:
                    log.info("session %s: subscriber %s replaced by a new stream",
                             self.session_id, sub.subscriber_id)
                    old.end(Aborted(f"replaced: subscriber {sub.subscriber_id} attached "
                                    "again on another stream"), reason="replaced")
                    self.unsubscribe(old, "replaced")
                    break
        if self.external_count >= self.max_external:
            raise ResourceExhausted(
                f"session {self.session_id} has {self.external_count} subscribers "
                f"(plugins.fanout.max_subscribers_per_session = {self.max_external})")

    def _preload(self, sub: Subscription, after_sequence: int) -> None:
        gap, events, holes = self.ring.after(after_sequence)
        sub.preload(gap, events)
        for first_after, hole in holes:
            sub.mark_hole(first_after, hole)

    def publish(self, events: Sequence[Any]) -> None:
        super().publish(events)
        self.ring.extend(events)

    def restore(self, events: Sequence[Any], *, floor: int | None, reason: int) -> None:
        super().restore(events, floor=floor, reason=reason)
        if floor is not None:
            self.ring.start_at(floor, reason)
        self.ring.extend(events)

    def publish_hole(self, last_before: int, first_after: int, reason: int) -> None:
        super().publish_hole(last_before, first_after, reason)
        self.ring.add_hole(last_before, first_after, reason)
