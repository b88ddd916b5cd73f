"""The dispatcher on a real outbox (SQLite) with a stand-in sender: batches, order, one
delivery in flight per endpoint, retries claimed again in the turn that records them."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import sqlite3
import time
from typing import Any

import pytest
import pytest_asyncio

from sessiongate.plugins.webhooks.dispatch import Decided, Dispatcher, Outcome
from sessiongate.plugins.webhooks.events import Event
from sessiongate.plugins.webhooks.signing import Signer
from sessiongate.plugins.webhooks.store import DELIVERED, PENDING, Finish, Outbox

pytestmark = [pytest.mark.asyncio, pytest.mark.once]


@pytest_asyncio.fixture
async def outbox(tmp_path):
    async with Outbox(tmp_path / "webhooks.sqlite3") as store:
        yield store


@dataclasses.dataclass
class Target:
    endpoint_id: str
    url: str
    active: bool = True

    def signer(self, now: float) -> Signer:
        return Signer(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])


class Tasks:
    """The gateway's part the dispatcher uses: tasks it owns."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def cancel_and_wait(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Sender:
    """Answers each URL's requests from a plan of statuses (then 204), taking a few loop
    turns each; records what was sent and how many went to one URL at once."""

    timeout = 5.0

    def __init__(self, plans: dict[str, list[int]], seconds: float = 0.0) -> None:
        self.seconds = seconds  # each attempt takes this long (else a few loop turns)
        self.plans = {url: collections.deque(plan) for url, plan in plans.items()}
        self.sent: dict[str, list[str]] = collections.defaultdict(list)
        self.at_once: collections.Counter[str] = collections.Counter()
        self.most_at_once: collections.Counter[str] = collections.Counter()
        self.bodies: dict[str, set[bytes]] = collections.defaultdict(set)
        self.answered = 0

    async def send(self, url: str, msg_id: str, body: bytes, signer: Signer) -> Outcome:
        self.sent[url].append(msg_id)
        self.bodies[msg_id].add(body)
        self.at_once[url] += 1
        self.most_at_once[url] = max(self.most_at_once[url], self.at_once[url])
        try:
            if self.seconds:
                await asyncio.sleep(self.seconds)
            for _ in range(3):
                await asyncio.sleep(0)
            plan = self.plans.get(url)
            status = plan.popleft() if plan else 204
            if status == 0:  # hangs (until cancelled)
                await asyncio.Event().wait()
            return Outcome(status, "" if status < 300 else f"HTTP {status}")
        finally:
            self.at_once[url] -= 1
            self.answered += 1


def started(outbox: Outbox, sender: Sender, targets: dict[str, Any],
            decide: Any) -> tuple[Tasks, Dispatcher]:
    """A dispatcher over ``targets``, each looked at now, running in a task of its own."""
    tasks = Tasks()
    dispatcher = Dispatcher(tasks, outbox, sender, max_in_flight=16,  # type: ignore[arg-type]
                            targets=targets, decide=decide)
    for endpoint_id in targets:
        dispatcher.poke(endpoint_id)
    tasks.spawn(dispatcher.run(), "dispatcher")
    return tasks, dispatcher


async def all_delivered(outbox: Outbox, count: int) -> None:
    while len(await outbox.deliveries(status=DELIVERED, limit=100)) < count:
        await asyncio.sleep(0.01)


async def run_until_delivered(tasks: Tasks, outbox: Outbox, count: int) -> None:
    """Until ``count`` deliveries are delivered (20 s at most); the tasks then stopped."""
    try:
        async with asyncio.timeout(20):
            await all_delivered(outbox, count)
    finally:
        await tasks.cancel_and_wait()


def retry_at_once(target: Any, claim: Any, outcome: Outcome, now: float,
                  decided: Decided) -> Finish:
    """A decide: delivered, or pending again and due now (the schedule's first wait)."""
    if outcome.ok:
        return Finish(claim.seq, DELIVERED, outcome.status, "", now)
    return Finish(claim.seq, PENDING, outcome.status, outcome.error, now)


def retry_later(target: Any, claim: Any, outcome: Outcome, now: float,
                decided: Decided) -> Finish:
    """A decide: delivered, or pending again and due in 0.1 s (the queue waits)."""
    if outcome.ok:
        return Finish(claim.seq, DELIVERED, outcome.status, "", now)
    decided.waits[claim.endpoint_id] = now + 0.1
    return Finish(claim.seq, PENDING, outcome.status, outcome.error, now + 0.1)


