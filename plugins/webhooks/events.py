"""Event types, ids and bodies: what a webhook carries (docs/plugins/webhooks.md).

A body is ``{"type", "id", "timestamp", "data"}`` as compact JSON, made once when the
event happens and stored: every attempt of every delivery sends these same bytes.
``data`` is a projection made of public fields only (ids, names, states, reasons):
never a key secret, a token, a nonce or a payload.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessiongate.core import Session

__all__ = ["ACTIVITY_PREFIX", "EVENT_TYPES", "Event", "check_event_types", "new_id",
           "rfc3339", "session_data", "subscribed"]

#: every type the gateway emits (activity events: ``activity.<action>``)
EVENT_TYPES = (
    "session.opened", "session.ready", "session.detached", "session.resumed",
    "session.closed", "session.faulted", "session.readopted", "subscriber.overflowed",
    "key.revoked", "webhook.endpoint_disabled", "webhook.test",
)
ACTIVITY_PREFIX = "activity."
#: subscribes to every activity event
ACTIVITY_ALL = "activity.*"
#: an activity event type: ``activity.`` and the call's operation label (or its method)
_ACTIVITY_TYPE = re.compile(r"activity\.[\x21-\x7e]{1,200}")
#: how many types one endpoint may list
MAX_TYPES = 64


def new_id(prefix: str) -> str:
    """The one id maker (S2.PIT.9): ``evt_`` events, ``dlv_`` deliveries, ``ep_``
    endpoints: 32 hex digits, the time in nanoseconds then 64 random bits, so ids sort
    by creation (the store's indexes grow at their end) and are never reused."""
    return f"{prefix}_{time.time_ns():016x}{secrets.token_hex(8)}"


def rfc3339(when: float) -> str:
    """A Unix time as RFC 3339 in UTC, milliseconds, ``Z``."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_event_types(types: Iterable[str]) -> list[str]:
    """The event types an endpoint asks for, checked and deduplicated (order kept).

    :raises ValueError: naming the first unknown type, and the known ones.
    """
    wanted: list[str] = []
    for kind in types:
        if kind not in EVENT_TYPES and kind != ACTIVITY_ALL and not _ACTIVITY_TYPE.fullmatch(kind):
            raise ValueError(f"unknown event type {kind[:80]!r}: the types are "
                             f"{', '.join(EVENT_TYPES)}, {ACTIVITY_ALL} (every activity "
                             "event) and activity.<operation>")
        if kind not in wanted:
            wanted.append(kind)
    if not wanted:
        raise ValueError("give at least one event type (--event TYPE)")
    if len(wanted) > MAX_TYPES:
        raise ValueError(f"at most {MAX_TYPES} event types per endpoint")
    return wanted


def subscribed(kind: str, types: Iterable[str]) -> bool:
    """Does an endpoint listing ``types`` receive events of type ``kind``?"""
    return kind in types or (kind.startswith(ACTIVITY_PREFIX) and ACTIVITY_ALL in types)


def session_data(session: Session, **extra: Any) -> dict[str, Any]:
    """A session's public view (as ``SessionInfo``): ids, names, state, reason."""
    return {
        "session_id": session.session_id,
        "state": session.state,
        "owner_key_id": session.owner_key_id,
        "client_name": session.client_name,
        "backend": session.backend,
        "tag": session.tag,
        "reason": session.reason,
        "opened_at": rfc3339(session.opened_wall),
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class Event:
    """One event, its body already made (the bytes every attempt sends)."""

    event_id: str
    type: str
    created_at: float
    body: bytes

    @classmethod
    def make(cls, kind: str, data: Mapping[str, Any], now: float) -> Event:
        event_id = new_id("evt")
        body = json.dumps({"type": kind, "id": event_id, "timestamp": rfc3339(now),
                           "data": dict(data)}, separators=(",", ":"), default=str)
        return cls(event_id, kind, now, body.encode())
