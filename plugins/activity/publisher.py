"""Publishing: one bounded queue, drained by one task the gateway owns.

A tracked call only puts its measurement on the queue (never waits); when the queue is
full the event is dropped and counted (``activity_dropped``). The publishing task takes
what gathered within ``LINGER`` of the first event (a bounded batch) and then, one event
at a time, writes it to the plugin's own sink (which never waits) and hands it to other
plugins' sinks (``sg_activity``), bounded by
``plugins.activity.sink_timeout_seconds``: a sink that hangs holds back later events
(the queue fills, events are dropped and counted), never the calls, and never makes
more tasks: the number of tasks is the same whatever the sinks do (S0.PIT.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .sinks import SINK_ERRORS

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI

    from .interceptor import TrackedCall

__all__ = ["EventMaker", "Publisher"]

log = logging.getLogger("sessiongate.plugins.activity")

SERVICE = "sessiongate"
#: how long the publishing task lets a batch of events gather once one came (the sinks
#: get an event this much later), unless the queue gets half full first: handled
#: together, the events cost the loop far less than one by one
LINGER = 0.05
#: events taken from the queue at once at most
MAX_BATCH = 256
#: metric names (``gateway.metrics``)
DROPPED = "activity_dropped"
SINK_TIMEOUTS = "activity_sink_timeouts"


class EventMaker:
    """Builds the activity events (docs/plugins/activity.md, "The event") of one
    gateway: ids are a random prefix of this process and a counter (unique without a
    random draw per event), and the time's text is made once per second."""

    def __init__(self) -> None:
        self._prefix = f"act_{secrets.token_hex(8)}"
        self._count = itertools.count(1)
        self._second = -1
        self._second_text = ""

    def event(self, call: TrackedCall) -> dict[str, Any]:
        second = int(call.ended)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        millis = min(int((call.ended - second) * 1000), 999)
        return {
            "id": f"{self._prefix}{next(self._count):016x}",
            "time": f"{self._second_text}.{millis:03d}Z",
            "service": SERVICE,
            "action": call.operation or call.method,
            "status": call.status,
            "duration_ms": round(call.duration * 1000, 3),
            "session_id": call.session_id,
            "key_id": call.key_id,
            "peer": call.peer,
            "context": call.context,
        }


class Publisher:
    """The queue between tracked calls and the sinks, and the task that drains it."""

    def __init__(self, gateway: GatewayAPI, capacity: int, sink_timeout: float,
                 own_sink: Callable[[dict[str, Any]], None]) -> None:
        self._gateway = gateway
        self.capacity = capacity
        self.sink_timeout = sink_timeout
        #: this plugin's sink (never waits): written first, directly
        self._own_sink = own_sink
        self._own_sink_failed = False
        self._queue: asyncio.Queue[TrackedCall] = asyncio.Queue(capacity)
        self._events = EventMaker()
        #: a batch stops gathering when the queue is this full
        self._half = max(1, capacity // 2)
        self._filling = asyncio.Event()
        #: taken from the queue, not yet handed to the sinks (MAX_BATCH at most)
        self._batch: list[TrackedCall] = []
        #: the queue overflowed and has not drained to half since (said once per episode)
        self._overflowing = False

    def __len__(self) -> int:
        """Events not handed to the sinks yet."""
        return self._queue.qsize() + len(self._batch)

    def offer(self, call: TrackedCall) -> None:
        """Queue ``call``'s event, or drop and count it if the queue is full."""
        queue = self._queue
        try:
            queue.put_nowait(call)
            if queue.qsize() >= self._half:
                self._filling.set()  # no more lingering: the queue must not fill up
        except asyncio.QueueFull:
            self._gateway.metrics.inc(DROPPED)
            if not self._overflowing:
                self._overflowing = True
                log.warning("activity: %d events wait for the sinks "
                            "(plugins.activity.queue_capacity): dropping new ones until "
                            "they catch up (counted in %s)", self.capacity, DROPPED)

    async def run(self) -> None:
        """Hand the queued events to the sinks until cancelled: those of about
        ``LINGER`` seconds (or half a queue) together, then each alone, in order."""
        queue = self._queue
        while True:
            batch = self._batch
            batch.append(await queue.get())
            if queue.qsize() < self._half:  # let a batch gather: its events are handled warm
                self._filling.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER):
                        await self._filling.wait()
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            if self._overflowing and queue.qsize() <= self.capacity // 2:
                self._overflowing = False
                log.info("activity: the sinks caught up; events are queued again")
            while batch:
                await self._publish(batch[0])
                del batch[0]

    async def _publish(self, call: TrackedCall) -> None:
        event = self._events.event(call)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("activity: %s %s %s in %.3f ms", event["id"], event["action"],
                      event["status"], event["duration_ms"])
        self._write_own(event)
        try:
            async with asyncio.timeout(self.sink_timeout):
                await self._gateway.publish_activity(types.MappingProxyType(event))
        except TimeoutError:
            self._gateway.metrics.inc(SINK_TIMEOUTS)
            log.error("activity: the sinks did not take event %s within %g s "
                      "(plugins.activity.sink_timeout_seconds); the sinks not yet "
                      "called miss it", event["id"], self.sink_timeout)

    def _write_own(self, event: dict[str, Any]) -> None:
        try:
            self._own_sink(event)
        except Exception:  # a bug: this task must go on for the other sinks
            self._gateway.metrics.inc(SINK_ERRORS)
            if not self._own_sink_failed:
                self._own_sink_failed = True
                log.exception("activity: the built-in sink failed (further failures are "
                              "counted, not logged)")
