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
from collections.abc import Mapping, Sequence
from typing import Any

from sessiongate.core import SqliteStore

from .events import Event

__all__ = ["STORE_FILE", "Claim", "EndpointRow", "Finish", "Outbox"]

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
#: the due front of an endpoint's queue: its first ``?`` deliveries not ended, up to the
#: first that is not due (a retry's wait, or a lease still running) - params: now,
#: endpoint id, how many
_DUE_PREFIX = ("SELECT seq FROM (SELECT seq, MAX(next_attempt_at > ?) OVER (ORDER BY seq) "
               "AS held FROM (SELECT seq, next_attempt_at FROM deliveries WHERE "
               "endpoint_id = ? AND status IN ('pending', 'delivering') ORDER BY seq "
               "LIMIT ?)) WHERE held = 0")
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


@dataclasses.dataclass(frozen=True)
class Claim:
    """The head of an endpoint's queue, claimed for an attempt."""

    seq: int
    delivery_id: str
    event_id: str
    endpoint_id: str
    event_type: str
    attempts: int
    lease_until: float
    body: bytes


@dataclasses.dataclass(frozen=True)
class Finish:
    """An attempt's outcome to record: the delivery's new status (``due``: when a
    pending one is due again; for an ended one, when it ended)."""

    seq: int
    status: str
    code: int
    error: str
    due: float


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

    async def _transaction(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run ``statements`` in one transaction; the row count of each."""
        if len(statements) == 1:  # one statement is a transaction of its own (autocommit)
            async with self._write:
                cursor = await self.db.execute(*statements[0])
                return [cursor.rowcount]
        counts = []
        async with self._write:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    cursor = await self.db.execute(sql, params)
                    counts.append(cursor.rowcount)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return counts

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
        (the queue's order holds). One statement for all (each queue read through its
        index), and one for the bodies. The claims of an endpoint come in queue order."""
        if not endpoint_ids:
            return []
        prefixes = " UNION ALL ".join([_DUE_PREFIX] * len(endpoint_ids))
        async with self._write:
            rows = list(await self.db.execute_fetchall(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, "
                f"next_attempt_at = ?, updated_at = ? WHERE seq IN ({prefixes}) "
                "RETURNING seq, delivery_id, event_id, endpoint_id, attempts",
                (DELIVERING, lease_until, now,
                 *(value for endpoint_id in endpoint_ids
                   for value in (now, endpoint_id, per_endpoint)))))
        if not rows:
            return []
        rows.sort(key=lambda row: row[0])
        found = {row[2]: self._bodies[row[2]] for row in rows if row[2] in self._bodies}
        ids = sorted({row[2] for row in rows} - set(found))
        if ids:  # apart: a subquery in RETURNING scans the events table (SQLite 3.40)
            found.update({r[0]: (r[1], r[2]) for r in await self.db.execute_fetchall(
                f"SELECT event_id, type, body FROM events WHERE event_id IN "
                f"({', '.join('?' * len(ids))})", ids)})
        return [Claim(seq, dlv, evt, endpoint, found[evt][0], attempts, lease_until,
                      found[evt][1]) for seq, dlv, evt, endpoint, attempts in rows]

    async def release(self, claims: Sequence[Claim], now: float) -> None:
        """Give back claims that were not attempted (their attempt not counted): pending
        and due again, behind whatever holds their queue."""
        async with self._write:
            for chunk in _chunks(claims, ROWS_PER_STATEMENT):
                await self.db.execute(
                    "UPDATE deliveries SET status = ?, attempts = attempts - 1, "
                    "next_attempt_at = ?, updated_at = ? WHERE status = ? AND seq IN "
                    f"({', '.join('?' * len(chunk))})",
                    (PENDING, now, now, DELIVERING, *(claim.seq for claim in chunk)))

    async def next_due(self, endpoint_ids: Sequence[str]) -> dict[str, float]:
        """When the head of each endpoint's queue is due (or its lease ends); endpoints
        with an empty queue are left out."""
        if not endpoint_ids:
            return {}
        heads = ", ".join([_HEAD] * len(endpoint_ids))
        rows = await self.db.execute_fetchall(
            f"SELECT endpoint_id, next_attempt_at FROM deliveries WHERE seq IN ({heads})",
            endpoint_ids)
        return {row[0]: row[1] for row in rows}

    async def finish_many(self, finishes: Sequence[Finish], now: float,
                          failing_since: Mapping[str, float | None] | None = None) -> None:
        """Record attempts' outcomes, and the endpoints whose ``failing_since`` changed
        with them: one statement for each table (``UPDATE … FROM (VALUES …)``), so a
        batch of outcomes costs the dispatcher one or two round trips, not one a row."""
        async with self._write:
            for chunk in _chunks(finishes, ROWS_PER_STATEMENT):
                await self.db.execute(
                    "UPDATE deliveries SET status = v.column2, next_attempt_at = v.column3, "
                    "last_status_code = v.column4, last_error = v.column5, updated_at = ? "
                    f"FROM (VALUES {_placeholders(len(chunk), 5)}) AS v "
                    "WHERE deliveries.seq = v.column1 AND deliveries.status = ?",
                    (now, *(value for f in chunk
                            for value in (f.seq, f.status, f.due, f.code, f.error)),
                     DELIVERING))
            for chunk in _chunks(list((failing_since or {}).items()), ROWS_PER_STATEMENT):
                await self.db.execute(
                    "UPDATE endpoints SET failing_since = v.column2 "
                    f"FROM (VALUES {_placeholders(len(chunk), 2)}) AS v "
                    "WHERE endpoints.endpoint_id = v.column1",
                    tuple(value for pair in chunk for value in pair))

    async def finish(self, seq: int, status: str, *, code: int, error: str, due: float,
                     now: float, attempts: int | None = None) -> None:
        """Record an attempt's outcome: delivered, failed, or pending again (``due``);
        ``attempts`` corrects the count (an attempt that did not happen)."""
        await self._transaction([(
            "UPDATE deliveries SET status = ?, next_attempt_at = ?, last_status_code = ?, "
            "last_error = ?, updated_at = ?, attempts = COALESCE(?, attempts) "
            "WHERE seq = ? AND status = ?",
            (status, due, code, error, now, attempts, seq, DELIVERING))])

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


#: rows of one ``VALUES`` list (SQLite allows 32766 parameters a statement)
ROWS_PER_STATEMENT = 1000


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _placeholders(rows: int, columns: int) -> str:
    """``(?, ?), (?, ?)`` for ``VALUES``: ``rows`` tuples of ``columns``."""
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)
