"""Many subscribers per session: one pump, one event log, a cursor each, replay.

Builds on core's :class:`~sessiongate.core.Distributor` (which already paces
the worker to the fastest complete subscriber, isolates a laggard and faults the
session under ``fail_fast`` only when that subscriber was its only external one)
and adds the subscriber cap, replacement by ``subscriber_id`` and resume: the log
it is given retains the newest events for resuming subscribers (the replay ring),
and a resumed subscriber reads them where they lie.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sessiongate.core import Distributor, Subscription
from sessiongate.core.errors import Aborted, ResourceExhausted

__all__ = ["REFUSED", "REPLACED", "FanoutDistributor"]

log = logging.getLogger("sessiongate.plugins.fanout")

#: metric names (declared by the plugin's sg_metrics)
REPLACED = "fanout_subscribers_replaced"
REFUSED = "fanout_subscribers_refused"


def _uncounted(name: str) -> None:
    """Counting for a distributor built without a gateway (unit tests)."""


class FanoutDistributor(Distributor):
    supports_replay = True

    def __init__(self, *, max_external: int, count: Callable[[str], None] = _uncounted,
                 **kwargs: Any) -> None:
        """:param count: counts one of the plugin's metrics by name (``metrics.inc``)."""
        super().__init__(**kwargs)
        self.max_external = max_external
        self._count = count

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
                    self._count(REPLACED)
                    break
        if self.external_count >= self.max_external:
            self._count(REFUSED)
            raise ResourceExhausted(
                f"session {self.session_id} has {self.external_count} subscribers "
                f"(plugins.fanout.max_subscribers_per_session = {self.max_external})")
