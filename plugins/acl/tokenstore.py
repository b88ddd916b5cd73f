"""Every sign-in token issued, and which are revoked: ``state_dir/acl-tokens.sqlite3``.

A login records its token's id, user, grants and times here before the token is
handed out (never the token itself), and a token is accepted only while its row
says it is live: so ``sessiongate tokens revoke ID``, run in another process on
the same state dir, is seen by the very next call. Rows are deleted once the token
has expired (at each login and at startup): the table holds at most the tokens of
one ``token_ttl_seconds``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sessiongate.core import SqliteStore
from sessiongate.core.errors import NotFound

if TYPE_CHECKING:
    from .tokens import MintedToken

__all__ = ["STORE_FILE", "TokenStore"]

STORE_FILE = "acl-tokens.sqlite3"
#: ids per ``IN (…)`` query (SQLite's variable limit is far above)
CHUNK = 500
SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id    TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    admin       INTEGER NOT NULL,
    tags        TEXT NOT NULL,
    issued_at   REAL NOT NULL,
    expires_at  REAL NOT NULL,
    revoked_at  REAL
);
CREATE INDEX IF NOT EXISTS tokens_by_expiry ON tokens (expires_at);
"""


class TokenStore(SqliteStore):
    SCHEMA = SCHEMA

    async def record(self, minted: MintedToken) -> None:
        """Keep a new token's row (and drop the rows of expired tokens)."""
        await self.db.execute(
            "INSERT INTO tokens (token_id, username, admin, tags, issued_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (minted.token_id, minted.username, int(minted.admin), json.dumps(minted.tags),
             minted.issued_at, minted.expires_at))
        await self.prune()

    async def prune(self) -> None:
        await self.db.execute("DELETE FROM tokens WHERE expires_at <= ?", (time.time(),))

    async def state(self, token_id: str) -> str:
        """``live``, ``revoked``, or ``unknown`` (never recorded, or pruned)."""
        rows = list(await self.db.execute_fetchall(
            "SELECT revoked_at FROM tokens WHERE token_id = ?", (token_id,)))
        if not rows:
            return "unknown"
        return "live" if rows[0][0] is None else "revoked"

    async def inactive(self, token_ids: Iterable[str]) -> set[str]:
        """Those of ``token_ids`` that are revoked or not recorded (any more)."""
        wanted = sorted(set(token_ids))
        live: set[str] = set()
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            rows = await self.db.execute_fetchall(
                f"SELECT token_id FROM tokens WHERE revoked_at IS NULL "
                f"AND token_id IN ({', '.join('?' * len(chunk))})", chunk)
            live.update(row[0] for row in rows)
        return set(wanted) - live

    async def revoke(self, token_id: str) -> None:
        """Revoke a live token (again: no change). :raises NotFound: no such live token."""
        cursor = await self.db.execute(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) "
            "WHERE token_id = ? AND expires_at > ?", (time.time(), token_id, time.time()))
        if cursor.rowcount == 0:
            raise NotFound(f"no live sign-in token with id {token_id!r} (`sessiongate tokens "
                           "list` shows them)")

    async def live(self) -> list[dict[str, Any]]:
        """The tokens not yet expired, oldest first (revoked ones say so)."""
        rows = await self.db.execute_fetchall(
            "SELECT token_id, username, admin, tags, issued_at, expires_at, revoked_at "
            "FROM tokens WHERE expires_at > ? ORDER BY issued_at, token_id", (time.time(),))
        return [{"token_id": r[0], "username": r[1], "admin": bool(r[2]),
                 "tags": json.loads(r[3]), "issued_at": r[4], "expires_at": r[5],
                 "revoked": r[6] is not None} for r in rows]
