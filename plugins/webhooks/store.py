"""The durable outbox: ``state_dir/webhooks.sqlite3`` (SQLite, WAL, through aiosqlite).

Tables:

* ``endpoints`` - where to send what: URL, event types, the signing secret (sealed,
  :class:`~.signing.SecretBox`) and, during a rotation, the previous one;
  ``failing_since`` (its attempts have failed since then), ``status``.
* ``events`` - each event once: its id, type and body (the bytes every attempt sends).
* ``deliveries`` - one row per (event, endpoint), unique (S2.BEH.3): ``seq`` (the
  queue order), ``status`` (pending → delivering → delivered | failed; back to pending
  for a retry), ``attempts``, and ``next_attempt_at``, which says when the row next
  needs attention: a pending row's due time, a delivering row's **lease** end (a row
  still delivering then - its gateway died mid-attempt - is claimed again), an ended
  row's end (pruned ``retention_hours`` later).

Indexes: ``(status, next_attempt_at)`` (S2.PIT.7: what is due, what is leased, what is
old enough to prune, how deep each status is) and ``(endpoint_id, seq)`` over the rows
not yet ended, the queue of each endpoint, whose head is the only row of that endpoint
ever claimed (one delivery in flight per endpoint, in order).

Writes are serialised by one lock (one connection; a transaction must not take in
another task's statements).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from sessiongate.core import SqliteStore

from .events import Event

__all__ = ["STORE_FILE", "Claim", "EndpointRow", "Finish", "Outbox"]

T = TypeVar("T")

STORE_FILE = "webhooks.sqlite3"
PENDING, DELIVERING, DELIVERED, FAILED = "pending", "delivering", "delivered", "failed"
STATUSES = (PENDING, DELIVERING, DELIVERED, FAILED)
ACTIVE, DISABLED = "active", "disabled"
#: rows per multi-row INSERT (SQLite's variable limit is far above)
CHUNK = 500
#: SQLite's page cache for the outbox, KiB
CACHE_KIB = 32 * 1024
#: events whose body is kept in memory too (the newest; a few MB at most)
BODY_CACHE = 10_000
#: rows deleted per prune statement (a short write lock each)
PRUNE_CHUNK = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id         TEXT PRIMARY KEY,
    url                 TEXT NOT NULL,
    event_types         TEXT NOT NULL,
    secret              BLOB NOT NULL,
    previous_secret     BLOB,
    previous_expires_at REAL,
    status              TEXT NOT NULL DEFAULT 'active',
    disabled_reason     TEXT NOT NULL DEFAULT '',
    failing_since       REAL,
    created_at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_id    TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_age ON events (created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    seq                 INTEGER PRIMARY KEY,
    delivery_id         TEXT NOT NULL UNIQUE,
    event_id            TEXT NOT NULL,
    endpoint_id         TEXT NOT NULL,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     REAL NOT NULL,
    last_status_code    INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT NOT NULL DEFAULT '',
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX IF NOT EXISTS deliveries_by_status ON deliveries (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (endpoint_id, seq)
    WHERE status IN ('pending', 'delivering');
"""

#: the head of an endpoint's queue (a scalar subquery on the queue index)
_HEAD = ("(SELECT seq FROM deliveries WHERE endpoint_id = ? "
         "AND status IN ('pending', 'delivering') ORDER BY seq LIMIT 1)")
# A turn's statements have one text each whatever the batch (SQLite prepares each once:
# the connection's statement cache). Most take their rows as one JSON parameter
# (``json_each``) and are one step: the store's thread takes the interpreter lock once
# a statement, not once a row (each time it may wait for the event loop's thread to let
# go of it, and the loop for it); the few outcomes other than delivered are one
# statement a row.

#: the due front of each queue of ``:fronts`` ([endpoint id, after], ...): its first ``:per``
#: deliveries not ended after ``seq`` *after* (0: from its head; else the last one
#: claimed, still in flight), up to the first that is not due at ``:now`` (a retry's wait,
#: or a lease still running); as one JSON array of [seq, delivery id, event id,
#: endpoint id, attempts so far]
_DUE_FRONTS = (
    "SELECT json_group_array(json_array(d.seq, d.delivery_id, d.event_id, d.endpoint_id, "
    "d.attempts)) FROM json_each(:fronts) AS q, deliveries AS d WHERE d.seq IN (SELECT seq "
    "FROM (SELECT seq, MAX(next_attempt_at > :now) OVER (ORDER BY seq) AS held FROM (SELECT "
    "seq, next_attempt_at FROM deliveries WHERE endpoint_id = json_extract(q.value, '$[0]') "
    "AND status IN ('pending', 'delivering') AND seq > json_extract(q.value, '$[1]') "
    "ORDER BY seq LIMIT :per)) WHERE held = 0)")
