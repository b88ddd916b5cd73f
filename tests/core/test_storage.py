"""``SqliteStore``: the file's mode, and work run in the connection's thread."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading

import pytest

from sessiongate.core import SqliteStore

pytestmark = [pytest.mark.once, pytest.mark.asyncio]


class Numbers(SqliteStore):
    SCHEMA = "CREATE TABLE IF NOT EXISTS numbers (n INTEGER PRIMARY KEY)"


async def test_work_runs_in_the_connections_thread_in_order_with_its_calls(tmp_path):
    async with Numbers(tmp_path / "n.sqlite3") as store:
        threads = set()

        def insert_two(db: sqlite3.Connection) -> int:
            threads.add(threading.get_ident())
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO numbers VALUES (?)", [(2,), (3,)])
            db.execute("COMMIT")
            return db.execute("SELECT COUNT(*) FROM numbers").fetchone()[0]

        # gather starts them in order: the insert is queued to the thread first
        _, count = await asyncio.gather(store.db.execute("INSERT INTO numbers VALUES (1)"),
                                        store.run_in_thread(insert_two))
        assert count == 3
        assert threading.get_ident() not in threads
        rows = await store.db.execute_fetchall("SELECT n FROM numbers ORDER BY n")
        assert [n for (n,) in rows] == [1, 2, 3]
        assert stat.S_IMODE((tmp_path / "n.sqlite3").stat().st_mode) == 0o600


async def test_an_exception_in_work_reaches_the_caller_and_the_store_goes_on(tmp_path):
    async with Numbers(tmp_path / "n.sqlite3") as store:
        def broken(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO numbers VALUES (1)")
                db.execute("INSERT INTO numbers VALUES (1)")
            finally:
                db.execute("ROLLBACK")

        with pytest.raises(sqlite3.IntegrityError):
            await store.run_in_thread(broken)
        assert await store.run_in_thread(
            lambda db: db.execute("SELECT COUNT(*) FROM numbers").fetchone()[0]) == 0


async def test_a_closed_store_says_so(tmp_path):
    store = Numbers(tmp_path / "n.sqlite3")
    with pytest.raises(RuntimeError, match="Numbers is not open"):
        await store.run_in_thread(lambda db: None)
