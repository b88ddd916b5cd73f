"""The credit governor: workers are paced by the gateway's own event loop as well as by
their subscribers.

Subscribers pace each worker (``events.py``), but they cannot see the gateway itself
falling behind: with hundreds of busy sessions every stream has events ready on every
turn of the event loop, a turn takes longer the more streams there are, and the
gRPC server takes in one new call per turn. Past some load, opens and commands wait
in the server long enough for gRPC to cancel them, although every subscriber keeps
up.

So the governor measures the loop's lag (how late a short sleep wakes up) every
``PROBE_SECONDS``. When it goes over ``events.max_loop_lag_ms`` the governor *holds*
credit: every paced worker is told to send nothing more for now (a grant of 0: a
window of thousands of events granted earlier would otherwise keep it producing for
minutes), and a session whose distributor grants more is noted instead. When the lag
has stayed under half the limit for ``CALM_PROBES`` measurements in a row (so that a
hold is not lifted by one quiet turn, only to begin again at the next), the held
sessions get their current grant, oldest first.
Events are delayed, never dropped; the load the gateway takes settles where a loop
turn stays short.

Counted: ``credit_holds`` (times the governor began holding), ``credit_held_sessions``
(sessions waiting now) and ``event_loop_lag_seconds`` (the last lag measured).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sessiongate.core.metrics import Metrics

__all__ = ["CALM_PROBES", "PROBE_SECONDS", "CreditGovernor"]

log = logging.getLogger("sessiongate.gateway")

#: how often the loop's lag is measured
PROBE_SECONDS = 0.05
#: measurements in a row under half the limit that end a hold
CALM_PROBES = 4


class CreditGovernor:
    """Holds workers' credit while the event loop lags (see the module docstring).

    :param max_lag: seconds of lag beyond which credit is held; 0 never holds.
    :param on_hold: called when holding begins, to stop the workers that still have
        credit (each then registers its grant with :meth:`grant`, to get it back).
    """

    def __init__(self, max_lag: float, metrics: Metrics | None = None,
                 on_hold: Callable[[], None] | None = None) -> None:
        self.max_lag = max_lag
        self._on_hold = on_hold
        self.holding = False
        self.lag = 0.0
        self._calm = 0  # measurements in a row under half the limit, while holding
        self._metrics = metrics
        #: what to call, per session, once credit flows again (insertion order: oldest first)
        self._held: dict[str, Callable[[], None]] = {}

    def held_sessions(self) -> int:
        return len(self._held)

    def grant(self, session_id: str, send: Callable[[], None]) -> None:
        """Send a grant now (``send``), or later if credit is held; a later grant of the
        same session replaces the held one (``send`` reads the newest grant)."""
        if not self.holding:
            send()
        else:
            self._held.setdefault(session_id, send)

    def forget(self, session_id: str) -> None:
        """The session ended: nothing to send it any more."""
        self._held.pop(session_id, None)

    def observe(self, lag: float) -> None:
        """One measurement: start or stop holding."""
        self.lag = lag
        if self.max_lag <= 0:
            return
        if lag > self.max_lag:
            self._calm = 0
            if not self.holding:
                self.holding = True
                if self._metrics is not None:
                    self._metrics.inc("credit_holds")
                log.debug("event loop %.0f ms behind: holding workers' credit", lag * 1000)
                if self._on_hold is not None:
                    self._on_hold()
            return
        if not self.holding:
            return
        self._calm = self._calm + 1 if lag <= self.max_lag / 2 else 0
        if self._calm < CALM_PROBES:
            return
        self.holding = False
        self._calm = 0
        held, self._held = self._held, {}
        for send in held.values():
            send()

    async def run(self) -> None:
        """Measure the lag for as long as the gateway runs (an owned task)."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(PROBE_SECONDS)
            self.observe(max(0.0, loop.time() - started - PROBE_SECONDS))