async def test_interleaved_queues_claimed_in_one_turn_go_out_in_order_one_at_a_time(outbox):
    """Two endpoints' deliveries alternate in the outbox (each event goes to both), so
    one claim statement returns their batches interleaved: each endpoint's are sent by
    one task, in queue order, never two at once; a failure with an immediate retry is
    recorded and claimed again in the same turn, ahead of the rest, with the same
    bytes."""
    events = [Event.make("session.opened", {"n": i}, time.time()) for i in range(20)]
    await outbox.enqueue([(e, ["ep_a", "ep_b"]) for e in events], time.time())
    targets = {"ep_a": Target("ep_a", "http://a/"), "ep_b": Target("ep_b", "http://b/")}
    sender = Sender({"http://a/": [204, 204, 500], "http://b/": [503]})
    tasks, dispatcher = started(outbox, sender, targets, retry_at_once)
    ids = [e.event_id for e in events]
    await run_until_delivered(tasks, outbox, 40)
    assert sender.sent["http://a/"] == ids[:3] + ids[2:]  # the third failed, sent again
    assert sender.sent["http://b/"] == ids[:1] + ids
    assert sender.most_at_once == {"http://a/": 1, "http://b/": 1}
    assert all(len(bodies) == 1 for bodies in sender.bodies.values())
    attempts = {(r["endpoint_id"], r["event_id"]): r["attempts"]
                for r in await outbox.deliveries(limit=100)}
    assert attempts == {(endpoint, event_id): 2 if (endpoint, event_id) in (
        ("ep_a", ids[2]), ("ep_b", ids[0])) else 1
        for endpoint in ("ep_a", "ep_b") for event_id in ids}
    assert dispatcher.in_flight == 0


async def test_a_run_stopped_by_a_failure_gives_back_what_it_had_claimed_uncounted(outbox):
    """A failure whose retry waits stops the endpoint's run: the deliveries it had
    claimed behind the failed one (its next batch too, claimed ahead) go back to the
    queue uncounted, and are sent after the retry, in order."""
    events = [Event.make("session.opened", {"n": i}, time.time()) for i in range(40)]
    await outbox.enqueue([(e, ["ep_a"]) for e in events], time.time())
    targets = {"ep_a": Target("ep_a", "http://a/")}
    sender = Sender({"http://a/": [204] * 12 + [500]})
    stopped: list[int] = []


    async def watch() -> None:  # the queue while the retry waits
        while True:
            rows = await outbox.deliveries(limit=100)
            if any(r["last_status_code"] == 500 and r["status"] == PENDING for r in rows) \
                    and not any(r["status"] == "delivering" for r in rows):
                stopped.append(sum(r["attempts"] for r in rows if r["status"] == PENDING))
                return
            await asyncio.sleep(0.005)

    tasks, _dispatcher = started(outbox, sender, targets, retry_later)
    tasks.spawn(watch(), "watch")
    ids = [e.event_id for e in events]
    await run_until_delivered(tasks, outbox, 40)
    assert sender.sent["http://a/"] == ids[:13] + ids[12:]
    assert stopped == [1]  # all given back before the retry; only the failed attempt counted
    attempts = {r["event_id"]: r["attempts"] for r in await outbox.deliveries(limit=100)}
    assert attempts == {i: 2 if i == ids[12] else 1 for i in ids}


async def test_claims_taken_ahead_for_a_run_that_stopped_meanwhile_go_back(outbox):
    """The next batch of a run is claimed while the run still sends; if a failure stops
    the run meanwhile, that batch is given back when it comes, not sent ahead of the
    failed delivery's retry."""
    events = [Event.make("session.opened", {"n": i}, time.time()) for i in range(40)]
    await outbox.enqueue([(e, ["ep_a"]) for e in events], time.time())
    targets = {"ep_a": Target("ep_a", "http://a/")}
    fetching = asyncio.Event()  # a claim ahead has started (and is held)
    gate = asyncio.Event()
    turn = outbox.turn

    class FailsOnceFetching(Sender):
        async def send(self, url: str, msg_id: str, body: bytes, signer: Signer) -> Outcome:
            if len(self.sent[url]) == 11:  # the twelfth fails, once the claim ahead runs
                await fetching.wait()
            return await super().send(url, msg_id, body, signer)

    sender = FailsOnceFetching({"http://a/": [204] * 11 + [500]})

    async def held_turn(now: float, **parts: Any) -> Any:
        if any(after for _endpoint, after in parts.get("claim", ())):
            fetching.set()
            await gate.wait()  # the claim ahead waits until the run has failed
        return await turn(now, **parts)

    outbox.turn = held_turn  # type: ignore[method-assign]


    tasks, _dispatcher = started(outbox, sender, targets, retry_later)
    ids = [e.event_id for e in events]
    try:
        async with asyncio.timeout(20):
            while sender.answered < 12:  # the twelfth failed: its run stopped
                await asyncio.sleep(0.005)
            gate.set()
            await all_delivered(outbox, 40)
    finally:
        await tasks.cancel_and_wait()
    assert sender.sent["http://a/"] == ids[:12] + ids[11:]
    attempts = {r["event_id"]: r["attempts"] for r in await outbox.deliveries(limit=100)}
    assert attempts == {i: 2 if i == ids[11] else 1 for i in ids}


