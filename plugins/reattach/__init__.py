"""reattach: sessions survive a gateway restart; their workers are re-adopted.

Off by default (``plugins.reattach.enabled``). With it on:

* the gateway's instance id is persisted in ``state_dir/instance-id`` and names the
  worker sockets (``sg_worker_endpoint``), so they are the same after a restart;
* every Ready session is written to the adoption manifest
  (``state_dir/reattach.sqlite3``: id, worker pid and start time, socket, owner,
  tag, backend, the nonce's digest) and removed when it closes or faults;
* workers outlive a lost gateway (``sg_worker_options``): they keep serving their
  backend, keep their newest ``worker_history_events`` events, phone home with
  bounded backoff, and exit after ``max_orphan_lifetime_seconds`` unadopted;
* on startup, before any client call, each manifest entry's worker is adopted
  (``GatewayAPI.adopt_session``) if it phones home within
  ``adoption_window_seconds``: the session is READY again with its id, owner and
  tag, its event log rebuilt from the worker's record, its sequence continuing;
* a graceful shutdown (SIGTERM) leaves the workers running for the next instance
  (``sg_worker_release``).

Entries not adopted are removed; their workers are stopped only when provably
ours (core checks). See docs/plugins/reattach.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sessiongate.core import (
    Metric,
    Setting,
    StashKey,
    counter,
    hookimpl,
    non_negative_int,
    positive_number,
    worker_socket_path,
)
from sessiongate.v1 import gateway_pb2

from .manifest import Manifest

if TYPE_CHECKING:
    from sessiongate.core import AdoptionRecord, GatewayAPI, Session, Settings
    from sessiongate.v1 import worker_pb2

log = logging.getLogger("sessiongate.plugins.reattach")

INSTANCE_FILE = "instance-id"
#: this gateway's persistent instance id and its open manifest
INSTANCE: StashKey[str] = StashKey("reattach.instance")
MANIFEST: StashKey[Manifest] = StashKey("reattach.manifest")
#: per adopted session: its adopt frame's counts; history chunks received so far
ADOPTED: StashKey[dict[str, int]] = StashKey("reattach.adopted")
HISTORY_CHUNKS: StashKey[int] = StashKey("reattach.history")
#: metric names (declared by sg_metrics)
RECOVERIES = "reattach_recoveries"
DROPPED = "reattach_orphan_dropped_events"
RESTORED = "reattach_history_events"


@hookimpl
def sg_add_validators(settings: Settings) -> Sequence[Setting]:
    return [
        positive_number("plugins.reattach.adoption_window_seconds",
                        "At startup, how long to wait for surviving workers to phone home.",
                        maximum=3600),
        positive_number("plugins.reattach.max_orphan_lifetime_seconds",
                        "How long a worker whose gateway is gone keeps running unadopted.",
                        maximum=86400),
        non_negative_int("plugins.reattach.worker_history_events",
                         "Newest events each worker keeps to hand to the gateway that adopts "
                         "it (the resumable history after a restart; 0: none).",
                         maximum=1_000_000),
    ]


@hookimpl
def sg_metrics() -> Sequence[Metric]:
    return [
        counter(RECOVERIES, "Sessions of the adoption manifest at startup: adopted again, "
                "or lost (core's session_adoptions_total says why).",
                {"outcome": ("adopted", "lost")}),
        counter(DROPPED, "Events adopted workers produced while no gateway was connected "
                "and could not keep (subscribers see a WORKER_DISCONNECTED gap)."),
        counter(RESTORED, "Events adopted workers handed back from their history (the "
                "resumable events after a restart)."),
    ]


def _instance_id(state_dir: pathlib.Path) -> str:
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


@hookimpl
async def sg_startup(gateway: GatewayAPI) -> None:
    gateway.stash[INSTANCE] = _instance_id(gateway.state_dir)
    manifest = await Manifest(gateway.state_dir / "reattach.sqlite3").open()
    gateway.stash[MANIFEST] = manifest
    entries = await manifest.entries()
    if not entries:
        return
    window = float(gateway.settings.plugins.reattach.adoption_window_seconds)
    log.info("re-adopting up to %d sessions (window %g s)", len(entries), window)
    results = await asyncio.gather(*(_adopt(gateway, manifest, e, window) for e in entries))
    log.info("re-adopted %d of %d sessions", sum(results), len(entries))


async def _adopt(gateway: GatewayAPI, manifest: Manifest, record: AdoptionRecord,
                 window: float) -> bool:
    def on_frame(session: Session, frame: worker_pb2.WorkerFrame) -> None:
        _on_frame(gateway, session, frame)

    session = await gateway.adopt_session(record, window=window, on_frame=on_frame)
    if session is None:  # core said why, and stopped the worker if it was ours
        gateway.metrics.inc(RECOVERIES, outcome="lost")
        await manifest.remove(record.session_id)
        return False
    gateway.metrics.inc(RECOVERIES, outcome="adopted")
    adopted = session.stash.get(ADOPTED, {})
    log.info("session %s: re-adopted worker pid %d at sequence %d (%d events dropped while "
             "orphaned)", session.session_id, record.pid, session.last_sequence,
             adopted.get("dropped_events", 0))
    return True


def _on_frame(gateway: GatewayAPI, session: Session, frame: worker_pb2.WorkerFrame) -> None:
    """An adopted worker's account: its position first, then what it still holds."""
    kind = frame.WhichOneof("body")
    if kind == "adopt":
        adopt = frame.adopt
        session.stash[ADOPTED] = {"last_sequence": adopt.last_sequence,
                                  "dropped_events": adopt.dropped_events}
        gateway.metrics.inc(DROPPED, adopt.dropped_events)
        reason = (gateway_pb2.WORKER_DISCONNECTED if adopt.dropped_events
                  else gateway_pb2.GATEWAY_RESTARTED)
        session.restore_events([], floor=adopt.last_sequence, reason=reason)
    elif kind == "history" and frame.history.events:
        history = frame.history
        events = list(history.events)
        chunks = session.stash.get(HISTORY_CHUNKS, 0)
        session.stash[HISTORY_CHUNKS] = chunks + 1
        gateway.metrics.inc(RESTORED, len(events))
        floor = events[0].sequence - 1
        reason = (gateway_pb2.WORKER_DISCONNECTED
                  if history.first_unsent and history.first_unsent <= floor
                  else gateway_pb2.EVICTED)
        session.restore_events(events, floor=floor if chunks == 0 else None, reason=reason)


