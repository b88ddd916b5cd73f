"""Delivery: the HTTP attempt (:class:`Sender`) and the scheduling (:class:`Dispatcher`).

One ``aiohttp`` session for the gateway: ``trust_env=False`` (no proxy from the
environment), the SSRF guard's resolver and socket factory (:mod:`.guard`: every new
connection is checked; connections are kept alive and reused), no cookie jar (a
receiver's cookies are never sent back, to it or to another endpoint on its host),
redirects never followed, a per-attempt timeout, at most 64 KiB of an answer read.

The dispatcher keeps at most one delivery in flight per endpoint - always the head of
its queue, so an endpoint gets its events in the order they happened, and a failing one
holds back only its own queue - and at most ``max_in_flight`` endpoints busy. It claims
the due front of a queue (up to :data:`BATCH` deliveries) in one statement, and the
next ones while those are being sent (:data:`PREFETCH_AT`); they are sent one after
another, each only once the one before it succeeded; what was not sent goes back to the
queue, not counted. Recording outcomes and claiming is one transaction a turn. It runs
one task of its own and one task per endpoint with work (each owned by the gateway:
cancelled and awaited at shutdown; an attempt cut short is put back in its queue, not
counted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import aiohttp

from .guard import Blocked, GuardedResolver, Policy
from .signing import Signer
from .store import DELIVERING, PENDING, Claim, Finish, Outbox

if TYPE_CHECKING:
    from aiohttp.abc import AbstractResolver

    from sessiongate.core import GatewayAPI

__all__ = ["MAX_ANSWER_BYTES", "Decided", "Dispatcher", "Outcome", "Sender", "jittered"]

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
#: turns (each one transaction) start at most this often while there is work, so under
#: load each records and claims more at once: an outcome waits this long at most to be
#: recorded; a run claims its next batch well before it runs out (PREFETCH_AT), and a
#: run about to run out (URGENT_AT claims left) does not wait
TURN_SECONDS = 0.01
URGENT_AT = 2
#: deliveries of one endpoint claimed together (the claim's round trip paid once for
#: them)
BATCH = 16
#: an endpoint's next deliveries are claimed once this few of its claims are left to
#: send (so it never waits for a turn; bodies of at most BATCH + this many per endpoint
#: held in memory)
PREFETCH_AT = BATCH // 2


class Outcome(NamedTuple):
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
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"user-agent": USER_AGENT}, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, url: str, msg_id: str, body: bytes,
                   signer: Signer | Sequence[str]) -> Outcome:
        """One attempt: the body, signed now (``signer``, or the secrets to sign with);
        never raises (but cancellation)."""
        if not isinstance(signer, Signer):
            signer = Signer(signer)
        timestamp = int(time.time())  # UTC seconds, as the signature's
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signer.header(msg_id, timestamp, body),
        }
        started = time.monotonic()
        try:
            async with self._client().post(url, data=body, headers=headers,
                                           allow_redirects=False) as answer:
                await answer.content.read(MAX_ANSWER_BYTES)
                if not answer.content.at_eof():
                    answer.close()  # not read further: the connection is not reused
                status = answer.status
        except TimeoutError:
            error, blocked, status = (f"no answer within {self.timeout:g} s "
                                      "(plugins.webhooks.timeout_seconds)"), False, 0
        except aiohttp.ClientConnectionError as exc:
            cause = getattr(exc, "os_error", None) or exc.__cause__
            blocked, status = isinstance(cause, Blocked), 0
            error = f"refused: {cause}" if blocked else f"connection failed: {exc}"[:500]
        except (aiohttp.ClientError, ValueError) as exc:
            error, blocked, status = (f"request failed: {type(exc).__name__}: {exc}"[:500],
                                      False, 0)
        else:
            blocked = False
            error = ("" if 200 <= status < 300 else
                     f"HTTP {status}: redirects are not followed" if 300 <= status < 400 else
                     f"HTTP {status}")
        return Outcome(status, error, blocked, time.monotonic() - started)


@dataclasses.dataclass
class Decided:
    """What attempts that ended come to, but their finishes (the dispatcher's
    ``decide`` adds to it): what the dispatcher does around recording them."""

    #: endpoints whose ``failing_since`` changed (recorded with the finishes)
    failing_since: dict[str, float | None] = dataclasses.field(default_factory=dict)
    #: endpoints whose queue's head waits until then (a retry's wait; looked at then)
    waits: dict[str, float] = dataclasses.field(default_factory=dict)
    #: endpoints not to claim for in this turn (an outcome disables them)
    hold: set[str] = dataclasses.field(default_factory=set)
    #: awaited in order once recorded (an endpoint disabled, a failure announced)
    after: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)
    #: called once recorded: the outcomes' counters (so they agree with the outbox)
    counted: list[Callable[[], Any]] = dataclasses.field(default_factory=list)


class _Run:
    """An endpoint's claims being sent, in order, by one task (:meth:`Dispatcher._send`)."""

    __slots__ = ("claims", "drained", "last_seq", "stopped", "target")

    def __init__(self, target: Any) -> None:
        self.target = target
        #: claimed, not yet sent (the one being sent first)
        self.claims: collections.deque[Claim] = collections.deque()
        #: the last claimed delivery's ``seq``: the run's next claims come after it
        self.last_seq = 0
        #: the queue had nothing more due behind the run when last looked at
        self.drained = False
        #: it stopped before its queue's end (a failure, the endpoint disabled, the
        #: gateway stopping): claims taken for it meanwhile go back
        self.stopped = False


