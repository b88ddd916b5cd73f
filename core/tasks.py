"""Owned background tasks: whoever spawns a task keeps it, and cancels and awaits it.

One small mechanism for the gateway, each session and each worker handle, so no
task is ever left running unobserved after its owner ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Collection, Coroutine
from typing import Any

from sessiongate.core import logfields

__all__ = ["OwnedTasks"]

log = logging.getLogger("sessiongate.tasks")


class OwnedTasks:
    """A set of running tasks; a finished task leaves the set by itself.

    :param suffix: appended to every task's name (``name:suffix``), so a task dump
        says whose task it is; a session's tasks default to its id.
    :param session_id: bound as a log field in every task started here (the tasks of
        a session or of its worker), so their log lines name the session.
    """

    def __init__(self, suffix: str = "", *, session_id: str = "") -> None:
        suffix = suffix or session_id
        self._suffix = f":{suffix}" if suffix else ""
        self._session_id = session_id
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task owned here."""
        context = contextvars.copy_context()
        if self._session_id:
            context.run(logfields.bind, session_id=self._session_id)
        task = asyncio.create_task(coro, name=f"{name}{self._suffix}", context=context)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished task; an exception it ended with is logged here, its owner
        having nobody else to tell (asyncio would only complain at garbage collection)."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def named(self, names: Collection[str]) -> list[asyncio.Task[Any]]:
        """The running tasks spawned under one of ``names``."""
        wanted = {f"{name}{self._suffix}" for name in names}
        return [t for t in self._tasks if t.get_name() in wanted]

    async def wait(self) -> None:
        """Await every task (not the caller's own), without cancelling them."""
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in list(self._tasks) if t is not current),
                             return_exceptions=True)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task but the caller's own; returns them (to await)."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        return tasks

    async def cancel_and_wait(self) -> None:
        """Cancel every task (not the caller's own) and await their end."""
        await asyncio.gather(*self.cancel(), return_exceptions=True)
