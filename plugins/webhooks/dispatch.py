"""Delivery: the HTTP attempt (:class:`Sender`) and the scheduling (:class:`Dispatcher`).

One ``aiohttp`` session for the gateway: ``trust_env=False`` (no proxy from the
environment), the SSRF guard's resolver and socket factory (:mod:`.guard`), redirects
never followed, a per-attempt timeout, at most 64 KiB of an answer read.

The dispatcher keeps at most one delivery in flight per endpoint - always the head of
its queue, so an endpoint gets its events in the order they happened, and a failing one
holds back only its own queue - and at most ``max_in_flight`` over all endpoints. It
claims the due front of a queue (up to :data:`BATCH` deliveries) in one statement and
sends them one after another, each only once the one before it succeeded; what was not
sent goes back to the queue, not counted. It runs one task of its own and one task per
endpoint with work (each owned by the gateway: cancelled and awaited at shutdown; an
attempt cut short is put back in its queue, not counted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from .guard import Blocked, GuardedResolver, Policy
from .signing import signature_header
from .store import Claim, Outbox

#: an attempt that ended: the endpoint, the claim, what came of it
Ended = tuple[Any, Claim, "Outcome"]

if TYPE_CHECKING:
    from aiohttp.abc import AbstractResolver

    from sessiongate.core import GatewayAPI

__all__ = ["MAX_ANSWER_BYTES", "Dispatcher", "Ended", "Outcome", "Sender", "jittered"]

log = logging.getLogger("sessiongate.plugins.webhooks")

#: the most of an answer's body read (the rest is not: the connection is dropped)
MAX_ANSWER_BYTES = 64 * 1024
#: a claim's lease beyond the attempt's timeout: the row is recorded by then
LEASE_MARGIN_SECONDS = 5.0
#: up to this much of a wait is added at random (so retries of many deliveries spread)
JITTER = 0.1
#: the dispatcher looks at least this often even with nothing due (a clock jump)
IDLE_SECONDS = 60.0
USER_AGENT = "sessiongate-webhooks/1"
#: a queue whose store could not be read or written is looked at again after this
RETRY_AFTER_ERROR_SECONDS = 5.0
#: deliveries of one endpoint claimed together (the claim's round trip paid once for
#: them; bodies of at most this many per endpoint held in memory)
BATCH = 16


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to: ``status`` is the HTTP status (0: no answer)."""

    status: int
    error: str = ""
    blocked: bool = False
    seconds: float = 0.0  # how long the attempt took

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def jittered(delay: float) -> float:
    return delay * (1 + random.uniform(0, JITTER))


class Sender:
    """Posts signed bodies; one aiohttp session (made on first use, in the loop)."""

    def __init__(self, policy: Policy, timeout: float, *,
                 resolver: AbstractResolver | None = None, max_connections: int = 16) -> None:
        self.policy = policy
        self.timeout = timeout
        self._inner_resolver = resolver
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.policy, self._inner_resolver),
                socket_factory=self.policy.guarded_socket, limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"user-agent": USER_AGENT}, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, url: str, msg_id: str, body: bytes, secrets: list[str]) -> Outcome:
        """One attempt: the body, signed now with every secret; never raises (but
        cancellation)."""
        started = time.monotonic()
        outcome = await self._send(url, msg_id, body, secrets)
        return dataclasses.replace(outcome, seconds=time.monotonic() - started)

    async def _send(self, url: str, msg_id: str, body: bytes, secrets: list[str]) -> Outcome:
        when = datetime.datetime.now(datetime.UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(math.floor(when.timestamp())),
            "webhook-signature": signature_header(secrets, msg_id, body, when),
        }
        try:
            async with self._client().post(url, data=body, headers=headers,
                                           allow_redirects=False) as answer:
                await answer.content.read(MAX_ANSWER_BYTES)
                if not answer.content.at_eof():
                    answer.close()  # not read further: the connection is not reused
                status = answer.status
        except TimeoutError:
            return Outcome(0, f"no answer within {self.timeout:g} s "
                           "(plugins.webhooks.timeout_seconds)")
        except aiohttp.ClientConnectionError as exc:
            cause = getattr(exc, "os_error", None) or exc.__cause__
            if isinstance(cause, Blocked):
                return Outcome(0, f"refused: {cause}", blocked=True)
            return Outcome(0, f"connection failed: {exc}"[:500])
        except (aiohttp.ClientError, ValueError) as exc:
            return Outcome(0, f"request failed: {type(exc).__name__}: {exc}"[:500])
        if 300 <= status < 400:
            return Outcome(status, f"HTTP {status}: redirects are not followed")
        if not 200 <= status < 300:
            return Outcome(status, f"HTTP {status}")
        return Outcome(status)


