"""Fixtures shared by core's tests (the gateway fixtures come from sessiongate.testing)."""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from sessiongate.core import hookimpl

#: runs in place of the worker: blocks until the test opens the FIFO, then becomes it
_HOLD = ("import os, sys; os.close(os.open(sys.argv[1], os.O_RDONLY)); "
         "os.execv(sys.executable, [sys.executable, '-m', 'sessiongate.core.sdk'])")


class HoldWorkers:
    """A plugin that holds every worker it launches before it starts, until released.

    ``sg_worker_launch`` may change the command line; this one makes the process wait
    on a FIFO and then ``exec`` the real worker (same environment, same stdin). The
    session stays OPENING, with its socket listening, until :meth:`release`.
    Use with ``workers.spare_workers = 0`` so every open launches a worker.
    """

    __name__ = "hold-workers"

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.fifos: dict[str, pathlib.Path] = {}
        self.sessions: dict[str, Any] = {}
        self.launched: asyncio.Queue[Any] = asyncio.Queue()

    @hookimpl
    def sg_worker_launch(self, session: Any, argv: list[str], env: dict[str, str]) -> None:
        fifo = self.folder / f"{session.session_id[:16]}.fifo"
        os.mkfifo(fifo)
        self.fifos[session.session_id] = fifo
        self.sessions[session.session_id] = session
        argv[1:] = ["-c", _HOLD, str(fifo)]
        self.launched.put_nowait(session)

    async def release(self, session_id: str) -> None:
        """Let the held worker go on (returns once it has opened its end of the FIFO)."""
        fd = await asyncio.to_thread(os.open, self.fifos[session_id], os.O_WRONLY)
        os.close(fd)


@pytest.fixture
def hold_workers(short_tmp: pathlib.Path) -> Iterator[HoldWorkers]:
    folder = short_tmp / "fifos"
    folder.mkdir()
    yield HoldWorkers(folder)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """After each test (and its gateways' teardown): no worker, zombie or gateway is left.

    Autouse fixtures are set up first, so this check runs after every other teardown.
    """
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in before:
            continue
        try:
            left.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue  # gone meanwhile
    assert not left, "processes left behind:\n" + "\n".join(left)
