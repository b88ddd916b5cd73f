"""The dashboard bound to one running gateway: its open pages, alarms and two tasks.

``sg_startup`` creates a :class:`DashboardRuntime` and keeps it in the gateway's stash;
``sg_shutdown`` stops it. It owns, through ``gateway.spawn`` (cancelled and awaited by
the gateway at shutdown):

* the **pusher**: every ``plugins.dashboard.snapshot_interval_seconds`` it sends each
  open overview the sessions its viewer may see (decided afresh for every push), and
  at once, whenever an alarm is raised, the alarm to those who may see it;
* the **access check**: every ``plugins.acl.revocation_check_interval_seconds`` (1 s
  without acl), and at once when a sign-in credential of someone with an open page
  changes (``sg_credential_changed``: revoked, or their directory groups changed), it
  checks each open live page's sign-in again (a revoked or expired token, a revoked
  API key; what the token grants *now*) and, for a session page, whether its viewer
  may still stream that session; a page that fails is told why and closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from sessiongate.core import StashKey

from .auth import Csrf, FailedLogins, SignIns
from .feed import LISTENER_FRAMES, Listener, SessionMirror
from .render import FEED, session_row, sse
from .rules import ldap_login_on

if TYPE_CHECKING:
    from sessiongate.core import EndedSession, GatewayAPI, Metric, Session

    from .auth import SignedIn

__all__ = ["MIRROR", "RUNTIME", "Alarm", "DashboardRuntime", "metrics"]

log = logging.getLogger("sessiongate.plugins.dashboard")

RUNTIME: StashKey[DashboardRuntime] = StashKey("dashboard.runtime")
MIRROR: StashKey[SessionMirror] = StashKey("dashboard.mirror")
#: alarms kept for pages that open later
ALARMS = 50
#: how often sign-ins are checked again without the acl plugin (its key watcher's pace)
KEY_CHECK_SECONDS = 1.0
#: overview frames a page may have waiting (a snapshot a second: a few is plenty)
OVERVIEW_FRAMES = 8
PAGES = ("overview", "session")


def metrics() -> list[Metric]:
    """The dashboard's metrics (``sg_metrics``)."""
    from sessiongate.core import counter, gauge

    return [
        counter("dashboard_logins", "Sign-ins to the dashboard, by outcome (throttled: "
                "refused for too many failures from the client's address).",
                {"outcome": ("ok", "refused", "throttled", "unavailable")}),
        counter("dashboard_requests_refused", "State-changing requests refused: no valid "
                "CSRF token, or not allowed (a viewer closing a session).",
                {"reason": ("csrf", "permission")}),
        counter("dashboard_pages_dropped", "Live pages dropped for being too slow to take "
                "what they were sent (the browser reconnects and resumes)."),
        counter("dashboard_pages_cut_off", "Live pages closed because their viewer lost "
                "access: signed out, token revoked or expired, key revoked (credential), "
                "or no longer allowed to see the session (permission).",
                {"reason": ("credential", "permission")}),
        gauge("dashboard_live_pages", "Live pages open now (Server-Sent Events streams).",
              {"page": PAGES}),
        counter("dashboard_alarms", "Alarms raised on the overview's strip, by kind.",
                {"kind": ("fault", "overflow", "adoption")}),
    ]


@dataclasses.dataclass(frozen=True)
class Alarm:
    """One entry of the alarms strip. ``about`` is what authorization reads (owner,
    tag); None: for admins only (a worker that was never a session here)."""

    alarm_id: int
    at: float
    kind: str
    session_id: str
    text: str
    about: EndedSession | None

    def data(self) -> dict[str, Any]:
        return {"id": self.alarm_id, "at": self.at, "kind": self.kind,
                "session": self.session_id, "text": self.text}


