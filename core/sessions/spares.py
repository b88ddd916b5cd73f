"""Spare workers: processes of the default backend started ahead of their session.

Opening a session then skips the process start-up (the imports): the spare's
session id, fixed when it started, becomes the session's. A spare that dies while
waiting is dropped and replaced; one shown to plugins by a refused open is never
reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sessiongate.core.sessions.session import Session
from sessiongate.core.tasks import OwnedTasks
from sessiongate.core.workers.handle import WorkerHandle

__all__ = ["SPARE_TASKS", "SparePool"]

log = logging.getLogger("sessiongate.sessions")

#: tasks that start or stop a spare: awaited at shutdown, never cancelled halfway
#: (a worker process would be left unreaped)
SPARE_TASKS = frozenset({"spare-worker", "spare-stop"})


class SparePool:
    """Keeps ``count`` workers of ``backend`` started and waiting.

    :param start: starts a worker for a new session of ``backend`` (its future session,
        its handle).
    :param tasks: the owner's task set; the pool's starts and stops run there.
    """

    def __init__(self, *, count: int, backend: str,
                 start: Callable[[], Awaitable[tuple[Session, WorkerHandle]]],
                 tasks: OwnedTasks) -> None:
        self.count = count
        self.backend = backend
        self._start = start
        self._tasks = tasks
        self._ready: list[tuple[Session, WorkerHandle]] = []
        self._starting = 0
        self.accepting = True

    @property
    def ready(self) -> list[tuple[Session, WorkerHandle]]:
        """The waiting workers, oldest first (a copy)."""
        return list(self._ready)

    @property
    def ready_count(self) -> int:
        """How many workers wait (some may have died unnoticed: they are dropped when
        taken)."""
        return len(self._ready)

    def take(self, backend: str) -> tuple[Session, WorkerHandle] | None:
        """A waiting worker for ``backend``, if any (then one more is started)."""
        found = None
        while self._ready and found is None:
            session, handle = self._ready.pop(0)
            if handle.lost_reason or handle.returncode is not None:
                continue  # died while waiting (replaced already; its reaper logged why)
            if session.backend == backend:
                found = session, handle
            else:
                self._ready.append((session, handle))
                break
        self.refill()
        return found

    def discard(self, handle: WorkerHandle, reason: str) -> None:
        """A spare shown to plugins but not used: stop it, start another."""
        self._tasks.spawn(handle.stop(reason), "spare-stop")
        self.refill()

    def refill(self) -> None:
        while self.accepting and len(self._ready) + self._starting < self.count:
            self._starting += 1
            self._tasks.spawn(self._make(), "spare-worker")

    async def _make(self) -> None:
        try:
            session, handle = await self._start()
        except Exception:
            log.exception("could not start a spare worker; sessions start cold")
            return
        finally:
            self._starting -= 1

        def lost(reason: str) -> None:
            log.warning("spare worker pid %s lost: %s; starting another", handle.pid, reason)
            self._ready = [(s, h) for s, h in self._ready if h is not handle]
            self.refill()  # replaced at once, not at the next open

        handle.bind(on_events=lambda *batch: None, on_fault=lost)
        if not self.accepting:  # shutdown began while it started: shutdown won't see it
            await handle.stop("not needed")
            return
        self._ready.append((session, handle))

    async def close(self) -> None:
        """Start no more; wait for starts and stops under way; stop every waiting one."""
        self.accepting = False
        await asyncio.gather(*self._tasks.named(SPARE_TASKS), return_exceptions=True)
        ready, self._ready = self._ready, []
        await asyncio.gather(*(h.stop("not needed") for _s, h in ready),
                             return_exceptions=True)
