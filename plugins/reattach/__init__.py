"""reattach: sessions survive a gateway restart; their workers are re-adopted.

Off by default (``plugins.reattach.enabled``). With it on:

* the gateway's instance id is persisted in ``state_dir/instance-id``, so worker
  socket paths (derived from it and the session id) are the same after a restart;
* every Ready session is written to the adoption manifest
  (``state_dir/reattach.sqlite3``: id, worker pid and start time, socket, owner,
  tag, backend, the nonce's digest) and removed when it closes or faults;
* workers outlive a lost gateway: they keep serving their backend, keep their
  newest events (as many as ``plugins.fanout.replay_buffer_capacity``), phone home
  with bounded backoff, and exit after ``max_orphan_lifetime_seconds`` unadopted;
* on startup, before any client call, the gateway re-opens each manifest entry's
  socket and waits up to ``adoption_window_seconds`` for its worker's adopt frame
  (nonce checked in constant time against the digest); an adopted session is
  READY again with its id, owner and tag, its replay ring rebuilt from the
  worker's buffer, its sequence continuing;
* a graceful shutdown (SIGTERM) leaves the workers running for the next instance.

Entries not adopted are removed; their workers are stopped only when provably
ours (core's terminator). See docs/plugins/reattach.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psutil

from sessiongate.core import hookimpl, protocol, terminator
from sessiongate.core.settings import Setting, positive_number

from .manifest import Entry, Manifest

if TYPE_CHECKING:
    from sessiongate.core.gateway import Gateway
    from sessiongate.core.session import Session
    from sessiongate.core.settings import Settings

log = logging.getLogger("sessiongate.plugins.reattach")

INSTANCE_FILE = "instance-id"
MANIFEST_KEY = "reattach.manifest"


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return [
        positive_number("plugins.reattach.adoption_window_seconds",
                        "At startup, how long to wait for surviving workers to phone home.",
                        maximum=3600),
        positive_number("plugins.reattach.max_orphan_lifetime_seconds",
                        "How long a worker whose gateway is gone keeps running unadopted.",
                        maximum=86400),
    ]


def _instance_id(state_dir: Any) -> str:
    path = state_dir / INSTANCE_FILE
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = uuid.uuid4().hex
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _manifest(session: Session) -> Manifest | None:
    return session.attributes["gateway"].attributes.get(MANIFEST_KEY)


@hookimpl
async def sg_startup(gateway: Gateway) -> None:
    gateway.instance_id = _instance_id(gateway.state_dir)
    manifest = await Manifest(gateway.state_dir / "reattach.sqlite3").open()
    gateway.attributes[MANIFEST_KEY] = manifest
    entries = await manifest.entries()
    if not entries:
        return
    window = float(gateway.settings.plugins.reattach.adoption_window_seconds)
    log.info("re-adopting up to %d sessions (window %g s)", len(entries), window)
    results = await asyncio.gather(*(_adopt(gateway, manifest, e, window) for e in entries))
    log.info("re-adopted %d of %d sessions", sum(results), len(entries))


async def _adopt(gateway: Gateway, manifest: Manifest, entry: Entry, window: float) -> bool:
    proc = terminator.our_worker(entry.pid, entry.create_time, entry.session_id, gateway.home)
    if proc is None:
        log.warning("session %s: its worker (pid %d) is gone; not re-adopted",
                    entry.session_id, entry.pid)
        await manifest.remove(entry.session_id)
        return False
    session = await gateway.sessions.restore(
        session_id=entry.session_id, owner_key_id=entry.owner_key_id,
        client_name=entry.client_name, backend=entry.backend, tag=entry.tag,
        lease_seconds=entry.lease_seconds, socket_path=entry.socket_path,
        nonce_digest=entry.nonce_digest, pid=entry.pid, create_time=entry.create_time,
        window=window)
    if session is None:
        log.warning("session %s: worker pid %d did not phone home within %g s; stopped",
                    entry.session_id, entry.pid, window)
        await manifest.remove(entry.session_id)
        await terminator.stop_foreign(proc, 0.0)
        return False
    adopted = session.attributes.get("adopted", {})
    log.info("session %s: re-adopted worker pid %d at sequence %d (%d events dropped while "
             "orphaned)", session.session_id, entry.pid, session.last_sequence,
             adopted.get("dropped_events", 0))
    return True


@hookimpl
async def sg_shutdown(gateway: Gateway) -> None:
    manifest = gateway.attributes.pop(MANIFEST_KEY, None)
    if manifest is not None:
        await manifest.close()


@hookimpl
def sg_worker_launch(session: Session, argv: list[str], env: dict[str, str]) -> None:
    settings = session.attributes["gateway"].settings
    options = json.loads(env.get(protocol.OPTIONS_ENV) or "{}")
    options["orphan_lifetime"] = float(settings.plugins.reattach.max_orphan_lifetime_seconds)
    fanout = settings.get("plugins.fanout") or {}
    if fanout.get("enabled"):
        options["history"] = int(fanout.get("replay_buffer_capacity", 0))
    env[protocol.OPTIONS_ENV] = json.dumps(options)


@hookimpl
async def sg_session_opened(session: Session) -> None:
    manifest, worker = _manifest(session), session.worker
    if manifest is None or worker is None or not worker.pid:
        return
    try:
        create_time = psutil.Process(worker.pid).create_time()
    except psutil.Error:
        return  # already gone: the session is faulting
    await manifest.put(Entry(
        session_id=session.session_id, pid=worker.pid, create_time=create_time,
        socket_path=worker.socket_path, owner_key_id=session.owner_key_id, tag=session.tag,
        backend=session.backend, client_name=session.client_name,
        lease_seconds=session.lease_seconds, nonce_digest=worker.nonce_digest))


@hookimpl
async def sg_session_closed(session: Session, reason: str) -> None:
    manifest = _manifest(session)
    if manifest is not None and not session.attributes.get("released"):
        await manifest.remove(session.session_id)


@hookimpl
def sg_worker_release(session: Session) -> bool | None:
    worker = session.worker
    return True if worker is not None and worker.pid and not worker.lost_reason else None
