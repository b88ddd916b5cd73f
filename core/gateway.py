"""The gateway: sessions, identity and plugins put together, independent of gRPC.

:class:`Gateway` owns the key store, the :class:`SessionManager` and every
background task (the lease sweeper, session teardowns, plugins' tasks); ``stop()``
cancels and awaits all of them. Plugins see it through
:class:`~sessiongate.core.plugin_api.GatewayAPI` (``Gateway.api``). The gRPC layer
(:mod:`sessiongate.core.rpc.server`) is a thin translation on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pathlib
import secrets
import time
from typing import Any

import pluggy

from sessiongate.core.config.settings import Settings, runtime_dir
from sessiongate.core.errors import (
    FailedPrecondition,
    PermissionDenied,
    StartupError,
    Unauthenticated,
    Unavailable,
)
from sessiongate.core.identity import ADMIN_SCOPE, Identity, KeyStore, parse_bearer
from sessiongate.core.metrics import Metrics, RecentRate
from sessiongate.core.plugin_api import GatewayAPI
from sessiongate.core.pluginhost.host import Hooks
from sessiongate.core.revocations import watch_revocations
from sessiongate.core.sessions.manager import SessionManager
from sessiongate.core.sessions.session import EndedSession, Session
from sessiongate.core.tasks import OwnedTasks
from sessiongate.core.workers import terminator

__all__ = ["BOOTSTRAP_KEY_FILE", "LOCK_FILE", "Gateway"]

log = logging.getLogger("sessiongate.gateway")

BOOTSTRAP_KEY_FILE = "bootstrap-admin.key"
#: in state_dir: locked (flock) by the gateway using the folder, holds its pid
LOCK_FILE = "gateway.lock"


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


class Gateway:
    """Everything but the transport. Create, ``await start()``, use, ``await stop()``."""

    def __init__(self, settings: Settings, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.pm = pm
        self.metrics = Metrics()
        #: what plugins see of this gateway (the ``gateway`` argument of hooks)
        self.api = GatewayAPI(self)
        self.hooks = Hooks(pm, self.api)
        for plugin, declared in self.hooks.collect_by_plugin("sg_metrics"):
            for problem in self.metrics.declare(declared, owner=plugin):
                log.error("%s; left out", problem)
        self.state_dir = pathlib.Path(str(settings.state_dir)).resolve()
        self.runtime_dir = runtime_dir(settings)
        #: identifies this gateway process (core's worker socket names use it)
        self.instance_id = secrets.token_hex(16)
        self.backends: dict[str, str] = {}
        for contributed in reversed(self.hooks.collect("sg_worker_backends")):
            self.backends.update(contributed)
        self.home = terminator.home_marker(self.state_dir)
        self.keys = KeyStore(self.state_dir / "keys.sqlite3")
        self.sessions = SessionManager(
            settings=settings, hooks=self.hooks, metrics=self.metrics, backends=self.backends,
            authorize=self.authorize, runtime_dir=self.runtime_dir, home=self.home)
        self.metrics.on_scrape(self.sessions.scrape)
        self.delivery_rate = RecentRate()
        self.metrics.on_scrape(lambda scrape: scrape.set(
            "events_delivered_per_second", self.delivery_rate.rate(
                time.monotonic(), self.metrics.get("events_delivered"))))
        #: plugins' background tasks (GatewayAPI.spawn)
        self.tasks = OwnedTasks()
        self.bootstrap_key: str | None = None
        #: why parts of the gateway are degraded, by the component that says so
        #: (GatewayAPI.set_degraded; /readyz answers 503 while any is)
        self.degraded: dict[str, str] = {}
        #: this gateway's address as other gateway nodes and clients dial it (cluster);
        #: "" when not part of a cluster (GatewayAPI.node_address)
        self.node_address = ""
        self._started = False
        #: a stop has begun: new calls are refused (UNAVAILABLE), the stores close
        self._stopping = False
        self._lock_fd: int | None = None

    @property
    def started(self) -> bool:
        """Started and not stopping: its state is loaded (keys, plugins' startup, adopted
        sessions) and sessions are accepted."""
        return self._started

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
        plugins_started = False
        try:
            if await self.keys.count() == 0:
                await self._bootstrap_admin()
            plugins_started = True
            await self.hooks.notify("sg_startup")
            # Workers of an earlier instance that no plugin adopted: stop them.
            spare = [s.worker.pid for s in self.sessions.live.values()
                     if s.worker is not None and s.worker.pid]
            await terminator.terminate_leftovers(self.home, spare)
        except BaseException:
            await self.tasks.cancel_and_wait()
            if plugins_started:  # what their sg_startup opened, they close
                await self.hooks.notify("sg_shutdown")
            await self.keys.close()
            self._unlock_state_dir()
            raise
        self.sessions.start()
        # sg_key_revoked for keys revoked from now on (sessiongate keys revoke)
        self.tasks.spawn(await watch_revocations(self.keys, self.hooks), "key-revocations")
        self.tasks.spawn(self._sample_delivery_rate(), "delivery-rate")
        self._started = True

    async def _sample_delivery_rate(self) -> None:
        while True:
            self.delivery_rate.sample(time.monotonic(), self.metrics.get("events_delivered"))
            await asyncio.sleep(self.delivery_rate.every)

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
        self._stopping = True
        try:
            await self.sessions.shutdown()
            await self.tasks.cancel_and_wait()
            await self.hooks.notify("sg_shutdown")
            await self.keys.close()
        finally:
            self._unlock_state_dir()

    # -- identity ----------------------------------------------------------------------

    async def authenticate(self, metadata: Any) -> Identity:
        """The caller's identity; ``Unauthenticated`` (counted by reason) if none."""
        reason = "no_credential"
        try:
            credential = parse_bearer(metadata)
            reason = "refused_by_plugin"
            self._refuse_while_stopping()
            identity = await self.hooks.decide("sg_authenticate", credential=credential)
            if identity is None:
                reason = "unknown_key"
                self._refuse_while_stopping()  # the key store closes during a stop
                identity = await self.keys.verify(credential)
        except Unauthenticated as exc:
            # KeyStore.verify says "revoked" for a key that exists and was revoked
            if reason == "unknown_key" and "revoked" in exc.message:
                reason = "revoked_key"
            self.metrics.inc("auth_failures", reason=reason)
            raise
        return identity

    def _refuse_while_stopping(self) -> None:
        """A call the gRPC server took in just before or during a stop: its stores are
        closing, so it is refused as the contract says for a gateway going away."""
        if self._stopping:
            raise Unavailable("the gateway is shutting down; try again shortly")

    async def authorize(self, identity: Identity, action: str,
                        session: Session | EndedSession | None) -> None:
        """Raise ``PermissionDenied`` unless ``identity`` may do ``action`` (the first
        plugin to answer decides; with none answering, any authenticated identity may)."""
        decision = await self.hooks.decide("sg_authorize", identity=identity, action=action,
                                           session=session)
        self.metrics.inc("authz_decisions", action=action,
                         outcome="deny" if decision is False else "allow")
        if decision is False:
            what = f"session {session.session_id}" if session else "sessions"
            raise PermissionDenied(f"key {identity.key_id} may not {action} {what}")

    async def visible(self, identity: Identity, session: Session, action: str = "get") -> bool:
        try:
            await self.authorize(identity, action, session)
        except (PermissionDenied, Unauthenticated, FailedPrecondition):
            return False
        return True
