"""What the pages show, as data: feed rows, overview rows, and Server-Sent Events frames.

Everything a page receives live is JSON inside an SSE frame; the page's script puts it
in the document with ``textContent`` (never as markup), as jinja2's autoescaping does
for the first render, so an event payload holding ``<script>`` shows as text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sessiongate.v1 import gateway_pb2

if TYPE_CHECKING:
    from sessiongate.core import Session

    from .feed import FeedItem, RateHistory

__all__ = ["FEED", "PAYLOAD_LIMIT", "format_age", "pretty_payload", "session_row", "sse"]

#: characters of a pretty-printed payload sent to a page at most (the page shows the
#: first PREVIEW of them, the rest behind "show more")
PAYLOAD_LIMIT = 64 * 1024
#: the part shown before "show more" (the page reads it from the template)
PREVIEW = 1000
#: what each gap reason means, for people
GAP_REASONS = {
    gateway_pb2.EVICTED: "pushed out of the replay ring",
    gateway_pb2.EXPIRED: "older than the replay retention",
    gateway_pb2.GATEWAY_RESTARTED: "the gateway restarted",
    gateway_pb2.WORKER_DISCONNECTED: "the worker dropped them while disconnected",
    gateway_pb2.SLOW_SUBSCRIBER: "the dashboard's mirror fell behind and skipped them",
    gateway_pb2.WORKER_OVERRUN: "the worker dropped its oldest unsent events",
}
#: the reason named when a page itself missed rows (it was away or too slow)
PAGE_BEHIND = "PAGE_BEHIND"


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    """One Server-Sent Events frame (``data`` as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def pretty_payload(payload: bytes) -> tuple[str, bool]:
    """A payload as text for people: indented JSON, else UTF-8 text, else hex; cut at
    :data:`PAYLOAD_LIMIT` characters. Returns ``(text, truncated)``."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        shown = payload[:PAYLOAD_LIMIT // 3]  # three characters a byte
        return "(binary) " + shown.hex(" "), len(shown) < len(payload)
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass  # not JSON: the text as it is
    if len(text) > PAYLOAD_LIMIT:
        return text[:PAYLOAD_LIMIT], True
    return text, False


def _time(event: Any) -> str:
    if not event.HasField("time"):
        return ""
    return event.time.ToDatetime().isoformat(timespec="milliseconds") + "Z"


def _key_text(key: tuple[int, int]) -> str:
    return f"{key[0]}.1" if key[1] else str(key[0])


def gap_text(after: int, oldest: int, why: str) -> str:
    first, last = after + 1, oldest - 1
    span = f"Event {first}" if first == last else f"Events {first} to {last}"
    return f"{span} not shown: {why}."


class FeedFrames:
    """Renders a session feed's rows (:class:`~.feed.FeedRenderer`)."""

    def item(self, item: FeedItem) -> str:
        key = _key_text(item.key)
        if item.gap is not None:
            gap = item.gap
            reason = gateway_pb2.GapReason.Name(gap.reason)
            why = GAP_REASONS.get(gap.reason, "unknown")
            return sse("gap", {"after": gap.requested_after, "oldest": gap.oldest_available,
                               "reason": reason,
                               "text": gap_text(gap.requested_after, gap.oldest_available,
                                                f"{reason}, {why}")}, key)
        event = item.wire.event
        text, truncated = pretty_payload(event.payload)
        return sse("event", {"seq": event.sequence, "kind": event.kind, "time": _time(event),
                             "size": len(event.payload), "payload": text,
                             "truncated": truncated}, key)

    def missed(self, after: int, oldest: int) -> str:
        return sse("gap", {"after": after, "oldest": oldest, "reason": PAGE_BEHIND,
                           "text": gap_text(after, oldest, f"{PAGE_BEHIND}, this page was "
                                            "away or too slow and the dashboard keeps only "
                                            "the newest events")})

    def ended(self) -> str:
        return sse("ended", {"text": "The session has ended."})


FEED = FeedFrames()


def session_row(session: Session, rate: RateHistory | None, now: float) -> dict[str, Any]:
    """One overview row: what an operator needs to see of a session at a glance."""
    dist = session.distributor
    return {
        "id": session.session_id,
        "state": session.state,
        "tag": session.tag,
        "backend": session.backend,
        "client": session.client_name,
        "owner": session.owner_key_id,
        "subscribers": dist.external_count if dist is not None else 0,
        "last_sequence": session.last_sequence,
        "age": max(0, int(now - session.opened_wall)),
        "rate": rate.series() if rate is not None else [],
    }


def format_age(seconds: int) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 d 4 h`` (overview.js does the same)."""
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"

