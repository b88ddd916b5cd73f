"""The session manager: live sessions (and a bounded memory of ended ones), their
opening, adoption and teardown.

It knows nothing of gRPC or of any plugin: decisions come from the hooks it is
given, identity checks from the ``authorize`` callable.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import pathlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from sessiongate.core.config.settings import Settings
from sessiongate.core.errors import (
    OVERFLOW_MESSAGE,
    SHUTDOWN_MESSAGE,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from sessiongate.core.identity import TAG_PATTERN, Identity
from sessiongate.core.metrics import Metrics, Scrape, status_code
from sessiongate.core.sessions.session import (
    ENDED,
    PROTOCOL_ERROR,
    EndedSession,
    Session,
    SessionState,
    new_session_id,
)
from sessiongate.core.sessions.spares import SparePool
from sessiongate.core.streaming.events import Subscription
from sessiongate.core.streaming.governor import CreditGovernor
from sessiongate.core.tasks import OwnedTasks
from sessiongate.core.workers import terminator
from sessiongate.core.workers.handle import StartTimeout, WorkerConfig, WorkerHandle
from sessiongate.v1 import gateway_pb2, worker_pb2

if TYPE_CHECKING:
    from sessiongate.core.pluginhost.host import Hooks

__all__ = ["TOMBSTONES", "TOMBSTONE_SECONDS", "AdoptionRecord", "SessionManager"]

log = logging.getLogger("sessiongate.gateway")

#: ended sessions remembered (their final SessionInfo) at most, by count and by age
TOMBSTONES = 1024
TOMBSTONE_SECONDS = 3600.0
MAX_CLIENT_NAME = 256

Authorize = Callable[[Identity, str, "Session | None"], Awaitable[None]]
FrameHandler = Callable[[Session, worker_pb2.WorkerFrame], None]


@dataclasses.dataclass(frozen=True)
class AdoptionRecord:
    """What a later gateway needs to take over a session whose worker outlived its own:
    the session's identity and the worker's (its pid and start time prove it is the same
    process; the nonce is known only by its SHA-256 digest)."""

    session_id: str
    owner_key_id: str
    client_name: str
    backend: str
    tag: str
    lease_seconds: float
    pid: int
    create_time: float
    socket_path: str
    nonce_digest: bytes


def _fault_cause(session: Session, old: str, reason: str) -> str:
    """Why a session faulted, as a few words for a metric label (the reason is text)."""
    if old == SessionState.OPENING:
        return "start_failed"  # its worker did not start, or was not adopted
    worker = session.worker
    if worker is not None and worker.lost_cause and worker.lost_reason == reason:
        return worker.lost_cause
    if reason.startswith(OVERFLOW_MESSAGE):
        return "overflow"
    if reason.startswith(PROTOCOL_ERROR):
        return "protocol_error"
    return "other"


class SessionManager:
    """Live sessions (and a bounded memory of ended ones), their opening and teardown.

    :param authorize: raises ``PermissionDenied`` when an identity may not act.
    :param home: the marker that the workers of this state dir carry (the terminator
        recognises them by it).
    """

    def __init__(self, *, settings: Settings, hooks: Hooks, metrics: Metrics,
                 backends: Mapping[str, str], authorize: Authorize,
                 runtime_dir: pathlib.Path, home: str) -> None:
        self.settings = settings
        self.hooks = hooks
        self.metrics = metrics
        self.backends = backends
        self.authorize = authorize
        self.runtime_dir = runtime_dir
        self.home = home
        self.live: dict[str, Session] = {}
        self.ended: collections.OrderedDict[str, EndedSession] = collections.OrderedDict()
        #: workers left running for the next gateway (reattach), for whoever must reap them
        self.released: list[WorkerHandle] = []
        self.worker_config = WorkerConfig(settings, metrics)
        self._count_delivered = metrics.child("events_delivered")
        #: holds workers' credit while the event loop lags (events.max_loop_lag_ms)
        self.governor = CreditGovernor(int(settings.events.max_loop_lag_ms) / 1000, metrics,
                                       on_hold=self._hold_credit)
        self.tasks = OwnedTasks()
        self._sweeper: asyncio.Task[None] | None = None
        self.accepting = True
        backend = str(settings.workers.backend)
        self.spares = SparePool(count=int(settings.workers.spare_workers), backend=backend,
                                start=lambda: self._start_spare(backend), tasks=self.tasks)

    # -- lookup ------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | EndedSession:
        """A live session, or what is remembered of an ended one (its final view)."""
        if not session_id:
            raise InvalidArgument("session_id is empty")
        self._forget_old()
        session = self.live.get(session_id) or self.ended.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id} was not found")
        return session

    # -- background work ---------------------------------------------------------------

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        return self.tasks.spawn(coro, name)

    def _hold_credit(self) -> None:
        """The event loop lags: every paced worker stops until the governor releases."""
        for session in self.live.values():
            session.hold_credit()

    def start(self) -> None:
        self._sweeper = self.spawn(self._sweep(), "lease-sweeper")
        if self.governor.max_lag > 0:
            self.spawn(self.governor.run(), "credit-governor")
        self.spares.refill()

    async def _sweep(self) -> None:
        interval = float(self.settings.sessions.lease_sweep_interval_seconds)
        while True:
            await asyncio.sleep(interval)
            self.sweep_once()

    def sweep_once(self) -> None:
        now = time.monotonic()
        for session in list(self.live.values()):
            if session.state in (SessionState.READY, SessionState.DETACHED) \
                    and session.lease_expired(now):
                self.spawn(self.close(session, "lease expired"), "lease-close")

    # -- callbacks given to sessions and distributors ----------------------------------

    def _on_state(self, session: Session, old: str, new: str, reason: str) -> None:
        why = f" ({reason})" if reason else ""
        level = logging.ERROR if new == SessionState.FAULTED else logging.INFO
        log.log(level, "session %s: %s -> %s%s", session.session_id, old, new, why)
        self.metrics.inc("session_transitions", state=new)
        self.hooks.notify_sync("sg_session_state_changed", session=session, old=old, new=new,
                               reason=reason)
        if new == SessionState.FAULTED:
            self.metrics.inc("session_faults", cause=_fault_cause(session, old, reason))
            self.spawn(self._finish(session, reason), "fault-teardown")

    def subscription_released(self, session: Session) -> Callable[[Subscription, str], None]:
        def released(sub: Subscription, reason: str) -> None:
            log.info("session %s: subscriber %s detached (%s)", session.session_id,
                     sub.subscriber_id or sub.kind, reason)
            self.metrics.inc("subscriptions_ended", reason=reason)
            if sub.keeps_alive and not session.kept_alive():
                session.touch()  # the lease restarts when the last keeps-alive stream leaves
            self.hooks.notify_sync("sg_subscriber_detached", session=session, subscription=sub,
                                   reason=reason)
        return released

    def worker_exited(self, session: Session) -> Callable[[int, int | None], None]:
        def exited(pid: int, returncode: int | None) -> None:
            self.spawn(self.hooks.notify("sg_worker_exited", session=session, pid=pid,
                                         returncode=returncode), "worker-exited")
        return exited

    def distributor_options(self, session: Session, **extra: Any) -> dict[str, Any]:
        """The keyword arguments every :class:`Distributor` of ``session`` needs."""
        events = self.settings.events
        return {
            "session_id": session.session_id,
            "capacity": int(events.queue_capacity),
            "policy": str(events.backpressure_policy),
            "stall_timeout": float(events.stall_timeout_seconds),
            "fault_session": session.fault,
            "on_release": self.subscription_released(session),
            "count_overflow": self._count_overflow,
            "count_delivered": self._count_delivered,
            "count_gap": self._count_gap,
            "grant": session.grant,
            **extra,
        }

    def _count_overflow(self, kind: str, policy: str) -> None:
        self.metrics.inc("queue_overflows", kind=kind, policy=policy)

    def _count_gap(self, reason: int) -> None:
        self.metrics.inc("gaps", reason=gateway_pb2.GapReason.Name(reason))

    # -- metrics read when scraped ---------------------------------------------------------

    def scrape(self, scrape: Scrape) -> None:
        """Sessions by state, spares, subscribers by kind, the slowest subscriber of each
        session, what the event logs retain: read now, at no cost to the hot path."""
        now = time.monotonic()
        states: collections.Counter[str] = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()
        retained, oldest = 0, 0.0
        for session in list(self.live.values()):
            states[session.state] += 1
            dist = session.distributor
            if dist is None:
                continue
            subs = dist.subscriptions
            if subs:
                kinds.update(sub.kind for sub in subs)
                scrape.observe("subscriber_lag_events", max(sub.backlog for sub in subs))
            retained += len(dist.log)
            oldest = max(oldest, dist.log.oldest_age(now))
        for state, count in states.items():
            scrape.set("sessions", count, state=state)
        for kind, count in kinds.items():
            scrape.set("subscribers", count, kind=kind)
        scrape.set("event_log_events", retained)
        scrape.set("event_log_oldest_age_seconds", oldest)
        scrape.set("spare_workers_ready", self.spares.ready_count)
        scrape.set("credit_held_sessions", self.governor.held_sessions())
        scrape.set("event_loop_lag_seconds", self.governor.lag)

    # -- open --------------------------------------------------------------------------

    def _check_open(self, client_name: str, backend: str, tag: str,
                    lease_seconds: float) -> None:
        if not self.accepting:
            raise Unavailable(f"{SHUTDOWN_MESSAGE}: no new sessions")
        if len(client_name) > MAX_CLIENT_NAME:
            raise InvalidArgument(f"client_name is longer than {MAX_CLIENT_NAME} characters")
        if backend not in self.backends:
            raise InvalidArgument(f"unknown backend {backend!r} (known: "
                                  f"{', '.join(sorted(self.backends))})")
        if lease_seconds < 0:
            raise InvalidArgument("lease_seconds must be >= 0")
        if tag and not TAG_PATTERN.fullmatch(tag):
            raise InvalidArgument(f"tag {tag!r} is not valid: 1 to 64 of a-z 0-9 . _ -, "
                                  "starting with a letter or digit")

    async def open(self, identity: Identity, *, client_name: str, backend: str, tag: str,
                   lease_seconds: float) -> Session:
        """Open a session: READY when it returns. Counted by outcome, timed."""
        started = time.perf_counter()
        try:
            backend = backend or str(self.settings.workers.backend)
            self._check_open(client_name, backend, tag, lease_seconds)
            await self.authorize(identity, "open", None)
            spare = self.spares.take(backend)
            session = spare[0] if spare else self._new_session(backend)
            session.owner_key_id, session.client_name = identity.key_id, client_name
            session.tag = tag
            session.lease_seconds = lease_seconds or float(
                self.settings.sessions.default_lease_seconds)
            session.opened_wall = time.time()
            session.touch()
            try:
                await self.hooks.veto("sg_session_open", session=session, identity=identity)
                limit = int(self.settings.sessions.max_sessions)
                if not self.accepting:
                    raise Unavailable(f"{SHUTDOWN_MESSAGE}: no new sessions")
                if len(self.live) >= limit:  # checked and claimed with no await in between
                    raise ResourceExhausted(f"{len(self.live)} sessions are open "
                                            f"(sessions.max_sessions = {limit})")
            except BaseException:
                if spare:  # its id was shown to plugins: never reuse it
                    self.spares.discard(spare[1], "open refused")
                raise
            self.live[session.session_id] = session
            try:
                session.distributor = await self.hooks.decide("sg_make_distributor",
                                                              session=session,
                                                              settings=self.settings)
                if spare:
                    session.worker = spare[1]
                    self._bind(session)
                else:
                    await self._spawn_worker(session)
                assert session.worker is not None
                await session.worker.go()
            except BaseException as exc:
                session.fault(getattr(exc, "message", None) or f"open failed: {exc!r}")
                if session.worker is None or session.worker.process is None:
                    await self._finish(session, session.reason)
                await asyncio.shield(session.ended.wait())
                raise
            self._became_ready(session, "")
            await self.hooks.notify("sg_session_opened", session=session)
            self._start_internal_subscribers(session)
        except BaseException as exc:
            self.metrics.inc("session_opens", code=status_code(exc))
            raise
        self.metrics.inc("session_opens", code="OK")
        self.metrics.observe("session_open_seconds", time.perf_counter() - started,
                             worker="spare" if spare else "cold")
        return session

    # -- workers -----------------------------------------------------------------------

    def _new_session(self, backend: str) -> Session:
        return Session(
            session_id=new_session_id(), owner_key_id="", client_name="", backend=backend,
            tag="", lease_seconds=float(self.settings.sessions.default_lease_seconds),
            on_state=self._on_state, governor=self.governor)

    def _bind(self, session: Session) -> None:
        assert session.worker is not None
        session.worker.bind(on_events=session.on_events, on_fault=session.fault,
                            on_exit=self.worker_exited(session))

    async def _endpoint(self, session: Session) -> str:
        return str(await self.hooks.decide("sg_worker_endpoint", session=session,
                                           runtime_dir=str(self.runtime_dir)))

    async def _spawn_worker(self, session: Session) -> WorkerHandle:
        handle = WorkerHandle(
            session_id=session.session_id, socket_path=await self._endpoint(session),
            config=self.worker_config, on_events=session.on_events, on_fault=session.fault,
            on_exit=self.worker_exited(session))
        session.worker = handle  # before the await: a close meanwhile must find it
        options: dict[str, Any] = {}
        # the implementation called first wins a key (as for sg_worker_backends)
        for contributed in reversed(self.hooks.collect("sg_worker_options", session=session)):
            options.update(contributed)
        await handle.spawn(
            backend_spec=self.backends[session.backend], backend_name=session.backend,
            env_extra={terminator.HOME_ENV: self.home}, options=options,
            launch_hook=lambda argv, env: self.hooks.notify_sync(
                "sg_worker_launch", session=session, argv=argv, env=env))
        return handle

    async def _start_spare(self, backend: str) -> tuple[Session, WorkerHandle]:
        session = self._new_session(backend)
        return session, await self._spawn_worker(session)

    # -- adoption ----------------------------------------------------------------------

    async def adopt(self, record: AdoptionRecord, *, window: float,
                    on_frame: FrameHandler) -> Session | None:
        """Take over the running worker of a session an earlier gateway opened.

        The worker must provably be ours (same pid, start time, session and state
        dir); it must connect to the session's socket within ``window`` seconds and
        present the nonce whose digest is recorded. ``on_frame`` receives its adopt
        frame and the history frames that follow. The session is then READY again with
        its id, owner and tag. Otherwise the worker, if ours, is stopped and None is
        returned. Which sessions to adopt, and when, is the caller's policy.
        """
        if record.session_id in self.live:
            log.warning("session %s is live already; not adopted again", record.session_id)
            self.metrics.inc("session_adoptions", outcome="already_live")
            await self._adoption_failed(record, "already_live")
            return None
        proc = terminator.our_worker(record.pid, record.create_time, record.session_id,
                                     self.home)
        if proc is None:
            outcome = "pid_mismatch" if psutil.pid_exists(record.pid) else "gone"
            log.warning("session %s: its worker (pid %d) is %s; not adopted",
                        record.session_id, record.pid,
                        "another process now" if outcome == "pid_mismatch" else "gone")
            self.metrics.inc("session_adoptions", outcome=outcome)
            await self._adoption_failed(record, outcome)
            return None
        session = Session(session_id=record.session_id, owner_key_id=record.owner_key_id,
                          client_name=record.client_name, backend=record.backend,
                          tag=record.tag, lease_seconds=record.lease_seconds,
                          on_state=self._on_state, governor=self.governor)
        self.live[record.session_id] = session
        try:
            session.distributor = await self.hooks.decide(
                "sg_make_distributor", session=session, settings=self.settings)
            session.worker = WorkerHandle(
                session_id=record.session_id, socket_path=record.socket_path,
                config=self.worker_config, on_events=session.on_events,
                on_fault=session.fault, on_frame=lambda frame: on_frame(session, frame))
            await session.worker.expect(nonce_digest_=record.nonce_digest, pid=record.pid,
                                        create_time=record.create_time)
            await session.worker.wait_ready(window)
            # from now on its exit is an adopted session's (not a failed adoption's)
            session.worker.bind(on_events=session.on_events, on_fault=session.fault,
                                on_exit=self.worker_exited(session),
                                on_frame=lambda frame: on_frame(session, frame))
        except Exception as exc:
            worker = session.worker
            # its connection refused (why), or no valid one in time, or something else
            outcome = (worker.refusal if worker is not None and worker.refusal
                       else "expired" if isinstance(exc, StartTimeout) else "failed")
            session.fault(getattr(exc, "message", None) or f"adoption failed: {exc!r}")
            await asyncio.shield(session.ended.wait())
            log.warning("session %s: worker pid %d was not adopted within %g s (%s); "
                        "stopped", record.session_id, record.pid, window, outcome)
            self.metrics.inc("session_adoptions", outcome=outcome)
            await terminator.stop_foreign(proc, 0.0)
            await self._adoption_failed(record, outcome)
            return None
        self.metrics.inc("session_adoptions", outcome="adopted")
        self._became_ready(session, "worker re-adopted")
        await self.hooks.notify("sg_session_adopted", session=session)
        self._start_internal_subscribers(session)
        return session

    async def _adoption_failed(self, record: AdoptionRecord, outcome: str) -> None:
        """Tell plugins (alarms, dashboards) that a released worker was not adopted."""
        await self.hooks.notify("sg_session_adoption_failed", record=record, outcome=outcome)

    def _became_ready(self, session: Session, reason: str) -> None:
        """Its worker is Ready: READY (the caller counts and announces it)."""
        if not session.transition(SessionState.READY, reason):
            raise Unavailable(f"session {session.session_id} failed while opening: "
                              f"{session.reason}")

    def _start_internal_subscribers(self, session: Session) -> None:
        for consumers in self.hooks.collect("sg_internal_subscribers", session=session):
            for consumer in consumers:
                self.attach_internal(session, consumer)

    def attach_internal(self, session: Session, consumer: Any,
                        name: str | None = None, *, skip: bool = False) -> Subscription | None:
        """Feed ``consumer(session, subscription)`` from an internal subscription, as a
        task the session owns; the subscription ends when the consumer returns.
        ``skip``: one that falls behind skips ahead with a ``SLOW_SUBSCRIBER`` gap
        instead of being disconnected (internal subscriptions never pace the worker)."""
        name = name or getattr(consumer, "__name__", "internal")
        sub = Subscription(kind=name, external=False, skip=skip)
        try:
            session.subscribe(sub)
        except Exception:
            log.exception("session %s: internal subscriber %s not attached",
                          session.session_id, name)
            return None
        self.hooks.notify_sync("sg_subscriber_attached", session=session, subscription=sub)
        session.spawn(self._run_internal(session, consumer, sub), f"internal-{name}")
        return sub

    @staticmethod
    async def _run_internal(session: Session, consumer: Any, sub: Subscription) -> None:
        try:
            await consumer(session, sub)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: internal subscriber %s failed", session.session_id,
                          sub.kind)
        finally:
            session.unsubscribe(sub, "internal subscriber ended")

    # -- close -------------------------------------------------------------------------

    async def close(self, session: Session | EndedSession, reason: str) -> Session | EndedSession:
        """Close (idempotent): streams end OK after their backlog, the worker stops."""
        if isinstance(session, EndedSession) or session.state in ENDED \
                or session.state == SessionState.CLOSING:
            await session.ended.wait()
            return session
        session.transition(SessionState.CLOSING, reason)
        session.end_streams(None)
        await self._finish(session, reason)
        return session

    async def _finish(self, session: Session, reason: str) -> None:
        if session.worker is not None:
            if session.released:
                await session.worker.wait_tasks()
            else:
                await session.worker.stop(reason)
        await session.cancel_tasks()
        session.transition(SessionState.CLOSED, reason)
        self.governor.forget(session.session_id)
        if self.live.pop(session.session_id, None) is not None:
            self.ended[session.session_id] = EndedSession(session)
            self._forget_old()
        if not session.ended.is_set():
            session.ended.set()
            if session.released:
                await self.hooks.notify("sg_session_released", session=session)
            else:
                await self.hooks.notify("sg_session_closed", session=session,
                                        reason=session.reason)

    def _forget_old(self) -> None:
        ended = self.ended
        cutoff = time.monotonic() - TOMBSTONE_SECONDS
        while ended and (len(ended) > TOMBSTONES or next(iter(ended.values())).ended_at < cutoff):
            ended.popitem(last=False)

    async def shutdown(self, reason: str = SHUTDOWN_MESSAGE) -> None:
        """Refuse new sessions, end every stream UNAVAILABLE, stop (or release) every
        worker, then cancel and await every task."""
        self.accepting = False
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.spares.close()
        sessions = list(self.live.values())
        for session in sessions:
            if session.state not in ENDED:
                session.transition(SessionState.CLOSING, reason)
            message = f"session {session.session_id}: {reason}"
            session.end_streams(Unavailable(message))
            worker = session.worker
            if worker is None:
                continue
            worker.abort_commands(Unavailable(message))  # stopped or released: our cause
            if worker.alive and await self.hooks.decide("sg_worker_release",
                                                            session=session):
                session.released = True
                worker.release()
                self.released.append(worker)
        await asyncio.gather(*(self._finish(s, reason) for s in sessions),
                             return_exceptions=True)
        await self.tasks.cancel_and_wait()
