"""The key watcher: tells plugins of API keys revoked (``sg_key_revoked``) and created
(``sg_key_created``) while the gateway runs.

Keys are revoked by ``sessiongate keys revoke`` in another process, straight into the
shared key store (``state_dir/keys.sqlite3``), so the gateway has to look. Four times
a second the watcher asks SQLite whether the store changed since its last look
(``PRAGMA data_version`` for other connections' commits, ``total_changes`` for the
gateway's own): two integers, no query. Only when it did are the keys listed, and each
key newly seen revoked, or newly seen at all, is announced once. Keys created or
revoked before the gateway started are known at start and never announced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from sessiongate.core.identity import KeyStore

__all__ = ["CHECK_INTERVAL_SECONDS", "RevocationWatcher", "watch_revocations"]

log = logging.getLogger("sessiongate.gateway")

#: how often the key store is looked at (a look that finds it unchanged costs two
#: pragmas on the store's connection): a revocation reaches plugins, and through the
#: cluster plugin other gateways, well within a second
CHECK_INTERVAL_SECONDS = 0.25


class RevocationWatcher:
    """Finds keys revoked since the last look; ``announce(key_id)`` is awaited for each
    (and ``announce_created(key_id)`` for each key created since, when given)."""

    def __init__(self, keys: KeyStore, announce: Callable[[str], Awaitable[None]],
                 announce_created: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._keys = keys
        self._announce = announce
        self._announce_created = announce_created
        self._revoked: set[str] = set()
        self._known: set[str] = set()
        self._version: tuple[int, int] | None = None

    async def _store_version(self) -> tuple[int, int]:
        """Changes whenever any connection (this one included) commits to the store."""
        db = self._keys.db
        rows = list(await db.execute_fetchall("PRAGMA data_version"))
        return int(rows[0][0]), db.total_changes

    async def prime(self) -> None:
        """Learn the keys and the revocations there are already (not announced)."""
        self._version = await self._store_version()
        keys = await self._keys.list()
        self._known = {k["key_id"] for k in keys}
        self._revoked = {k["key_id"] for k in keys if k["revoked"]}

    async def check_once(self) -> list[str]:
        """Announce the keys revoked since the last look; returns their ids."""
        version = await self._store_version()
        if version == self._version:
            return []
        self._version = version
        keys = await self._keys.list()
        known = {k["key_id"] for k in keys}
        created = [k["key_id"] for k in keys if k["key_id"] not in self._known]
        self._known = known
        revoked = {k["key_id"] for k in keys if k["revoked"]}
        new = sorted(revoked - self._revoked)
        self._revoked = revoked
        if self._announce_created is not None:
            for key_id in created:
                await self._announce_created(key_id)
        for key_id in new:
            log.info("API key %s has been revoked", key_id)
            await self._announce(key_id)
        return new

    async def run(self, interval: float = CHECK_INTERVAL_SECONDS) -> None:
        """Look every ``interval`` seconds until cancelled; a failed look is logged."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the key store for revoked keys failed; retrying")


async def watch_revocations(keys: KeyStore, hooks: Any) -> Coroutine[Any, Any, None]:
    """A primed watcher's loop, to run as a task the gateway owns: each revoked key
    fires ``sg_key_revoked``, each created key ``sg_key_created`` (through ``hooks``, the
    gateway's :class:`~sessiongate.core.pluginhost.host.Hooks`)."""

    async def announce(key_id: str) -> None:
        await hooks.notify("sg_key_revoked", key_id=key_id)

    async def announce_created(key_id: str) -> None:
        await hooks.notify("sg_key_created", key_id=key_id)

    watcher = RevocationWatcher(keys, announce, announce_created)
    await watcher.prime()
    return watcher.run()
