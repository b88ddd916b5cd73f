"""reconnect: sessions outlive a dropped subscriber; streams resume from a sequence.

Switched by ``plugins.reconnect.enabled`` (default on; needs the fanout plugin,
whose replay ring it resumes from). When the last subscriber that keeps a
session alive drops (network cut, crash, cancel), the session waits in
``DETACHED`` for ``plugins.reconnect.detach_grace_seconds``: its worker keeps
producing into the replay ring, a resume returns it to ``READY``, and when the
window ends with nobody back the session is closed ("detach grace expired").
An explicit ``CloseSession`` still closes at once, and the lease still applies
(a DETACHED session closes at the earlier of grace end and lease end).

``StreamEvents`` with ``after_sequence`` is served by the distributor's replay
(core's interface, fanout's ring); who may resume is the ``resume`` action of
``sg_authorize`` (the acl plugin: owner or admin).
See docs/plugins/reconnect.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sessiongate.core import (
    Metric,
    SessionState,
    Setting,
    StashKey,
    counter,
    hookimpl,
    positive_number,
)

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, Session, Settings, Subscription

log = logging.getLogger("sessiongate.plugins.reconnect")

#: the session's detach-grace timer, while it is DETACHED
GRACE_TASK: StashKey[asyncio.Task[None]] = StashKey("reconnect.grace")
#: detach reasons that do not mean "the subscriber went away"
NOT_A_DROP = frozenset({"session ended", "replaced"})
#: metric names (declared by sg_metrics)
DETACHES = "reconnect_detaches"
RESUMES = "reconnect_resumes"
GRACE_EXPIRED = "reconnect_grace_expired"


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return [
        positive_number("plugins.reconnect.detach_grace_seconds",
                        "How long a session whose last subscriber dropped waits in DETACHED "
                        "for a resume before it is closed.", maximum=86400),
        Setting("plugins.fanout.enabled",
                "true while plugins.reconnect.enabled is true (reconnect resumes from "
                "fanout's replay ring)", lambda v: v is True,
                "Prerequisite of the reconnect plugin.", when="plugins.reconnect.enabled"),
    ]


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return [
        counter(DETACHES, "Sessions that went DETACHED: their last subscriber that keeps "
                "them alive dropped."),
        counter(RESUMES, "DETACHED sessions back to READY: a subscriber resumed in time."),
        counter(GRACE_EXPIRED, "DETACHED sessions closed: nobody resumed within "
                "plugins.reconnect.detach_grace_seconds."),
    ]


@hookimpl
def sg_replay_supported(session: Session) -> bool | None:
    dist = session.distributor
    return True if dist is not None and dist.supports_replay else None


@hookimpl
def sg_subscriber_attached(gateway: GatewayAPI, session: Session,
                           subscription: Subscription) -> None:
    if subscription.keeps_alive and session.state == SessionState.DETACHED:
        task = session.stash.pop(GRACE_TASK, None)
        if task is not None:
            task.cancel()
        if session.transition(SessionState.READY, "subscriber resumed"):
            gateway.metrics.inc(RESUMES)


@hookimpl
def sg_subscriber_detached(gateway: GatewayAPI, session: Session, subscription: Subscription,
                           reason: str) -> None:
    if (reason in NOT_A_DROP or not subscription.keeps_alive
            or session.state != SessionState.READY or session.kept_alive()):
        return
    grace = float(gateway.settings.plugins.reconnect.detach_grace_seconds)
    session.transition(SessionState.DETACHED, f"last subscriber gone ({reason}); "
                       f"waiting {grace:g} s for a resume")
    gateway.metrics.inc(DETACHES)
    session.stash[GRACE_TASK] = session.spawn(_grace(gateway, session, grace), "detach-grace")


async def _grace(gateway: GatewayAPI, session: Session, grace: float) -> None:
    await asyncio.sleep(grace)
    if session.state == SessionState.DETACHED:
        session.stash.pop(GRACE_TASK, None)
        gateway.metrics.inc(GRACE_EXPIRED)
        await gateway.close_session(session, "detach grace expired")