async def test_a_stop_records_what_was_decided_and_gives_back_the_rest(outbox):
    """The gateway stops while a delivery's immediate retry is under way: the first
    attempt, decided but not yet recorded, is recorded (its failure, the attempt
    counted); the retry cut short and the claims behind it go back uncounted."""
    events = [Event.make("session.opened", {"n": i}, time.time()) for i in range(4)]
    await outbox.enqueue([(e, ["ep_a"]) for e in events], time.time())
    targets = {"ep_a": Target("ep_a", "http://a/")}
    sender = Sender({"http://a/": [204, 500, 0]})  # delivered, failed, hangs
    tasks, dispatcher = started(outbox, sender, targets, retry_at_once)
    async with asyncio.timeout(20):
        while len(sender.sent["http://a/"]) < 3:
            await asyncio.sleep(0.001)
    await tasks.cancel_and_wait()
    await dispatcher.flush()
    rows = sorted(await outbox.deliveries(limit=10), key=lambda r: r["event_id"])
    assert [(r["status"], r["attempts"], r["last_status_code"]) for r in rows] == [
        ("delivered", 1, 204), ("pending", 1, 500), ("pending", 0, 0), ("pending", 0, 0)]
    assert sender.sent["http://a/"] == [e.event_id for e in events[:2]] + [events[1].event_id]
    assert dispatcher.in_flight == 0


async def test_a_removed_endpoint_is_sent_nothing_more_of_what_its_run_had_claimed(outbox):
    """An endpoint removed while its run sends (its ``active`` false from then on):
    the run stops before its next attempt and gives back the rest, uncounted."""
    events = [Event.make("session.opened", {"n": i}, time.time()) for i in range(20)]
    await outbox.enqueue([(e, ["ep_a"]) for e in events], time.time())
    target = Target("ep_a", "http://a/")

    class RemovedDuringThird(Sender):
        async def send(self, url: str, msg_id: str, body: bytes, signer: Signer) -> Outcome:
            if len(self.sent[url]) == 2:
                target.active = False
            return await super().send(url, msg_id, body, signer)

    sender = RemovedDuringThird({})
    tasks, dispatcher = started(outbox, sender, {"ep_a": target}, retry_at_once)
    try:
        async with asyncio.timeout(20):
            while sender.answered < 3 or dispatcher.in_flight:
                await asyncio.sleep(0.005)
    finally:
        await tasks.cancel_and_wait()
    assert sender.sent["http://a/"] == [e.event_id for e in events[:3]]
    rows = {r["event_id"]: (r["status"], r["attempts"])
            for r in await outbox.deliveries(limit=100)}
    assert rows == {e.event_id: ("delivered", 1) if n < 3 else ("pending", 0)
                    for n, e in enumerate(events)}


async def test_outcomes_of_a_turn_whose_transaction_failed_are_recorded_in_the_next(
        outbox, monkeypatch, caplog):
    """The store fails one turn (a full disk, say): nothing of it was written, so its
    outcomes are recorded by the next turn - each delivery sent once, delivered, its
    attempt counted once - not left to their leases (sent twice)."""
    from sessiongate.plugins.webhooks import dispatch

    monkeypatch.setattr(dispatch, "RETRY_AFTER_ERROR_SECONDS", 0.05)
    events = [Event.make("session.opened", {"n": i}, time.time()) for i in range(30)]
    await outbox.enqueue([(e, ["ep_a", "ep_b"]) for e in events], time.time())
    targets = {"ep_a": Target("ep_a", "http://a/"), "ep_b": Target("ep_b", "http://b/")}
    sender = Sender({})
    turn = outbox.turn
    failed: list[int] = []

    async def fails_once_with_outcomes(now: float, **parts: Any) -> Any:
        if parts.get("finishes") and not failed:
            failed.append(len(parts["finishes"]))
            raise sqlite3.OperationalError("database or disk is full")
        return await turn(now, **parts)

    outbox.turn = fails_once_with_outcomes  # type: ignore[method-assign]
    tasks, dispatcher = started(outbox, sender, targets, retry_at_once)
    try:
        async with asyncio.timeout(20):
            await all_delivered(outbox, 60)
            while dispatcher.in_flight:
                await asyncio.sleep(0.005)
    finally:
        await tasks.cancel_and_wait()
    assert failed and failed[0] > 0
    assert "database or disk is full" in caplog.text
    ids = [e.event_id for e in events]
    assert sender.sent == {"http://a/": ids, "http://b/": ids}
    assert {r["attempts"] for r in await outbox.deliveries(limit=100)} == {1}
