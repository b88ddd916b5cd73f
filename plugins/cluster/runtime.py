"""The cluster plugin bound to one running gateway: :class:`ClusterRuntime`.

``sg_startup`` makes one and keeps it in the gateway's stash; ``sg_shutdown`` closes it.
It owns one Redis client and four tasks the gateway owns (``gateway.spawn``: cancelled
and awaited before ``sg_shutdown``, so reading always stops before the client closes,
S1.PIT.3):

* the **reader**: connects (with jittered backoff while Redis is away: the gateway
  serves its own sessions meanwhile, ``/readyz`` says degraded), makes sure this
  node's consumer group exists on its three streams (sessions, keys, sign-in
  credentials), rebuilds the directory from the snapshot hash, the keys from the
  keyring and the credentials from the credential ring, then reads its group (pending
  entries first, so nothing delivered before a crash is skipped) and applies each
  entry in stream order, acknowledging after; ``NOGROUP`` (Redis restarted or flushed)
  starts that over and asks for a resync;
* the **publisher**: takes this node's changes off one bounded queue and writes them
  in batches (``XADD … MAXLEN ~`` and the hash, in one transaction); when a write
  failed, the queue overflowed or the reader reconnected, it republishes the whole of
  this node's state (full snapshots: nothing is lost, last write wins);
* the **heartbeat**: every few seconds marks this node alive and learns which nodes
  are; the sessions of a node silent for too long leave the directory; expired
  credentials leave the credential ring;
* the **activity writer**: ``sg_activity`` events onto ``<stream>:activity``
  (bounded queue, never blocking the caller).

Sign-in credentials (acl's login tokens) are replicated through core's mechanisms only:
the plugin that issues them announces each change (``sg_credential_changed``), this
plugin publishes it, and every other node applies it
(``GatewayAPI.apply_credential_record``: the issuing plugin merges it into its store
and ends the streams a revocation or a group change no longer allows).

Nothing here blocks a call: the hooks only put on bounded queues and read memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sessiongate.core import CredentialRecord, KeyRecord, StashKey, counter, gauge

from .directory import Directory
from .records import (
    Malformed,
    Snapshot,
    decode_credential,
    decode_key,
    decode_snapshot,
    encode_credential,
    encode_key,
    from_json,
    newer,
    to_json,
)
from .rules import ClusterSettings

if TYPE_CHECKING:
    from sessiongate.core import GatewayAPI, RemoteSession, Session

__all__ = ["METRICS", "RUNTIME", "ClusterRuntime", "node_id_of"]

log = logging.getLogger("sessiongate.plugins.cluster")

RUNTIME: StashKey[ClusterRuntime] = StashKey("cluster.runtime")
NAME = "cluster"
NODE_ID_FILE = "cluster-node-id"
#: the reattach plugin's persistent instance id (a public file of state_dir)
INSTANCE_ID_FILE = "instance-id"

#: entries read per XREADGROUP, and how long one waits for new entries
READ_BATCH = 128
READ_BLOCK_MS = 1000
#: the streams are trimmed to about this many entries (XADD MAXLEN ~)
SESSIONS_MAXLEN = 100_000
KEYS_MAXLEN = 10_000
CREDENTIALS_MAXLEN = 10_000
ACTIVITY_MAXLEN = 100_000
#: changes waiting for the publisher at most; beyond, the change is dropped, counted,
#: and the whole state republished once Redis takes writes again
PUBLISH_CAPACITY = 10_000
PUBLISH_BATCH = 128
ACTIVITY_CAPACITY = 10_000
#: reconnecting: 0.1 s doubling to 5 s, each wait jittered down to half
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
HEARTBEAT_SECONDS = 5.0
#: a node with no heartbeat for this long is gone: its sessions leave the directory
NODE_TIMEOUT_MS = 20_000
#: the snapshot hash and the node hash expire when no node has written for this long
HASH_TTL_MS = 86_400_000
#: the final flush of changes at shutdown waits at most this long
FLUSH_SECONDS = 2.0
CONNECT_TIMEOUT = 2.0

M_APPLIED = "cluster_entries_applied"
M_DROPPED = "cluster_entries_dropped"
M_PUBLISHED = "cluster_published"
M_PUBLISH_DROPPED = "cluster_publish_dropped"
M_RESYNCS = "cluster_resyncs"
M_REDIRECTS = "cluster_redirects"
M_REVOCATIONS = "cluster_revocations_applied"
M_STREAMS_ENDED = "cluster_streams_ended"
M_REDIS_UP = "cluster_redis_up"
M_DIRECTORY = "cluster_directory_sessions"
M_ACTIVITY = "cluster_activity_published"
M_ACTIVITY_DROPPED = "cluster_activity_dropped"

#: the plugin's metrics (sg_metrics); docs/plugins/cluster.md explains them
METRICS = (
    counter(M_APPLIED, "Cluster entries read from Redis and applied, by stream.",
            {"stream": ("sessions", "keys", "credentials")}),
    counter(M_DROPPED, "Cluster entries refused, by where they were read (a stream, or "
            "the snapshot/keyring/credential ring hash at a rebuild) and why: a field not in "
            "the format, a field missing or blank, a value of the wrong type or out of "
            "range, a key or credential the local store could not take (store_failure), or "
            "holds for another digest or person (conflict).",
            {"source": ("sessions", "keys", "credentials", "snapshot", "keyring",
                        "credentialring"),
             "reason": ("unknown_field", "missing_field", "blank_field", "bad_value",
                        "store_failure", "conflict")}),
    counter(M_PUBLISHED, "This node's changes written to Redis, by kind.",
            {"kind": ("session", "key", "credential")}),
    counter(M_PUBLISH_DROPPED, f"This node's changes not written: overflow (more than "
            f"{PUBLISH_CAPACITY} waiting), redis (a write failed). Either way the node "
            "republishes its whole state once Redis takes writes.",
            {"reason": ("overflow", "redis")}),
    counter(M_RESYNCS, "Republications of this node's whole state, by cause: start, "
            "reconnect (after Redis was away), nogroup (Redis lost the consumer group: "
            "restarted or flushed), publish_failed.",
            {"cause": ("start", "reconnect", "nogroup", "publish_failed")}),
    counter(M_REDIRECTS, "Calls for a session another node holds, refused with "
                         "FAILED_PRECONDITION and the node's address."),
    counter(M_REVOCATIONS, "Revocations made on another node and applied to this node's "
            "store, by kind: an API key, or a sign-in credential (an LDAP token).",
            {"kind": ("key", "credential")}),
    counter(M_STREAMS_ENDED, "Live streams this node ended because their key was revoked "
                             "(here or on another node)."),
    gauge(M_REDIS_UP, "1 while this node reads its consumer group from Redis, else 0."),
    gauge(M_DIRECTORY, "Sessions other nodes hold, as this node's directory knows them."),
    counter(M_ACTIVITY, "Session-activity events written to the activity stream."),
    counter(M_ACTIVITY_DROPPED, f"Session-activity events not written: overflow (more "
            f"than {ACTIVITY_CAPACITY} waiting), redis (a write failed).",
            {"reason": ("overflow", "redis")}),
)

_DISCONNECTED = (RedisConnectionError, RedisTimeoutError, OSError)
#: tells the publisher to republish the whole state
_RESYNC = object()


def node_id_of(state_dir: Any, configured: str) -> str:
    """This node's id: the setting, else the reattach instance id, else a random id kept
    in ``state_dir/cluster-node-id`` (so a restarted node is the same node)."""
    if configured:
        return configured
    for name in (INSTANCE_ID_FILE, NODE_ID_FILE):
        try:
            value = (state_dir / name).read_text().strip()
        except FileNotFoundError:
            continue
        if value:
            return value
    value = secrets.token_hex(8)
    (state_dir / NODE_ID_FILE).write_text(value + "\n")
    return value


def jittered(delay: float) -> float:
    return delay * random.uniform(0.5, 1.0)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def _unless_cancelled() -> None:
    """Re-raise a cancellation a Redis call swallowed (redis-py's pipeline may, or turn
    it into a connection error): a task being stopped must stop, not go on. Called
    after Redis calls in the plugin's loops."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ClusterRuntime:
    """The directory, the key replication and the Redis tasks of one gateway."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.config = ClusterSettings.from_settings(gateway.settings)
        self.node_id = node_id_of(gateway.state_dir, self.config.node_id)
        self.address = self.config.advertise_address
        base = self.config.stream
        self.sessions_stream = base
        self.keys_stream = f"{base}:keys"
        self.snapshot_hash = f"{base}:snapshot"
        self.keyring_hash = f"{base}:keyring"
        self.credentials_stream = f"{base}:credentials"
        self.credential_ring = f"{base}:credentialring"
        self.nodes_hash = f"{base}:nodes"
        self.activity_stream = f"{base}:activity"
        self.group = f"node:{self.node_id}"
        self.directory = Directory(self.node_id)
        #: each key as Redis last said (or as this node published it)
        self.keyring: dict[str, KeyRecord] = {}
        #: each unexpired sign-in credential as Redis last said (or as published here)
        self.credentials: dict[str, CredentialRecord] = {}
        #: this node's last stamp per live session (snapshots strictly increase)
        self._stamps: dict[str, int] = {}
        #: this node's last published view per live session (repeats are not sent)
        self._published: dict[str, tuple[Any, ...]] = {}
        self.outbox: asyncio.Queue[Any] = asyncio.Queue(PUBLISH_CAPACITY)
        self.activity: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue(ACTIVITY_CAPACITY)
        self._resync_cause: str | None = None
        self._alive: dict[str, int] = {}
        self.redis = aioredis.Redis.from_url(
            self.config.redis_url, decode_responses=False,
            socket_connect_timeout=CONNECT_TIMEOUT, retry=Retry(NoBackoff(), 0))
        self.connected = asyncio.Event()
        self._down_since: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the tasks (no I/O here: an unreachable Redis never stops the gateway)."""
        self.gateway.node_address = self.address
        self.gateway.set_degraded(NAME, f"connecting to Redis at {self.config.redis_where}")
        self.metrics.set(M_REDIS_UP, 0)
        self.request_resync("start")
        self.gateway.spawn(self._read_forever(), "cluster-reader")
        self.gateway.spawn(self._publish_forever(), "cluster-publisher")
        self.gateway.spawn(self._heartbeat_forever(), "cluster-heartbeat")
        self.gateway.spawn(self._write_activity_forever(), "cluster-activity")
        log.info("cluster: node %s (%s), Redis at %s, stream %s", self.node_id,
                 self.address, self.config.redis_where, self.sessions_stream)

    async def stop(self) -> None:
        """After the gateway's tasks were cancelled: write what is still queued (briefly),
        then close the client."""
        try:
            if self.connected.is_set():
                async with asyncio.timeout(FLUSH_SECONDS):
                    while not self.outbox.empty():
                        await self._write(self._drain([]))
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("cluster: %d change(s) not written at shutdown (%s)",
                        self.outbox.qsize(), type(exc).__name__)
        finally:
            await self.redis.aclose()
            self.gateway.set_degraded(NAME, None)

    # -- what the hooks call (never blocking) ------------------------------------------------

    def publish_session(self, session: Session | None, *, snapshot: Snapshot | None = None
                        ) -> None:
        """Queue a full snapshot of one of this node's sessions (if it changed)."""
        if snapshot is None:
            assert session is not None
            snapshot = self._snapshot(session.session_id, session.state, session.owner_key_id,
                                      session.tag, session.last_sequence)
            if snapshot is None:
                return
        self._enqueue(("session", snapshot))

    def _snapshot(self, session_id: str, state: str, owner: str, tag: str,
                  last_sequence: int) -> Snapshot | None:
        view = (state, owner, tag, last_sequence)
        if self._published.get(session_id) == view:
            return None
        now = max(time.time_ns() // 1_000_000, self._stamps.get(session_id, 0) + 1)
        if state in ("CLOSED", "FAULTED"):
            self._published.pop(session_id, None)
            self._stamps.pop(session_id, None)
        else:
            self._published[session_id] = view
            self._stamps[session_id] = now
        return Snapshot(session_id=session_id, node_id=self.node_id, node=self.address,
                        state=state, owner_key_id=owner, tag=tag,
                        last_sequence=last_sequence, updated_at_ms=now)

    async def key_changed(self, key_id: str) -> None:
        """A key was created or revoked in the local store: publish it unless Redis has it
        so already; a revocation ends the key's live streams here at once."""
        records = await self.gateway.key_records(key_id)
        if not records:
            return
        record = records[0]
        if record.revoked_at is not None:
            self._end_streams(key_id)
        known = self.keyring.get(key_id)
        if known is None or (known.revoked_at is None and record.revoked_at is not None):
            self.keyring[key_id] = record
            self._enqueue(("key", record))

    def credential_changed(self, record: CredentialRecord) -> None:
        """A sign-in credential changed here: publish it unless Redis has it so already
        (a record applied from Redis comes back here, and is not sent again)."""
        merged = self._remember(record)
        if merged is not None:
            self._enqueue(("credential", merged))

    def _remember(self, record: CredentialRecord) -> CredentialRecord | None:
        """Merge ``record`` into the known version of its credential: the newer version
        wins, a revocation from either stays. The merged record when ``record`` was news
        (None when it told nothing new)."""
        known = self.credentials.get(record.credential_id)
        if not newer(record, known):
            return None
        merged = record
        if known is not None and known.updated_at > record.updated_at:
            merged = dataclasses.replace(known, revoked_at=record.revoked_at)
        elif known is not None and known.revoked and not record.revoked:
            merged = dataclasses.replace(record, revoked_at=known.revoked_at)
        self.credentials[record.credential_id] = merged
        return merged

    def queue_activity(self, event: Mapping[str, Any]) -> None:
        try:
            self.activity.put_nowait(event)
        except asyncio.QueueFull:
            self.metrics.inc(M_ACTIVITY_DROPPED, reason="overflow")

    def locate(self, session_id: str) -> str | None:
        """The address of the other node that holds ``session_id``, from memory."""
        snapshot = self.directory.get(session_id)
        if snapshot is None or snapshot.node_id == self.node_id:
            return None
        self.metrics.inc(M_REDIRECTS)
        return snapshot.node

    def remote_sessions(self) -> list[RemoteSession]:
        return self.directory.remote()

    def request_resync(self, cause: str) -> None:
        """Have the publisher republish this node's whole state (once, however often
        asked before it gets to it)."""
        if self._resync_cause is None:
            self._resync_cause = cause
            try:
                self.outbox.put_nowait(_RESYNC)
            except asyncio.QueueFull:
                pass  # the publisher sees the cause when it next takes a batch

    def _enqueue(self, item: tuple[str, Any]) -> None:
        try:
            self.outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.metrics.inc(M_PUBLISH_DROPPED, reason="overflow")
            self._resync_cause = self._resync_cause or "publish_failed"

    def _end_streams(self, key_id: str) -> None:
        ended = self.gateway.end_streams_of_key(key_id, f"API key {key_id} has been revoked")
        if ended:
            self.metrics.inc(M_STREAMS_ENDED, ended)
            log.info("cluster: API key %s is revoked: ended its %d live stream(s)", key_id,
                     ended)

    # -- the reader ------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay = BACKOFF_INITIAL
        while True:
            try:
                await self._sync()
                delay = BACKOFF_INITIAL
                await self._consume()
            except (*_DISCONNECTED, RedisError) as exc:
                _unless_cancelled()
                if isinstance(exc, ResponseError) and _is_nogroup(exc):
                    log.info("cluster: Redis lost this node's consumer group (restarted or "
                             "flushed): rebuilding and republishing")
                    # the publisher waits for the rebuild: what Redis lacks is known then
                    self.connected.clear()
                    self.request_resync("nogroup")
                    continue
                self._went_down(exc)  # unreachable, or refusing (auth, memory): retried
            await asyncio.sleep(jittered(delay))
            delay = min(delay * 2, BACKOFF_MAX)

    def _went_down(self, exc: BaseException) -> None:
        self.connected.clear()
        self.metrics.set(M_REDIS_UP, 0)
        reason = f"Redis at {self.config.redis_where} is unreachable ({type(exc).__name__})"
        self.gateway.set_degraded(NAME, reason + "; serving this node's sessions only")
        if self._down_since is None:  # logged once per outage
            self._down_since = time.monotonic()
            log.warning("cluster: %s; this node serves its own sessions and retries",
                        reason)

    async def _sync(self) -> None:
        """Consumer groups, then the directory and keys from the hashes, then resync."""
        for stream in (self.sessions_stream, self.keys_stream, self.credentials_stream):
            try:  # a new group starts at the end: the hashes hold everything before it
                await self.redis.xgroup_create(stream, self.group, id="$", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
        await self._rebuild_directory()
        await self._rebuild_keys()
        await self._rebuild_credentials()
        if self._down_since is not None:
            log.info("cluster: Redis at %s is back after %.1f s; resyncing",
                     self.config.redis_where, time.monotonic() - self._down_since)
            self._down_since = None
            self.request_resync("reconnect")
        self.connected.set()
        self.metrics.set(M_REDIS_UP, 1)
        self.gateway.set_degraded(NAME, None)

    async def _rebuild_directory(self) -> None:
        snapshots = []
        for field, value in (await self.redis.hgetall(self.snapshot_hash)).items():
            try:
                snapshots.append(decode_snapshot(from_json(value)))
            except Malformed as exc:
                self._dropped("snapshot", field, exc)
        self.directory.replace(snapshots)
        self._count_directory()

    async def _rebuild_keys(self) -> None:
        # what Redis holds now (after a flush: nothing), so the resync republishes the rest
        ring = await self.redis.hgetall(self.keyring_hash)
        self.keyring.clear()
        for field, value in ring.items():
            try:
                await self._apply_key(decode_key(from_json(value)), "keyring", field)
            except Malformed as exc:
                self._dropped("keyring", field, exc)

    async def _rebuild_credentials(self) -> None:
        expired = []
        now = time.time()
        ring = await self.redis.hgetall(self.credential_ring)
        self.credentials.clear()  # as for keys: known = what Redis holds
        for field, value in ring.items():
            try:
                record = decode_credential(from_json(value))
            except Malformed as exc:
                self._dropped("credentialring", field, exc)
                continue
            if record.expires_at <= now:
                expired.append(field)
            else:
                await self._apply_credential(record, "credentialring", field)
        if expired:
            await self.redis.hdel(self.credential_ring, *expired)

    async def _consume(self) -> None:
        """Pending entries of this consumer first (delivered, never acknowledged), then
        new ones, until an error ends it."""
        pending = True
        while True:
            _unless_cancelled()
            position = "0" if pending else ">"
            reply = await self.redis.xreadgroup(
                self.group, self.node_id, {self.sessions_stream: position,
                                           self.keys_stream: position,
                                           self.credentials_stream: position},
                count=READ_BATCH, block=None if pending else READ_BLOCK_MS)
            entries = 0
            for stream, messages in reply or ():
                name = _text(stream)
                done = []
                for entry_id, fields in messages:
                    entries += 1
                    if fields:  # a pending entry trimmed away meanwhile has none
                        await self._apply(name, entry_id, fields)
                    done.append(entry_id)
                if done:
                    await self.redis.xack(name, self.group, *done)
            if pending and entries == 0:
                pending = False

    async def _apply(self, stream: str, entry_id: Any, fields: Mapping[Any, Any]) -> None:
        if stream == self.sessions_stream:
            try:
                snapshot = decode_snapshot(fields)
            except Malformed as exc:
                self._dropped("sessions", entry_id, exc)
                return
            self.directory.apply(snapshot)
            self._count_directory()
            self.metrics.inc(M_APPLIED, stream="sessions")
        elif stream == self.credentials_stream:
            try:
                credential = decode_credential(fields)
            except Malformed as exc:
                self._dropped("credentials", entry_id, exc)
                return
            if credential.expires_at > time.time():  # an expired one: nothing to apply
                await self._apply_credential(credential, "credentials", entry_id)
            self.metrics.inc(M_APPLIED, stream="credentials")
        else:
            try:
                record = decode_key(fields)
            except Malformed as exc:
                self._dropped("keys", entry_id, exc)
                return
            await self._apply_key(record, "keys", entry_id)
            self.metrics.inc(M_APPLIED, stream="keys")

    async def _apply_key(self, record: KeyRecord, source: str, entry_id: Any) -> None:
        """Into the local key store; a revocation ends the key's streams only once the
        store refuses the key (S1.BEH.6)."""
        try:
            outcome = await self.gateway.apply_key_record(record)
        except Exception:
            self.metrics.inc(M_DROPPED, source=source, reason="store_failure")
            log.warning("cluster: key %s from %s %s could not be stored", record.key_id,
                        source, _text(entry_id), exc_info=True)
            return
        known = self.keyring.get(record.key_id)
        if known is None or known.revoked_at is None:
            self.keyring[record.key_id] = record
        if outcome == "conflict":
            self.metrics.inc(M_DROPPED, source=source, reason="conflict")
            log.warning("cluster: key %s from %s %s has another digest than the local key "
                        "of that id: ignored", record.key_id, source, _text(entry_id))
        elif outcome == "revoked":
            self.metrics.inc(M_REVOCATIONS, kind="key")
            log.info("cluster: API key %s revoked on another node: applied",
                     record.key_id)
            self._end_streams(record.key_id)

    async def _apply_credential(self, record: CredentialRecord, source: str,
                                entry_id: Any) -> None:
        """Into the issuing plugin's store (acl: it ends the streams a revocation or a
        group change no longer allows before it returns, S1.BEH.6). Known first, so the
        announcement of the change that follows is not published back. When the merge
        with what this node knew says more than the record (a revocation of an older
        version, written over a newer one), the merged record is published: the
        credential ring must never keep a revoked credential unrevoked."""
        merged = self._remember(record)
        if merged is not None and (merged.updated_at, merged.revoked_at) != (
                record.updated_at, record.revoked_at):
            self._enqueue(("credential", merged))
        try:
            outcome = await self.gateway.apply_credential_record(record)
        except Exception:
            self.metrics.inc(M_DROPPED, source=source, reason="store_failure")
            log.warning("cluster: credential %s from %s %s could not be stored",
                        record.credential_id, source, _text(entry_id), exc_info=True)
            return
        if outcome == "conflict":
            self.metrics.inc(M_DROPPED, source=source, reason="conflict")
            log.warning("cluster: credential %s from %s %s names another person than the "
                        "local one of that id, or cannot be taken: ignored",
                        record.credential_id, source, _text(entry_id))
        elif outcome == "revoked":
            self.metrics.inc(M_REVOCATIONS, kind="credential")
            log.info("cluster: sign-in credential %s revoked on another node: applied",
                     record.credential_id)

    def _dropped(self, source: str, entry_id: Any, exc: Malformed) -> None:
        """A malformed entry: counted by reason, logged with ids only, and the cached
        entry of its session deleted (fail closed, S1.PIT.2)."""
        self.metrics.inc(M_DROPPED, source=source, reason=exc.reason)
        deleted = source in ("sessions", "snapshot") and exc.subject is not None \
            and self.directory.delete(exc.subject)
        if deleted:
            self._count_directory()
        log.warning("cluster: dropped a malformed entry %s from %s (%s)%s%s",
                    _text(entry_id)[:64], source, exc.reason,
                    f"; about {exc.subject[:64]}" if exc.subject else "",
                    "; its directory entry was deleted" if deleted else "")

    def _count_directory(self) -> None:
        self.metrics.set(M_DIRECTORY, len(self.directory.remote()))

    # -- the publisher ---------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        delay = BACKOFF_INITIAL
        pending: list[tuple[str, Any]] = []
        while True:
            _unless_cancelled()
            if pending or self._resync_cause is not None:  # due now: no waiting
                pending = self._drain(pending)
            else:
                first = await self.outbox.get()
                pending = self._drain([] if first is _RESYNC else [first])
            if self._resync_cause is not None:
                await self.connected.wait()  # the reader rebuilt the directory first
                cause, self._resync_cause = self._resync_cause, None
                self.metrics.inc(M_RESYNCS, cause=cause)
                pending += await self._whole_state()
            try:
                await self._write(pending)
                pending = []
                delay = BACKOFF_INITIAL
            except _DISCONNECTED:
                _unless_cancelled()
                self.metrics.inc(M_PUBLISH_DROPPED, len(pending), reason="redis")
                self._unwritten(pending)
                pending = []
                self._resync_cause = self._resync_cause or "publish_failed"
                await asyncio.sleep(jittered(delay))
                delay = min(delay * 2, BACKOFF_MAX)

    def _unwritten(self, batch: list[tuple[str, Any]]) -> None:
        """A batch was not written: Redis does not hold its keys and credentials after
        all, so the resync that follows must publish them again."""
        for kind, item in batch:
            if kind == "key":
                self.keyring.pop(item.key_id, None)
            elif kind == "credential":
                self.credentials.pop(item.credential_id, None)

    def _drain(self, batch: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        while len(batch) < PUBLISH_BATCH:
            try:
                item = self.outbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is not _RESYNC:
                batch.append(item)
        return batch

    async def _whole_state(self) -> list[tuple[str, Any]]:
        """Everything this node holds, as Redis should hold it: every live session, an
        end for each directory entry naming this node whose session is gone (lost in
        a restart), every local key Redis lacks or holds unrevoked, and every local
        sign-in credential Redis lacks or holds in an older version."""
        self._published.clear()
        items: list[tuple[str, Any]] = []
        live = {s.session_id: s for s in self.gateway.sessions()}
        for session in live.values():
            snapshot = self._snapshot(session.session_id, session.state,
                                      session.owner_key_id, session.tag,
                                      session.last_sequence)
            if snapshot is not None:
                items.append(("session", snapshot))
        for gone in self.directory.own():
            if gone.session_id not in live:
                stamp = max(time.time_ns() // 1_000_000, gone.updated_at_ms + 1)
                items.append(("session", dataclasses.replace(gone, state="CLOSED",
                                                             updated_at_ms=stamp)))
        for record in await self.gateway.key_records():
            known = self.keyring.get(record.key_id)
            if known is None or (known.revoked_at is None and record.revoked_at is not None):
                self.keyring[record.key_id] = record
                items.append(("key", record))
        for credential in await self.gateway.credential_records():
            merged = self._remember(credential)
            if merged is not None:
                items.append(("credential", merged))
        return items

    async def _write(self, batch: list[tuple[str, Any]]) -> None:
        """One transaction: each change on its stream and in its hash."""
        if not batch:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            counts = dict.fromkeys(("session", "key", "credential"), 0)
            for kind, item in batch:
                counts[kind] += 1
                if kind == "session":
                    fields = item.fields()
                    pipe.xadd(self.sessions_stream, fields, maxlen=SESSIONS_MAXLEN,
                              approximate=True)
                    if item.ended:
                        pipe.hdel(self.snapshot_hash, item.session_id)
                    else:
                        pipe.hset(self.snapshot_hash, item.session_id, to_json(fields))
                elif kind == "key":
                    fields = encode_key(item)
                    pipe.xadd(self.keys_stream, fields, maxlen=KEYS_MAXLEN, approximate=True)
                    pipe.hset(self.keyring_hash, item.key_id, to_json(fields))
                else:
                    fields = encode_credential(item)
                    pipe.xadd(self.credentials_stream, fields, maxlen=CREDENTIALS_MAXLEN,
                              approximate=True)
                    pipe.hset(self.credential_ring, item.credential_id, to_json(fields))
            pipe.pexpire(self.snapshot_hash, HASH_TTL_MS)
            await pipe.execute()
        for kind, count in counts.items():
            if count:
                self.metrics.inc(M_PUBLISHED, count, kind=kind)

    # -- the heartbeat -----------------------------------------------------------------------

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except _DISCONNECTED:
                pass  # the reader reports the outage
            _unless_cancelled()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def beat(self) -> None:
        """Mark this node alive; drop the sessions of nodes silent too long, and expired
        credentials from memory and from the credential ring."""
        now = time.time_ns() // 1_000_000
        expired = [cid for cid, r in self.credentials.items() if r.expires_at * 1000 <= now]
        async with self.redis.pipeline(transaction=True) as pipe:
            if expired:
                pipe.hdel(self.credential_ring, *expired)
            pipe.hset(self.nodes_hash, self.node_id, str(now))
            pipe.pexpire(self.nodes_hash, HASH_TTL_MS)
            pipe.hgetall(self.nodes_hash)
            *_, beats = await pipe.execute()
        for cid in expired:
            self.credentials.pop(cid, None)
        for node, value in beats.items():
            text = _text(value)
            if text.isdigit():
                self._alive[_text(node)] = int(text)
        for node in self.directory.nodes() - {self.node_id}:
            last = self._alive.get(node)
            if last is not None and now - last > NODE_TIMEOUT_MS:
                dropped = self.directory.forget_node(node)
                self._count_directory()
                log.warning("cluster: node %s silent for %d s: its %d session(s) left the "
                            "directory", node, (now - last) // 1000, dropped)

    # -- activity ----------------------------------------------------------------------------

    async def _write_activity_forever(self) -> None:
        while True:
            _unless_cancelled()
            event = await self.activity.get()
            if not self.connected.is_set():  # Redis is away: no waiting on it
                self.metrics.inc(M_ACTIVITY_DROPPED, reason="redis")
                continue
            fields = {str(k): "" if v is None else str(v) for k, v in event.items()}
            try:
                await self.redis.xadd(self.activity_stream, fields, maxlen=ACTIVITY_MAXLEN,
                                      approximate=True)
            except _DISCONNECTED:
                _unless_cancelled()
                self.metrics.inc(M_ACTIVITY_DROPPED, reason="redis")
                continue
            self.metrics.inc(M_ACTIVITY)