class DashboardRuntime:
    """Everything the dashboard's pages share in one gateway."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        settings = gateway.settings
        table = settings.plugins.dashboard
        self.interval = float(table.snapshot_interval_seconds)
        self.ldap = ldap_login_on(settings)
        self.api_key_login = bool(table.allow_api_key_login)
        acl_on = settings.get("plugins.acl.enabled") is True
        self.check_interval = (float(settings.plugins.acl.revocation_check_interval_seconds)
                               if acl_on else KEY_CHECK_SECONDS)
        self.sign_ins = SignIns(gateway, ldap=self.ldap)
        self.csrf = Csrf()
        self.failed_logins = FailedLogins()
        self.alarms: collections.deque[Alarm] = collections.deque(maxlen=ALARMS)
        self._alarm_ids = 0
        self._alarm_raised = asyncio.Event()
        self._recheck = asyncio.Event()
        self.overviews: set[Listener] = set()
        self.session_pages: set[Listener] = set()
        self.started = False

    async def start(self) -> None:
        self.gateway.spawn(self._push(), "dashboard-pusher")
        self.gateway.spawn(self._check_access(), "dashboard-access-check")
        self.started = True
        ways = [w for w, on in (("LDAP", self.ldap), ("API key", self.api_key_login)) if on]
        log.info("dashboard: served on the HTTP side port; sign-in with %s",
                 " or ".join(ways))

    async def stop(self) -> None:
        """Close every open page (their handlers return); the tasks are the gateway's."""
        self.started = False
        for listener in [*self.overviews, *self.session_pages]:
            listener.end("shutting down")
        self.overviews.clear()
        self.session_pages.clear()
        self._count_pages()

    # -- pages ---------------------------------------------------------------------------

    def listener(self, viewer: SignedIn, session_id: str = "") -> Listener:
        """A new live page of ``viewer``'s, registered (for the access check)."""
        capacity = LISTENER_FRAMES if session_id else OVERVIEW_FRAMES
        listener = Listener(viewer, session_id, capacity, on_drop=self._dropped)
        (self.session_pages if session_id else self.overviews).add(listener)
        self._count_pages()
        return listener

    def forget(self, listener: Listener) -> None:
        self.overviews.discard(listener)
        self.session_pages.discard(listener)
        self._count_pages()

    def _count_pages(self) -> None:
        self.gateway.metrics.set("dashboard_live_pages", len(self.overviews), page="overview")
        self.gateway.metrics.set("dashboard_live_pages", len(self.session_pages),
                                 page="session")

    def _dropped(self, listener: Listener) -> None:
        self.gateway.metrics.inc("dashboard_pages_dropped")
        log.info("dashboard: a %s page of %s was too slow and was dropped (it resumes when "
                 "it reconnects)", "session" if listener.session_id else "overview",
                 listener.viewer.identity.key_id)

    def end_pages_of(self, digest: str, reason: str, text: str) -> int:
        """Close every live page of one sign-in (sign-out); returns how many."""
        ended = 0
        for listener in [*self.overviews, *self.session_pages]:
            if listener.viewer.digest == digest and listener.ended is None:
                listener.end(reason, sse("denied", {"text": text}))
                self.forget(listener)
                ended += 1
        return ended

    def credential_changed(self, subject: str) -> None:
        """A sign-in credential of ``subject`` (a key id) changed: check the pages of
        that person now rather than at the next interval."""
        if any(listener.viewer.identity.key_id == subject
               for listener in [*self.overviews, *self.session_pages]):
            self._recheck.set()

    # -- what a viewer may see -----------------------------------------------------------

    async def visible_sessions(self, viewer: SignedIn) -> list[Session]:
        """The live sessions ``viewer`` may see, decided now (DECISIONS 4.1: strict)."""
        allowed = self.gateway.is_allowed
        return [s for s in self.gateway.sessions()
                if await allowed(viewer.identity, "list", s)]

    async def snapshot(self, viewer: SignedIn) -> dict[str, Any]:
        now = time.time()
        rows = [session_row(s, self.rate_of(s), now)
                for s in await self.visible_sessions(viewer)]
        return {"sessions": rows, "at": now}

    def rate_of(self, session: Session) -> Any:
        mirror = session.stash.get(MIRROR)
        return mirror.rate if mirror is not None else None

    async def visible_alarms(self, viewer: SignedIn, after: int = 0) -> list[Alarm]:
        identity = viewer.identity
        out = []
        for alarm in list(self.alarms):
            if alarm.alarm_id <= after:
                continue
            if alarm.about is None:
                allowed = identity.is_admin
            else:
                allowed = await self.gateway.is_allowed(identity, "list", alarm.about)
            if allowed:
                out.append(alarm)
        return out

    # -- mirrors -------------------------------------------------------------------------

    @staticmethod
    def attach_mirror(gateway: GatewayAPI, session: Session) -> None:
        """The session is Ready: feed its pages from one internal subscriber, in skip
        mode (never paces the worker, never faults the session)."""
        mirror = SessionMirror(session.session_id, FEED)
        session.stash[MIRROR] = mirror
        if gateway.attach_internal(session, mirror.consume, "dashboard-mirror",
                                   skip=True) is None:
            mirror.finish()

    # -- alarms --------------------------------------------------------------------------

    def raise_alarm(self, kind: str, session_id: str, text: str,
                    about: EndedSession | None) -> None:
        """Add an alarm (from a hook, on the loop); open overviews get it at once."""
        self._alarm_ids += 1
        self.alarms.append(Alarm(self._alarm_ids, time.time(), kind, session_id, text, about))
        self.gateway.metrics.inc("dashboard_alarms", kind=kind)
        self._alarm_raised.set()

    # -- the tasks -------------------------------------------------------------------------

    async def _push(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._alarm_raised.wait(), max(0.0, due - loop.time()))
            self._alarm_raised.clear()
            snapshot_due = loop.time() >= due
            if snapshot_due:
                due = loop.time() + self.interval
            try:
                await self.push_once(snapshots=snapshot_due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dashboard: pushing to the overview pages failed; retrying")

    async def push_once(self, *, snapshots: bool) -> None:
        """Send each open overview its new alarms and, with ``snapshots``, its sessions."""
        for listener in list(self.overviews):
            if listener.ended is not None:
                continue
            for alarm in await self.visible_alarms(listener.viewer, listener.alarms_sent):
                listener.offer(sse("alarm", alarm.data()))
            listener.alarms_sent = self._alarm_ids
            if snapshots:
                listener.offer(sse("snapshot", await self.snapshot(listener.viewer)))

    async def _check_access(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), self.check_interval)
            self._recheck.clear()
            try:
                await self.check_access_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dashboard: checking live pages' access failed; retrying")

    async def check_access_once(self) -> int:
        """Check every live page's sign-in (once per sign-in) and each session page's
        permission; close those that fail. Returns how many were closed."""
        by_sign_in: dict[str, list[Listener]] = {}
        for listener in [*self.overviews, *self.session_pages]:
            if listener.ended is None:
                by_sign_in.setdefault(listener.viewer.digest, []).append(listener)
        closed = 0
        for listeners in by_sign_in.values():
            fresh = await self.sign_ins.resolve(listeners[0].viewer.credential)
            for listener in listeners:
                if fresh is None:
                    why, text = "credential", ("Your sign-in has ended (signed out, expired "
                                               "or revoked). Sign in again.")
                elif listener.session_id and not await self._may_stream(fresh,
                                                                        listener.session_id):
                    why, text = "permission", "You may no longer watch this session."
                else:
                    listener.viewer = fresh  # later pushes are decided for who it is now
                    continue
                listener.end(why, sse("denied", {"text": text}))
                self.forget(listener)
                self.gateway.metrics.inc("dashboard_pages_cut_off", reason=why)
                log.info("dashboard: a live page of %s was closed: %s",
                         listener.viewer.identity.key_id,
                         "its sign-in ended" if why == "credential" else "access withdrawn")
                closed += 1
        return closed

    async def _may_stream(self, viewer: SignedIn, session_id: str) -> bool:
        session = self.gateway.session(session_id)
        # an ended session's page ends by itself (its mirror says so)
        return session is None or await self.gateway.is_allowed(viewer.identity, "stream",
                                                                session)
