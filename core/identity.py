"""Identity: API keys in SQLite (digest only), and turning a bearer credential into one.

An API key looks like ``sg_<key id>_<secret>``. The key id is public (it names the
key in listings, logs and ``owner_key_id``); the secret is 32 random bytes shown
once and stored only as its SHA-256 digest, compared in constant time. A
high-entropy random secret needs no slow password hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import pathlib
import re
import secrets
import time
from typing import Any

from sessiongate.core.errors import InvalidArgument, NotFound, Unauthenticated
from sessiongate.core.storage import SqliteStore

__all__ = ["ADMIN_SCOPE", "KEY_PREFIX", "KNOWN_SCOPES", "Identity", "KeyRecord", "KeyStore",
           "LoginGrant",
           "parse_bearer", "unknown_scope_message"]

ADMIN_SCOPE = "sessions:admin"
#: Every scope a key can usefully hold, the one list ``keys create --scope`` accepts:
#: core's and the built-in plugins'. ``sessions:admin`` is core's (``Identity.is_admin``)
#: and the only one the acl plugin checks or grants; the acl plugin defines no other.
KNOWN_SCOPES: frozenset[str] = frozenset({ADMIN_SCOPE})
KEY_PREFIX = "sg"
#: a session tag, and the read-only tags a key may hold
TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SCOPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9:._-]{0,63}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    digest      BLOB NOT NULL,
    scopes      TEXT NOT NULL DEFAULT '[]',
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
"""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who is calling. ``key_id`` is what sessions record as their owner."""

    key_id: str
    name: str
    scopes: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    kind: str = "api_key"  # or "token" (acl plugin), …
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes


def parse_bearer(metadata: Any) -> str:
    """The credential of an ``authorization: Bearer …`` header; Unauthenticated if none."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            scheme, _, credential = str(value).partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
            raise Unauthenticated("the authorization header must be 'Bearer <api-key>'")
    raise Unauthenticated("no API key: send the header 'authorization: Bearer <api-key>'")


