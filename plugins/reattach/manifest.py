"""The adoption manifest: what a restarted gateway needs to re-adopt each worker.

One row per live session, in ``state_dir/reattach.sqlite3`` (WAL, so a crashed
gateway's committed rows survive): core's
:class:`~sessiongate.core.AdoptionRecord`. The session's nonce is stored only as its
SHA-256 digest.
"""

from __future__ import annotations

import dataclasses
import time

from sessiongate.core import AdoptionRecord, SqliteStore

__all__ = ["Manifest"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    session_id    TEXT PRIMARY KEY,
    pid           INTEGER NOT NULL,
    create_time   REAL NOT NULL,
    socket_path   TEXT NOT NULL,
    owner_key_id  TEXT NOT NULL,
    tag           TEXT NOT NULL,
    backend       TEXT NOT NULL,
    client_name   TEXT NOT NULL,
    lease_seconds REAL NOT NULL,
    nonce_digest  BLOB NOT NULL,
    written_at    REAL NOT NULL
);
"""
FIELDS = tuple(f.name for f in dataclasses.fields(AdoptionRecord))


class Manifest(SqliteStore):
    SCHEMA = SCHEMA

    async def entries(self) -> list[AdoptionRecord]:
        rows = await self.db.execute_fetchall(
            f"SELECT {', '.join(FIELDS)} FROM workers ORDER BY written_at")
        return [AdoptionRecord(*row) for row in rows]

    async def put(self, record: AdoptionRecord) -> None:
        # one statement: atomic in autocommit mode, no transaction spans an await
        await self.db.execute(
            f"INSERT OR REPLACE INTO workers ({', '.join(FIELDS)}, written_at) "
            f"VALUES ({', '.join('?' * (len(FIELDS) + 1))})",
            (*dataclasses.astuple(record), time.time()))

    async def remove(self, session_id: str) -> None:
        await self.db.execute("DELETE FROM workers WHERE session_id = ?", (session_id,))