class Dispatcher:
    """Schedules the endpoints' queues (see the module docstring).

    One task (:meth:`run`) claims the due fronts of idle endpoints' queues, as many
    endpoints as there is room for, in one statement; each endpoint's claims are sent
    in order by a task of its own; the outcomes that came back meanwhile are recorded
    together (``on_outcome``), after which their endpoints are looked at again once all
    their claims are recorded or given back. An endpoint is *busy* from its claim until
    then, so it never has two deliveries in flight.

    :param targets: the endpoints by id (the runtime's, kept current): each has
        ``url``, ``active`` and ``signing_secrets(now)``.
    :param on_outcome: awaited with the attempts that ended (endpoint, claim, outcome)
        and the time: it records them (delivered, failed, or pending again).
    """

    def __init__(self, gateway: GatewayAPI, store: Outbox, sender: Sender, *,
                 max_in_flight: int, targets: Mapping[str, Any],
                 on_outcome: Callable[[list[Ended], float], Awaitable[None]]) -> None:
        self._gateway = gateway
        self._store = store
        self._sender = sender
        self._targets = targets
        self._on_outcome = on_outcome
        self._lease = sender.timeout + LEASE_MARGIN_SECONDS
        self._room = max_in_flight
        self._due: dict[str, float] = {}
        #: busy endpoints: how many of their claims are not yet recorded or given back
        self._busy: dict[str, int] = {}
        self._ended: list[Ended] = []
        self._given_back: list[Claim] = []
        self._wake = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Endpoints with deliveries under way or not yet recorded."""
        return len(self._busy)

    def poke(self, endpoint_id: str, when: float = 0.0) -> None:
        """Look at the endpoint's queue at ``when`` (0: now), or earlier if asked."""
        self._due[endpoint_id] = min(self._due.get(endpoint_id, math.inf), when)
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: record what ended, claim what is due, wait for either."""
        while True:
            self._wake.clear()
            try:
                # what ended is recorded, and its endpoints' next heads claimed, in the
                # same turn: recording first, always, would starve the claims while
                # outcomes keep arriving (endpoints idle with work waiting)
                recorded = bool(self._ended or self._given_back)
                if recorded:
                    await self._record()
                if await self._claim() or recorded:
                    continue
            except Exception:
                log.exception("webhooks: the outbox could not be read or written; trying "
                              "again in %g s", RETRY_AFTER_ERROR_SECONDS)
                for endpoint_id in list(self._due):
                    self.poke(endpoint_id, time.time() + RETRY_AFTER_ERROR_SECONDS)
            now = time.time()
            waits = [when - now for endpoint_id, when in self._due.items()
                     if endpoint_id not in self._busy]
            timeout = IDLE_SECONDS if len(self._busy) >= self._room else \
                min(min(waits, default=IDLE_SECONDS), IDLE_SECONDS)
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _claim(self) -> bool:
        """Claim the due heads of idle active endpoints; True if any was looked at."""
        room = self._room - len(self._busy)
        now = time.time()
        due = []
        for endpoint_id, when in list(self._due.items()):
            if len(due) >= room:
                break
            if when > now or endpoint_id in self._busy:
                continue
            del self._due[endpoint_id]
            target = self._targets.get(endpoint_id)
            if target is not None and target.active:
                due.append(endpoint_id)
        if not due:
            return False
        batches: dict[str, list[Claim]] = {}
        for claim in await self._store.claim(due, now, now + self._lease, per_endpoint=BATCH):
            batches.setdefault(claim.endpoint_id, []).append(claim)
        for endpoint_id, batch in batches.items():
            self._busy[endpoint_id] = len(batch)
            self._gateway.spawn(self._attempts(self._targets[endpoint_id], batch),
                                "webhooks-attempts")
        idle = [endpoint_id for endpoint_id in due if endpoint_id not in batches]
        for endpoint_id, when in (await self._store.next_due(idle)).items():
            self.poke(endpoint_id, when)  # not due yet: a retry's wait, or a dead lease
        return True

    async def _attempts(self, target: Any, batch: list[Claim]) -> None:
        """Send an endpoint's claims in order, each after the one before it succeeded;
        the rest is given back (after a failure, or once the endpoint is disabled)."""
        for index, claim in enumerate(batch):
            if not target.active:
                self._give_back(batch[index:])
                return
            try:
                outcome = await self._sender.send(target.url, claim.event_id, claim.body,
                                                  target.signing_secrets(time.time()))
            except asyncio.CancelledError:
                # the gateway stops: these were not sent (the one under way did not
                # complete); back in the queue as they were
                await asyncio.shield(self._store.release(batch[index:], time.time()))
                raise
            self._ended.append((target, claim, outcome))
            if not outcome.ok:
                self._give_back(batch[index + 1:])  # held back behind the failed one
                return
            self._wake.set()

    def _give_back(self, claims: list[Claim]) -> None:
        self._given_back.extend(claims)
        self._wake.set()

    async def _record(self) -> None:
        """Give back what was not sent, then record the outcomes (in this order: an
        outcome that disables an endpoint fails what was given back too)."""
        given_back, self._given_back = self._given_back, []
        ended, self._ended = self._ended, []
        try:
            if given_back:
                await self._store.release(given_back, time.time())
            if ended:
                await self._on_outcome(ended, time.time())
        finally:
            for claim in given_back + [claim for _target, claim, _outcome in ended]:
                left = self._busy[claim.endpoint_id] - 1
                if left:
                    self._busy[claim.endpoint_id] = left
                else:
                    del self._busy[claim.endpoint_id]
                    self.poke(claim.endpoint_id)  # its next heads, if any