def unknown_scope_message(scope: str) -> str | None:
    """Why ``scope`` cannot be given to a key, or ``None`` if it is a known scope."""
    if scope in KNOWN_SCOPES:
        return None
    return (f"unknown scope {scope!r}: the known scopes are {', '.join(sorted(KNOWN_SCOPES))} "
            "(for tag-limited access use --tag)")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# -- replicated key records (cluster) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """An API key as another gateway needs it to verify the key: never its secret, only
    the secret's SHA-256 ``digest``. Revocation is sticky: once ``revoked_at`` is set, no
    record makes the key active again."""

    key_id: str
    name: str
    digest: bytes = dataclasses.field(repr=False)
    scopes: tuple[str, ...]
    tags: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None


#: outcomes of :meth:`KeyStore.apply`
KEY_ADDED, KEY_REVOKED, KEY_UNCHANGED, KEY_CONFLICT = "added", "revoked", "unchanged", "conflict"


class KeyStore(SqliteStore):
    """API keys in ``state_dir/keys.sqlite3``; writes serialised by one lock."""

    SCHEMA = SCHEMA

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path)
        self._write_lock = asyncio.Lock()

    async def create(self, name: str, *, scopes: list[str] | tuple[str, ...] = (),
                     tags: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
        """Create a key; returns ``(key_id, full_key)``. The full key is never stored."""
        if not name.strip():
            raise InvalidArgument("a key needs a non-empty name")
        for tag in tags:
            if not TAG_PATTERN.fullmatch(tag):
                raise InvalidArgument(f"tag {tag!r} is not valid: 1 to 64 of a-z 0-9 . _ -, "
                                      "starting with a letter or digit")
        for scope in scopes:
            if not SCOPE_PATTERN.fullmatch(scope):
                raise InvalidArgument(f"scope {scope!r} is not valid (e.g. sessions:admin)")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.execute(
                    "INSERT INTO api_keys (key_id, name, digest, scopes, tags, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, name, _digest(secret), json.dumps(sorted(set(scopes))),
                     json.dumps(sorted(set(tags))), time.time()))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"

    async def revoke(self, key_id: str) -> None:
        async with self._write_lock:
            cursor = await self.db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                (time.time(), key_id))
        if cursor.rowcount == 0:
            raise NotFound(f"no API key with id {key_id!r}")

    async def list(self) -> list[dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT key_id, name, scopes, tags, created_at, revoked_at FROM api_keys "
            "ORDER BY created_at")
        return [{"key_id": r[0], "name": r[1], "scopes": json.loads(r[2]),
                 "tags": json.loads(r[3]), "created_at": r[4], "revoked": r[5] is not None}
                for r in rows]

    async def count(self) -> int:
        rows = await self.db.execute_fetchall("SELECT COUNT(*) FROM api_keys")
        return int(next(iter(rows))[0])

    async def verify(self, credential: str) -> Identity:
        """The identity of a full API key; Unauthenticated if unknown, wrong or revoked."""
        prefix, _, rest = credential.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != KEY_PREFIX or not key_id or not secret:
            raise Unauthenticated("unknown API key")
        rows = list(await self.db.execute_fetchall(
            "SELECT name, digest, scopes, tags, revoked_at FROM api_keys WHERE key_id = ?",
            (key_id,)))
        stored = rows[0][1] if rows else b"\0" * 32
        matches = hmac.compare_digest(stored, _digest(secret))
        if not rows or not matches:
            raise Unauthenticated("unknown API key")
        name, _, scopes, tags, revoked_at = rows[0]
        if revoked_at is not None:
            raise Unauthenticated(f"API key {key_id} has been revoked")
        return Identity(key_id=key_id, name=name, scopes=frozenset(json.loads(scopes)),
                        tags=frozenset(json.loads(tags)))

    async def records(self, key_id: str | None = None) -> list[KeyRecord]:
        """Every key (or the one named) as a :class:`KeyRecord`, oldest first."""
        where, args = ("WHERE key_id = ?", (key_id,)) if key_id is not None else ("", ())
        rows = await self.db.execute_fetchall(
            "SELECT key_id, name, digest, scopes, tags, created_at, revoked_at FROM api_keys "
            f"{where} ORDER BY created_at, key_id", args)
        return [KeyRecord(key_id=r[0], name=r[1], digest=bytes(r[2]),
                          scopes=tuple(json.loads(r[3])), tags=tuple(json.loads(r[4])),
                          created_at=float(r[5]), revoked_at=r[6]) for r in rows]

    async def apply(self, record: KeyRecord) -> str:
        """Bring a key another gateway holds into this store: a new key is added, a
        revocation applied (sticky). Returns ``added``, ``revoked``, ``unchanged`` or
        ``conflict`` (a key of that id with another digest: left alone)."""
        async with self._write_lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                rows = list(await self.db.execute_fetchall(
                    "SELECT digest, revoked_at FROM api_keys WHERE key_id = ?",
                    (record.key_id,)))
                if not rows:
                    await self.db.execute(
                        "INSERT INTO api_keys (key_id, name, digest, scopes, tags, created_at, "
                        "revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (record.key_id, record.name, record.digest,
                         json.dumps(sorted(set(record.scopes))),
                         json.dumps(sorted(set(record.tags))), record.created_at,
                         record.revoked_at))
                    outcome = KEY_ADDED
                elif not hmac.compare_digest(bytes(rows[0][0]), record.digest):
                    outcome = KEY_CONFLICT
                elif rows[0][1] is None and record.revoked_at is not None:
                    await self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?",
                                          (record.revoked_at, record.key_id))
                    outcome = KEY_REVOKED
                else:
                    outcome = KEY_UNCHANGED
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return outcome

    async def is_active(self, key_id: str) -> bool:
        rows = list(await self.db.execute_fetchall(
            "SELECT revoked_at FROM api_keys WHERE key_id = ?", (key_id,)))
        return bool(rows) and rows[0][0] is None


@dataclasses.dataclass(frozen=True)
class LoginGrant:
    """What a successful ``Login`` gives (``sg_login``): a bearer token the same plugin
    accepts at ``sg_authenticate``, when it expires (Unix time) and what it grants."""

    token: str = dataclasses.field(repr=False)  # a secret: never in a repr or a log
    expires_at: float
    admin: bool = False
    tags: tuple[str, ...] = ()
    #: names the token so it can be revoked alone (not a secret); "" if it cannot be
    token_id: str = ""
