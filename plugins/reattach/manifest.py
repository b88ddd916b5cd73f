"""The adoption manifest: what a restarted gateway needs to re-adopt each worker.

One row per live session, in ``state_dir/reattach.sqlite3`` (WAL, so a crashed
gateway's committed rows survive). The session's nonce is stored only as its
SHA-256 digest.
"""

from __future__ import annotations

import dataclasses
import time

from sessiongate.core.storage import SqliteStore

__all__ = ["Entry", "Manifest"]

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
FIELDS = ("session_id", "pid", "create_time", "socket_path", "owner_key_id", "tag", "backend",
          "client_name", "lease_seconds", "nonce_digest")


@dataclasses.dataclass(frozen=True)
class Entry:
    session_id: str
    pid: int
    create_time: float
    socket_path: str
    owner_key_id: str
    tag: str
    backend: str
    client_name: str
    lease_seconds: float
    nonce_digest: bytes


class Manifest(SqliteStore):
    SCHEMA = SCHEMA

    async def entries(self) -> list[Entry]:
        rows = await self.db.execute_fetchall(
            f"SELECT {', '.join(FIELDS)} FROM workers ORDER BY written_at")
        return [Entry(*row) for row in rows]

    async def put(self, entry: Entry) -> None:
        # one statement: atomic in autocommit mode, no transaction spans an await
        await self.db.execute(
            f"INSERT OR REPLACE INTO workers ({', '.join(FIELDS)}, written_at) "
            f"VALUES ({', '.join('?' * (len(FIELDS) + 1))})",
            (*dataclasses.astuple(entry), time.time()))

    async def remove(self, session_id: str) -> None:
        await self.db.execute("DELETE FROM workers WHERE session_id = ?", (session_id,))