class Dispatcher:
    """Schedules the endpoints' queues (see the module docstring).

    A *run* is an endpoint's claims, sent in order by one task of its own, each only
    once the one before it succeeded: an endpoint never has two deliveries in flight.
    Each outcome is decided as it comes (``decide``, in memory: in order, per
    endpoint). After a failure whose retry is due at once (a schedule's wait of 0) the
    run sends the same delivery again at once; after any other failure it stops and
    its claims not yet sent go back to the queue, behind the failed one (not counted).

    One task (:meth:`run`) takes turns. A turn, in one transaction and one round trip
    to the store's thread (:meth:`Outbox.turn`): records the outcomes decided since the
    last turn (a retry made at once is recorded with its failure: the delivery stays
    claimed, its attempt counted, its lease renewed) and gives back what will not be
    sent; claims the due fronts of idle endpoints' queues (as many endpoints as there
    is room for); and claims the next deliveries of runs that are low
    (:data:`PREFETCH_AT` claims left), so an endpoint with work never waits for a turn.
    An endpoint is *busy* from its first claim until every claim is recorded or given
    back.

    :param targets: the endpoints by id (the runtime's, kept current): each has
        ``endpoint_id``, ``url``, ``active`` and ``signer(now)`` (a :class:`Signer`).
    :param decide: called with each attempt that ended (endpoint, claim, outcome), in
        order, the time, and the :class:`Decided` of the next turn: the delivery's
        :class:`Finish`, returned; what else follows, added to that :class:`Decided`.
    """

    def __init__(self, gateway: GatewayAPI, store: Outbox, sender: Sender, *,
                 max_in_flight: int, targets: Mapping[str, Any],
                 decide: Callable[[Any, Claim, Outcome, float, Decided], Finish]) -> None:
        self._gateway = gateway
        self._store = store
        self._sender = sender
        self._targets = targets
        self._decide = decide
        self._lease = sender.timeout + LEASE_MARGIN_SECONDS
        self._room = max_in_flight
        self._due: dict[str, float] = {}
        #: busy endpoints: how many of their claims are not yet recorded or given back
        self._busy: dict[str, int] = {}
        #: the endpoints whose run's task is sending
        self._runs: dict[str, _Run] = {}
        #: decided, not yet recorded: (endpoint id, finish, whether it ends its claim)
        self._finished: list[tuple[str, Finish, bool]] = []
        #: what the outcomes decided since the last turn come to, but their finishes
        self._decided = Decided()
        self._given_back: list[Claim] = []
        self._wake = asyncio.Event()
        #: a run is about to run out of claims: the next turn does not wait
        self._urgent = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Endpoints with deliveries under way or not yet recorded."""
        return len(self._busy)

    def poke(self, endpoint_id: str, when: float = 0.0) -> None:
        """Look at the endpoint's queue at ``when`` (0: now), or earlier if asked."""
        self._due[endpoint_id] = min(self._due.get(endpoint_id, math.inf), when)
        run = self._runs.get(endpoint_id)
        if run is not None:
            run.drained = False  # more may have come behind it
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: take a turn while there is work, else wait for some."""
        while True:
            self._wake.clear()
            started = time.monotonic()
            try:
                if await self._turn():
                    rest = TURN_SECONDS - (time.monotonic() - started)
                    if rest > 0 and not self._urgent.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(rest):
                                await self._urgent.wait()
                    continue
            except Exception:
                log.exception("webhooks: the outbox could not be read or written; trying "
                              "again in %g s", RETRY_AFTER_ERROR_SECONDS)
                later = time.time() + RETRY_AFTER_ERROR_SECONDS
                for endpoint_id, when in self._due.items():
                    self._due[endpoint_id] = max(when, later)
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

    async def flush(self) -> None:
        """Record what was decided and give back what was not sent, claiming nothing
        more: the gateway stops (its tasks ended; before the store closes)."""
        self._room = 0
        self._due.clear()
        await self._turn()

    async def _turn(self) -> bool:
        """Record, give back and claim (see the class docstring) in one store round
        trip; False if there was nothing to do. Then the runs get their claims, and
        what follows from the outcomes (:attr:`Decided.after`) runs."""
        self._urgent.clear()
        given_back, self._given_back = self._given_back, []
        finished, self._finished = self._finished, []
        decided, self._decided = self._decided, Decided()
        now = time.time()
        for claim in given_back:
            self._settle(claim.endpoint_id)
        for endpoint_id, _finish, ends in finished:
            if ends:
                self._settle(endpoint_id)
        for endpoint_id, when in decided.waits.items():
            if endpoint_id not in self._busy:
                self._due[endpoint_id] = when  # its head, retried then
        hold = decided.hold
        fetching = {endpoint_id: run for endpoint_id, run in self._runs.items()
                    if len(run.claims) <= PREFETCH_AT and not run.drained
                    and run.target.active and endpoint_id not in hold}
        fetch = [(endpoint_id, run.last_seq) for endpoint_id, run in fetching.items()]
        due = self._due_now(now, hold)
        if not (due or fetch or finished or given_back):
            return False
        try:
            claims, waits = await self._store_turn(
                now, release=given_back, finishes=[finish for _e, finish, _x in finished],
                failing_since=decided.failing_since,
                claim=[*((endpoint_id, 0) for endpoint_id in due), *fetch],
                lease_until=now + self._lease, per_endpoint=BATCH)
        except Exception:
            self._unrecorded(given_back, finished, decided)
            for endpoint_id in due:  # looked at again (run: after a while)
                self.poke(endpoint_id)
            raise
        batches: dict[str, list[Claim]] = {}
        for claim in claims:  # in queue order
            batches.setdefault(claim.endpoint_id, []).append(claim)
        for endpoint_id, run in fetching.items():
            if endpoint_id not in batches:
                run.drained = True
        for endpoint_id, batch in batches.items():
            self._add(batch, fetching.get(endpoint_id))
        for endpoint_id, when in waits.items():
            self.poke(endpoint_id, when)  # not due yet: a retry's wait, or a lease
        for count in decided.counted:
            count()
        for follow_up in decided.after:
            try:
                await follow_up()
            except Exception:
                log.exception("webhooks: acting on an attempt's outcome failed")
        return True

    def _unrecorded(self, given_back: list[Claim], finished: list[tuple[str, Finish, bool]],
                    decided: Decided) -> None:
        """A turn's transaction failed: nothing of it was recorded, so what it was to
        record goes first in the next turn (its endpoints busy again until then)."""
        for claim in given_back:
            self._busy[claim.endpoint_id] = self._busy.get(claim.endpoint_id, 0) + 1
        for endpoint_id, _finish, ends in finished:
            if ends:
                self._busy[endpoint_id] = self._busy.get(endpoint_id, 0) + 1
        self._given_back[:0] = given_back
        self._finished[:0] = finished
        later = self._decided
        later.failing_since = {**decided.failing_since, **later.failing_since}
        later.waits = {**decided.waits, **later.waits}
        later.hold |= decided.hold
        later.after[:0] = decided.after
        later.counted[:0] = decided.counted

    def _due_now(self, now: float, hold: set[str]) -> list[str]:
        """Idle active endpoints due now, as many as there is room for (taken off the
        due list: a claim that finds nothing due puts them back when their head is)."""
        room = self._room - len(self._busy)
        due: list[str] = []
        if room <= 0:
            return due
        for endpoint_id, when in list(self._due.items()):
            if when > now or endpoint_id in self._busy or endpoint_id in hold:
                continue
            del self._due[endpoint_id]
            target = self._targets.get(endpoint_id)
            if target is not None and target.active:
                due.append(endpoint_id)
                if len(due) >= room:
                    break
        return due

    async def _store_turn(self, now: float, **turn: Any
                          ) -> tuple[list[Claim], dict[str, float]]:
        """:meth:`Outbox.turn`. If the gateway stops meanwhile, the transaction still
        completes in the store's thread, and what it claimed is given back."""
        work = asyncio.ensure_future(self._store.turn(now, **turn))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                claims, _waits = await work
                if claims:
                    await self._store.release(claims, time.time())
            raise

    def _add(self, batch: list[Claim], fetched_for: _Run | None) -> None:
        """Claims of an endpoint to its run (behind what it has), or to a new run;
        taken for a run that has stopped meanwhile, they go back (its failed delivery
        goes first)."""
        endpoint_id = batch[0].endpoint_id
        target = self._targets.get(endpoint_id)
        if target is None:  # removed meanwhile, with its deliveries
            return
        self._busy[endpoint_id] = self._busy.get(endpoint_id, 0) + len(batch)
        if fetched_for is not None and fetched_for.stopped:
            self._give_back(batch)
            return
        run = self._runs.get(endpoint_id)
        if run is None:  # a new run (or the one it was taken for ended meanwhile)
            run = self._runs[endpoint_id] = _Run(target)
            self._gateway.spawn(self._send(run), "webhooks-attempts")
        run.claims.extend(batch)
        run.last_seq = batch[-1].seq
        run.drained = len(batch) < BATCH

    def _settle(self, endpoint_id: str) -> None:
        """One of the endpoint's claims is recorded or given back (in this turn); its
        last makes it idle, looked at again now."""
        left = self._busy.get(endpoint_id, 0) - 1
        if left > 0:
            self._busy[endpoint_id] = left
        else:
            self._busy.pop(endpoint_id, None)
            self.poke(endpoint_id)

    async def _send(self, run: _Run) -> None:
        """Send a run's claims in order (see the class docstring); the rest is given
        back after a failure not retried at once, once the endpoint is disabled, or
        when the gateway stops."""
        send, target, claims = self._sender.send, run.target, run.claims
        endpoint_id = target.endpoint_id
        try:
            while claims:
                if not target.active:
                    run.stopped = True
                    self._give_back(list(claims))
                    claims.clear()
                    break
                claim = claims[0]
                outcome = await send(target.url, claim.event_id, claim.body,
                                     target.signer(time.time()))
                claims.popleft()
                if len(claims) <= URGENT_AT and not run.drained:
                    self._urgent.set()
                now = time.time()
                finish = self._decide(target, claim, outcome, now, self._decided)
                self._wake.set()
                if outcome.ok:
                    self._finished.append((endpoint_id, finish, True))
                elif (finish.status == PENDING and finish.due <= now and target.active
                      and endpoint_id not in self._decided.hold):
                    # again at once: still claimed, the attempt counted as the failure
                    # is recorded (next turn), the lease renewed
                    lease_until = now + self._lease
                    self._finished.append((endpoint_id, finish._replace(
                        status=DELIVERING, due=lease_until, attempt=1), False))
                    claims.appendleft(claim._replace(attempts=claim.attempts + 1,
                                                     lease_until=lease_until))
                else:  # the run stops: what it has not sent goes back, behind this one
                    run.stopped = True
                    self._finished.append((endpoint_id, finish, True))
                    self._give_back(list(claims))
                    claims.clear()
        except asyncio.CancelledError:
            # the gateway stops: these were not sent (the one under way did not
            # complete); back in the queue as they were (flush), once what was decided
            # is recorded
            run.stopped = True
            self._give_back(list(claims))
            claims.clear()
            raise
        finally:
            if self._runs.get(endpoint_id) is run:
                del self._runs[endpoint_id]

    def _give_back(self, claims: list[Claim]) -> None:
        if claims:
            self._given_back.extend(claims)
            self._wake.set()
