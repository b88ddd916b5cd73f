"""fanout: many subscribers per session, isolated backpressure, a replay ring.

Switched by ``plugins.fanout.enabled`` (default on). Settings:

* ``plugins.fanout.max_subscribers_per_session`` - external subscribers per session;
  one more gets ``RESOURCE_EXHAUSTED`` (internal subscribers do not count);
* ``plugins.fanout.replay_buffer_capacity`` - events the replay ring keeps (0: none);
* ``plugins.fanout.replay_retention_seconds`` - their maximum age (0: no age limit).

See docs/plugins/fanout.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiongate.core import (
    EventLog,
    Metric,
    Setting,
    counter,
    hookimpl,
    non_negative_int,
    non_negative_number,
    positive_int,
)

from .distributor import REFUSED, REPLACED, FanoutDistributor

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, Session, Settings

__all__ = ["FanoutDistributor"]


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return [
        positive_int("plugins.fanout.max_subscribers_per_session",
                     "External subscribers per session at most; one more gets "
                     "RESOURCE_EXHAUSTED. Internal subscribers do not count.", maximum=10_000),
        non_negative_int("plugins.fanout.replay_buffer_capacity",
                         "Newest events kept per session for resuming subscribers (0: none).",
                         maximum=1_000_000),
        non_negative_number("plugins.fanout.replay_retention_seconds",
                            "Oldest age of a kept event (0: no age limit).", maximum=7 * 86400),
    ]


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return [
        counter(REPLACED, "Subscribers replaced by a new stream with the same "
                "subscriber_id (the old one ends ABORTED)."),
        counter(REFUSED, "Streams refused RESOURCE_EXHAUSTED: the session had "
                "plugins.fanout.max_subscribers_per_session subscribers."),
    ]


@hookimpl
def sg_make_distributor(gateway: GatewayAPI, session: Session) -> FanoutDistributor:
    fanout = gateway.settings.plugins.fanout
    ring = EventLog(int(fanout.replay_buffer_capacity), float(fanout.replay_retention_seconds))
    return FanoutDistributor(
        max_external=int(fanout.max_subscribers_per_session), count=gateway.metrics.inc,
        **gateway.distributor_options(session, log=ring),
    )
