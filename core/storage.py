"""One SQLite file behind aiosqlite, the way every sessiongate store opens it.

WAL (readers never block the writer; a crashed process loses nothing committed),
``synchronous=NORMAL``, autocommit (``isolation_level=None``: a write is one
statement or an explicit ``BEGIN IMMEDIATE``), a 5 s busy timeout for another
process sharing the file (the CLI's ``keys`` commands), mode 0600: the database is
created 0600 before SQLite opens it, because SQLite gives its ``-wal`` and ``-shm`` side
files the database's mode when it creates them.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
from collections.abc import Callable
from typing import Self, TypeVar

import aiosqlite

__all__ = ["SqliteStore"]

T = TypeVar("T")


class SqliteStore:
    """Subclasses set ``SCHEMA`` (idempotent DDL) and use :attr:`db`."""

    SCHEMA = ""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> Self:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)  # a store from before side files were private
        for side in ("-wal", "-shm"):
            with contextlib.suppress(OSError):  # absent (no writer yet), or not ours
                os.chmod(f"{self.path}{side}", 0o600)
        self._db = await aiosqlite.connect(self.path, timeout=5, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        if self.SCHEMA:
            await self._db.executescript(self.SCHEMA)
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"{type(self).__name__} is not open")
        return self._db

    async def run_in_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` on the store's own ``sqlite3`` connection, in its thread:
        one hand-over to that thread and back however many statements ``work`` runs
        (each of aiosqlite's methods is one hand-over a statement, and each costs the
        event loop a wake-up). Queued in order with the connection's other calls, so
        ``work`` may run a whole transaction; it must not block on anything but SQLite.
        """
        db = self.db
        # aiosqlite's one queue to its thread (what all its methods go through): it has
        # no public way to run a function there
        return await db._execute(work, db._conn)
