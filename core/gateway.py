"""The gateway: sessions, identity and plugins put together, independent of gRPC.

:class:`Gateway` owns the key store, the :class:`SessionManager` and every
background task (the lease sweeper, session teardowns); ``stop()`` cancels and
awaits all of them. The gRPC layer (:mod:`sessiongate.core.server`) is a thin
translation on top.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import pathlib
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pluggy

from sessiongate.core import terminator
from sessiongate.core.auth import ADMIN_SCOPE, TAG_PATTERN, Identity, KeyStore, parse_bearer
from sessiongate.core.errors import (
    SHUTDOWN_MESSAGE,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StartupError,
    Unauthenticated,
    Unavailable,
)
from sessiongate.core.events import Subscription
from sessiongate.core.metrics import Metrics
from sessiongate.core.plugins import Hooks
from sessiongate.core.session import ENDED, EndedSession, Session, SessionState, new_session_id
from sessiongate.core.settings import Settings, runtime_dir
from sessiongate.core.workers import WorkerConfig, WorkerHandle

__all__ = ["BOOTSTRAP_KEY_FILE", "LOCK_FILE", "Gateway", "SessionManager"]

log = logging.getLogger("sessiongate.gateway")

BOOTSTRAP_KEY_FILE = "bootstrap-admin.key"
#: in state_dir: locked (flock) by the gateway using the folder, holds its pid
LOCK_FILE = "gateway.lock"
#: ended sessions remembered (their final SessionInfo) at most, by count and by age
TOMBSTONES = 1024
TOMBSTONE_SECONDS = 3600.0
MAX_CLIENT_NAME = 256
#: background tasks that start or stop a spare worker: awaited at shutdown, not cancelled
SPARE_TASKS = frozenset({"spare-worker", "spare-stop"})


def _flock_state_dir(state_dir: pathlib.Path) -> int:
    """Lock ``state_dir`` for this process: the open descriptor of its lock file.

    An exclusive ``flock``, held until the descriptor is closed (or the process ends,
    however it ends): one gateway per state dir, so no gateway ever takes another's
    workers for leftovers. The descriptor is not inherited by workers.
    """
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f"pid {holder}" if holder.isdigit() else "pid unknown"
        raise StartupError(f"state_dir {state_dir} is in use by another gateway ({pid}); "
                           "stop it or use another state_dir") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SessionManager:
    """Live sessions (and a bounded memory of ended ones), their opening and teardown."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.hooks = gateway.hooks
        self.metrics = gateway.metrics
        self.live: dict[str, Session] = {}
        self.ended: collections.OrderedDict[str, EndedSession] = collections.OrderedDict()
        #: workers left running for the next gateway (reattach), for whoever must reap them
        self.released: list[WorkerHandle] = []
        self.worker_config = WorkerConfig(self.settings)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.accepting = True
        #: pre-started workers of the default backend: (their future session, worker)
        self._spares: list[tuple[Session, WorkerHandle]] = []
        self._spares_starting = 0
        self.spare_count = int(self.settings.workers.spare_workers)

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

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self) -> None:
        self._sweeper = self.spawn(self._sweep(), "lease-sweeper")
        self._refill_spares()

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
        self.metrics.inc("session_state", state=new)
        self.hooks.notify_sync("sg_session_state_changed", session=session, old=old, new=new,
                               reason=reason)
        if new == SessionState.FAULTED:
            self.metrics.inc("faults", reason=reason.split(":")[0])
            self.spawn(self._finish(session, reason), "fault-teardown")

    def subscription_released(self, session: Session) -> Callable[[Subscription, str], None]:
        def released(sub: Subscription, reason: str) -> None:
            log.info("session %s: subscriber %s detached (%s)", session.session_id,
                     sub.subscriber_id or sub.kind, reason)
            self.metrics.inc("stream_disconnects", reason=reason)
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
            "count_overflow": self.overflow_counter(session),
            "grant": session.grant,
            **extra,
        }

    def overflow_counter(self, session: Session) -> Callable[[str], None]:
        def overflowed(kind: str) -> None:
            self.metrics.inc("queue_overflows", kind=kind)
        return overflowed

    # -- open --------------------------------------------------------------------------

    async def open(self, identity: Identity, *, client_name: str, backend: str, tag: str,
                   lease_seconds: float) -> Session:
        if not self.accepting:
            raise Unavailable(f"{SHUTDOWN_MESSAGE}: no new sessions")
        if len(client_name) > MAX_CLIENT_NAME:
            raise InvalidArgument(f"client_name is longer than {MAX_CLIENT_NAME} characters")
        backend = backend or str(self.settings.workers.backend)
        spec = self.gateway.backends.get(backend)
        if spec is None:
            raise InvalidArgument(f"unknown backend {backend!r} (known: "
                                  f"{', '.join(sorted(self.gateway.backends))})")
        if lease_seconds < 0:
            raise InvalidArgument("lease_seconds must be >= 0")
        if tag and not TAG_PATTERN.fullmatch(tag):
            raise InvalidArgument(f"tag {tag!r} is not valid: 1 to 64 of a-z 0-9 . _ -, "
                                  "starting with a letter or digit")
        self.gateway.authorize(identity, "open", None)
        lease = lease_seconds or float(self.settings.sessions.default_lease_seconds)
        spare = self._take_spare(backend)
        session = spare[0] if spare else self._new_session(backend)
        session.owner_key_id, session.client_name, session.tag = identity.key_id, client_name, tag
        session.lease_seconds = lease
        session.opened_wall = time.time()
        session.touch()
        try:
            await self.hooks.veto("sg_session_open", session=session, identity=identity)
            limit = int(self.settings.sessions.max_sessions)
            if len(self.live) >= limit:  # checked and claimed with no await in between
                raise ResourceExhausted(f"{len(self.live)} sessions are open "
                                        f"(sessions.max_sessions = {limit})")
        except BaseException:
            if spare:  # its id and attributes were shown to plugins: never reuse them
                self.spawn(spare[1].stop("open refused"), "spare-stop")
                self._refill_spares()
            raise
        self.live[session.session_id] = session
        self._refill_spares()
        try:
            session.distributor = self.hooks.decide(
                "sg_make_distributor", session=session, settings=self.settings)
            if spare:
                session.worker = spare[1]
                self._bind(session)
            else:
                session.worker = await self._spawn_worker(session, spec)
            await session.worker.go()
        except BaseException as exc:
            session.fault(getattr(exc, "message", None) or f"open failed: {exc!r}")
            if session.worker is None or session.worker.process is None:
                await self._finish(session, session.reason)
            await asyncio.shield(session.ended.wait())
            raise
        await self._became_ready(session, "", "sessions_opened")
        return session

    # -- workers and spares --------------------------------------------------------------

    def _new_session(self, backend: str) -> Session:
        session = Session(
            session_id=new_session_id(), owner_key_id="", client_name="", backend=backend,
            tag="", lease_seconds=float(self.settings.sessions.default_lease_seconds),
            on_state=self._on_state)
        session.attributes["gateway"] = self.gateway
        return session

    def _bind(self, session: Session) -> None:
        assert session.worker is not None
        session.worker.bind(on_events=session.on_events, on_fault=session.fault,
                            on_exit=self.worker_exited(session))

    async def _spawn_worker(self, session: Session, spec: str) -> WorkerHandle:
        socket_path = self.hooks.decide("sg_worker_endpoint", session=session,
                                        runtime_dir=str(self.gateway.runtime_dir))
        handle = WorkerHandle(
            session_id=session.session_id, socket_path=socket_path, config=self.worker_config,
            on_events=session.on_events, on_fault=session.fault,
            on_exit=self.worker_exited(session))
        session.worker = handle
        await handle.spawn(
            backend_spec=spec, backend_name=session.backend,
            env_extra=self.gateway.worker_env(session),
            launch_hook=lambda argv, env: self.hooks.notify_sync(
                "sg_worker_launch", session=session, argv=argv, env=env))
        return handle

    def _take_spare(self, backend: str) -> tuple[Session, WorkerHandle] | None:
        """A pre-started worker for ``backend`` (already past its imports), if any."""
        while self._spares:
            session, handle = self._spares.pop(0)
            if handle.lost_reason or handle.returncode is not None:
                continue  # died while waiting; its reaper logged why
            if session.backend == backend:
                return session, handle
            self._spares.append((session, handle))
            return None
        return None

    def _refill_spares(self) -> None:
        while self.accepting and len(self._spares) + self._spares_starting < self.spare_count:
            self._spares_starting += 1
            self.spawn(self._make_spare(), "spare-worker")

    async def _make_spare(self) -> None:
        """Start a worker ahead of its session, so opening one skips the process start-up."""
        backend = str(self.settings.workers.backend)
        session = self._new_session(backend)
        try:
            handle = await self._spawn_worker(session, self.gateway.backends[backend])
        except Exception:
            log.exception("could not start a spare worker; sessions start cold")
            return
        finally:
            self._spares_starting -= 1

        def lost(reason: str) -> None:
            log.warning("spare worker pid %s lost: %s", handle.pid, reason)
            self._spares = [(s, h) for s, h in self._spares if h is not handle]

        handle.bind(on_events=lambda *batch: None, on_fault=lost)
        if not self.accepting:  # shutdown began while it started: shutdown won't see it
            await handle.stop("not needed")
            return
        self._spares.append((session, handle))

    async def restore(self, *, session_id: str, owner_key_id: str, client_name: str,
                      backend: str, tag: str, lease_seconds: float, socket_path: str,
                      nonce_digest: bytes, pid: int, create_time: float,
                      window: float) -> Session | None:
        """Re-adopt the worker of a session an earlier gateway instance opened.

        Listens on the session's socket for an Adopt frame carrying the nonce whose
        digest is given; the session is READY again, with its id, owner and tag, when
        the worker is back within ``window`` seconds. Returns None (and cleans up)
        otherwise. Policy (which sessions, when) belongs to the caller.
        """
        session = Session(session_id=session_id, owner_key_id=owner_key_id,
                          client_name=client_name, backend=backend, tag=tag,
                          lease_seconds=lease_seconds, on_state=self._on_state)
        session.attributes["gateway"] = self.gateway
        self.live[session_id] = session
        session.distributor = self.hooks.decide("sg_make_distributor", session=session,
                                                settings=self.settings)
        session.worker = WorkerHandle(
            session_id=session_id, socket_path=socket_path, config=self.worker_config,
            on_events=session.on_events, on_fault=session.fault,
            on_frame=session.on_worker_frame)
        try:
            await session.worker.expect(nonce_digest_=nonce_digest, pid=pid,
                                        create_time=create_time)
            await session.worker.wait_ready(window)
        except Exception as exc:
            session.fault(getattr(exc, "message", None) or f"adoption failed: {exc!r}")
            await asyncio.shield(session.ended.wait())
            return None
        await self._became_ready(session, "worker re-adopted", "sessions_readopted")
        return session

    async def _became_ready(self, session: Session, reason: str, metric: str) -> None:
        """Its worker is Ready: READY, counted, announced, internal subscribers attached."""
        if not session.transition(SessionState.READY, reason):
            raise Unavailable(f"session {session.session_id} failed while opening: "
                              f"{session.reason}")
        self.metrics.inc(metric)
        await self.hooks.notify("sg_session_opened", session=session)
        self._start_internal_subscribers(session)

    def _start_internal_subscribers(self, session: Session) -> None:
        for consumers in self.hooks.collect("sg_internal_subscribers", session=session):
            for consumer in consumers:
                name = getattr(consumer, "__name__", "internal")
                sub = Subscription(kind=name, external=False)
                try:
                    session.subscribe(sub)
                except Exception:
                    log.exception("session %s: internal subscriber %s not attached",
                                  session.session_id, name)
                    continue
                self.hooks.notify_sync("sg_subscriber_attached", session=session,
                                       subscription=sub)
                session.spawn(self._run_internal(session, consumer, sub), f"internal-{name}")

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
        if session.state in ENDED or session.state == SessionState.CLOSING:
            await session.ended.wait()
            return session
        session.transition(SessionState.CLOSING, reason)
        session.end_streams(None)
        await self._finish(session, reason)
        return session

    async def _finish(self, session: Session, reason: str) -> None:
        if session.worker is not None:
            if session.attributes.get("released"):
                await session.worker.wait_tasks()
            else:
                await session.worker.stop(reason)
        await session.cancel_tasks()
        session.transition(SessionState.CLOSED, reason)
        if self.live.pop(session.session_id, None) is not None:
            self.ended[session.session_id] = EndedSession(session)
            self._forget_old()
        if not session.ended.is_set():
            session.ended.set()
            await self.hooks.notify("sg_session_closed", session=session, reason=session.reason)

    def _forget_old(self) -> None:
        ended = self.ended
        cutoff = time.monotonic() - TOMBSTONE_SECONDS
        while ended and (len(ended) > TOMBSTONES or next(iter(ended.values())).ended_at < cutoff):
            ended.popitem(last=False)

    async def shutdown(self, reason: str = SHUTDOWN_MESSAGE) -> None:
        """Refuse new sessions, end every stream UNAVAILABLE, stop every worker."""
        self.accepting = False
        if self._sweeper is not None:
            self._sweeper.cancel()
        # spares still starting (they stop themselves now) or being stopped: never cancel
        # them halfway, or a worker process is left unreaped; they end by themselves
        await asyncio.gather(*(t for t in list(self._tasks) if t.get_name() in SPARE_TASKS),
                             return_exceptions=True)
        spares, self._spares = self._spares, []
        await asyncio.gather(*(h.stop("not needed") for _s, h in spares),
                             return_exceptions=True)
        sessions = list(self.live.values())
        for session in sessions:
            if session.state not in ENDED:
                session.transition(SessionState.CLOSING, reason)
            message = f"session {session.session_id}: {reason}"
            session.end_streams(Unavailable(message))
            if session.worker is not None:  # stopped or released: the cause is ours
                session.worker.abort_commands(Unavailable(message))
            if session.worker is not None and self.hooks.decide("sg_worker_release",
                                                                session=session):
                session.attributes["released"] = True
                session.worker.release()
                self.released.append(session.worker)
        await asyncio.gather(*(self._finish(s, reason) for s in sessions),
                             return_exceptions=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Gateway:
    """Everything but the transport. Create, ``await start()``, use, ``await stop()``."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.hooks = Hooks(pm)
        self.metrics = Metrics()
        self.state_dir = pathlib.Path(str(settings.state_dir)).resolve()
        self.runtime_dir = runtime_dir(settings)
        #: identifies this gateway process in socket names; reattach makes it persistent
        self.instance_id = secrets.token_hex(16)
        self.backends: dict[str, str] = {}
        for contributed in reversed(self.hooks.collect("sg_worker_backends")):
            self.backends.update(contributed)
        self.home = terminator.home_marker(self.state_dir)
        self.keys = KeyStore(self.state_dir / "keys.sqlite3")
        self.sessions = SessionManager(self)
        self.bootstrap_key: str | None = None
        #: plugins publish gateway-wide services here (e.g. "login" from acl)
        self.attributes: dict[str, Any] = {}
        self._started = False
        self._lock_fd: int | None = None

    def worker_env(self, session: Session) -> dict[str, str]:
        """Extra environment for workers: the marker the terminator recognises them by."""
        env = {terminator.HOME_ENV: self.home}
        env.update(session.attributes.get("worker_env", {}))
        return env

    def lock_state_dir(self) -> None:
        """Create and lock ``state_dir`` (idempotent); held until :meth:`stop`.

        :raises StartupError: another gateway holds it (the message names its pid).
        """
        if self._lock_fd is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._lock_fd = _flock_state_dir(self.state_dir)

    def _unlock_state_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def start(self) -> None:
        # The lock comes first: nothing here touches a worker or a file of the state dir
        # while another gateway may be using it.
        self.lock_state_dir()
        try:
            await self.keys.open()
        except BaseException:
            self._unlock_state_dir()
            raise
        try:
            if await self.keys.count() == 0:
                await self._bootstrap_admin()
            await self.hooks.notify("sg_startup", gateway=self)
            # Workers of an earlier instance that no plugin adopted: stop them.
            spare = [s.worker.pid for s in self.sessions.live.values()
                     if s.worker is not None and s.worker.pid]
            await terminator.terminate_leftovers(self.home, spare)
        except BaseException:
            await self.keys.close()
            self._unlock_state_dir()
            raise
        self.sessions.start()
        self._started = True

    async def _bootstrap_admin(self) -> None:
        key_id, key = await self.keys.create("bootstrap-admin", scopes=[ADMIN_SCOPE])
        path = self.state_dir / BOOTSTRAP_KEY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        self.bootstrap_key = key
        log.warning("no API keys existed: created bootstrap admin key %s, written to %s",
                    key_id, path)

    async def stop(self) -> None:
        if not self._started:
            self._unlock_state_dir()  # locked but never started (serve could not bind)
            return
        self._started = False
        try:
            await self.sessions.shutdown()
            await self.hooks.notify("sg_shutdown", gateway=self)
            await self.keys.close()
        finally:
            self._unlock_state_dir()

    # -- identity ----------------------------------------------------------------------

    async def authenticate(self, metadata: Any) -> Identity:
        credential = parse_bearer(metadata)
        identity = self.hooks.decide("sg_authenticate", credential=credential)
        if identity is None:
            identity = await self.keys.verify(credential)
        return identity

    def authorize(self, identity: Identity, action: str, session: Session | None) -> None:
        decision = self.hooks.decide("sg_authorize", identity=identity, action=action,
                                     session=session)
        self.metrics.inc("authz_decisions", action=action,
                         outcome="deny" if decision is False else "allow")
        if decision is False:
            what = f"session {session.session_id}" if session else "sessions"
            raise PermissionDenied(f"key {identity.key_id} may not {action} {what}")

    def visible(self, identity: Identity, session: Session, action: str = "get") -> bool:
        try:
            self.authorize(identity, action, session)
        except (PermissionDenied, Unauthenticated, FailedPrecondition):
            return False
        return True
