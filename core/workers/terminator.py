"""Finding and stopping worker processes that provably belong to this gateway.

A worker is recognised by three things together: its command line runs
``sessiongate.core.sdk``, its environment carries this state dir's home
marker (a digest of the state dir's path, so two gateways on one host never touch
each other's workers), and - where a manifest recorded them - its pid *and* start
time. A pid reused by an unrelated process fails these checks and is left alone.
psutil re-checks the start time before every signal, so a pid cannot be reused
between the check and the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pathlib
import signal
from collections.abc import Iterable

import psutil

__all__ = [
    "HOME_ENV",
    "home_marker",
    "leftover_workers",
    "our_worker",
    "signal_if_ours",
    "stop_foreign",
    "terminate_leftovers",
]

log = logging.getLogger("sessiongate.terminator")

HOME_ENV = "SESSIONGATE_WORKER_HOME"
SESSION_ENV = "SESSIONGATE_WORKER_SESSION"
WORKER_MODULE = "sessiongate.core.sdk"
START_TIME_TOLERANCE = 0.01


def home_marker(state_dir: pathlib.Path) -> str:
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def _is_worker(proc: psutil.Process) -> bool:
    try:
        return WORKER_MODULE in proc.cmdline()
    except (psutil.Error, OSError):
        return False


def our_worker(pid: int, create_time: float, session_id: str,
               home: str | None = None) -> psutil.Process | None:
    """The process if ``pid`` is still the worker of ``session_id`` started at ``create_time``."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > START_TIME_TOLERANCE:
            return None
    except (psutil.Error, OSError):
        return None
    env = _environ(proc)
    if not _is_worker(proc) or env.get(SESSION_ENV) != session_id:
        return None
    if home is not None and env.get(HOME_ENV) != home:
        return None
    return proc


def leftover_workers(home: str, spare: Iterable[int] = ()) -> list[psutil.Process]:
    """Workers carrying ``home`` that are not in ``spare`` (pids of live sessions)."""
    keep = set(spare) | {os.getpid()}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid in keep or WORKER_MODULE not in cmdline:
            continue
        if _environ(proc).get(HOME_ENV) == home:
            found.append(proc)
    return found


def signal_if_ours(proc: psutil.Process, sig: int) -> bool:
    """Signal ``proc`` unless its pid now names another process (psutil checks)."""
    with contextlib.suppress(psutil.Error, OSError):
        if proc.is_running():
            proc.send_signal(sig)
            return True
    return False


#: how often a foreign worker is checked where the OS has no pidfd (not Linux)
FOREIGN_POLL_SECONDS = 0.5


async def foreign_exit(proc: psutil.Process) -> None:
    """Return once ``proc`` (not our child: no ``waitpid``) has exited.

    On Linux a pidfd becomes readable when the process ends; the pid is checked again
    after opening it, so a reused pid is never watched. Elsewhere, poll.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
            await asyncio.sleep(FOREIGN_POLL_SECONDS)
        return
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    try:
        if not proc.is_running():  # the pid named another process by the time we opened it
            return
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


async def stop_foreign(proc: psutil.Process, timeout: float) -> None:
    """Wait for a non-child worker to exit; then SIGTERM, then SIGKILL."""
    for sig, wait in ((None, timeout), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        if sig is not None and not signal_if_ours(proc, sig):
            return
        try:
            await asyncio.to_thread(proc.wait, wait)
            return
        except psutil.TimeoutExpired:
            continue
        except (psutil.Error, OSError):
            return


async def terminate_leftovers(home: str, spare: Iterable[int] = ()) -> int:
    """Stop every leftover worker of this state dir; returns how many there were."""
    procs = await asyncio.to_thread(leftover_workers, home, spare)
    for proc in procs:
        log.warning("terminating leftover worker pid %d of an earlier gateway", proc.pid)
    await asyncio.gather(*(stop_foreign(p, 0.0) for p in procs))
    return len(procs)