#: claim the deliveries of ``:claimed`` (:data:`_DUE_FRONTS`' array) until ``:lease``, at
#: ``:now``
_CLAIM = ("UPDATE deliveries SET status = 'delivering', attempts = attempts + 1, "
          "next_attempt_at = :lease, updated_at = :now WHERE seq IN (SELECT json_extract(value, "
          "'$[0]') FROM json_each(:claimed))")
#: give claims back, uncounted: the seqs of ``:seqs``, at ``:now`` (by rowid: ``+status``
#: keeps the status index, every delivery in flight, out of it)
_RELEASE = ("UPDATE deliveries SET status = 'pending', attempts = attempts - 1, "
            "next_attempt_at = :now, updated_at = :now WHERE seq IN (SELECT value FROM "
            "json_each(:seqs)) AND +status = 'delivering'")
#: record deliveries delivered at ``:now`` with status code ``:code``: the seqs of ``:seqs`` (the
#: most outcomes by far, so one statement for all; ``+status``: by rowid)
_DELIVERED = ("UPDATE deliveries SET status = 'delivered', next_attempt_at = :now, "
              "last_status_code = :code, last_error = '', updated_at = :now WHERE seq IN "
              "(SELECT value FROM json_each(:seqs)) AND +status = 'delivering'")
#: record any other outcome (one statement a row: ``UPDATE … FROM json_each`` would
#: cost SQLite more than the rows themselves) - params: status, due, code, error,
#: attempts added, now, seq
_FINISH = ("UPDATE deliveries SET status = ?, next_attempt_at = ?, last_status_code = ?, "
           "last_error = ?, attempts = attempts + ?, updated_at = ? "
           "WHERE seq = ? AND status = 'delivering'")
#: ``:rows`` [[endpoint id, failing since], ...]
_FAILING_SINCE = ("UPDATE endpoints SET failing_since = json_extract(f.value, '$[1]') "
                  "FROM json_each(:rows) AS f "
                  "WHERE endpoints.endpoint_id = json_extract(f.value, '$[0]')")
#: when an endpoint's head is due (or its lease ends) - params: endpoint id
_NEXT_DUE = f"SELECT endpoint_id, next_attempt_at FROM deliveries WHERE seq = {_HEAD}"
_DELIVERY_COLUMNS = ("d.delivery_id, d.event_id, e.type, d.endpoint_id, d.status, d.attempts, "
                     "d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, "
                     "d.updated_at")
_DELIVERY_FIELDS = ("delivery_id", "event_id", "event_type", "endpoint_id", "status",
                    "attempts", "next_attempt_at", "last_status_code", "last_error",
                    "created_at", "updated_at")


@dataclasses.dataclass(frozen=True)
class EndpointRow:
    endpoint_id: str
    url: str
    event_types: tuple[str, ...]
    secret: bytes
    previous_secret: bytes | None
    previous_expires_at: float | None
    status: str
    disabled_reason: str
    failing_since: float | None
    created_at: float


class Claim(NamedTuple):
    """A delivery at the front of an endpoint's queue, claimed for an attempt (a
    tuple: one is made per attempt)."""

    seq: int
    delivery_id: str
    event_id: str
    endpoint_id: str
    event_type: str
    attempts: int
    lease_until: float
    body: bytes


class Finish(NamedTuple):
    """An attempt's outcome to record: the delivery's new status (``due``: when a
    pending one is due again; for an ended one, when it ended - a delivered one is
    recorded as ended when it is recorded, in its batch). ``attempt`` 1: the
    delivery is claimed again at once for its next attempt (``status`` delivering,
    ``due`` the new lease's end, the attempt counted)."""

    seq: int
    status: str
    code: int
    error: str
    due: float
    attempt: int = 0


