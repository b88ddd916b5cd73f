"""Every sign-in token issued, and which are revoked: ``state_dir/acl-tokens.sqlite3``.

A login records its token's id, user, directory groups, grants and times here before
the token is handed out (never the token itself), and a token is accepted only while
its row says it is live: so ``sessiongate tokens revoke ID``, run in another process
on the same state dir, is seen by the very next call. Rows are deleted once the token
has expired (at each login and at startup): the table holds at most the tokens of one
``token_ttl_seconds``.

Each row has a version, ``updated_ms`` (Unix milliseconds, strictly increasing per
token): a record of the token from another gateway node (cluster) replaces what the
row grants only when it is newer, and a revocation is never undone
(:meth:`TokenStore.apply`). ``groups`` is NULL for a row written before groups were
recorded: such a token keeps the grants it was issued with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from sessiongate.core import CredentialRecord, SqliteStore
from sessiongate.core.errors import NotFound

from .tokens import SUBJECT_PREFIX, TOKEN_KIND

if TYPE_CHECKING:
    from .tokens import MintedToken

__all__ = ["ADDED", "CONFLICT", "REVOKED", "STORE_FILE", "UNCHANGED", "UPDATED", "TokenRow",
           "TokenStore"]

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
#: columns added since the first version of the table (added to an older store at open)
ADDED_COLUMNS = {"groups": "TEXT", "updated_ms": "INTEGER NOT NULL DEFAULT 0"}
COLUMNS = ("token_id, username, admin, tags, issued_at, expires_at, revoked_at, groups, "
           "updated_ms")
#: outcomes of :meth:`TokenStore.apply` (as ``sg_apply_credential_record`` names them)
ADDED, UPDATED, REVOKED, UNCHANGED, CONFLICT = (
    "added", "updated", "revoked", "unchanged", "conflict")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True)
class TokenRow:
    """One token's row: what is known about it, never the token."""

    token_id: str
    username: str
    admin: bool
    tags: tuple[str, ...]
    issued_at: float
    expires_at: float
    revoked_at: float | None
    #: the directory groups (DNs) its grants come from; None: a row from before groups
    groups: tuple[str, ...] | None
    updated_ms: int

    @classmethod
    def of(cls, row: Sequence[Any]) -> TokenRow:
        return cls(token_id=row[0], username=row[1], admin=bool(row[2]),
                   tags=tuple(json.loads(row[3])), issued_at=row[4], expires_at=row[5],
                   revoked_at=row[6],
                   groups=None if row[7] is None else tuple(json.loads(row[7])),
                   updated_ms=int(row[8]))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def record(self) -> CredentialRecord:
        """As other gateway nodes learn it (``sg_credential_changed``)."""
        return CredentialRecord(
            credential_id=self.token_id, kind=TOKEN_KIND, subject=SUBJECT_PREFIX + self.username,
            name=self.username, admin=self.admin, tags=self.tags, groups=self.groups or (),
            issued_at=self.issued_at, expires_at=self.expires_at, revoked_at=self.revoked_at,
            updated_at=self.updated_ms / 1000)


def _names(values: Iterable[str]) -> str:
    return json.dumps(sorted(set(values)))


