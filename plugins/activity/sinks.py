"""The built-in sinks (``plugins.activity.sink``): the log, or a JSON-lines file.

The publishing task writes each event to one of them directly, first; other plugins add
their own sinks by implementing ``sg_activity``. ``write`` never waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import pathlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI

__all__ = ["FileSink", "LogSink", "make_sink"]

log = logging.getLogger("sessiongate.plugins.activity")
#: where the log sink writes each event (INFO): a logger of its own, so a deployer can
#: route or silence it (``log.levels``) apart from the gateway's diagnostics
EVENTS_LOGGER = "sessiongate.activity"
#: metric: an event a built-in sink could not write
SINK_ERRORS = "activity_sink_errors"
#: the file sink's lines wait this long at most before its thread writes them together
FLUSH_DELAY = 0.05


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def to_json(event: dict[str, Any]) -> str:
    return _ENCODER.encode(event)


class LogSink:
    """Each event as one JSON object, logged at INFO on ``sessiongate.activity``."""

    def __init__(self) -> None:
        self._log = logging.getLogger(EVENTS_LOGGER)

    def open(self) -> None:
        pass

    def write(self, event: dict[str, Any]) -> None:
        self._log.info("%s", to_json(event))

    async def close(self, timeout: float) -> None:
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FileSink:
    """Each event as one JSON line appended to a file (created 0600). The event loop
    only appends the line to a buffer; every ``FLUSH_DELAY`` seconds at most a thread of
    the sink's own writes what the buffer holds in one write, so a slow or hung disk
    never stalls the gateway, and the loop hands work to the thread a few times a
    second, not once an event. At most ``capacity`` lines wait for the disk: more (a
    stuck disk) are dropped and counted, never piled up."""

    def __init__(self, gateway: GatewayAPI, path: pathlib.Path, capacity: int) -> None:
        self._gateway = gateway
        self.path = path
        self.capacity = capacity
        self._fd: int | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self._lines: list[bytes] = []  # waiting for the thread (under the lock)
        self._writing = False  # the thread has lines to write (under the lock)
        self._failing = False  # a write failed and none succeeded since (said once)

    def open(self) -> None:
        """Open the file; if it cannot be, say once that tracking is degraded."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        except OSError as exc:
            log.warning("activity: cannot open plugins.activity.path %s (%s): tracking is "
                        "degraded, events are not written to a file until the gateway "
                        "restarts with a usable path (other sinks still get them)",
                        self.path, exc.strerror or exc)
            return
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sg-activity-file")

    def write(self, event: dict[str, Any]) -> None:
        if self._executor is None or self._loop is None:
            self._gateway.metrics.inc(SINK_ERRORS)
            return
        line = (to_json(event) + "\n").encode()
        with self._lock:
            full = len(self._lines) >= self.capacity
            if not full:
                self._lines.append(line)
        if full:
            self._gateway.metrics.inc(SINK_ERRORS)  # the disk is far behind (or stuck)
        elif self._flush_timer is None:
            self._flush_timer = self._loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        if self._executor is not None:
            self._start_writing(self._executor)

    def _start_writing(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        """On the loop: have the thread write what waits (unless it is writing: then it
        takes these lines too when it is done)."""
        with self._lock:
            start = bool(self._lines) and not self._writing
            self._writing = self._writing or start
        if start:
            executor.submit(self._write_waiting)

    def _write_waiting(self) -> None:
        """In the thread: write the waiting lines until there are none."""
        while True:
            with self._lock:
                if not self._lines:
                    self._writing = False
                    return
                lines, self._lines = self._lines, []
            assert self._fd is not None
            try:
                _write_all(self._fd, b"".join(lines))
            except OSError as exc:
                with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown)
                    if self._loop is not None:
                        self._loop.call_soon_threadsafe(self._gateway.metrics.inc,
                                                        SINK_ERRORS, len(lines))
                if not self._failing:
                    self._failing = True
                    log.error("activity: cannot write to %s (%s); events are dropped until "
                              "a write succeeds", self.path, exc.strerror or exc)
                continue
            if self._failing:
                self._failing = False
                log.info("activity: writing to %s again", self.path)

    async def close(self, timeout: float) -> None:
        """Write what waits and close the file, waiting ``timeout`` seconds at most: a
        write still stuck then keeps the file open (closed when it ends)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._start_writing(executor)
        closing = asyncio.wrap_future(executor.submit(os.close, self._fd))  # after those
        executor.shutdown(wait=False)
        done, _ = await asyncio.wait({closing}, timeout=timeout)
        if not done:
            log.warning("activity: %s: a write is still stuck after %g s; the file is "
                        "closed when it ends", self.path, timeout)


def make_sink(gateway: GatewayAPI) -> LogSink | FileSink:
    """The sink ``plugins.activity.sink`` names; a relative ``path`` is under state_dir."""
    settings = gateway.settings.plugins.activity
    if str(settings.sink) == "file":
        return FileSink(gateway, gateway.state_dir / pathlib.Path(str(settings.path)),
                        int(settings.queue_capacity))
    return LogSink()