class Outbox(SqliteStore):
    SCHEMA = SCHEMA

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write = asyncio.Lock()
        #: the newest events' (type, body), so a claim seldom reads them back
        self._bodies: collections.OrderedDict[str, tuple[str, bytes]] = (
            collections.OrderedDict())

    async def open(self) -> Outbox:
        await super().open()
        # the indexes of a large outbox stay in memory (SQLite's default is 2 MiB)
        await self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return self

    async def _in_thread(self, work: Callable[[sqlite3.Connection], T], *,
                         write: bool = False) -> T:
        """``work(connection)`` in the connection's thread (:meth:`run_in_thread`: one
        round trip however many statements). ``write``: under the write lock (``work``
        may open a transaction: no other task's statement may come between)."""
        if not write:
            return await self.run_in_thread(work)
        async with self._write:
            return await self.run_in_thread(work)

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run ``statements`` in one transaction (one round trip); the row count of
        each."""
        def work(db: sqlite3.Connection) -> list[int]:
            if len(statements) == 1:  # a transaction of its own (autocommit)
                return [db.execute(*statements[0]).rowcount]
            db.execute("BEGIN IMMEDIATE")
            try:
                counts = [db.execute(sql, params).rowcount for sql, params in statements]
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return counts

        return await self._in_thread(work, write=True)

    # -- endpoints -------------------------------------------------------------------------

    async def add_endpoint(self, row: EndpointRow) -> None:
        await self._transaction([(
            "INSERT INTO endpoints (endpoint_id, url, event_types, secret, status, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (row.endpoint_id, row.url, json.dumps(list(row.event_types)), row.secret,
             row.status, row.created_at))])

    async def endpoints(self) -> list[EndpointRow]:
        rows = await self.db.execute_fetchall(
            "SELECT endpoint_id, url, event_types, secret, previous_secret, "
            "previous_expires_at, status, disabled_reason, failing_since, created_at "
            "FROM endpoints ORDER BY created_at, endpoint_id")
        return [EndpointRow(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5], r[6], r[7],
                            r[8], r[9]) for r in rows]

    async def remove_endpoint(self, endpoint_id: str) -> bool:
        """Forget the endpoint and every delivery to it; False if unknown."""
        counts = await self._transaction([
            ("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,)),
            ("DELETE FROM deliveries WHERE endpoint_id = ?", (endpoint_id,))])
        return counts[0] > 0

    async def set_secrets(self, endpoint_id: str, secret: bytes, previous: bytes | None,
                          previous_expires_at: float | None) -> None:
        await self._transaction([(
            "UPDATE endpoints SET secret = ?, previous_secret = ?, previous_expires_at = ? "
            "WHERE endpoint_id = ?", (secret, previous, previous_expires_at, endpoint_id))])

    async def disable(self, endpoint_id: str, reason: str, now: float) -> int:
        """Disable the endpoint; its deliveries not yet ended fail. How many did."""
        counts = await self._transaction([
            ("UPDATE endpoints SET status = ?, disabled_reason = ? WHERE endpoint_id = ?",
             (DISABLED, reason, endpoint_id)),
            ("UPDATE deliveries SET status = ?, last_error = ?, next_attempt_at = ?, "
             "updated_at = ? WHERE endpoint_id = ? AND status IN (?, ?)",
             (FAILED, "endpoint disabled", now, now, endpoint_id, PENDING, DELIVERING))])
        return counts[1]

    # -- the queue -------------------------------------------------------------------------

    async def enqueue(self, batch: Sequence[tuple[Event, Sequence[str]]], now: float
                      ) -> dict[str, int]:
        """Store events and one pending delivery per (event, endpoint), in one transaction
        of multi-row inserts; an (event, endpoint) already there is left alone. Returns
        how many deliveries each endpoint got."""
        from .events import new_id

        events = [(e.event_id, e.type, e.created_at, e.body) for e, targets in batch if targets]
        rows = [(new_id("dlv"), e.event_id, target, PENDING, now, e.created_at, now)
                for e, targets in batch for target in targets]
        statements: list[tuple[str, Sequence[Any]]] = []
        for start in range(0, len(events), CHUNK):
            chunk = events[start:start + CHUNK]
            statements.append((
                "INSERT OR IGNORE INTO events (event_id, type, created_at, body) VALUES "
                + ", ".join(["(?, ?, ?, ?)"] * len(chunk)), [v for r in chunk for v in r]))
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            statements.append((
                "INSERT OR IGNORE INTO deliveries (delivery_id, event_id, endpoint_id, status, "
                "next_attempt_at, created_at, updated_at) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
                [v for r in chunk for v in r]))
        if statements:
            await self._transaction(statements)
        for event, targets in batch:
            if targets:
                self._bodies[event.event_id] = (event.type, event.body)
        while len(self._bodies) > BODY_CACHE:
            self._bodies.popitem(last=False)
        per_endpoint: dict[str, int] = {}
        for row in rows:
            per_endpoint[row[2]] = per_endpoint.get(row[2], 0) + 1
        return per_endpoint

    async def claim(self, endpoint_ids: Sequence[str], now: float, lease_until: float,
                    per_endpoint: int = 1) -> list[Claim]:
        """Take the head of each endpoint's queue for an attempt (attempts + 1) until
        ``lease_until``, where it is due (pending and due, or still delivering with its
        lease ended: its gateway died mid-attempt); with ``per_endpoint`` > 1, also the
        due deliveries right behind it, up to that many, never past one that is not due
        (the queue's order holds). One statement a queue (read through its index), all
        in one transaction. The claims of an endpoint come in queue order."""
        claims, _ = await self.turn(now, claim=[(endpoint_id, 0) for endpoint_id in endpoint_ids],
                                    lease_until=lease_until, per_endpoint=per_endpoint)
        return claims

    async def release(self, claims: Sequence[Claim], now: float) -> None:
        """Give back claims that were not attempted (their attempt not counted): pending
        and due again, behind whatever holds their queue."""
        await self.turn(now, release=claims)

    async def next_due(self, endpoint_ids: Sequence[str]) -> dict[str, float]:
        """When the head of each endpoint's queue is due (or its lease ends); endpoints
        with an empty queue are left out."""
        if not endpoint_ids:
            return {}
        return await self._in_thread(lambda db: _next_due(db, endpoint_ids))

    async def finish_many(self, finishes: Sequence[Finish], now: float,
                          failing_since: Mapping[str, float | None] | None = None) -> None:
        """Record attempts' outcomes, and the endpoints whose ``failing_since`` changed
        with them, in one transaction."""
        await self.turn(now, finishes=finishes, failing_since=failing_since)

    async def turn(self, now: float, *, release: Sequence[Claim] = (),
                   finishes: Sequence[Finish] = (),
                   failing_since: Mapping[str, float | None] | None = None,
                   claim: Sequence[tuple[str, int]] = (), lease_until: float = 0.0,
                   per_endpoint: int = 1) -> tuple[list[Claim], dict[str, float]]:
        """A dispatcher's turn, in one transaction and one trip to the connection's
        thread: record ``finishes`` (:meth:`finish_many`), give back ``release``
        (:meth:`release`), record ``failing_since``, then claim the due front of each queue of
        ``claim``, (endpoint id, after): the whole queue's (after 0, :meth:`claim`; a
        delivery given back in this turn is claimed again), or what comes after the
        delivery ``after``, the last one the endpoint has claimed. Returns the claims,
        and when the heads of the whole queues that gave none are due
        (:meth:`next_due`; an empty queue is left out)."""
        if not (release or finishes or failing_since or claim):
            return [], {}
        released = json.dumps([c.seq for c in release]) if release else None
        delivered: dict[int, list[int]] = {}  # status code: seqs
        finished: list[tuple[Any, ...]] = []
        if finishes:  # one row a delivery: the last outcome, every attempt added
            rows: dict[int, list[Any]] = {}
            for f in finishes:
                before = rows.get(f.seq)
                rows[f.seq] = [f.seq, f.status, f.due, f.code, f.error,
                               f.attempt + (before[5] if before else 0)]
            for seq, status, due, code, error, attempts in rows.values():
                if status == DELIVERED and not error and not attempts:
                    delivered.setdefault(code, []).append(seq)
                else:
                    finished.append((status, due, code, error, attempts, now, seq))
        failing = json.dumps(list(failing_since.items())) if failing_since else None
        fronts = json.dumps(claim) if claim else None
        whole = [endpoint_id for endpoint_id, after in claim if not after]
        groups = [(code, json.dumps(seqs)) for code, seqs in delivered.items()]

        def work(db: sqlite3.Connection) -> tuple[str, dict[str, float]]:
            db.execute("BEGIN IMMEDIATE")  # the due fronts read, then claimed: no writer between
            try:
                for code, seqs in groups:
                    db.execute(_DELIVERED, {"now": now, "code": code, "seqs": seqs})
                if finished:
                    db.executemany(_FINISH, finished)
                if released:  # after: a retry claimed again, then cut short by a stop
                    db.execute(_RELEASE, {"now": now, "seqs": released})
                if failing:
                    db.execute(_FAILING_SINCE, {"rows": failing})
                claimed, due = "[]", {}
                if fronts:
                    [(claimed,)] = db.execute(
                        _DUE_FRONTS, {"fronts": fronts, "now": now, "per": per_endpoint})
                    if claimed != "[]":
                        db.execute(_CLAIM, {"lease": lease_until, "now": now,
                                           "claimed": claimed})
                    if whole:  # those whose queue gave nothing: when its head is due
                        found = {row[3] for row in json.loads(claimed)}
                        due = _next_due(db, [e for e in whole if e not in found])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return claimed, due

        claimed, due = await self._in_thread(work, write=True)
        return await self._claims(json.loads(claimed), lease_until), due

    async def _claims(self, rows: list[Any], lease_until: float) -> list[Claim]:
        """Claimed rows ([seq, delivery id, event id, endpoint id, attempts before the
        claim]) as claims (in queue order), with their events' type and body (from
        memory if there, else read)."""
        if not rows:
            return []
        rows.sort()
        bodies = self._bodies
        found = {row[2]: bodies[row[2]] for row in rows if row[2] in bodies}
        ids = sorted({row[2] for row in rows} - set(found))
        if ids:  # seldom: the newest events' bodies are kept in memory
            found.update({r[0]: (r[1], r[2]) for r in await self.db.execute_fetchall(
                f"SELECT event_id, type, body FROM events WHERE event_id IN "
                f"({', '.join('?' * len(ids))})", ids)})
        return [Claim(seq, dlv, evt, endpoint, found[evt][0], attempts + 1, lease_until,
                      found[evt][1]) for seq, dlv, evt, endpoint, attempts in rows]

    async def redeliver(self, delivery_id: str, now: float) -> bool:
        """Queue an ended delivery again, at the end of its endpoint's queue (a new
        ``seq``), attempts from 0. False if there is no such ended delivery."""
        [count] = await self._transaction([(
            "UPDATE deliveries SET seq = (SELECT MAX(seq) + 1 FROM deliveries), status = ?, "
            "attempts = 0, next_attempt_at = ?, last_status_code = 0, last_error = '', "
            "updated_at = ? WHERE delivery_id = ? AND status IN (?, ?)",
            (PENDING, now, now, delivery_id, DELIVERED, FAILED))])
        return count > 0

    # -- reading -------------------------------------------------------------------------

    async def delivery(self, delivery_id: str = "", *, event_id: str = "",
                       endpoint_id: str = "") -> dict[str, Any] | None:
        """One delivery, by its id or by (event, endpoint)."""
        where, params = (("d.delivery_id = ?", (delivery_id,)) if delivery_id else
                         ("d.event_id = ? AND d.endpoint_id = ?", (event_id, endpoint_id)))
        rows = list(await self.db.execute_fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN events e "
            f"ON e.event_id = d.event_id WHERE {where}", params))
        return dict(zip(_DELIVERY_FIELDS, rows[0], strict=True)) if rows else None

    async def deliveries(self, *, status: str = "", endpoint_id: str = "",
                         limit: int = 100) -> list[dict[str, Any]]:
        """Newest first (queue order), optionally of one status and one endpoint."""
        where, params = [], []
        if status:
            where.append("d.status = ?")
            params.append(status)
        if endpoint_id:
            where.append("d.endpoint_id = ?")
            params.append(endpoint_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self.db.execute_fetchall(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d JOIN events e "
            f"ON e.event_id = d.event_id {clause}ORDER BY d.seq DESC LIMIT ?",
            (*params, limit))
        return [dict(zip(_DELIVERY_FIELDS, row, strict=True)) for row in rows]

    async def depth(self) -> dict[str, int]:
        """Deliveries by status (every status, 0 included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for status in STATUSES:  # one index range each
            rows = list(await self.db.execute_fetchall(
                "SELECT COUNT(*) FROM deliveries WHERE status = ?", (status,)))
            counts[status] = int(rows[0][0])
        return counts

    async def oldest_waiting(self) -> float | None:
        """When the oldest delivery not yet ended was queued (None: none is)."""
        rows = list(await self.db.execute_fetchall(
            "SELECT MIN(created_at) FROM deliveries WHERE status IN ('pending', 'delivering')"))
        return rows[0][0]

    async def prune(self, cutoff: float) -> int:
        """Delete the deliveries that ended before ``cutoff``, and the events no delivery
        uses any more; how many deliveries went."""
        deleted = 0
        for status in (DELIVERED, FAILED):
            while True:
                [count] = await self._transaction([(
                    "DELETE FROM deliveries WHERE seq IN (SELECT seq FROM deliveries "
                    "WHERE status = ? AND next_attempt_at < ? LIMIT ?)",
                    (status, cutoff, PRUNE_CHUNK))])
                deleted += count
                if count < PRUNE_CHUNK:
                    break
        while True:
            [count] = await self._transaction([(
                "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events "
                "WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.event_id = events.event_id) LIMIT ?)", (cutoff, PRUNE_CHUNK))])
            if count < PRUNE_CHUNK:
                return deleted


def _next_due(db: sqlite3.Connection, endpoint_ids: Sequence[str]) -> dict[str, float]:
    """:meth:`Outbox.next_due` in the connection's thread."""
    due = {}
    for endpoint_id in endpoint_ids:
        for found, when in db.execute(_NEXT_DUE, (endpoint_id,)):
            due[found] = when
    return due
