"""The webhooks plugin bound to one running gateway: :class:`WebhooksRuntime`.

``sg_startup`` makes one and keeps it in the gateway's stash; ``sg_shutdown`` stops it.
It owns the outbox store, the endpoints (in memory, secrets decrypted, kept in step
with the store), the HTTP sender and three tasks the gateway owns (cancelled and
awaited at shutdown, S2.PIT.3): the *writer*, the *dispatcher* and the *pruner*.

Emitting an event (:meth:`WebhooksRuntime.emit`) never waits and never raises: the
event's body is made and it is put, with the endpoints it goes to, on a bounded list;
the writer stores each batch of them in one transaction of multi-row inserts (events
and deliveries), in the order they happened, within milliseconds, and tells the
dispatcher which queues grew. No network I/O happens on a call's path, and a failed
write is logged and counted, never the caller's problem (S2.BEH.10).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sessiongate.core import StashKey, counter, gauge, histogram
from sessiongate.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

from .dispatch import Decided, Dispatcher, Outcome, Sender, jittered
from .events import Event, check_event_types, new_id, subscribed
from .guard import Policy, check_url
from .rules import WebhookSettings
from .signing import SecretBox, Signer, new_secret
from .store import (
    ACTIVE,
    DELIVERED,
    DISABLED,
    FAILED,
    PENDING,
    STORE_FILE,
    Claim,
    EndpointRow,
    Finish,
    Outbox,
)

if TYPE_CHECKING:
    from aiohttp.abc import AbstractResolver

    from sessiongate.core import GatewayAPI

__all__ = ["RUNTIME", "Endpoint", "WebhooksRuntime"]

log = logging.getLogger("sessiongate.plugins.webhooks")

RUNTIME: StashKey[WebhooksRuntime] = StashKey("webhooks.runtime")
#: events waiting for the writer at most; beyond, new ones are dropped and counted
MAX_PENDING_EVENTS = 10_000
#: events stored per transaction at most
WRITE_BATCH = 1000
MAX_ENDPOINTS = 1000
DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 30 * 86400
PRUNE_INTERVAL_SECONDS = 3600.0
MAX_LIST = 1000

#: how often the outbox gauges (deliveries by status, oldest waiting) are refreshed
GAUGE_INTERVAL_SECONDS = 15.0

M_ENQUEUED = "webhooks_enqueued"
M_DROPPED = "webhooks_events_dropped"
M_ATTEMPTS = "webhooks_attempts"
M_ATTEMPT_SECONDS = "webhooks_attempt_seconds"
M_DELIVERED = "webhooks_delivered"
M_RETRIES = "webhooks_retries"
M_FAILED = "webhooks_failed"
M_DISABLED = "webhooks_endpoints_disabled"
M_OUTBOX = "webhooks_outbox_deliveries"
M_OLDEST = "webhooks_oldest_waiting_seconds"
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0)

#: the plugin's metrics (sg_metrics); docs/plugins/webhooks.md lists them too
METRICS = (
    counter(M_ENQUEUED, "Webhook deliveries stored in the outbox, by event type (at most "
            "100 types: the documented ones and the activity operations).", {"type": None}),
    counter(M_DROPPED, "Webhook events lost before they were stored: backlog (more than "
            f"{MAX_PENDING_EVENTS} waited for the store), store (a write failed), error.",
            {"reason": ("backlog", "store", "error")}),
    counter(M_ATTEMPTS, "Webhook delivery attempts by outcome (blocked: refused by the SSRF "
            "guard).", {"outcome": ("delivered", "failed", "blocked")}),
    histogram(M_ATTEMPT_SECONDS, "Duration of webhook delivery attempts (connection, "
              "request, answer).", ATTEMPT_BUCKETS),
    counter(M_DELIVERED, "Webhook deliveries delivered (a 2xx answer)."),
    counter(M_RETRIES, "Failed webhook attempts that were rescheduled."),
    counter(M_FAILED, "Webhook deliveries failed for good: schedule (every attempt of "
            "plugins.webhooks.retry_schedule_seconds failed), gone (410), endpoint_disabled.",
            {"reason": ("schedule", "gone", "endpoint_disabled")}),
    counter(M_DISABLED, "Webhook endpoints disabled: gone (a 410 answer), failing (for "
            "plugins.webhooks.disable_after_hours).", {"reason": ("gone", "failing")}),
    gauge(M_OUTBOX, f"Webhook deliveries in the outbox by status (refreshed every "
          f"{GAUGE_INTERVAL_SECONDS:g} s).",
          {"status": ("pending", "delivering", "delivered", "failed")}),
    gauge(M_OLDEST, f"Age of the oldest webhook delivery not yet delivered or failed (0: "
          f"none; refreshed every {GAUGE_INTERVAL_SECONDS:g} s)."),
)


@dataclasses.dataclass
class Endpoint:
    """An endpoint as the runtime uses it: its secrets in clear (never logged)."""

    endpoint_id: str
    url: str
    event_types: tuple[str, ...]
    status: str
    disabled_reason: str
    created_at: float
    failing_since: float | None
    secret: str = dataclasses.field(repr=False)
    previous_secret: str | None = dataclasses.field(repr=False, default=None)
    previous_expires_at: float | None = None
    #: removed by an admin: its run stops before its next attempt
    removed: bool = dataclasses.field(default=False, compare=False)

    @property
    def active(self) -> bool:
        return self.status == ACTIVE and not self.removed

    _signer: Signer | None = dataclasses.field(repr=False, compare=False, default=None)

    def signing_secrets(self, now: float) -> tuple[str, ...]:
        """The current secret, and the previous one while its grace period runs."""
        if self.previous_secret and (self.previous_expires_at or 0) > now:
            return (self.secret, self.previous_secret)
        return (self.secret,)

    def signer(self, now: float) -> Signer:
        """A :class:`Signer` of :meth:`signing_secrets` (made again when they change: a
        rotation, a grace period's end)."""
        secrets = self.signing_secrets(now)
        signer = self._signer
        if signer is None or signer.secrets != secrets:
            signer = self._signer = Signer(secrets)
        return signer

    def public(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "url": self.url,
                "event_types": list(self.event_types), "status": self.status,
                "disabled_reason": self.disabled_reason, "created_at": self.created_at,
                "failing_since": self.failing_since,
                "previous_secret_expires_at": self.previous_expires_at
                if self.previous_secret else None}


class WebhooksRuntime:
    """The outbox, endpoints and delivery of one gateway (see the module docstring).

    :param resolver: the DNS resolver the SSRF guard wraps (tests give their own).
    """

    def __init__(self, gateway: GatewayAPI, *, resolver: AbstractResolver | None = None) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.settings = WebhookSettings.from_settings(gateway.settings)
        self.policy = Policy(self.settings.http_hosts, self.settings.networks)
        self.store = Outbox(gateway.state_dir / STORE_FILE)
        self.sender = Sender(self.policy, self.settings.timeout, resolver=resolver,
                             max_connections=self.settings.max_in_flight)
        self.endpoints: dict[str, Endpoint] = {}
        self.dispatcher = Dispatcher(gateway, self.store, self.sender,
                                     max_in_flight=self.settings.max_in_flight,
                                     targets=self.endpoints, decide=self._decide)
        # the counters every attempt moves, checked once (metrics.child); moved once the
        # outcome is recorded (Decided.counted), so they agree with the outbox
        self._count_attempt = {label: self.metrics.child(M_ATTEMPTS, outcome=label)
                               for label in ("failed", "blocked")}
        delivered_attempt = self.metrics.child(M_ATTEMPTS, outcome="delivered")
        delivered = self.metrics.child(M_DELIVERED)

        def count_delivered() -> None:
            delivered_attempt(1)
            delivered(1)

        self._count_delivered = count_delivered
        self._count_retry = self.metrics.child(M_RETRIES)
        self._box: SecretBox | None = None
        self._pending: collections.deque[tuple[Event, list[str]]] = collections.deque()
        self._has_pending = asyncio.Event()
        self._dropping = False
        self._writing: asyncio.Future[None] | None = None
        self.started = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._box = await asyncio.to_thread(SecretBox.open, self.gateway.state_dir)
        await self.store.open()
        try:
            for row in await self.store.endpoints():
                self.endpoints[row.endpoint_id] = self._decrypted(row)
            await self.store.prune(time.time() - self.settings.retention)
        except BaseException:
            await self.store.close()
            raise
        for endpoint in self.endpoints.values():
            if endpoint.active:
                self.dispatcher.poke(endpoint.endpoint_id)  # a queue left by the last run
        self.gateway.spawn(self._write_loop(), "webhooks-writer")
        self.gateway.spawn(self.dispatcher.run(), "webhooks-dispatcher")
        self.gateway.spawn(self._prune_loop(), "webhooks-pruner")
        self.gateway.spawn(self._gauge_loop(), "webhooks-gauges")
        self.started = True
        log.info("webhooks: %d endpoint(s), %d active", len(self.endpoints),
                 sum(e.active for e in self.endpoints.values()))

    async def stop(self) -> None:
        """After the gateway cancelled the tasks: record the outcomes decided and give
        back the claims not sent, store the events still waiting, close."""
        self.started = False
        try:
            try:
                await self.dispatcher.flush()
            except Exception:
                log.exception("webhooks: the last outcomes could not be recorded (their "
                              "deliveries are sent again once their leases end)")
            if self._pending:
                await self._write_batch(list(self._pending))
                self._pending.clear()
        finally:
            await self.sender.close()
            await self.store.close()

    def _decrypted(self, row: EndpointRow) -> Endpoint:
        assert self._box is not None
        box, eid = self._box, row.endpoint_id
        return Endpoint(
            endpoint_id=eid, url=row.url, event_types=row.event_types, status=row.status,
            disabled_reason=row.disabled_reason, created_at=row.created_at,
            failing_since=row.failing_since, secret=box.unseal(row.secret, eid),
            previous_secret=box.unseal(row.previous_secret, eid) if row.previous_secret
            else None, previous_expires_at=row.previous_expires_at)

    # -- emitting --------------------------------------------------------------------------

    def emit(self, kind: str, data: Mapping[str, Any], *, exclude: str = "") -> int:
        """Queue an event for every active endpoint that wants ``kind`` (but
        ``exclude``); how many it goes to. Never waits, never raises."""
        try:
            targets = [e.endpoint_id for e in self.endpoints.values()
                       if e.active and e.endpoint_id != exclude and subscribed(kind, e.event_types)]
            if not targets:
                return 0
            if len(self._pending) >= MAX_PENDING_EVENTS:
                self.metrics.inc(M_DROPPED, reason="backlog")
                if not self._dropping:
                    self._dropping = True
                    log.error("webhooks: %d events wait to be stored: dropping new ones until "
                              "the store catches up (counted in %s)", len(self._pending),
                              M_DROPPED)
                return 0
            self._pending.append((Event.make(kind, data, time.time()), targets))
            self._has_pending.set()
            return len(targets)
        except Exception:
            self.metrics.inc(M_DROPPED, reason="error")
            log.exception("webhooks: event %s could not be queued", kind)
            return 0

    async def _write_loop(self) -> None:
        while True:
            await self._has_pending.wait()
            batch = [self._pending.popleft()
                     for _ in range(min(WRITE_BATCH, len(self._pending)))]
            if not self._pending:
                self._has_pending.clear()
                if self._dropping:
                    self._dropping = False
                    log.info("webhooks: the store caught up; events are queued again")
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[Event, list[str]]]) -> None:
        try:
            per_endpoint = await self.store.enqueue(batch, time.time())
        except asyncio.CancelledError:
            self._pending.extendleft(reversed(batch))  # stored at shutdown (stop)
            raise
        except Exception:
            self.metrics.inc(M_DROPPED, len(batch), reason="store")
            log.exception("webhooks: %d event(s) could not be stored and are lost",
                          len(batch))
            return
        for event, targets in batch:
            self.metrics.inc(M_ENQUEUED, len(targets), type=event.type)
        for endpoint_id in per_endpoint:
            self.dispatcher.poke(endpoint_id)

    # -- outcomes --------------------------------------------------------------------------

    def _decide(self, endpoint: Endpoint, claim: Claim, outcome: Outcome, now: float,
                decided: Decided) -> Finish:
        """What an attempt's outcome comes to (the dispatcher's ``decide``; it records
        it in its next turn): the delivery's new status, returned, and on ``decided``
        the endpoint's ``failing_since`` if it changed (updated in memory now), the
        counters it moves and what must follow (an endpoint disabled; a failure
        announced), both once it is recorded."""
        self.metrics.observe(M_ATTEMPT_SECONDS, outcome.seconds)
        if outcome.ok:
            decided.counted.append(self._count_delivered)
            if endpoint.failing_since is not None:
                endpoint.failing_since = None
                decided.failing_since[endpoint.endpoint_id] = None
            return Finish(claim.seq, DELIVERED, outcome.status, "", now)
        decided.counted.append(self._count_attempt["blocked" if outcome.blocked else "failed"])
        if endpoint.failing_since is None:
            endpoint.failing_since = now
            decided.failing_since[endpoint.endpoint_id] = now
        failing_for = now - endpoint.failing_since
        if outcome.gone or failing_for >= self.settings.disable_after:
            why = ("answered 410 Gone" if outcome.gone else
                   f"every attempt failed for {failing_for / 3600:.2f} h "
                   "(plugins.webhooks.disable_after_hours)")
            decided.hold.add(endpoint.endpoint_id)  # not claimed for again: disabled
            decided.after.append(lambda: self._fail(
                endpoint, claim, outcome, "gone" if outcome.gone else "endpoint_disabled"))
            decided.after.append(lambda: self._disable(
                endpoint, now, "gone" if outcome.gone else "failing", why))
            return Finish(claim.seq, FAILED, outcome.status, outcome.error, now)
        schedule = self.settings.schedule
        if claim.attempts >= len(schedule):
            decided.after.append(lambda: self._fail(endpoint, claim, outcome, "schedule"))
            return Finish(claim.seq, FAILED, outcome.status, outcome.error, now)
        due = now + jittered(schedule[claim.attempts])
        if due > now:  # its queue waits for it (else it is sent again at once)
            decided.waits[endpoint.endpoint_id] = due
        decided.counted.append(self._count_retry)
        log.info("webhooks: delivery %s to endpoint %s, attempt %d failed (%s); next in %.1f s",
                 claim.delivery_id, endpoint.endpoint_id, claim.attempts, outcome.error,
                 due - now)
        return Finish(claim.seq, PENDING, outcome.status, outcome.error, due)

    async def _fail(self, endpoint: Endpoint, claim: Claim, outcome: Outcome,
                    reason: str) -> None:
        """A delivery failed for good (recorded already): count, log, announce."""
        self.metrics.inc(M_FAILED, reason=reason)
        log.warning("webhooks: delivery %s (event %s, %s) to endpoint %s failed after %d "
                    "attempt(s): %s", claim.delivery_id, claim.event_id, claim.event_type,
                    endpoint.endpoint_id, claim.attempts, outcome.error)
        await self.gateway.report_webhook_failure(types.MappingProxyType({
            "delivery_id": claim.delivery_id, "event_id": claim.event_id,
            "event_type": claim.event_type, "endpoint_id": endpoint.endpoint_id,
            "attempts": claim.attempts, "last_status_code": outcome.status,
            "last_error": outcome.error}))

    async def _disable(self, endpoint: Endpoint, now: float, reason: str, why: str) -> None:
        failed = await self.store.disable(endpoint.endpoint_id, why, now)
        endpoint.status, endpoint.disabled_reason = DISABLED, why
        self.metrics.inc(M_DISABLED, reason=reason)
        if failed:
            self.metrics.inc(M_FAILED, failed, reason="endpoint_disabled")
        log.warning("webhooks: endpoint %s disabled: it %s; %d waiting deliveries failed",
                    endpoint.endpoint_id, why, failed)
        self.emit("webhook.endpoint_disabled",
                  {"endpoint_id": endpoint.endpoint_id, "reason": why,
                   "failing_since": endpoint.failing_since}, exclude=endpoint.endpoint_id)

    # -- pruning ---------------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(min(PRUNE_INTERVAL_SECONDS, self.settings.retention))
            try:
                deleted = await self.store.prune(time.time() - self.settings.retention)
                if deleted:
                    log.info("webhooks: pruned %d ended deliveries (plugins.webhooks."
                             "retention_hours)", deleted)
            except Exception:
                log.exception("webhooks: pruning the outbox failed; trying again later")

    async def refresh_gauges(self) -> None:
        """Outbox depth by status and the oldest waiting delivery's age, read now."""
        for status, count in (await self.store.depth()).items():
            self.metrics.set(M_OUTBOX, count, status=status)
        oldest = await self.store.oldest_waiting()
        self.metrics.set(M_OLDEST, 0 if oldest is None else max(0.0, time.time() - oldest))

    async def _gauge_loop(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except Exception:
                log.exception("webhooks: reading the outbox's depth failed")
            await asyncio.sleep(GAUGE_INTERVAL_SECONDS)

    # -- management (the admin API) -------------------------------------------------------

    def endpoint(self, endpoint_id: str) -> Endpoint:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise NotFound(f"no webhook endpoint with id {endpoint_id!r} (`sessiongate "
                           "webhooks list` shows them)")
        return endpoint

    async def add_endpoint(self, url: str, event_types: list[str]) -> tuple[Endpoint, str]:
        """A new endpoint and its secret (shown once)."""
        try:
            url = check_url(url, self.policy)
            types = check_event_types(event_types)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if len(self.endpoints) >= MAX_ENDPOINTS:
            raise ResourceExhausted(f"{MAX_ENDPOINTS} endpoints exist already; remove one")
        assert self._box is not None
        endpoint_id, secret, now = new_id("ep"), new_secret(), time.time()
        row = EndpointRow(endpoint_id, url, tuple(types), self._box.seal(secret, endpoint_id),
                          None, None, ACTIVE, "", None, now)
        await self.store.add_endpoint(row)
        endpoint = self.endpoints[endpoint_id] = self._decrypted(row)
        log.info("webhooks: endpoint %s added for %s", endpoint_id, ", ".join(types))
        return endpoint, secret

    async def remove_endpoint(self, endpoint_id: str) -> Endpoint:
        endpoint = self.endpoint(endpoint_id)
        await self.store.remove_endpoint(endpoint_id)
        endpoint.removed = True  # what its run has claimed is not sent
        self.endpoints.pop(endpoint_id, None)
        log.info("webhooks: endpoint %s removed", endpoint_id)
        return endpoint

    async def rotate_secret(self, endpoint_id: str, grace_seconds: float) -> tuple[Endpoint, str]:
        """A new secret; the current one keeps signing too for ``grace_seconds``."""
        endpoint = self.endpoint(endpoint_id)
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidArgument(f"the grace period must be 0 to {MAX_GRACE_SECONDS} s")
        assert self._box is not None
        secret, expires = new_secret(), time.time() + grace_seconds
        await self.store.set_secrets(endpoint_id, self._box.seal(secret, endpoint_id),
                                     self._box.seal(endpoint.secret, endpoint_id), expires)
        endpoint.previous_secret, endpoint.previous_expires_at = endpoint.secret, expires
        endpoint.secret = secret
        log.info("webhooks: endpoint %s has a new secret; the previous one signs too for "
                 "%g s", endpoint_id, grace_seconds)
        return endpoint, secret

    async def deliveries(self, status: str, endpoint_id: str, limit: int) -> list[dict[str, Any]]:
        if status and status not in (PENDING, "delivering", DELIVERED, FAILED):
            raise InvalidArgument(f"unknown status {status[:40]!r}: pending, delivering, "
                                  "delivered or failed")
        if limit > MAX_LIST:
            raise InvalidArgument(f"limit is at most {MAX_LIST}")
        return await self.store.deliveries(status=status, endpoint_id=endpoint_id,
                                           limit=limit or 100)

    async def redeliver(self, delivery_id: str) -> dict[str, Any]:
        found = await self.store.delivery(delivery_id)
        if found is None:
            raise NotFound(f"no delivery with id {delivery_id!r} (`sessiongate webhooks "
                           "deliveries` shows them)")
        endpoint = self.endpoint(found["endpoint_id"])
        if not endpoint.active:
            raise FailedPrecondition(f"endpoint {endpoint.endpoint_id} is disabled "
                                     f"({endpoint.disabled_reason}); add it again")
        if not await self.store.redeliver(delivery_id, time.time()):
            raise FailedPrecondition(f"delivery {delivery_id} is {found['status']}: it is "
                                     "not over yet")
        self.dispatcher.poke(endpoint.endpoint_id)
        delivery = await self.store.delivery(delivery_id)
        assert delivery is not None
        return delivery

    async def send_test(self, endpoint_id: str) -> dict[str, Any]:
        """A ``webhook.test`` event for this endpoint alone, stored now."""
        endpoint = self.endpoint(endpoint_id)
        if not endpoint.active:
            raise FailedPrecondition(f"endpoint {endpoint_id} is disabled "
                                     f"({endpoint.disabled_reason})")
        event = Event.make("webhook.test", {"endpoint_id": endpoint_id}, time.time())
        await self._write_batch([(event, [endpoint_id])])
        delivery = await self.store.delivery(event_id=event.event_id, endpoint_id=endpoint_id)
        if delivery is None:  # the store failed (logged, counted)
            raise FailedPrecondition("the test event could not be stored (see the gateway log)")
        return delivery