class TokenStore(SqliteStore):
    SCHEMA = SCHEMA

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path)
        #: serialises this process's read-then-write transactions
        self._write_lock = asyncio.Lock()

    async def open(self) -> Self:
        await super().open()
        present = {row[1] for row in await self.db.execute_fetchall(
            "PRAGMA table_info(tokens)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:
                try:
                    await self.db.execute(f"ALTER TABLE tokens ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise
        return self

    async def _select(self, where: str, args: Sequence[Any]) -> list[TokenRow]:
        rows = await self.db.execute_fetchall(f"SELECT {COLUMNS} FROM tokens {where}", args)
        return [TokenRow.of(r) for r in rows]

    async def record(self, minted: MintedToken, groups: Sequence[str]) -> TokenRow:
        """Keep a new token's row (and drop the rows of expired tokens)."""
        stamp = now_ms()
        await self.db.execute(
            "INSERT INTO tokens (token_id, username, admin, tags, issued_at, expires_at, "
            "groups, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (minted.token_id, minted.username, int(minted.admin), _names(minted.tags),
             minted.issued_at, minted.expires_at, json.dumps(list(groups)), stamp))
        await self.prune()
        return TokenRow(token_id=minted.token_id, username=minted.username,
                        admin=minted.admin, tags=tuple(sorted(set(minted.tags))),
                        issued_at=minted.issued_at, expires_at=minted.expires_at,
                        revoked_at=None, groups=tuple(groups), updated_ms=stamp)

    async def prune(self) -> None:
        await self.db.execute("DELETE FROM tokens WHERE expires_at <= ?", (time.time(),))

    async def get(self, token_id: str) -> TokenRow | None:
        """The token's row (revoked or not; an expired token's may be pruned)."""
        found = await self._select("WHERE token_id = ?", (token_id,))
        return found[0] if found else None

    async def rows(self, token_ids: Iterable[str]) -> dict[str, TokenRow]:
        """The rows of those of ``token_ids`` that are recorded (revoked ones included)."""
        wanted = sorted(set(token_ids))
        found: dict[str, TokenRow] = {}
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            for row in await self._select(
                    f"WHERE token_id IN ({', '.join('?' * len(chunk))})", chunk):
                found[row.token_id] = row
        return found

    async def unexpired(self) -> list[TokenRow]:
        """Every token not yet expired, oldest first (revoked ones included)."""
        return await self._select("WHERE expires_at > ? ORDER BY issued_at, token_id",
                                  (time.time(),))

    async def revoked_ids(self) -> set[str]:
        """The ids of the revoked tokens not yet expired."""
        rows = await self.db.execute_fetchall(
            "SELECT token_id FROM tokens WHERE revoked_at IS NOT NULL AND expires_at > ?",
            (time.time(),))
        return {r[0] for r in rows}

    async def version(self) -> tuple[int, int]:
        """Changes whenever any connection (this one included) commits to the store: two
        integers, no query (how a revocation by another process is noticed)."""
        rows = list(await self.db.execute_fetchall("PRAGMA data_version"))
        return int(rows[0][0]), self.db.total_changes

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]],
                     select: tuple[str, Sequence[Any]]) -> list[TokenRow]:
        """Select the rows to change, run ``statements`` on them, return them changed:
        one transaction, so another process's write cannot come between."""
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r.token_id for r in await self._select(*select)]
                for sql, args in statements if ids else ():
                    await self.db.execute(
                        f"{sql} WHERE token_id IN ({', '.join('?' * len(ids))})",
                        (*args, *ids))
                changed = list((await self.rows(ids)).values()) if ids else []
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return changed

    async def revoke(self, token_id: str) -> TokenRow:
        """Revoke a live token (again: no change). :raises NotFound: no such live token."""
        now = time.time()
        changed = await self._write(
            [("UPDATE tokens SET updated_ms = MAX(?, updated_ms + 1), "
              "revoked_at = COALESCE(revoked_at, ?)", (now_ms(), now))],
            ("WHERE token_id = ? AND expires_at > ?", (token_id, now)))
        if not changed:
            raise NotFound(f"no live sign-in token with id {token_id!r} (`sessiongate tokens "
                           "list` shows them)")
        return changed[0]

    async def revoke_user(self, username: str) -> list[TokenRow]:
        """Revoke every live token of ``username`` (gone from the directory)."""
        now = time.time()
        return await self._write(
            [("UPDATE tokens SET updated_ms = MAX(?, updated_ms + 1), revoked_at = ?",
              (now_ms(), now))],
            ("WHERE username = ? AND revoked_at IS NULL AND expires_at > ?", (username, now)))

    async def set_groups(self, username: str, groups: Sequence[str], admin: bool,
                         tags: Iterable[str]) -> list[TokenRow]:
        """Record ``username``'s groups (and what they grant) on their live tokens whose
        groups differ; returns those rows, changed."""
        encoded = json.dumps(list(groups))
        return await self._write(
            [("UPDATE tokens SET updated_ms = MAX(?, updated_ms + 1), groups = ?, admin = ?, "
              "tags = ?", (now_ms(), encoded, int(admin), _names(tags)))],
            ("WHERE username = ? AND revoked_at IS NULL AND expires_at > ? "
             "AND (groups IS NULL OR groups != ?)", (username, time.time(), encoded)))

    async def apply(self, record: CredentialRecord, admin: bool,
                    tags: Iterable[str]) -> tuple[str, TokenRow | None]:
        """Merge a record of this token from another node: added when new; groups and
        grants (``admin``, ``tags``: as this node computes them) taken when the record is
        newer; a revocation taken whatever the version, and final. Returns the outcome and
        the row as it is now."""
        stamp = round(record.updated_at * 1000)
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                outcome = await self._merge(record, stamp, admin, _names(tags))
                row = await self.get(record.credential_id)
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return outcome, row

    async def _merge(self, record: CredentialRecord, stamp: int, admin: bool,
                     tags: str) -> str:
        groups = json.dumps(list(record.groups))
        row = await self.get(record.credential_id)
        if row is None:
            if record.expires_at <= time.time():
                return UNCHANGED  # nothing left to accept or refuse
            await self.db.execute(
                f"INSERT INTO tokens ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.credential_id, record.name, int(admin), tags, record.issued_at,
                 record.expires_at, record.revoked_at, groups, stamp))
            return ADDED
        if row.username != record.name or row.issued_at != record.issued_at:
            return CONFLICT
        if row.revoked:
            return UNCHANGED  # final: nothing a record says matters any more
        outcome = UNCHANGED
        if stamp > row.updated_ms:
            await self.db.execute(
                "UPDATE tokens SET groups = ?, admin = ?, tags = ?, updated_ms = ? "
                "WHERE token_id = ?", (groups, int(admin), tags, stamp, row.token_id))
            if row.groups != record.groups:
                outcome = UPDATED
        if record.revoked and not row.revoked:
            await self.db.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ?",
                                  (record.revoked_at, row.token_id))
            outcome = REVOKED
        return outcome

    async def live(self) -> list[dict[str, Any]]:
        """The tokens not yet expired, oldest first (revoked ones say so)."""
        return [{"token_id": r.token_id, "username": r.username, "admin": r.admin,
                 "tags": list(r.tags), "groups": None if r.groups is None else list(r.groups),
                 "issued_at": r.issued_at, "expires_at": r.expires_at,
                 "revoked": r.revoked} for r in await self.unexpired()]
