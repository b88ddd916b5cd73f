"""The session directory: which node holds which session, as every node's snapshots say.

Applying a snapshot is last-write-wins by its ``updated_at_ms`` (each session's
snapshots come from the one node that holds it, stamped strictly increasing), so a
stale entry met again (a redelivered pending entry, the hash read after the stream)
never rolls a session back; an ended session leaves the directory and is remembered
a while, bounded, so a stale entry cannot bring it back. A node whose heartbeat
stopped has its entries dropped (:meth:`Directory.forget_node`).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from sessiongate.core import RemoteSession

from .records import Snapshot

__all__ = ["Directory"]

#: ended sessions remembered at most (against stale entries)
ENDED_MEMORY = 10_000


class Directory:
    """Session id → the latest :class:`Snapshot` of every session a node holds."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._entries: dict[str, Snapshot] = {}
        self._ended: collections.OrderedDict[str, int] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, snapshot: Snapshot) -> bool:
        """Take a snapshot unless an equal or newer one is known; True if taken."""
        sid = snapshot.session_id
        known = self._entries.get(sid)
        newest = known.updated_at_ms if known is not None else self._ended.get(sid, -1)
        if snapshot.updated_at_ms <= newest:
            return False
        if snapshot.ended:
            self._entries.pop(sid, None)
            self._ended[sid] = snapshot.updated_at_ms
            self._ended.move_to_end(sid)
            while len(self._ended) > ENDED_MEMORY:
                self._ended.popitem(last=False)
        else:
            self._entries[sid] = snapshot
        return True

    def delete(self, session_id: str) -> bool:
        """Forget a session (fail closed on a malformed entry about it)."""
        return self._entries.pop(session_id, None) is not None

    def replace(self, snapshots: Iterable[Snapshot]) -> None:
        """Start again from ``snapshots`` (a rebuild from the snapshot hash)."""
        self._entries.clear()
        for snapshot in snapshots:
            self.apply(snapshot)

    def get(self, session_id: str) -> Snapshot | None:
        return self._entries.get(session_id)

    def remote(self) -> list[RemoteSession]:
        """The sessions other nodes hold."""
        return [RemoteSession(session_id=s.session_id, state=s.state,
                              owner_key_id=s.owner_key_id, tag=s.tag,
                              last_sequence=s.last_sequence, node=s.node)
                for s in self._entries.values() if s.node_id != self.node_id]

    def own(self) -> list[Snapshot]:
        """The entries that name this node (after a restart: some may be gone)."""
        return [s for s in self._entries.values() if s.node_id == self.node_id]

    def nodes(self) -> set[str]:
        return {s.node_id for s in self._entries.values()}

    def forget_node(self, node_id: str) -> int:
        """Drop every entry of a node that stopped (no heartbeat); returns how many."""
        gone = [sid for sid, s in self._entries.items() if s.node_id == node_id]
        for sid in gone:
            del self._entries[sid]
        return len(gone)