@hookimpl
async def sg_shutdown(gateway: GatewayAPI) -> None:
    manifest = gateway.stash.pop(MANIFEST, None)
    if manifest is not None:
        await manifest.close()


@hookimpl
def sg_worker_endpoint(gateway: GatewayAPI, session: Session, runtime_dir: str) -> str | None:
    """Named by the persistent instance id: the same socket after a restart."""
    instance = gateway.stash.get(INSTANCE)
    if instance is None:
        return None  # not started: core's per-process name
    return worker_socket_path(runtime_dir, instance, session.session_id)


@hookimpl
def sg_worker_options(gateway: GatewayAPI) -> Mapping[str, Any]:
    reattach = gateway.settings.plugins.reattach
    return {"orphan_lifetime": float(reattach.max_orphan_lifetime_seconds),
            "history": int(reattach.worker_history_events)}


async def _record(gateway: GatewayAPI, session: Session) -> None:
    manifest, record = gateway.stash.get(MANIFEST), gateway.adoption_record(session)
    if manifest is not None and record is not None:
        await manifest.put(record)


@hookimpl
async def sg_session_opened(gateway: GatewayAPI, session: Session) -> None:
    await _record(gateway, session)


@hookimpl
async def sg_session_adopted(gateway: GatewayAPI, session: Session) -> None:
    await _record(gateway, session)  # the nonce rotated at adoption: its new digest


@hookimpl
async def sg_session_closed(gateway: GatewayAPI, session: Session) -> None:
    manifest = gateway.stash.get(MANIFEST)
    if manifest is not None:
        await manifest.remove(session.session_id)


@hookimpl
def sg_worker_release(session: Session) -> bool:
    return True  # asked only for sessions whose worker is alive
